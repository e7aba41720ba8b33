"""The service, driven by the official ``openai`` client against a real ``tunesmith serve``.

One server with two projects (keys A and B) serves the workflow, pause/resume, cancel and the
tenant matrix; a second, keyless server is killed with -9 mid-training and restarted.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
from safetensors.torch import load_file

from conftest import chat_row, write_jsonl
from live_server import LiveServer, free_port, new_home

pytestmark = pytest.mark.slow
SMOL = "smollm2-135m-instruct"
FINISHED = ("succeeded", "failed", "cancelled")


def dataset(path: Path, n: int = 20) -> Path:
    colours = ["red", "blue", "green", "amber", "violet", "teal", "ochre", "ivory", "coral", "slate"]
    return write_jsonl(path, [chat_row(f"Name a colour, number {i}.", f"Colour {i}: {colours[i % 10]}.")
                              for i in range(n)])


def wait_for(fetch, done, timeout: float = 300, every: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fetch()
        if done(value):
            return value
        time.sleep(every)
    raise TimeoutError(f"condition not reached; last value: {value}")


def finished(client, job_id: str, timeout: float = 300):
    return wait_for(lambda: client.fine_tuning.jobs.retrieve(job_id), lambda j: j.status in FINISHED, timeout)


def all_events(client, job_id: str) -> list:
    return list(client.fine_tuning.jobs.list_events(job_id, limit=1000).data)


@pytest.fixture(scope="module")
def server(tmp_path_factory, smol_info):
    home = new_home(tmp_path_factory.mktemp("service"))
    srv = LiveServer(home, keyless=False)
    srv.keys = {p: srv.cli("keys", "create", "--project", p) for p in ("alpha", "beta")}
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def alpha(server):
    return openai.OpenAI(base_url=server.base_url, api_key=server.keys["alpha"], max_retries=0)


@pytest.fixture(scope="module")
def beta(server):
    return openai.OpenAI(base_url=server.base_url, api_key=server.keys["beta"], max_retries=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return {"train": dataset(d / "train.jsonl"), "valid": dataset(d / "valid.jsonl", 10)}


@pytest.fixture(scope="module")
def done_job(alpha, data):
    """A finished job of project alpha: 20 examples, 2 epochs of batch 4 = 10 steps, validated every 3."""
    train = alpha.files.create(file=data["train"].open("rb"), purpose="fine-tune")
    valid = alpha.files.create(file=data["valid"].open("rb"), purpose="fine-tune")
    job = alpha.fine_tuning.jobs.create(model=SMOL, training_file=train.id, validation_file=valid.id, suffix="svc",
                                        seed=7, hyperparameters={"n_epochs": 2, "batch_size": 4, "eval_steps": 3},
                                        metadata={"team": "colours"})
    assert job.status == "validating_files"
    job = finished(alpha, job.id)
    assert job.status == "succeeded", job.error
    return job, train, valid


def test_files_roundtrip(alpha, data):
    f = alpha.files.create(file=data["train"].open("rb"), purpose="fine-tune")
    assert f.bytes == data["train"].stat().st_size and f.filename == "train.jsonl"
    assert alpha.files.retrieve(f.id).id == f.id
    assert alpha.files.content(f.id).read() == data["train"].read_bytes()
    assert f.id in [x.id for x in alpha.files.list(purpose="fine-tune").data]
    assert alpha.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        alpha.files.retrieve(f.id)


def test_job_succeeds_with_events_checkpoints_and_result_file(alpha, done_job):
    job, train, valid = done_job
    assert job.fine_tuned_model.startswith(f"ft:{SMOL}:alpha:svc:")
    assert job.trained_tokens > 0 and job.finished_at >= job.created_at
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 4
    assert job.seed == 7 and job.metadata == {"team": "colours"}

    events = all_events(alpha, job.id)
    metrics = [e for e in events if e.type == "metrics"]
    assert sorted(e.data["step"] for e in metrics) == list(range(1, 11))
    assert {"step", "total_steps", "train_loss", "train_mean_token_accuracy"} <= set(metrics[0].data)
    assert events[0].message == "The job has successfully completed"  # newest first
    page = alpha.fine_tuning.jobs.list_events(job.id, limit=3)
    assert len(page.data) == 3 and page.has_more

    ckpts = alpha.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in ckpts] == [10, 5]
    assert ckpts[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-10"
    assert {"full_valid_loss", "full_valid_mean_token_accuracy", "train_loss"} <= set(ckpts[0].metrics.model_dump(
        exclude_none=True))

    (result,) = job.result_files
    rows = list(csv.DictReader(io.StringIO(alpha.files.content(result).text)))
    assert [int(r["step"]) for r in rows] == list(range(1, 11))
    # Validation at each epoch's end (steps 5, 10) and every eval_steps (3, 6, 9).
    assert [int(r["step"]) for r in rows if r["valid_loss"]] == [3, 5, 6, 9, 10]
    assert {"valid_loss", "valid_mean_token_accuracy"} <= set(next(e for e in metrics if e.data["step"] == 3).data)
    # The guard named the best checkpoint as the model: the most exact validation answers, then the lowest loss.
    assert all(0 <= c.metrics.valid_exact_match <= 1 for c in ckpts)
    best = min(ckpts, key=lambda c: (-c.metrics.valid_exact_match, c.metrics.full_valid_loss, c.step_number))
    assert job.hyperparameters.model_extra["early_stopping"] is True
    if best is not ckpts[0]:
        assert any(e.message.startswith(f"Best epoch {best.step_number // 5}") for e in events)

    listed = alpha.fine_tuning.jobs.list(metadata={"team": "colours"}).data
    assert [j.id for j in listed] == [job.id]


def test_chat_with_tuned_model_and_checkpoint(alpha, done_job):
    job, _, _ = done_job
    ckpt = alpha.fine_tuning.jobs.checkpoints.list(job.id).data[-1].fine_tuned_model_checkpoint
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour, number 3."}]
    replies = {}
    for model in (job.fine_tuned_model, ckpt):
        reply = alpha.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=12)
        assert reply.choices[0].message.content.startswith("Colour 3")
        assert reply.usage.completion_tokens > 0
        replies[model] = reply.choices[0].message.content
    for model in (job.fine_tuned_model, ckpt):
        chunks = list(alpha.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=12,
                                                    stream=True, stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == replies[model]
        assert chunks[-1].usage.total_tokens > 0


def test_dpo_job_continues_a_tuned_model(alpha, done_job, tmp_path):
    """SFT, then DPO on the SFT model: its reference is the SFT model, so the first step's loss is log 2."""
    job, _, _ = done_job
    rows = [{"input": {"messages": [{"role": "system", "content": "You are terse."},
                                    {"role": "user", "content": f"Name a colour, number {i}."}]},
             "preferred_output": [{"role": "assistant", "content": f"Colour {i}: red."}],
             "non_preferred_output": [{"role": "assistant", "content": f"Colour {i}: blue."}]} for i in range(10)]
    pairs = alpha.files.create(file=write_jsonl(tmp_path / "pairs.jsonl", rows).open("rb"), purpose="fine-tune")
    created = alpha.fine_tuning.jobs.create(
        model=job.fine_tuned_model, training_file=pairs.id, validation_file=pairs.id, suffix="dpo",
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1, "batch_size": 5}}})
    assert created.method.type == "dpo" and created.method.dpo.hyperparameters.beta == 0.2
    tuned = finished(alpha, created.id)
    assert tuned.status == "succeeded", tuned.error
    assert tuned.fine_tuned_model.startswith(f"ft:{SMOL}:alpha:dpo:")
    metrics = sorted((e.data for e in all_events(alpha, tuned.id) if e.type == "metrics"), key=lambda d: d["step"])
    assert [m["step"] for m in metrics] == [1, 2]
    assert {"train_loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= set(
        metrics[0])
    # DPO's log 2, plus the RPO term: the chosen answers' NLL times rpo_alpha ("auto" = 1).
    assert tuned.hyperparameters.model_extra["rpo_alpha"] == 1.0
    assert metrics[0]["train_loss"] - metrics[0]["nll_loss"] == pytest.approx(0.6931, abs=0.01)
    ckpt = alpha.fine_tuning.jobs.checkpoints.list(tuned.id).data[0]
    assert "full_valid_rewards/accuracies" in ckpt.metrics.model_dump()
    (result,) = tuned.result_files
    rows = list(csv.DictReader(io.StringIO(alpha.files.content(result).text)))
    assert rows[1]["valid_rewards/accuracies"] and rows[0]["rewards/margins"]

    chat = alpha.files.create(file=dataset(tmp_path / "chat.jsonl").open("rb"), purpose="fine-tune")
    wrong = finished(alpha, alpha.fine_tuning.jobs.create(model=SMOL, training_file=chat.id,
                                                         method={"type": "dpo"}).id, timeout=60)
    assert wrong.status == "failed" and "the DPO method needs preference pairs" in wrong.error.message
    with pytest.raises(openai.BadRequestError, match="needs method.reinforcement with its grader"):
        alpha.fine_tuning.jobs.create(model=SMOL, training_file=chat.id, method={"type": "reinforcement"})


