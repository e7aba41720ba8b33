"""OpenAI model names as aliases of local base models: listed, accepted where a model is, echoed,
and turned off by an empty table. (Training and chatting through an alias: tests/test_external_clients.py.)"""

from __future__ import annotations

import json

import httpx2 as httpx
import pytest
from typer.testing import CliRunner

from conftest import chat_row
from live_server import new_home, serving
from tunesmith.api.app import create_app
from tunesmith.cli import app
from tunesmith.config import OPENAI_MODEL_NAMES, Settings, get_settings
from tunesmith.jobs import registry
from tunesmith.jobs.store import Store
from tunesmith.models.finetuned import family

SMOL = "smollm2-135m-instruct"


@pytest.fixture
def api(tmp_path, request):
    settings = Settings(home=new_home(tmp_path), keyless=True, **getattr(request, "param", {}))
    with serving(create_app(settings, run_worker=False)) as (host, port):
        yield httpx.Client(base_url=f"http://{host}:{port}/v1")


def test_openai_names_stand_for_the_default_model_out_of_the_box(api):
    owners = {m["id"]: m["owned_by"] for m in api.get("/models").json()["data"]}
    assert all(owners[name] == f"tunesmith (alias of {SMOL})" for name in OPENAI_MODEL_NAMES)
    assert api.get("/models/curie").json()["owned_by"] == f"tunesmith (alias of {SMOL})"
    assert api.delete("/models/curie").status_code == 400
    line = json.dumps(chat_row("Question?", "Answer.")) + "\n"
    file_id = api.post("/files", files={"file": ("t.jsonl", line * 12)}, data={"purpose": "fine-tune"}).json()["id"]
    job = api.post("/fine_tuning/jobs", json={"model": "gpt-4o-mini-2024-07-18", "training_file": file_id}).json()
    assert job["model"] == "gpt-4o-mini-2024-07-18"
    (event,) = api.get(f"/fine_tuning/jobs/{job['id']}/events").json()["data"]
    assert event["message"] == (f"Created fine-tuning job: {job['id']} (gpt-4o-mini-2024-07-18 stands for {SMOL} "
                                f"here: the job trains {SMOL})")


def test_the_shipped_default_is_the_model_that_learned_best(monkeypatch):
    """conftest.py points the tests at SmolLM2 for speed; what ships is Gemma, for jobs and OpenAI names alike."""
    monkeypatch.delenv("TUNESMITH_DEFAULT_MODEL")
    settings = Settings()
    assert settings.default_model == "gemma-3-270m"
    assert set(settings.aliases.values()) == {"gemma-3-270m"} and "curie" in settings.aliases
    monkeypatch.setenv("TUNESMITH_DEFAULT_MODEL", SMOL)  # explicit SmolLM2 keeps working
    assert Settings().aliases["gpt-4o-mini-2024-07-18"] == SMOL


@pytest.mark.parametrize("api", [{"model_aliases": {}}], indirect=True)
def test_an_empty_table_turns_aliases_off(api):
    assert "gpt-4o-mini" not in [m["id"] for m in api.get("/models").json()["data"]]
    missing = api.post("/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user",
                                                                                         "content": "hi"}]})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_a_table_of_ones_own_maps_names_to_bases(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNESMITH_MODEL_ALIASES", '{"gpt-4.1-mini": "gemma-3-270m"}')
    store = Store(Settings(home=tmp_path))
    resolved = registry.resolve("gpt-4.1-mini", store)
    assert (resolved.name, resolved.base, resolved.weights) == ("gpt-4.1-mini", "gemma-3-270m", None)
    assert registry.resolve("gpt-4o-mini", store).base == "gpt-4o-mini"  # not in this table: not an alias
    store.engine.dispose()


def test_a_tuned_model_is_named_after_the_alias_it_came_from():
    assert family("gpt-4o-mini") == "gpt-4o-mini"
    assert family("ft:gpt-4o-mini-2024-07-18:acme:bot:AbC12xYz") == "gpt-4o-mini-2024-07-18"
    assert family("ft:gpt-4o-mini-2024-07-18:acme:bot:AbC12xYz:ckpt-step-8") == "gpt-4o-mini-2024-07-18"


def test_models_says_which_base_is_the_default(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path))
    monkeypatch.setenv("TUNESMITH_DEFAULT_MODEL", "gemma-3-270m")
    get_settings.cache_clear()
    try:
        assert CliRunner().invoke(app, ["models", "--default"]).stdout == "gemma-3-270m\n"
        listed = CliRunner().invoke(app, ["models"]).stdout
        (gemma,) = [line for line in listed.splitlines() if line.startswith("│ gemma-3-270m ")]
        assert gemma.split("│")[2].strip() == "yes"
        assert "Jobs that name no base model train gemma-3-270m" in listed
    finally:
        get_settings.cache_clear()
