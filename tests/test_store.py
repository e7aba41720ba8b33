"""The store: its migrations (from nothing, and from a database made before them), read-only versus
read-write transactions, and claiming queued jobs. On SQLite and, where installed, PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from tunesmith.config import Settings
from tunesmith.jobs import migrations, registry
from tunesmith.jobs.store import (QUEUED, RUNNING, ApiKey, Base, Checkpoint, Event, File, Job, Model, Project, Store,
                                  claim_queued)

FIXTURE = Path(__file__).parent / "fixtures" / "store-v0.db"
# The plaintext keys whose hashes tests/fixtures/make_store_v0.py stored in the fixture.
KEYS = {"alpha": "sk-ts-fixture-alpha-0000000000000000000000000",
        "beta": "sk-ts-fixture-beta-00000000000000000000000000"}


@pytest.fixture
def settings(database_url, tmp_path) -> Settings:
    return Settings(home=tmp_path, database_url=database_url)


@pytest.fixture
def open_store(settings):
    """Opens stores on the test's database; their connections are closed after the test."""
    stores: list[Store] = []

    def make() -> Store:
        stores.append(Store(settings))
        return stores[-1]

    yield make
    for store in stores:
        store.engine.dispose()


def schema_check(store: Store) -> None:
    """At the newest revision, and the migrated schema is exactly what the ORM classes declare."""
    with store.engine.connect() as connection:
        assert migrations.current(connection) == migrations.head()
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def add_queued(store: Store, project: str, *created_at: int) -> list[str]:
    ids = []
    with store.session() as s:
        project_id = store.project(s, project).id
        for t in created_at:
            ids.append(f"ftjob-{project}-{t}")
            s.add(Job(id=ids[-1], project_id=project_id, model="m", training_file="file-x", seed=0, model_id="x",
                      status=QUEUED, created_at=t))
    return ids


def test_new_database_is_made_at_head_as_the_orm_declares(open_store):
    schema_check(open_store())


def test_two_processes_opening_a_new_database_at_once_both_succeed(settings):
    """The database's lock serialises their upgrades: the second finds the schema made."""
    env = {**os.environ, "TUNESMITH_HOME": str(settings.home), "TUNESMITH_DATABASE_URL": settings.database_url or ""}
    start_at = time.time() + 2  # both past their imports by then, so their upgrades overlap
    script = (f"import time; from tunesmith.jobs.store import Store; time.sleep(max(0, {start_at} - time.time()));"
              " Store().engine.dispose()")
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parents[1], env=env,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    assert [(p.wait(60), p.stderr.read()) for p in procs] == [(0, "")] * 2
    store = Store(settings)
    schema_check(store)
    store.engine.dispose()


def test_threads_opening_different_databases_at_once_all_succeed(tmp_path):
    """Alembic's state is global to the process: the upgrades run one at a time (no database lock
    between different files would serialise them)."""
    barrier, stores, errors = threading.Barrier(3), [], []

    def start(home: Path):
        barrier.wait()
        try:
            stores.append(Store(Settings(home=home)))
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=start, args=(tmp_path / str(i),)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for store in stores:
        schema_check(store)
        store.engine.dispose()


def legacy_model_file(home: Path, name: str, job_id: str) -> None:
    """A model's metadata as tunesmith kept it before the store was its registry."""
    (home / "models").mkdir(exist_ok=True)
    (home / "models" / f"{name.rsplit(':', 1)[1]}.json").write_text(json.dumps({
        "id": name.rsplit(":", 1)[1], "name": name, "base": "smollm2-135m-instruct", "job_id": job_id,
        "method": "lora", "format": "chat", "path": f"/w/{job_id}/model", "created_at": 7, "trained_tokens": 4096,
        "checkpoints": {"1": f"/w/{job_id}/1"}, "metrics": {"train_loss": 1.5}}))