def test_evaluation_of_base_and_tuned_model_on_an_uploaded_file(alpha, done_job):
    job, _, valid = done_job
    report = alpha.post("/evaluations", cast_to=object, body={
        "models": [SMOL, job.fine_tuned_model], "file": valid.id, "limit": 4, "max_tokens": 16,
        "contains": "Colour"})
    base, tuned = report["reports"]
    assert [base["model"], tuned["model"]] == [SMOL, job.fine_tuned_model] and base["data"] == valid.id
    assert base["examples"] == tuned["examples"] == 4
    assert tuned["loss"] < base["loss"]  # tuned on the same kind of answers
    assert tuned["scores"]["contains"]["hits"] > base["scores"]["contains"]["hits"]
    assert job.fine_tuned_model in report["markdown"] and report["html"].lstrip().lower().startswith("<!doctype")
    with pytest.raises(openai.BadRequestError, match="regex"):
        alpha.post("/evaluations", cast_to=object, body={"models": [SMOL], "file": valid.id, "regex": "("})


def test_models_list_retrieve_delete(alpha, beta, done_job, data):
    job, train, _ = done_job
    ids = [m.id for m in alpha.models.list().data]
    assert SMOL in ids and job.fine_tuned_model in ids
    assert job.fine_tuned_model not in [m.id for m in beta.models.list().data]
    # a second model of the same data, to delete
    other = finished(alpha, alpha.fine_tuning.jobs.create(model=SMOL, training_file=train.id, suffix="todelete",
                                                          hyperparameters={"n_epochs": 1, "batch_size": 20}).id)
    assert alpha.models.retrieve(other.fine_tuned_model).id == other.fine_tuned_model
    assert alpha.models.delete(other.fine_tuned_model).deleted
    with pytest.raises(openai.NotFoundError):
        alpha.models.retrieve(other.fine_tuned_model)
    with pytest.raises(openai.NotFoundError):
        alpha.chat.completions.create(model=other.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        alpha.models.delete(SMOL)


def test_invalid_training_file_fails_job_with_line_and_reason(alpha, tmp_path):
    rows = [chat_row(f"q{i}", f"a{i}") for i in range(12)]
    rows[4]["messages"][1]["role"] = "robot"
    bad = alpha.files.create(file=write_jsonl(tmp_path / "bad.jsonl", rows).open("rb"), purpose="fine-tune")
    job = finished(alpha, alpha.fine_tuning.jobs.create(model=SMOL, training_file=bad.id).id, timeout=60)
    assert job.status == "failed"
    assert "line 5" in job.error.message and "messages[1].role" in job.error.message
    assert job.error.param == "training_file"


def test_pause_resume_gives_the_same_model_as_an_uninterrupted_run(alpha, server, data):
    train = alpha.files.create(file=data["train"].open("rb"), purpose="fine-tune")
    hp = {"n_epochs": 2, "batch_size": 2}  # 20 steps
    paused = alpha.fine_tuning.jobs.create(model=SMOL, training_file=train.id, seed=5, hyperparameters=hp)
    wait_for(lambda: [e for e in all_events(alpha, paused.id) if e.type == "metrics"], lambda m: len(m) >= 3)
    assert alpha.fine_tuning.jobs.pause(paused.id).status == "paused"
    with pytest.raises(openai.BadRequestError, match="only a job that is queued or running can be paused") as again:
        alpha.fine_tuning.jobs.pause(paused.id)
    assert again.value.code == "invalid_state"
    job_dir = server.home / "jobs" / paused.id
    wait_for(lambda: (job_dir / "result.json").exists(), bool, timeout=60)  # its process has stopped
    stopped_at = max(e.data["step"] for e in all_events(alpha, paused.id) if e.type == "metrics")
    assert stopped_at < 20
    assert alpha.fine_tuning.jobs.resume(paused.id).status == "queued"
    resumed = finished(alpha, paused.id)
    straight = finished(alpha, alpha.fine_tuning.jobs.create(model=SMOL, training_file=train.id, seed=5,
                                                             hyperparameters=hp).id)
    assert resumed.status == straight.status == "succeeded"
    steps = sorted(e.data["step"] for e in all_events(alpha, paused.id) if e.type == "metrics")
    assert steps == list(range(1, 21))  # each step once, none lost or repeated
    a = load_file(server.home / "jobs" / resumed.id / "model" / "adapter_model.safetensors")
    b = load_file(server.home / "jobs" / straight.id / "model" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max() < 1e-5, k


def test_cancel_stops_the_job(alpha, data):
    train = alpha.files.create(file=data["train"].open("rb"), purpose="fine-tune")
    job = alpha.fine_tuning.jobs.create(model=SMOL, training_file=train.id, hyperparameters={"n_epochs": 5})
    assert alpha.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError, match="is cancelled; only a job that is"):
        alpha.fine_tuning.jobs.cancel(job.id)
    time.sleep(2)
    assert alpha.fine_tuning.jobs.retrieve(job.id).status == "cancelled"


def test_keys_are_required_and_checked(server):
    import httpx2 as httpx

    missing = httpx.get(f"{server.base_url}/models")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base_url, api_key="sk-ts-wrong", max_retries=0).models.list()


