"""The legacy /v1/fine-tunes API without training (no worker): its shapes, its refusals, and the event
stream that `openai api fine_tunes.follow` reads. (The openai 0.28 CLI end to end:
tests/test_external_clients.py.)"""

from __future__ import annotations

import json

import httpx2 as httpx
import pytest

from live_server import new_home, serving
from tunesmith.api.app import create_app
from tunesmith.config import Settings
from tunesmith.jobs.store import Store
from tunesmith.models.finetuned import family, is_tuned, legacy_name

SMOL = "smollm2-135m-instruct"


@pytest.fixture
def api(tmp_path):
    settings = Settings(home=new_home(tmp_path))
    store = Store(settings)
    keys = {p: store.create_key(p)[1] for p in ("alpha", "beta")}
    with serving(create_app(settings, run_worker=False)) as (host, port):
        yield {p: httpx.Client(base_url=f"http://{host}:{port}/v1", headers={"Authorization": f"Bearer {k}"})
               for p, k in keys.items()}
    store.engine.dispose()


def upload(http: httpx.Client) -> str:
    line = json.dumps({"prompt": "Capital of France ->", "completion": " Paris\n"}) + "\n"
    return http.post("/files", files={"file": ("data.jsonl", line * 12)}, data={"purpose": "fine-tune"}).json()["id"]


def test_a_legacy_job_has_the_legacy_shape_and_is_a_job_like_any_other(api):
    alpha, beta = api["alpha"], api["beta"]
    file_id = upload(alpha)
    ft = alpha.post("/fine-tunes", json={"training_file": file_id, "n_epochs": 2, "suffix": "legacy"}).json()
    assert ft["object"] == "fine-tune" and ft["model"] == "curie" and ft["status"] == "pending"
    assert ft["hyperparams"] == {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto",
                                 "prompt_loss_weight": 0.01}  # the legacy API's default
    assert [f["id"] for f in ft["training_files"]] == [file_id] and ft["result_files"] == []
    assert ft["events"][0]["object"] == "fine-tune-event"
    assert ft["events"][0]["message"].startswith(f"Created fine-tuning job: {ft['id']} (curie stands for {SMOL}")
    assert alpha.get(f"/fine_tuning/jobs/{ft['id']}").json()["model"] == "curie"  # the same job, new API
    assert [f["id"] for f in alpha.get("/fine-tunes").json()["data"]] == [ft["id"]]
    assert alpha.get(f"/fine-tunes/{ft['id']}/events").json()["data"][0]["message"] == ft["events"][0]["message"]
    assert beta.get(f"/fine-tunes/{ft['id']}").status_code == 404
    assert beta.get("/fine-tunes").json()["data"] == []

    cancelled = alpha.post(f"/fine-tunes/{ft['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    with alpha.stream("GET", f"/fine-tunes/{ft['id']}/events", params={"stream": "true"}) as stream:
        lines = [line for line in stream.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert [json.loads(line.removeprefix("data: "))["message"] for line in lines[:-1]] == \
        [e["message"] for e in alpha.get(f"/fine-tunes/{ft['id']}/events").json()["data"]]
    assert alpha.delete(f"/fine-tunes/{ft['id']}").status_code == 400  # no model to delete


@pytest.mark.parametrize("extra, param, code", [
    ({"compute_classification_metrics": True}, "compute_classification_metrics", "unsupported_parameter"),
    ({"classification_n_classes": 3}, "classification_n_classes", "unsupported_parameter"),
    ({"prompt_loss_weight": 1.5}, "prompt_loss_weight", "invalid_value"),
])
def test_what_tunesmith_does_not_do_is_refused_by_name(api, extra, param, code):
    r = api["alpha"].post("/fine-tunes", json={"training_file": upload(api["alpha"]), **extra})
    assert (r.status_code, r.json()["error"]["param"], r.json()["error"]["code"]) == (400, param, code)
    assert api["alpha"].post("/fine-tunes", json={"training_file": upload(api["alpha"]),
                                                  "compute_classification_metrics": False}).status_code == 200


def test_legacy_model_names():
    name = legacy_name("curie", "acme", "bot", 1675166400)
    assert name == "curie:ft-acme-bot-2023-01-31-12-00-00" and is_tuned(name) and family(name) == "curie"
    assert legacy_name("curie", "acme", None, 1675166400) == "curie:ft-acme-2023-01-31-12-00-00"
    assert not is_tuned("curie") and not is_tuned("smollm2-135m-instruct")
