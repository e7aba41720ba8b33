"""Creating reinforcement jobs on a live server without a worker (no model): the grader is checked
and kept on the job, OpenAI's hyperparameters map onto tunesmith's, and every bad field is a 400
naming it."""

from __future__ import annotations

import json

import httpx2 as httpx
import pytest

from live_server import worker_less

GRADER = {"type": "string_check", "name": "right", "input": "{{ sample.output_text }}",
          "reference": "{{ item.answer }}", "operation": "eq"}
LINES = "".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"}], "answer": f"a{i}"}) + "\n"
                for i in range(12)).encode()


@pytest.fixture
def client(tmp_path):
    with worker_less(tmp_path) as http:
        file_id = http.post("/files", files={"file": ("p.jsonl", LINES)}, data={"purpose": "fine-tune"}).json()["id"]
        yield http, file_id


def create(http, file_id, reinforcement) -> httpx.Response:
    return http.post("/fine_tuning/jobs", json={"model": "smollm2-135m-instruct", "training_file": file_id,
                                                "method": {"type": "reinforcement", "reinforcement": reinforcement}})


def test_a_reinforcement_job_keeps_its_grader_and_maps_openais_hyperparameters(client):
    http, file_id = client
    r = create(http, file_id, {"grader": GRADER, "hyperparameters": {
        "compute_multiplier": 2, "eval_interval": 5, "eval_samples": 1, "reasoning_effort": "default",
        "beta": 0, "max_completion_tokens": 32, "n_epochs": 2}})
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["method"]["type"] == "reinforcement" and job["method"]["reinforcement"]["grader"] == GRADER
    hp = job["method"]["reinforcement"]["hyperparameters"]
    assert (hp["group_size"], hp["eval_steps"], hp["beta"], hp["max_completion_tokens"], hp["n_epochs"]) == (
        16, 5, 0, 32, 2)
    assert "compute_multiplier" not in hp  # mapped: the job trains with group_size
    assert http.get(f"/fine_tuning/jobs/{job['id']}").json()["method"] == job["method"]


@pytest.mark.parametrize("reinforcement, param", [
    (None, "method.reinforcement"),
    ({}, "method.reinforcement.grader"),
    ({"grader": {**GRADER, "operation": "regex"}}, "method.reinforcement.grader.operation"),
    ({"grader": {**GRADER, "type": "score_model"}}, "method.reinforcement.grader.type"),
    ({"grader": {**GRADER, "reference": "{{ secrets.key }}"}}, "method.reinforcement.grader.reference"),
    ({"grader": {"type": "python", "name": "p", "source": "def grade(:"}}, "method.reinforcement.grader.source"),
    ({"grader": GRADER, "hyperparameters": {"eval_samples": 4}}, "method.reinforcement.hyperparameters.eval_samples"),
    ({"grader": GRADER, "hyperparameters": {"reasoning_effort": "high"}},
     "method.reinforcement.hyperparameters.reasoning_effort"),
    ({"grader": GRADER, "hyperparameters": {"group_size": 1}}, "method.reinforcement.hyperparameters.group_size"),
    ({"grader": GRADER, "hyperparameters": {"max_completion_tokens": 100_000}},
     "method.reinforcement.hyperparameters.max_completion_tokens"),
])
def test_a_bad_reinforcement_method_is_a_400_naming_its_field(client, reinforcement, param):
    http, file_id = client
    r = create(http, file_id, reinforcement)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()
    assert http.get("/fine_tuning/jobs").json()["data"] == []  # nothing was created


def test_a_grader_on_an_evaluation_is_checked_first(client):
    http, file_id = client
    r = http.post("/evaluations", json={"models": ["smollm2-135m-instruct"], "file": file_id,
                                        "grader": {**GRADER, "operation": "nope"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "grader.operation"