def test_other_project_sees_nothing(alpha, beta, server, done_job):
    """Every endpoint, with beta's key on alpha's objects, answers like for an object that never existed."""
    job, train, _ = done_job
    ckpt = alpha.fine_tuning.jobs.checkpoints.list(job.id).data[0].fine_tuned_model_checkpoint
    import httpx2 as httpx

    http = httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {server.keys['beta']}"})
    fake = {"file": "file-" + "x" * 24, "job": "ftjob-" + "x" * 24, "model": job.fine_tuned_model[:-4] + "zzzz"}
    calls = [
        ("GET", "/files/{file}"), ("GET", "/files/{file}/content"), ("DELETE", "/files/{file}"),
        ("GET", "/fine_tuning/jobs/{job}"), ("POST", "/fine_tuning/jobs/{job}/cancel"),
        ("POST", "/fine_tuning/jobs/{job}/pause"), ("POST", "/fine_tuning/jobs/{job}/resume"),
        ("GET", "/fine_tuning/jobs/{job}/events"), ("GET", "/fine_tuning/jobs/{job}/checkpoints"),
        ("GET", "/models/{model}"), ("DELETE", "/models/{model}"),
    ]
    real = {"file": train.id, "job": job.id, "model": job.fine_tuned_model}
    for method, path in calls:
        theirs = http.request(method, path.format(**real))
        none = http.request(method, path.format(**fake))
        assert theirs.status_code == none.status_code == 404, (method, path, theirs.text)
        assert theirs.json()["error"].keys() == none.json()["error"].keys()
        assert theirs.text.replace(real["file"], "").replace(real["job"], "").replace(real["model"], "") == \
            none.text.replace(fake["file"], "").replace(fake["job"], "").replace(fake["model"], "")
    for model in (job.fine_tuned_model, ckpt):
        for body in ({"messages": [{"role": "user", "content": "hi"}]},):
            r = http.post("/chat/completions", json={"model": model, **body})
            assert r.status_code == 404 and "colour" not in r.text.lower()
        r = http.post("/completions", json={"model": model, "prompt": "hi"})
        assert r.status_code == 404
        r = http.post("/fine_tuning/jobs", json={"model": model, "training_file": train.id})
        assert r.status_code == 404
    r = http.post("/fine_tuning/jobs", json={"model": SMOL, "training_file": train.id})
    assert r.status_code == 404 and r.json()["error"]["param"] == "training_file"
    r = http.post("/evaluations", json={"models": [SMOL, job.fine_tuned_model], "file": fake["file"]})
    assert r.status_code == 404 and r.json()["error"]["param"] == "models.1"
    r = http.post("/evaluations", json={"models": [SMOL], "file": train.id})
    assert r.status_code == 404 and r.json()["error"]["param"] == "file"
    assert train.id not in http.get("/files").text
    assert job.id not in http.get("/fine_tuning/jobs").text
    assert job.fine_tuned_model not in http.get("/models").text


