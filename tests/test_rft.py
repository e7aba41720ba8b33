"""Reinforcement fine-tuning (``method: reinforcement``) on a real ``tunesmith serve``, driven by the
official ``openai`` client: a job against a multi grader (a string check and a sandboxed python
grader) trains, reports reward metrics per step and checkpoint, serves its model and is graded in
evaluations; a bad grader is a 400 naming its field; a job killed with -9 resumes where it was."""

from __future__ import annotations

import csv
import io
import json

import httpx2 as httpx
import openai
import pytest

from conftest import write_jsonl
from live_server import LiveServer, new_home
from test_service import all_events, finished, metric_events, stored_files, wait_for

pytestmark = pytest.mark.slow
SMOL = "smollm2-135m-instruct"
COLOURS = ["red", "blue", "green", "amber", "violet", "teal", "ochre", "ivory", "coral", "slate", "olive", "navy"]
GRADER = {
    "type": "multi", "name": "colour",
    "graders": {
        "said": {"type": "string_check", "name": "said", "input": "{{ sample.output_text }}",
                 "reference": "{{ item.colour }}", "operation": "ilike"},
        "short": {"type": "python", "name": "short",
                  "source": "def grade(sample, item):\n    return 1.0 if len(sample['output_text'].split()) <= 4 else 0.0\n"},
    },
    "calculate_output": "0.5 * said + 0.5 * short",
}


def prompts(path, colours) -> object:
    return write_jsonl(path, [{"messages": [{"role": "user", "content": f"Repeat this colour, in one word: {c}."}],
                               "colour": c} for c in colours])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("rft-data")
    return {"train": prompts(d / "train.jsonl", COLOURS[:10]), "valid": prompts(d / "valid.jsonl", COLOURS[10:])}


def rft_job(client, data, epochs: int, **extra):
    train = client.files.create(file=data["train"].open("rb"), purpose="fine-tune")
    valid = client.files.create(file=data["valid"].open("rb"), purpose="fine-tune")
    return client.fine_tuning.jobs.create(
        model=SMOL, training_file=train.id, validation_file=valid.id, seed=5,
        method={"type": "reinforcement", "reinforcement": {"grader": GRADER, "hyperparameters": {
            "n_epochs": epochs, "batch_size": 2, "compute_multiplier": 0.5, "max_completion_tokens": 12, **extra}}})


