"""The worker under faults, without training: job processes are stood in for by a fake launcher.

Each test injects one fault into one job and checks what its owner sees (status, error, events)
and that another job, created after it, still goes through the queue. On SQLite and PostgreSQL.
"""

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import select

from conftest import chat_row, write_jsonl
from tunesmith.config import Settings
from tunesmith.jobs import lifecycle
from tunesmith.jobs import store as st
from tunesmith.jobs.store import Event, File, Job, Store
from tunesmith.jobs.worker import Worker
from tunesmith.train.loop import STATE_FILE
from tunesmith.train.run import RESULT_FILE


class FakeLauncher:
    """Records starts; a test ends a 'process' by setting its exit code and writing its result file."""

    def __init__(self):
        self.procs: dict[str, int | None] = {}
        self.started: list[str] = []
        self.stopped: list[str] = []
        self.orders: dict[str, dict] = {}

    def start(self, job_id, job_dir, order):
        self.procs[job_id] = None
        self.started.append(job_id)
        self.orders[job_id] = order

    def running(self):
        return list(self.procs)

    def poll(self, job_id):
        code = self.procs[job_id]
        if code is not None:
            del self.procs[job_id]
        return code

    def stop(self, job_id):
        self.stopped.append(job_id)

    def stop_all(self, grace_seconds):
        codes = {job_id: 3 for job_id in self.procs}
        self.procs.clear()
        return codes


@pytest.fixture
def worker(tmp_path, smol_info, database_url):
    home = tmp_path / "home"
    home.mkdir()
    (home / "base").symlink_to(Path(os.environ["TUNESMITH_HOME"]) / "base")  # the session's converted model
    store = Store(Settings(home=home, max_running_jobs=1, database_url=database_url))
    yield Worker(store, launcher=FakeLauncher())
    store.engine.dispose()


def upload(worker: Worker, lines: list, name: str = "train.jsonl") -> str:
    path = write_jsonl(worker.settings.home / f"{st.make_id('u')}.jsonl", lines)
    with worker.store.session() as s:
        project = worker.store.project(s, "p")
        f = File(id=st.make_id("file-"), project_id=project.id, filename=name, purpose="fine-tune",
                 bytes=path.stat().st_size, path=str(path))
        s.add(f)
        return f.id


def good_file(worker: Worker) -> str:
    return upload(worker, [chat_row(f"Question {i}?", f"Answer {i}.") for i in range(12)])


def create_job(worker: Worker, file_id: str, project: str = "p", created_at: int | None = None,
               meta: dict | None = None) -> str:
    with worker.store.session() as s:
        job = Job(id=st.make_id("ftjob-"), project_id=worker.store.project(s, project).id,
                  model="smollm2-135m-instruct", training_file=file_id, seed=1, model_id=st.make_id("")[:8],
                  hyperparameters={"n_epochs": "auto"}, created_at=created_at or st.now(), meta=meta)
        s.add(job)
        return job.id


def job(worker: Worker, job_id: str) -> Job:
    with worker.store.read() as s:
        return s.get(Job, job_id)


def messages(worker: Worker, job_id: str) -> list[str]:
    with worker.store.read() as s:
        return list(s.scalars(select(Event.message).where(Event.job_id == job_id).order_by(Event.seq)))


def finish(worker: Worker, job_id: str, code: int, result: dict | bytes | None) -> None:
    job_dir = worker.job_dir(job_id)
    job_dir.mkdir(parents=True, exist_ok=True)
    if result is not None:
        (job_dir / RESULT_FILE).write_bytes(result if isinstance(result, bytes) else json.dumps(result).encode())
    worker.launcher.procs[job_id] = code