def keyless_job(srv: LiveServer, data: dict):
    """A client of a keyless server, and a job of 30 steps (20 lines, 3 epochs of batch 2) it created."""
    client = openai.OpenAI(base_url=srv.base_url, api_key="local", max_retries=0)
    train = client.files.create(file=data["train"].open("rb"), purpose="fine-tune")
    return client, client.fine_tuning.jobs.create(model=SMOL, training_file=train.id, seed=3,
                                                  hyperparameters={"n_epochs": 3, "batch_size": 2})


def metric_events(client, job_id: str) -> list:
    return [e for e in all_events(client, job_id) if e.type == "metrics"]


def test_kill_9_mid_training_then_restart_resumes_and_loses_nothing(tmp_path, data, smol_info):
    srv = LiveServer(new_home(tmp_path)).start()
    try:
        client, job = keyless_job(srv, data)
        # past the first epoch's checkpoint, in the middle of the second epoch
        wait_for(lambda: metric_events(client, job.id), lambda m: len(m) >= 13)
        srv.kill_group()
        before = sorted(f.id for f in stored_files(srv))
        srv.start()
        job = finished(client, job.id)
        assert job.status == "succeeded", job.error
        events = all_events(client, job.id)
        steps = sorted(e.data["step"] for e in events if e.type == "metrics")
        assert steps == list(range(1, 31))
        assert len({e.id for e in events}) == len(events)
        assert "resumes from its last checkpoint" in " ".join(e.message for e in events)
        assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data] == [30, 20, 10]
        assert sorted(f.id for f in client.files.list(purpose="fine-tune").data) == before
        assert [m.id for m in client.models.list().data].count(job.fine_tuned_model) == 1
    finally:
        srv.stop()