def test_database_from_before_migrations_is_upgraded_keeping_every_row(tmp_path):
    shutil.copy(FIXTURE, tmp_path / "tunesmith.db")
    legacy_model_file(tmp_path, "ft:smollm2-135m-instruct:local:v0:done1", "ftjob-done")  # the API's model
    legacy_model_file(tmp_path, "ft:smollm2-135m-instruct:local:cli:cli1", "ftjob-notinstore")  # `tunesmith train`'s
    (tmp_path / "models" / "torn.json").write_text('{"name": "ft:')
    store = Store(Settings(home=tmp_path))
    schema_check(store)
    assert store.caller(KEYS["alpha"])[0].name == "alpha" and store.caller(KEYS["alpha"])[1] is False
    assert store.caller(KEYS["beta"])[0].name == "beta"
    with store.read() as s:
        assert s.scalars(select(ApiKey.project_id).order_by(ApiKey.id)).all() == ["proj_alpha", "proj_beta"]
        files = {f.id: f for f in s.scalars(select(File))}
        assert {i: (f.project_id, f.bytes, f.sha256) for i, f in files.items()} == {
            "file-train": ("proj_alpha", 1234, None), "file-beta": ("proj_beta", 99, None)}
        jobs = {j.id: j for j in s.scalars(select(Job))}
        assert {i: j.status for i, j in jobs.items()} == {
            "ftjob-done": "succeeded", "ftjob-queued": "queued", "ftjob-failed": "failed"}
        done = jobs["ftjob-done"]
        assert done.hyperparameters == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 1.0}
        assert (done.fine_tuned_model, done.meta, done.result_files, done.trained_tokens) == (
            "ft:smollm2-135m-instruct:local:v0:done1", {"team": "search"}, ["file-result"], 4096)
        assert jobs["ftjob-queued"].hyperparameters == {"n_epochs": "auto"}
        assert jobs["ftjob-failed"].error["code"] == "invalid_training_file"
        assert all(j.status_actor is None for j in jobs.values())
        events = s.scalars(select(Event).order_by(Event.seq)).all()
        assert [(e.seq, e.job_id, e.key) for e in events] == [
            (1, "ftjob-done", "msg-1"), (2, "ftjob-done", "step-1"), (3, "ftjob-failed", "msg-1")]
        assert events[1].data == {"step": 1, "total_steps": 2, "train_loss": 1.5}
        (ckpt,) = s.scalars(select(Checkpoint)).all()
        assert (ckpt.job_id, ckpt.step, ckpt.path, ckpt.metrics) == (
            "ftjob-done", 1, "/srv/tunesmith/ckpt/1", {"step": 1, "train_loss": 1.5})
        cli_model, model = s.scalars(select(Model).order_by(Model.name)).all()
        assert (model.name, model.project_id, model.job_id, model.deleted) == (
            "ft:smollm2-135m-instruct:local:v0:done1", "proj_alpha", "ftjob-done", False)
        # the models' metadata files became their rows: the store is the one registry now
        assert (model.base, model.method, model.format, model.path, model.trained_tokens, model.metrics,
                model.checkpoints) == ("smollm2-135m-instruct", "lora", "chat", "/w/ftjob-done/model", 4096,
                                       {"train_loss": 1.5}, {"1": "/w/ftjob-done/1"})
        assert (cli_model.name, cli_model.job_id, s.get(Project, cli_model.project_id).name) == (
            "ft:smollm2-135m-instruct:local:cli:cli1", None, "local")
    resolved = registry.resolve("ft:smollm2-135m-instruct:local:cli:cli1:ckpt-step-1", store)
    assert (resolved.base, resolved.weights) == ("smollm2-135m-instruct", Path("/w/ftjob-notinstore/1"))
    with store.session() as s:  # a model without a job can now be registered
        s.add(Model(name="ft:cli-made", project_id="proj_alpha", job_id=None, checkpoints={"10": "/w/10"}))
    with store.read() as s:
        assert s.get(Model, "ft:cli-made").checkpoints == {"10": "/w/10"}
    store.engine.dispose()


def test_read_does_not_wait_for_a_writer(open_store):
    store = open_store()
    holding, release = threading.Event(), threading.Event()

    def writer():
        with store.session() as s:
            store.project(s, "writer")
            holding.set()
            release.wait(5)  # let go after 5 s even if the read below is stuck behind it

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert holding.wait(10)
        start = time.monotonic()
        with store.read() as s:
            assert s.scalar(select(Project).where(Project.name == "writer")) is None  # not committed yet
        elapsed = time.monotonic() - start
    finally:
        release.set()
        thread.join()
    assert elapsed < 1


def test_writing_in_a_read_transaction_fails(open_store):
    store = open_store()
    with pytest.raises(DBAPIError, match="read.?only"), store.read() as s:
        s.add(Project(id="proj_x", name="x", created_at=0))
    with store.read() as s:  # the connection went back to the pool: it reads and writes as before
        assert s.scalar(select(Project)) is None
    with store.session() as s:
        store.project(s, "x")


def test_claim_takes_queued_jobs_round_robin_across_projects(open_store):
    store = open_store()
    a = add_queued(store, "a", 100, 103, 105, 107, 109)
    b = add_queued(store, "b", 104)
    c = add_queued(store, "c", 101, 102)
    with store.session() as s:  # older than every queued job, but running: not claimable
        s.get(Job, add_queued(store, "b", 50)[0]).status = RUNNING
    with store.session() as s:
        assert [j.id for j in claim_queued(s, 4)] == [a[0], c[0], b[0], a[1]]
        assert [j.id for j in claim_queued(s, 100)] == [a[0], c[0], b[0], a[1], c[1], *a[2:]]
        assert {j.status for j in claim_queued(s, 100)} == {QUEUED}  # the caller moves them on
        assert claim_queued(s, 0) == []


def test_two_workers_claim_every_job_exactly_once(open_store):
    setup = open_store()
    queued = [job for i in range(4) for job in add_queued(setup, f"p{i}", *range(10 * i, 10 * i + 5))]
    workers = [open_store(), open_store()]
    claimed: list[list[str]] = [[], []]
    barrier, errors = threading.Barrier(2), []

    def work(n: int) -> None:
        try:
            barrier.wait()
            while True:
                with workers[n].session() as s:
                    jobs = claim_queued(s, 1)
                    for job in jobs:
                        job.status = RUNNING  # the lifecycle module's part, done directly in this test
                    time.sleep(0.005)  # a worker's work in the claiming transaction
                if not jobs:
                    return
                claimed[n] += [job.id for job in jobs]
                time.sleep(0.01)  # a worker's poll interval: the other gets its turn at the lock
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(claimed[0] + claimed[1]) == sorted(queued)  # each once
    assert claimed[0] and claimed[1]
    with setup.read() as s:
        assert set(s.scalars(select(Job.status))) == {RUNNING}