@pytest.mark.parametrize("bad_line, error", [
    ("[" * 5000 + "]" * 5000, "line 13: unreadable JSON: RecursionError"),
    ('{"messages": [], "n": ' + "9" * 5000 + "}", "line 13: unreadable JSON: ValueError: Exceeds the limit"),
    ({"messages": [{"role": "user", "content": "x"},
                   {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f"}}]}]},
     "line 13, messages: cannot be rendered with the model's chat template"),
])
def test_a_malformed_file_fails_its_job_and_the_queue_goes_on(worker, bad_line, error):
    lines = [chat_row(f"Question {i}?", f"Answer {i}.") for i in range(12)] + [bad_line]
    bad = create_job(worker, upload(worker, lines))
    good = create_job(worker, good_file(worker))
    worker.tick()
    assert job(worker, bad).status == "failed" and error in job(worker, bad).error["message"]
    assert job(worker, bad).error["param"] == "training_file"
    assert any(error in m for m in messages(worker, bad))
    assert job(worker, good).status == "running" and worker.launcher.started == [good]


def test_any_exception_while_validating_fails_only_that_job(worker, monkeypatch):
    from tunesmith.jobs import worker as worker_module

    real = worker_module.validate_file
    broken = upload(worker, [chat_row(f"Q{i}?", f"A{i}.") for i in range(12)], name="broken.jsonl")
    with worker.store.read() as s:
        broken_path = s.get(File, broken).path

    def validate(path, *args, **kwargs):
        if str(path) == broken_path:
            raise RuntimeError("disk on fire")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(worker_module, "validate_file", validate)
    bad, good = create_job(worker, broken), create_job(worker, good_file(worker))
    worker.tick()
    assert job(worker, bad).status == "failed"
    assert job(worker, bad).error["message"] == "the files could not be validated: RuntimeError: disk on fire"
    assert job(worker, good).status == "running"


def test_a_file_deleted_while_queued_fails_its_job_at_launch(worker):
    first, second = good_file(worker), good_file(worker)
    gone, other = create_job(worker, first, created_at=1), create_job(worker, second, created_at=2)
    worker._validate_new()
    assert job(worker, gone).status == job(worker, other).status == "queued"
    with worker.store.session() as s:
        f = s.get(File, first)
        s.delete(f)
    worker.tick()
    assert job(worker, gone).status == "failed"
    assert job(worker, gone).error["message"] == f"training_file {first} was deleted before the job started"
    assert job(worker, other).status == "running" and worker.launcher.started == [other]


def test_a_job_trains_on_the_servers_process_count_or_on_its_metadatas(worker):
    worker.settings.max_running_jobs, worker.settings.nproc_per_node = 2, 3
    default, asked = create_job(worker, good_file(worker)), create_job(worker, good_file(worker),
                                                                       meta={"nproc_per_node": "2"})
    worker.tick()
    assert worker.launcher.orders[default]["nproc_per_node"] == 3
    assert worker.launcher.orders[asked]["nproc_per_node"] == 2


@pytest.mark.parametrize("asked", ["0", "9", "two", "-1"])
def test_a_process_count_out_of_the_servers_range_is_refused(asked):
    from tunesmith.jobs.launcher import InvalidProcessCount, nproc_per_node

    with pytest.raises(InvalidProcessCount, match=f"from 1 to 8 .*got '{asked}'"):
        nproc_per_node(Settings(), {"nproc_per_node": asked})
    assert nproc_per_node(Settings(nproc_per_node=4), None) == 4


def test_a_killed_job_process_fails_with_the_likely_cause_and_resumes(worker):
    job_id = create_job(worker, good_file(worker))
    worker.tick()
    newest = worker.job_dir(job_id) / "checkpoints" / "step-000005"
    newest.mkdir(parents=True)
    (newest / STATE_FILE).write_bytes(b"state")
    finish(worker, job_id, -9, None)
    worker.tick()
    failed = job(worker, job_id)
    assert failed.status == "failed" and failed.finished_at is not None
    assert failed.error["message"].startswith("the job process was killed by SIGKILL — most likely the kernel's "
                                              "out-of-memory killer")
    assert "resume the job to continue from its newest checkpoint (step-000005)" in failed.error["message"]
    with worker.store.session() as s:
        lifecycle.transition(s, s.get(Job, job_id), st.QUEUED, "operator", "Resumed")
    worker.tick()
    resumed = job(worker, job_id)
    assert resumed.status == "running" and resumed.error is None and resumed.finished_at is None
    assert worker.launcher.started == [job_id, job_id]
    assert messages(worker, job_id)[-1] == "Fine-tuning job resumed"


@pytest.mark.parametrize("content", [b'{"status": "succ', b"\x00\x00\x00", b"[]"])
def test_a_corrupt_result_file_fails_its_job_and_the_worker_boots(worker, content):
    job_id = create_job(worker, good_file(worker))
    worker.tick()
    finish(worker, job_id, 0, content)
    # the service died before it read the result: the next start finds the job running
    worker.launcher.procs.clear()
    other = create_job(worker, good_file(worker))
    restarted = Worker(worker.store, launcher=FakeLauncher())
    restarted.recover()
    restarted.tick()
    failed = job(restarted, job_id)
    assert failed.status == "failed" and "result file" in failed.error["message"]
    assert "is corrupt" in failed.error["message"]
    assert job(restarted, other).status == "running"


def test_an_exception_after_the_process_exits_does_not_leave_the_job_running(worker, monkeypatch):
    job_id = create_job(worker, good_file(worker))
    worker.tick()
    monkeypatch.setattr(worker, "_succeed", lambda *a: (_ for _ in ()).throw(KeyError("fine_tuned_model")))
    finish(worker, job_id, 0, {"status": "succeeded"})
    worker.tick()
    assert job(worker, job_id).status == "failed"
    assert job(worker, job_id).error["message"] == "internal error: KeyError: 'fine_tuned_model'"


def test_shutdown_pauses_running_jobs_and_the_next_start_resumes_them(worker):
    job_id = create_job(worker, good_file(worker))
    worker.tick()
    finish(worker, job_id, None, {"status": "stopped", "metrics": {"step": 7}})
    worker.close()
    paused = job(worker, job_id)
    assert (paused.status, paused.status_actor) == ("paused", "system")
    assert messages(worker, job_id)[-1] == ("Fine-tuning job paused at step 7: the service is shutting down. "
                                            "It resumes by itself when the service starts again.")
    # a job a client paused stays paused
    client_paused = create_job(worker, good_file(worker))
    with worker.store.session() as s:
        j = s.get(Job, client_paused)
        j.status = st.PAUSED
    restarted = Worker(worker.store, launcher=FakeLauncher())
    restarted.recover()
    assert job(restarted, job_id).status == "queued" and job(restarted, client_paused).status == "paused"
    restarted.tick()
    assert restarted.launcher.started == [job_id]


def test_queued_jobs_are_taken_round_robin_across_projects(worker):
    worker.settings.max_running_jobs = 3
    busy = [create_job(worker, good_file(worker), project="busy", created_at=i) for i in range(1, 6)]
    lone = create_job(worker, good_file(worker), project="lone", created_at=10)
    worker.tick()
    assert worker.launcher.started == [busy[0], lone, busy[1]]