def job_pid(job_id: str) -> int:
    """The pid of a job's training process (``python -m tunesmith.train.run …/JOB_ID``)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"tunesmith.train.run" in args and any(a.endswith(job_id.encode()) for a in args):
            return int(cmdline.parent.name)
    raise LookupError(f"no process for {job_id}")


def stored_job(srv: LiveServer, job_id: str):
    from tunesmith.config import Settings
    from tunesmith.jobs.store import Job, Store

    with Store(Settings(home=srv.home)).read() as s:
        return s.get(Job, job_id)


def test_sigterm_pauses_jobs_a_second_server_is_refused_and_a_killed_job_resumes(tmp_path, data, smol_info):
    """The faults of a job's life on one server: SIGTERM to the service (paused by the system, resumed at the
    next start), a second server on the same home (refused), kill -9 of the job process alone (failed with
    the likely cause, then resumed by the client). The job ends with each step trained once."""
    srv = LiveServer(new_home(tmp_path)).start()
    try:
        client, job = keyless_job(srv, data)

        def metrics() -> list:
            return metric_events(client, job.id)

        wait_for(metrics, lambda m: len(m) >= 3)
        second = subprocess.run([sys.executable, "-m", "tunesmith.cli", "serve", "--port", str(free_port())],
                                env=srv.env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert f"another tunesmith serve (pid {srv.proc.pid}) is already running on {srv.home}" in second.stderr

        began = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(60)
        paused = stored_job(srv, job.id)
        assert (paused.status, paused.status_actor) == ("paused", "system"), paused.error
        print(f"SIGTERM to a stopped server: {time.monotonic() - began:.1f} s")

        srv.start()
        said = [e.message for e in all_events(client, job.id) if e.message.startswith("Fine-tuning job paused")]
        assert len(said) == 1 and said[0].endswith(": the service is shutting down. It resumes by itself when the "
                                                   "service starts again."), said
        wait_for(lambda: client.fine_tuning.jobs.retrieve(job.id).status, lambda s: s == "running")
        stepped = len(metrics())
        wait_for(metrics, lambda m: len(m) >= stepped + 2)
        os.kill(job_pid(job.id), signal.SIGKILL)
        failed = finished(client, job.id, timeout=60)
        assert failed.status == "failed"
        assert failed.error.message.startswith("the job process was killed by SIGKILL — most likely the kernel's "
                                               "out-of-memory killer")
        assert "resume the job to continue from its newest checkpoint (step-0000" in failed.error.message

        assert client.fine_tuning.jobs.resume(job.id).status == "queued"
        done = finished(client, job.id)
        assert done.status == "succeeded", done.error
        assert sorted(e.data["step"] for e in metrics()) == list(range(1, 31))
    finally:
        srv.stop()


def test_a_server_on_postgresql_trains_serves_and_deletes_a_model(tmp_path, data, postgres, smol_info):
    srv = LiveServer(new_home(tmp_path), database_url=postgres.create_database()).start()
    try:
        client = openai.OpenAI(base_url=srv.base_url, api_key="local", max_retries=0)
        train = client.files.create(file=data["train"].open("rb"), purpose="fine-tune")
        job = finished(client, client.fine_tuning.jobs.create(
            model=SMOL, training_file=train.id, suffix="pg", hyperparameters={"n_epochs": 1, "batch_size": 10}).id)
        assert job.status == "succeeded", job.error
        assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data] == [2]
        reply = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=4,
                                               messages=[{"role": "user", "content": "Name a colour, number 1."}])
        assert reply.usage.completion_tokens > 0
        assert job.fine_tuned_model in [m.id for m in client.models.list().data]
        assert client.models.delete(job.fine_tuned_model).deleted
        assert not (srv.home / "jobs" / job.id / "model").exists()
        assert not (srv.home / "tunesmith.db").exists()  # everything went to PostgreSQL
    finally:
        srv.stop()


def stored_files(srv: LiveServer) -> list:
    """The files as the store holds them, read while the server is down."""
    from sqlalchemy import select

    from tunesmith.config import Settings
    from tunesmith.jobs.store import File, Store

    store = Store(Settings(home=srv.home))
    with store.session() as s:
        return s.scalars(select(File).where(File.purpose == "fine-tune")).all()
