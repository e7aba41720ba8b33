"""The server-side parts the web dashboard needs, on a live in-process server: a file's validation
report before any job is made (POST /v1/files/{id}/validate), per project, bounded."""

from __future__ import annotations

import json

import httpx2 as httpx
import pytest

from conftest import chat_row
from live_server import new_home, serving
from tunesmith.api.app import create_app
from tunesmith.config import Settings
from tunesmith.jobs.store import Store

LINES = [(json.dumps(chat_row(f"Question {i}?", f"Answer {i}.")) + "\n").encode() for i in range(12)]
GOOD, TWO = b"".join(LINES), b"".join(LINES[:2])


@pytest.fixture
def server(tmp_path, smol_info):
    settings = Settings(home=new_home(tmp_path))
    store = Store(settings)
    keys = {p: store.create_key(p)[1] for p in ("alpha", "beta")}
    with serving(create_app(settings, run_worker=False)) as (host, port):
        yield {p: httpx.Client(base_url=f"http://{host}:{port}/v1", headers={"Authorization": f"Bearer {k}"},
                               timeout=60) for p, k in keys.items()}
    store.engine.dispose()


def upload(http: httpx.Client, data: bytes) -> str:
    return http.post("/files", files={"file": ("t.jsonl", data)}, data={"purpose": "fine-tune"}).json()["id"]


def test_validate_reports_statistics_and_the_auto_hyperparameters(server):
    file_id = upload(server["alpha"], GOOD)
    report = server["alpha"].post(f"/files/{file_id}/validate").json()
    assert (report["ok"], report["format"], report["method"], report["examples"]) == (True, "chat", "supervised", 12)
    assert report["errors"] == [] and report["tokens"]["total"] > 0 and report["trained_tokens"]["min"] > 0
    assert report["hyperparameters"]["n_epochs"] >= 3 and report["hyperparameters"]["batch_size"] == 1
    assert report["estimated_training_tokens"] == report["tokens"]["total"] * report["hyperparameters"]["n_epochs"]
    assert "path" not in report  # the server's own file system stays its own
    chosen = server["alpha"].post(f"/files/{file_id}/validate", json={"n_epochs": 2, "batch_size": 4}).json()
    assert (chosen["hyperparameters"]["n_epochs"], chosen["hyperparameters"]["batch_size"]) == (2, 4)


def test_validate_names_each_bad_line_and_field(server):
    bad = GOOD + b"{not json\n" + json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode() + b"\n"
    report = server["alpha"].post(f"/files/{upload(server['alpha'], bad)}/validate").json()
    assert report["ok"] is False and report["hyperparameters"] is None
    assert [e["line"] for e in report["errors"]] == [13, 14]
    assert "invalid JSON" in report["errors"][0]["message"]
    few = server["alpha"].post(f"/files/{upload(server['alpha'], TWO)}/validate")
    assert any("at least 10" in e["message"] for e in few.json()["errors"])
    as_validation = server["alpha"].post(f"/files/{upload(server['alpha'], TWO)}/validate",
                                         json={"purpose": "validation"}).json()
    assert as_validation["ok"] is True and as_validation["hyperparameters"] is None
    wrong_method = server["alpha"].post(f"/files/{upload(server['alpha'], GOOD)}/validate",
                                        json={"method": "dpo"}).json()
    assert wrong_method["ok"] is False


def test_validate_is_per_project_and_bounded(server):
    file_id = upload(server["alpha"], GOOD)
    other = server["beta"].post(f"/files/{file_id}/validate")
    assert (other.status_code, other.json()["error"]["param"]) == (404, "id")
    for body, param in (({"n_epochs": 0}, "n_epochs"), ({"batch_size": "4"}, "batch_size"),
                        ({"model": "x" * 300}, "model"), ({"surprise": 1}, "surprise")):
        answer = server["alpha"].post(f"/files/{file_id}/validate", json=body)
        assert answer.status_code == 400, body
        assert param in json.dumps(answer.json()["error"]), (body, answer.json())
    unknown = server["alpha"].post(f"/files/{file_id}/validate", json={"model": "no-such-model"})
    assert (unknown.status_code, unknown.json()["error"]["param"]) == (404, "model")
    assert httpx.post(str(server["alpha"].base_url) + f"files/{file_id}/validate").status_code == 401
