"""The store: its migrations (from nothing, and from a database made before them), and read-only
versus read-write transactions. On SQLite and, where installed, PostgreSQL."""

from __future__ import annotations

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
from tunesmith.jobs import migrations
from tunesmith.jobs.store import ApiKey, Base, Checkpoint, Event, File, Job, Model, Project, Store

FIXTURE = Path(__file__).parent / "fixtures" / "store-v0.db"
# The plaintext keys whose hashes tests/fixtures/make_store_v0.py stored in the fixture.
KEYS = {"alpha": "sk-ts-fixture-alpha-0000000000000000000000000",
        "beta": "sk-ts-fixture-beta-00000000000000000000000000"}


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path) -> Settings:
    url = request.getfixturevalue("postgres").create_database() if request.param == "postgresql" else None
    return Settings(home=tmp_path, database_url=url)


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


def test_database_from_before_migrations_is_upgraded_keeping_every_row(tmp_path):
    shutil.copy(FIXTURE, tmp_path / "tunesmith.db")
    store = Store(Settings(home=tmp_path))
    schema_check(store)
    assert store.project_for_key(KEYS["alpha"]).name == "alpha"
    assert store.project_for_key(KEYS["beta"]).name == "beta"
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
        (model,) = s.scalars(select(Model)).all()
        assert (model.name, model.project_id, model.job_id, model.deleted) == (
            "ft:smollm2-135m-instruct:local:v0:done1", "proj_alpha", "ftjob-done", False)
        assert (model.base, model.method, model.format, model.path, model.trained_tokens, model.metrics,
                model.checkpoints) == (None,) * 7
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
