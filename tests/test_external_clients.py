"""Other official clients against a real ``tunesmith serve``: the ``openai`` command-line tool and the
Node SDK, each configured only through ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``.

The CLI exists only in the 1.x/2.x Python releases (the 3.x client in .venv has none), so it lives in
its own venv, ``.venv-openai-cli``; the Node SDK is pinned in tests/node/package-lock.json. ``make test``
installs both.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import chat_row, write_jsonl
from live_server import LiveServer, new_home

pytestmark = pytest.mark.slow
SMOL = "smollm2-135m-instruct"
FINISHED = ("succeeded", "failed", "cancelled")
ROOT = Path(__file__).resolve().parent.parent
OPENAI_CLI = ROOT / ".venv-openai-cli" / "bin" / "openai"
NODE_DIR = ROOT / "tests" / "node"
HYPER = {"n_epochs": 1, "batch_size": 4}  # 20 examples: 5 steps


@pytest.fixture(scope="module")
def server(tmp_path_factory, smol_info):
    srv = LiveServer(new_home(tmp_path_factory.mktemp("clients"))).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client_env(server):
    """The environment a user would set: only the base URL and a key (any string: no keys exist)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    return {**env, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-ts-external-clients"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clients-data")
    planets = ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]
    write_jsonl(d / "train.jsonl", [chat_row(f"Planet number {i % 8 + 1}?", f"{planets[i % 8]}.")
                                    for i in range(20)])
    return d


