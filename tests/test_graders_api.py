"""``/v1/fine_tuning/alpha/graders`` on a live server (no model): validate and run, with OpenAI's
response shapes, 400s naming the field at fault, and the key they need."""

from __future__ import annotations

import httpx2 as httpx
import pytest

from live_server import worker_less

EXACT = {"type": "string_check", "name": "exact", "input": "{{ sample.output_text }}",
         "reference": "{{ item.answer }}", "operation": "eq"}
LENGTH = {"type": "python", "name": "length",
          "source": "def grade(sample, item):\n    return len(sample['output_text']) / 10\n"}


@pytest.fixture
def graders(tmp_path):
    with worker_less(tmp_path, "/v1/fine_tuning/alpha/graders") as client:
        yield client


def test_validate_returns_the_grader(graders):
    r = graders.post("/validate", json={"grader": {**LENGTH, "image_tag": "2025-05-08"}})
    assert r.status_code == 200 and r.json() == {"grader": {**LENGTH, "image_tag": "2025-05-08"}}


@pytest.mark.parametrize("grader, param", [
    ({**EXACT, "operation": "contains"}, "grader.operation"),
    ({"type": "multi", "name": "m", "graders": {"exact": EXACT}, "calculate_output": "exact + other"},
     "grader.calculate_output"),
    ({"type": "score_model", "name": "judge", "model": "gpt-4o", "input": []}, "grader.type"),
    ({**LENGTH, "source": "def grade(:"}, "grader.source"),
])
def test_validate_refuses_with_the_field_at_fault(graders, grader, param):
    r = graders.post("/validate", json={"grader": grader})
    assert r.status_code == 400 and r.json()["error"]["param"] == param
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_run_a_string_check(graders):
    r = graders.post("/run", json={"grader": EXACT, "model_sample": "Paris", "item": {"answer": "Paris"}})
    assert r.status_code == 200
    body = r.json()
    assert body["reward"] == 1.0 and body["sub_rewards"] == {} and body["model_grader_token_usage_per_model"] == {}
    meta = body["metadata"]
    assert (meta["name"], meta["type"], meta["scores"]) == ("exact", "string_check", {"exact": 1.0})
    assert meta["token_usage"] is None and meta["sampled_model_name"] is None and meta["execution_time"] >= 0
    assert not any(v for k, v in meta["errors"].items())
    wrong = graders.post("/run", json={"grader": EXACT, "model_sample": "Lyon", "item": {"answer": "Paris"}})
    assert wrong.json()["reward"] == 0.0


def test_run_a_python_grader_and_a_multi(graders):
    r = graders.post("/run", json={"grader": LENGTH, "model_sample": "abcde"})
    assert r.status_code == 200 and r.json()["reward"] == 0.5
    both = {"type": "multi", "name": "both", "graders": {"exact": EXACT, "length": LENGTH},
            "calculate_output": "(exact + length) / 2"}
    r = graders.post("/run", json={"grader": both, "model_sample": "Paris", "item": {"answer": "Paris"}})
    assert r.json()["reward"] == 0.75 and r.json()["sub_rewards"] == {"exact": 1.0, "length": 0.5}
    assert r.json()["metadata"]["scores"] == {"exact": 1.0, "length": 0.5}


def test_run_reports_errors_in_openais_flags(graders):
    failing = {**LENGTH, "source": "def grade(sample, item):\n    return 1 / 0\n"}
    errors = graders.post("/run", json={"grader": failing, "model_sample": "x"}).json()["metadata"]["errors"]
    assert errors["python_grader_runtime_error"]
    assert "ZeroDivisionError" in errors["python_grader_runtime_error_details"]
    assert not errors["other_error"]
    missing = graders.post("/run", json={"grader": EXACT, "model_sample": "x"}).json()
    assert missing["reward"] == 0.0 and missing["metadata"]["errors"]["invalid_variable_error"]


def test_run_bounds_its_fields(graders):
    r = graders.post("/run", json={"grader": EXACT, "model_sample": "x" * 32_769})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model_sample"
    r = graders.post("/run", json={"grader": EXACT, "model_sample": "x", "item": {"a": "x" * 300_000}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "item"
    r = graders.post("/run", json={"grader": {**EXACT, "operation": "is"}, "model_sample": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "grader.operation"


def test_graders_need_a_key(graders):
    for path, body in (("/validate", {"grader": EXACT}), ("/run", {"grader": EXACT, "model_sample": "x"})):
        r = httpx.post(str(graders.base_url).rstrip("/") + path, json=body)
        assert r.status_code == 401, path