def test_a_reinforcement_job_through_the_official_client(tmp_path, data, smol_info):
    srv = LiveServer(new_home(tmp_path)).start()
    try:
        client = openai.OpenAI(base_url=srv.base_url, api_key="local", max_retries=0)
        job = rft_job(client, data, epochs=1)
        assert job.method.type == "reinforcement" and job.method.reinforcement.grader.name == "colour"
        job = finished(client, job.id, timeout=600)
        assert job.status == "succeeded", job.error
        hp = job.method.reinforcement.hyperparameters
        assert (hp.n_epochs, hp.batch_size) == (1, 2)
        assert job.hyperparameters.model_extra["group_size"] == 4  # compute_multiplier 0.5 of 8 answers a prompt
        steps = metric_events(client, job.id)
        assert sorted(e.data["step"] for e in steps) == [1, 2, 3, 4, 5]
        for e in steps:
            assert 0 <= e.data["train_reward_mean"] <= 1 and e.data["train_kl"] >= 0
            assert 0 < e.data["train_completion_length"] <= 12 and e.data["train_grader_errors"] == 0
        (ckpt,) = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert 0 <= ckpt.metrics.model_extra["valid_reward_mean"] <= 1
        (result,) = job.result_files
        rows = list(csv.DictReader(io.StringIO(client.files.content(result).text)))
        assert len(rows) == 5 and {"train_reward_mean", "train_kl", "valid_reward_mean"} <= set(rows[0])
        reply = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=8,
                                               messages=[{"role": "user", "content": "Repeat this colour: red."}])
        assert reply.choices[0].message.content

        # the same grader scores an evaluation of the prompts, base against tuned
        http = httpx.Client(base_url=srv.base_url, timeout=600)
        valid = client.files.create(file=data["valid"].open("rb"), purpose="fine-tune")
        r = http.post("/evaluations", json={"models": [SMOL, job.fine_tuned_model], "file": valid.id,
                                            "max_tokens": 12, "grader": GRADER})
        assert r.status_code == 200, r.text
        for report in r.json()["reports"]:
            assert report["loss"] is None and 0 <= report["scores"]["grader"]["rate"] <= 1
            assert report["scores"]["grader"]["n"] == 2
        assert "grader (mean score)" in r.json()["markdown"]

        # a bad grader: 400 naming the field, through the client's own error
        bad = {**GRADER, "graders": {**GRADER["graders"], "said": {**GRADER["graders"]["said"], "operation": "regex"}}}
        with pytest.raises(openai.BadRequestError) as caught:
            client.fine_tuning.jobs.create(model=SMOL, training_file=job.training_file,
                                           method={"type": "reinforcement", "reinforcement": {"grader": bad}})
        assert caught.value.body["param"] == "method.reinforcement.grader.graders.said.operation"
        # a line without the field the grader reads fails the job before it trains, naming line and field
        lines = tmp_path / "nocolour.jsonl"
        lines.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Hi {i}"}]}) + "\n"
                                 for i in range(10)))
        no_field = client.files.create(file=lines.open("rb"), purpose="fine-tune")
        failed = client.fine_tuning.jobs.create(model=SMOL, training_file=no_field.id, method={
            "type": "reinforcement", "reinforcement": {"grader": GRADER}})
        failed = finished(client, failed.id)
        assert failed.status == "failed" and "item.colour" in failed.error.message and "line 1" in failed.error.message
    finally:
        srv.stop()


def test_a_reinforcement_job_killed_with_9_resumes_from_its_checkpoint(tmp_path, data, smol_info):
    srv = LiveServer(new_home(tmp_path)).start()
    try:
        client = openai.OpenAI(base_url=srv.base_url, api_key="local", max_retries=0)
        job = rft_job(client, data, epochs=2)
        wait_for(lambda: metric_events(client, job.id), lambda m: len(m) >= 7, timeout=600)  # into epoch 2
        srv.kill_group()
        before = sorted(f.id for f in stored_files(srv))
        reference = (srv.home / "jobs" / job.id / "reference_weights.safetensors").read_bytes()
        srv.start()
        job = finished(client, job.id, timeout=600)
        assert job.status == "succeeded", job.error
        events = all_events(client, job.id)
        assert sorted(e.data["step"] for e in events if e.type == "metrics") == list(range(1, 11))
        assert "resumes from its last checkpoint" in " ".join(e.message for e in events)
        assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data] == [10, 5]
        # the KL reference is still the adapter as the job first began, not as it was when resumed
        assert (srv.home / "jobs" / job.id / "reference_weights.safetensors").read_bytes() == reference
        assert sorted(f.id for f in client.files.list(purpose="fine-tune").data) == before
    finally:
        srv.stop()


def test_tunesmith_train_runs_a_reinforcement_job_from_the_command_line(tmp_path, data, smol_info):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    grader = tmp_path / "grader.json"
    grader.write_text(json.dumps(GRADER))
    result = CliRunner().invoke(app, [
        "train", str(data["train"]), "--method", "reinforcement", "--grader", str(grader), "--epochs", "1",
        "--batch-size", "5", "--group-size", "2", "--max-completion-tokens", "8", "--seed", "2", "--suffix", "cli",
        "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout[result.stdout.index("{"):])
    assert out["status"] == "succeeded" and out["fine_tuned_model"].startswith(f"ft:{SMOL}:local:cli:")
    assert out["hyperparameters"]["group_size"] == 2 and out["hyperparameters"]["batch_size"] == 5
    assert len(out["checkpoints"]) == 1 and out["checkpoints"][0].endswith(":ckpt-step-2")  # 10 prompts, batch 5
    assert 0.0 <= out["metrics"]["train_reward_mean"] <= 1.0