def json_values(text: str) -> list:
    """The JSON documents the CLI printed one after another (it pretty-prints each model)."""
    decoder, values, i = json.JSONDecoder(), [], 0
    while (i := _skip_ws(text, i)) < len(text):
        value, i = decoder.raw_decode(text, i)
        values.append(value)
    return values


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def openai_cli(env: dict, cwd: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    if not OPENAI_CLI.exists():
        pytest.fail(f"{OPENAI_CLI.relative_to(ROOT)} is missing: run `make test` (it installs the 1.x/2.x "
                    "openai CLI into .venv-openai-cli)")
    done = subprocess.run([str(OPENAI_CLI), "api", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    if ok:
        assert done.returncode == 0, f"openai api {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def openai_cli_json(env: dict, cwd: Path, *args: str):
    values = json_values(openai_cli(env, cwd, *args).stdout)
    return values[0] if len(values) == 1 else values


def test_openai_cli_uploads_trains_and_lists(client_env, data_dir):
    size = (data_dir / "train.jsonl").stat().st_size

    f = openai_cli_json(client_env, data_dir, "files.create", "-f", "train.jsonl", "-p", "fine-tune")
    assert f["id"].startswith("file-") and f["object"] == "file", f
    assert f["purpose"] == "fine-tune" and f["bytes"] == size and f["filename"] == "train.jsonl", f

    listed = openai_cli_json(client_env, data_dir, "files.list")
    listed = listed if isinstance(listed, list) else [listed]
    assert f["id"] in [x["id"] for x in listed]

    job = openai_cli_json(client_env, data_dir, "fine_tuning.jobs.create", "-m", SMOL, "-F", f["id"],
                          "-H", json.dumps(HYPER), "-s", "cli")
    assert job["id"].startswith("ftjob-") and job["object"] == "fine_tuning.job", job
    assert job["model"] == SMOL and job["training_file"] == f["id"], job
    assert job["status"] in ("validating_files", "queued", "running"), job

    deadline = time.time() + 300
    while job["status"] not in FINISHED:
        assert time.time() < deadline, f"job still {job['status']} after 300 s"
        time.sleep(1)
        job = openai_cli_json(client_env, data_dir, "fine_tuning.jobs.retrieve", "-i", job["id"])
    assert job["status"] == "succeeded", job.get("error")
    assert job["fine_tuned_model"].startswith(f"ft:{SMOL}:") and ":cli:" in job["fine_tuned_model"], job
    assert job["hyperparameters"]["n_epochs"] == 1 and job["hyperparameters"]["batch_size"] == 4, job
    assert job["trained_tokens"] > 0

    jobs = openai_cli_json(client_env, data_dir, "fine_tuning.jobs.list", "-l", "10")
    assert job["id"] in [j["id"] for j in jobs["data"]]

    events = openai_cli_json(client_env, data_dir, "fine_tuning.jobs.list_events", "-i", job["id"], "-l", "100")
    assert events["data"] and all(e["object"] == "fine_tuning.job.event" for e in events["data"])
    assert sum(e["type"] == "metrics" for e in events["data"]) == 5  # 20 examples / batch 4, one epoch

    model = openai_cli_json(client_env, data_dir, "models.retrieve", "-i", job["fine_tuned_model"])
    assert model["id"] == job["fine_tuned_model"]

    # Errors come back in OpenAI's envelope, which the CLI prints as its own error message.
    missing = openai_cli(client_env, data_dir, "fine_tuning.jobs.retrieve", "-i", "ftjob-doesnotexist", ok=False)
    assert missing.returncode == 1 and "404" in missing.stderr, missing.stderr


def test_node_sdk_tutorial_script(client_env, data_dir):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH: the Node SDK test (tests/node/create_job.mjs) needs Node.js")
    if not (NODE_DIR / "node_modules" / "openai" / "package.json").exists():
        pytest.fail("tests/node/node_modules is missing: run `make test` (it runs `npm ci --prefix tests/node`)")

    done = subprocess.run([node, str(NODE_DIR / "create_job.mjs"), str(data_dir / "train.jsonl"), "gpt-3.5-turbo",
                           str(HYPER["n_epochs"]), str(HYPER["batch_size"])],
                          env=client_env, cwd=data_dir, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, f"node create_job.mjs failed:\n{done.stdout}\n{done.stderr}"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["id"].startswith("ftjob-"), result
    assert result["status"] == "succeeded", (result, done.stdout)
    assert result["fine_tuned_model"].startswith("ft:gpt-3.5-turbo:"), result  # named after the alias, as at OpenAI
    assert result["trained_tokens"] > 0 and result["events"] >= 5 + 2, result  # 5 metrics + messages
    assert "- " in done.stdout  # the tutorial's event lines were printed while polling
    assert f"stands for {SMOL} here" in done.stdout
    assert result["answer"], result


def test_python_sdk_docs_script_on_an_openai_model_name(client_env, data_dir):
    """The fine-tuning guide's Python steps, verbatim but for the data: the model is OpenAI's name."""
    from openai import OpenAI

    client = OpenAI(base_url=client_env["OPENAI_BASE_URL"], api_key=client_env["OPENAI_API_KEY"])
    training = client.files.create(file=open(data_dir / "train.jsonl", "rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=training.id, model="gpt-4o-mini-2024-07-18",
                                         hyperparameters=HYPER)
    assert job.model == "gpt-4o-mini-2024-07-18"
    deadline = time.time() + 300
    while job.status not in FINISHED:
        assert time.time() < deadline, f"job still {job.status} after 300 s"
        time.sleep(1)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model.startswith("ft:gpt-4o-mini-2024-07-18:"), job.fine_tuned_model
    first = list(client.fine_tuning.jobs.list_events(job.id, limit=100))[-1]
    assert first.message.startswith(f"Created fine-tuning job: {job.id} (gpt-4o-mini-2024-07-18 stands for {SMOL}")
    completion = client.chat.completions.create(model=job.fine_tuned_model,
                                                messages=[{"role": "user", "content": "Planet number 3?"}],
                                                max_tokens=8)
    assert completion.model == job.fine_tuned_model and completion.choices[0].message.content
    listed = {m.id: m.owned_by for m in client.models.list()}
    assert listed["gpt-4o-mini-2024-07-18"] == f"tunesmith (alias of {SMOL})"


LEGACY_CLI = ROOT / ".venv-openai-legacy" / "bin" / "openai"


def legacy_cli(server, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """openai 0.28.1's CLI, pointed at the server by its own flags (-b base URL, -k key), as its docs did."""
    if not LEGACY_CLI.exists():
        pytest.fail(f"{LEGACY_CLI.relative_to(ROOT)} is missing: run `make test` (it installs openai 0.28.1 "
                    "into .venv-openai-legacy)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    done = subprocess.run([str(LEGACY_CLI), "-b", server.base_url, "-k", "sk-ts-legacy", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"openai {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def test_openai_0_28_cli_legacy_fine_tunes(server, tmp_path):
    # a sloppy prompt/completion file (a duplicate line, no separators, common prefixes) and the local tool
    rows = [{"prompt": f"Double {i}", "completion": str(2 * i)} for i in range(1, 25)]
    write_jsonl(tmp_path / "data.jsonl", rows + rows[:1])
    legacy_cli(server, tmp_path, "tools", "fine_tunes.prepare_data", "-f", "data.jsonl", "-q")
    prepared = [json.loads(line) for line in (tmp_path / "data_prepared.jsonl").read_text().splitlines()]
    assert len(prepared) == 24 and all(r["prompt"].endswith(" ->") and r["completion"].startswith(" ")
                                       for r in prepared)

    created = legacy_cli(server, tmp_path, "api", "fine_tunes.create", "-t", "data_prepared.jsonl", "-m", "curie",
                         "--n_epochs", "1", "--batch_size", "4", "--suffix", "doubles", timeout=600).stdout
    job_id = created.split("Created fine-tune: ", 1)[1].split()[0]
    assert "Job complete! Status: succeeded" in created, created  # create follows the events to the end
    model = created.split("openai api completions.create -m ", 1)[1].split()[0]
    assert model.startswith("curie:ft-local-doubles-"), model

    followed = legacy_cli(server, tmp_path, "api", "fine_tunes.follow", "-i", job_id).stdout
    assert "] Created fine-tuning job: " in followed and "Job complete! Status: succeeded" in followed
    listed = json.loads(legacy_cli(server, tmp_path, "api", "fine_tunes.list").stdout)
    assert job_id in [j["id"] for j in listed["data"]]
    got = json.loads(legacy_cli(server, tmp_path, "api", "fine_tunes.get", "-i", job_id).stdout)
    assert got["status"] == "succeeded" and got["fine_tuned_model"] == model and got["events"]
    results = legacy_cli(server, tmp_path, "api", "fine_tunes.results", "-i", job_id).stdout.strip().splitlines()
    assert results[0] == ("step,elapsed_tokens,elapsed_examples,training_loss,training_sequence_accuracy,"
                          "training_token_accuracy,validation_loss,validation_sequence_accuracy,"
                          "validation_token_accuracy")
    assert len(results) == 1 + 6 and results[-1].split(",")[2] == "24", results  # 24 examples / 4, one epoch

    answer = legacy_cli(server, tmp_path, "api", "completions.create", "-m", model, "-p", "7 ->",
                        "-M", "4", "-t", "0").stdout
    assert answer.startswith("7 ->") and len(answer) > len("7 ->")  # the CLI asks for its prompt echoed
    deleted = json.loads(legacy_cli(server, tmp_path, "api", "fine_tunes.delete", "-i", job_id).stdout)
    assert deleted == {"id": job_id, "object": "fine-tune", "deleted": True}
    assert model not in legacy_cli(server, tmp_path, "api", "models.list").stdout
