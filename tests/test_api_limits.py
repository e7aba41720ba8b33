"""Limits on a live server that need no model: per-project quotas (stored bytes, waiting jobs: a 429
quota_exceeded naming its setting, for that project only) and bounded request fields."""

from __future__ import annotations

import json

import httpx2 as httpx
import pytest

from conftest import chat_row
from live_server import new_home, serving
from tunesmith.api.app import create_app
from tunesmith.config import Settings
from tunesmith.jobs.store import Store

LINE = (json.dumps(chat_row("Question?", "Answer.")) + "\n").encode()


@pytest.fixture
def quota_server(tmp_path):
    settings = Settings(home=new_home(tmp_path), project_max_bytes=len(LINE) * 25, project_max_queued_jobs=2)
    store = Store(settings)
    keys = {p: store.create_key(p)[1] for p in ("alpha", "beta")}
    app = create_app(settings, run_worker=False)  # no worker: jobs stay waiting
    with serving(app) as (host, port):
        yield {p: httpx.Client(base_url=f"http://{host}:{port}/v1", headers={"Authorization": f"Bearer {k}"})
               for p, k in keys.items()}
    store.engine.dispose()


def upload(http: httpx.Client, lines: int) -> httpx.Response:
    return http.post("/files", files={"file": ("t.jsonl", LINE * lines)}, data={"purpose": "fine-tune"})


def test_a_project_past_its_storage_quota_gets_429_until_it_deletes(quota_server):
    alpha, beta = quota_server["alpha"], quota_server["beta"]
    first = upload(alpha, 20).json()
    over = upload(alpha, 10)
    assert (over.status_code, over.json()["error"]["code"]) == (429, "quota_exceeded")
    assert "TUNESMITH_PROJECT_MAX_BYTES" in over.json()["error"]["message"]
    assert [f["id"] for f in alpha.get("/files").json()["data"]] == [first["id"]]  # nothing half-stored
    assert upload(beta, 20).status_code == 200  # another project's quota is its own
    alpha.delete(f"/files/{first['id']}")
    assert upload(alpha, 10).status_code == 200


def test_a_project_past_its_waiting_jobs_quota_gets_429(quota_server):
    alpha, beta = quota_server["alpha"], quota_server["beta"]
    file_id = upload(alpha, 12).json()["id"]
    jobs = [alpha.post("/fine_tuning/jobs", json={"model": "smollm2-135m-instruct", "training_file": file_id})
            for _ in range(3)]
    assert [j.status_code for j in jobs] == [200, 200, 429]
    assert jobs[2].json()["error"]["code"] == "quota_exceeded"
    assert "TUNESMITH_PROJECT_MAX_QUEUED_JOBS" in jobs[2].json()["error"]["message"]
    assert len(alpha.get("/fine_tuning/jobs").json()["data"]) == 2
    alpha.post(f"/fine_tuning/jobs/{jobs[0].json()['id']}/cancel")
    assert alpha.post("/fine_tuning/jobs", json={"model": "smollm2-135m-instruct",
                                                 "training_file": file_id}).status_code == 200
    beta_file = upload(beta, 12).json()["id"]
    assert beta.post("/fine_tuning/jobs", json={"model": "smollm2-135m-instruct",
                                                "training_file": beta_file}).status_code == 200


@pytest.mark.parametrize("body, param", [
    ({"suffix": "bad\nname"}, "suffix"), ({"suffix": "tab\there"}, "suffix"), ({"suffix": "a:b"}, "suffix"),
    ({"suffix": "x" * 65}, "suffix"), ({"integrations": [{}] * 9}, "integrations"),
    ({"hyperparameters": {"n_epochs": 51}}, "hyperparameters.n_epochs"),
    ({"metadata": {str(i): "v" for i in range(17)}}, "metadata"),
])
def test_job_fields_are_bounded(quota_server, body, param):
    alpha = quota_server["alpha"]
    file_id = upload(alpha, 12).json()["id"]
    r = alpha.post("/fine_tuning/jobs", json={"model": "smollm2-135m-instruct", "training_file": file_id, **body})
    assert r.status_code == 400 and r.json()["error"]["param"] == param
    ok = alpha.post("/fine_tuning/jobs", json={"model": "smollm2-135m-instruct", "training_file": file_id,
                                               "suffix": "Support-bot_v2 ünïcode"})
    assert ok.status_code == 200 and ok.json()["user_provided_suffix"] == "Support-bot_v2 ünïcode"


@pytest.mark.parametrize("body, param", [({"limit": 1001}, "limit"), ({"regex": "a" * 1001}, "regex"),
                                         ({"contains": "a" * 1001}, "contains"), ({"models": ["a"] * 5}, "models")])
def test_evaluation_fields_are_bounded(quota_server, body, param):
    r = quota_server["alpha"].post("/evaluations", json={"models": ["smollm2-135m-instruct"], "file": "file-x", **body})
    assert r.status_code == 400 and r.json()["error"]["param"] == param
