"""The server-side parts the web dashboard needs, on a live in-process server: a file's validation
report before any job is made (POST /v1/files/{id}/validate), the playground's votes and their
export as a DPO file (/v1/votes), and the pages themselves; per project, bounded."""

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


def test_validate_reads_prompt_files_for_the_reinforcement_method(server):
    prompts = b"".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"}], "answer": f"a{i}"}).encode()
                       + b"\n" for i in range(12))
    report = server["alpha"].post(f"/files/{upload(server['alpha'], prompts)}/validate",
                                  json={"method": "reinforcement"}).json()
    assert (report["ok"], report["method"], report["examples"]) == (True, "reinforcement", 12), report
    assert report["hyperparameters"]["group_size"] >= 2
    chat = server["alpha"].post(f"/files/{upload(server['alpha'], GOOD)}/validate", json={"method": "reinforcement"})
    assert chat.status_code == 200 and chat.json()["method"] == "reinforcement"


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


def vote(http: httpx.Client, prompt: str, answer: str, up: bool, model: str = "smollm2-135m-instruct"):
    return http.post("/votes", json={"messages": [{"role": "user", "content": prompt}], "answer": answer,
                                     "model": model, "vote": "up" if up else "down"})


def test_votes_export_as_dpo_pairs_that_validate(server):
    alpha = server["alpha"]
    assert vote(alpha, "Hi", "Hello!", True).json()["vote"] == "up"
    vote(alpha, "Hi", "Go away.", False)
    vote(alpha, "Hi", "Hey.", False)
    vote(alpha, "Hey.", "Hey.", False)  # no liked answer to pair with: not exported
    vote(alpha, "Bye", "Later.", False)
    vote(alpha, "Bye", "Later.", True)  # changed mind: the latest vote counts, and one answer is no pair
    assert alpha.get("/votes").json() == {"object": "vote.summary", "votes": 6, "pairs": 2}
    exported = alpha.get("/votes/export")
    assert exported.headers["content-type"].startswith("application/jsonl")
    lines = [json.loads(line) for line in exported.text.splitlines()]
    assert lines == [{"input": {"messages": [{"role": "user", "content": "Hi"}]},
                      "preferred_output": [{"role": "assistant", "content": "Hello!"}],
                      "non_preferred_output": [{"role": "assistant", "content": bad}]} for bad in ("Go away.", "Hey.")]
    assert server["beta"].get("/votes").json()["votes"] == 0  # another project's votes are its own
    assert server["beta"].get("/votes/export").text == ""
    # the export is a preference file tunesmith trains on: 10 pairs pass validation for DPO
    for i in range(8):
        vote(alpha, f"Q{i}", f"good {i}", True)
        vote(alpha, f"Q{i}", f"bad {i}", False)
    file_id = upload(alpha, alpha.get("/votes/export").content)
    report = alpha.post(f"/files/{file_id}/validate", json={"method": "dpo"}).json()
    assert (report["ok"], report["format"], report["examples"]) == (True, "preference", 10), report["errors"]


def test_votes_are_bounded_and_only_for_visible_models(server):
    alpha = server["alpha"]
    assert vote(alpha, "Hi", "x", True, model="ft:smollm2-135m-instruct:beta:s:AbCdEf12").status_code == 404
    for bad in ({"vote": "sideways"}, {"answer": ""}, {"answer": "x" * 40_000}, {"messages": []},
                {"messages": [{"role": "tool", "content": "x"}]}, {"extra": 1}):
        body = {"messages": [{"role": "user", "content": "Hi"}], "answer": "A", "model": "smollm2-135m-instruct",
                "vote": "up", **bad}
        assert alpha.post("/votes", json=body).status_code == 400, bad
    assert httpx.get(str(alpha.base_url) + "votes").status_code == 401


def test_the_pages_load_without_a_key_and_hold_no_data(server):
    root = str(server["alpha"].base_url).removesuffix("/v1/")
    for path in ("/", "/jobs", "/jobs/ftjob-x%3Cb%3E", "/playground", "/models"):
        page = httpx.get(root + path)
        assert page.status_code == 200 and 'data-keyless="false"' in page.text, path
        assert 'src="/static/dashboard.js"' in page.text and "http" not in page.text.split("<body")[1]  # no CDN
    assert "ftjob-x&lt;b&gt;" in httpx.get(root + "/jobs/ftjob-x%3Cb%3E").text  # escaped
    assert "script-src 'self';" in page.headers["content-security-policy"]  # only the package's scripts run
    for asset in ("/static/dashboard.js", "/static/dashboard.css", "/static/vendor/uplot/uPlot.iife.min.js"):
        assert httpx.get(root + asset).status_code == 200, asset
    assert httpx.get(root + "/", headers={"Host": "evil.example"}).status_code == 421
