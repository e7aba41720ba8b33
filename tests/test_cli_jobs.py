"""`tunesmith jobs …` and `tunesmith train --resume` against the local store."""

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import chat_row, write_jsonl
from tunesmith.cli import app
from tunesmith.jobs import store as st
from tunesmith.jobs.store import Event, Job, Store

runner = CliRunner()


def tunesmith(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def jobs():
    store = Store()
    ids = {}
    with store.session() as s:
        for project, status in (("alpha", st.QUEUED), ("beta", st.FAILED)):
            job = Job(id=st.make_id("ftjob-"), project_id=store.project(s, project).id, model="smollm2-135m-instruct",
                      training_file="file-x", seed=1, model_id="abc", status=status, started_at=st.now(),
                      error={"code": "job_failed", "message": "the job process was killed by SIGKILL", "param": None}
                      if status == st.FAILED else None)
            s.add(job)
            s.flush()
            s.add(Event(id=st.make_id("ftevent-"), job_id=job.id, key="step-3", type="metrics", message="Step 3/9",
                        data={"step": 3, "total_steps": 9}))
            ids[project] = job.id
    return ids


def test_list_and_show(jobs):
    listed = tunesmith("jobs", "list", "--project", "alpha")
    assert listed.exit_code == 0 and jobs["alpha"] in listed.stdout and jobs["beta"] not in listed.stdout
    assert "queued" in listed.stdout and "3/9" in listed.stdout
    shown = tunesmith("jobs", "show", jobs["beta"])
    assert "failed (set by api)" in shown.stdout and "killed by SIGKILL" in shown.stdout


def test_manifest_prints_a_kubernetes_trainjob_that_runs_the_job_process(jobs):
    import yaml

    from tunesmith.config import get_settings

    with Store().session() as s:
        s.get(Job, jobs["alpha"]).meta = {"nproc_per_node": "2"}
    printed = tunesmith("jobs", "manifest", jobs["alpha"], "--kubernetes", "--image", "registry.example/tunesmith:1")
    assert printed.exit_code == 0, printed.stderr
    manifest = yaml.safe_load(printed.stdout)
    home = str(get_settings().home)
    assert (manifest["apiVersion"], manifest["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert manifest["metadata"]["labels"]["tunesmith/job"] == jobs["alpha"]
    assert manifest["metadata"]["name"].startswith(jobs["alpha"].lower())
    trainer = manifest["spec"]["trainer"]
    assert trainer["command"] == ["torchrun", "-m", "tunesmith.train.run", f"{home}/jobs/{jobs['alpha']}"]
    assert trainer["numProcPerNode"] == 2 and trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 2
    assert trainer["image"] == "registry.example/tunesmith:1"
    assert {"name": "TUNESMITH_HOME", "value": home} in trainer["env"]
    (override,) = manifest["spec"]["podTemplateOverrides"]
    assert override["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] == home
    assert tunesmith("jobs", "manifest", jobs["alpha"]).exit_code == 1  # which manifest must be said


def test_pause_resume_cancel_go_through_the_lifecycle(jobs):
    job_id = jobs["alpha"]
    assert tunesmith("jobs", "pause", job_id).stdout.strip() == f"{job_id}: paused"
    refused = tunesmith("jobs", "pause", job_id)
    assert refused.exit_code == 1
    assert f"Job {job_id} is paused; only a job that is queued or running can be paused" in refused.stderr
    assert tunesmith("jobs", "resume", job_id).stdout.strip() == f"{job_id}: queued"
    assert tunesmith("jobs", "cancel", job_id).stdout.strip() == f"{job_id}: cancelled"
    events = tunesmith("jobs", "events", job_id).stdout
    assert "paused by the operator" in events and "cancelled by the operator" in events
    with Store().read() as s:
        assert s.get(Job, job_id).status_actor == "operator"
    assert tunesmith("jobs", "resume", jobs["beta"]).stdout.strip() == f"{jobs['beta']}: queued"
    unknown = tunesmith("jobs", "show", "ftjob-nope")
    assert unknown.exit_code == 1 and "no job ftjob-nope" in unknown.stderr


@pytest.mark.slow
def test_train_resume_continues_a_stopped_run_only_with_its_settings(tmp_path, smol_info):
    from tunesmith.train.run import TrainSpec, run_job

    class Quiet:
        def __getattr__(self, name):
            return lambda *a, **k: None

    # answers long enough (16+ tokens a step) that the base learning rate is not scaled down for short ones
    answers = [f"Answer {i}, which comes after {i - 1} and before {i + 1} when counting." for i in range(10)]
    data = write_jsonl(tmp_path / "train.jsonl", [chat_row(f"Question {i}?", a) for i, a in enumerate(answers)])
    spec = TrainSpec(data, n_epochs=2, batch_size=5, seed=4)  # 4 steps
    stopped = run_job(spec, Quiet(), stop_requested=lambda: True)
    assert stopped.status == "stopped"
    job_id = stopped.job_id

    other = tunesmith("train", str(data), "--epochs", "2", "--batch-size", "5", "--learning-rate-multiplier", "2",
                      "--resume", job_id)
    assert other.exit_code == 1
    assert (f"job {job_id} cannot be resumed with other settings than it started with: learning_rate 0.0005 → 0.001;"
            " learning_rate_multiplier 1.0 → 2.0") in " ".join(other.stderr.split())
    data.write_text(data.read_text() + json.dumps(chat_row("One more?", "Yes.")) + "\n")
    changed = tunesmith("train", str(data), "--epochs", "2", "--batch-size", "5", "--resume", job_id)
    assert changed.exit_code == 1 and "training_file sha256" in changed.stderr
    data.write_text("".join(data.read_text().splitlines(keepends=True)[:10]))

    # a checkpoint torn on disk: the run fails naming it, and the good copy resumes
    from tunesmith.train.loop import STATE_FILE
    state = next(Path(os.environ["TUNESMITH_HOME"]).glob(f"jobs/{job_id}/checkpoints/step-000001")) / STATE_FILE
    good = state.read_bytes()
    state.write_bytes(good[: len(good) // 2])
    torn = tunesmith("train", str(data), "--epochs", "2", "--batch-size", "5", "--resume", job_id)
    assert torn.exit_code == 1 and f"checkpoint {state.parent} cannot be read" in " ".join(torn.stderr.split())
    state.write_bytes(good)

    resumed = tunesmith("train", str(data), "--epochs", "2", "--batch-size", "5", "--resume", job_id, "--json")
    assert resumed.exit_code == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["status"] == "succeeded" and result["job_id"] == job_id and result["seed"] == 4
    assert "Resuming from checkpoint step-000001" in resumed.stderr
    assert tunesmith("train", str(data), "--resume", "ftjob-nope").exit_code == 1
