"""``POST /v1/models/{model}/export`` on a live server: the owner downloads the export (one GGUF file, or a tar
of the folder), another project gets the 404 of a missing model, and exports are written one at a time."""

from __future__ import annotations

import io
import json
import tarfile

import httpx2 as httpx
import pytest

from conftest import SMOL
from live_server import new_home, serving
from tunesmith.api import models as models_api
from tunesmith.api.app import create_app
from tunesmith.config import Settings
from tunesmith.jobs import registry
from tunesmith.jobs.store import Store
from tunesmith.models.finetuned import FineTunedModel

NAME = "ft:smollm2-135m-instruct:alpha:api:Xy12AbCd"


@pytest.fixture(scope="module")
def server(tmp_path_factory, smol_info):
    """A server whose project alpha owns a LoRA adapter over the real SmolLM2 (untrained: B is zero)."""
    from peft import LoraConfig, get_peft_model

    from tunesmith.models.loading import load_model

    settings = Settings(home=new_home(tmp_path_factory.mktemp("export-api")))
    job_dir = settings.jobs_dir / "ftjob-export"
    get_peft_model(load_model(smol_info), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj"])) \
        .save_pretrained(job_dir / "model")
    (job_dir / "data.json").write_text(json.dumps({"system": "You are terse."}))
    store = Store(settings)
    keys = {p: store.create_key(p)[1] for p in ("alpha", "beta")}
    with store.session() as s:
        record = FineTunedModel(id="Xy12AbCd", name=NAME, base=SMOL, job_id="ftjob-export", method="lora", format="chat",
                                path=str(job_dir / "model"), created_at=1, trained_tokens=1)
        registry.register(s, record, store.project(s, "alpha").id, job_id=None)
    with serving(create_app(settings, run_worker=False)) as (host, port):
        yield settings, {p: httpx.Client(base_url=f"http://{host}:{port}/v1", timeout=120,
                                         headers={"Authorization": f"Bearer {k}"}) for p, k in keys.items()}
    store.engine.dispose()


def test_a_gguf_export_is_the_file_itself_and_nothing_stays_behind(server, tmp_path):
    import gguf

    settings, http = server
    got = http["alpha"].post(f"/models/{NAME}/export", json={"format": "gguf-lora"})
    assert got.status_code == 200, got.text
    assert got.headers["content-type"] == "application/octet-stream"
    filename = "smollm2-135m-instruct-alpha-api-Xy12AbCd-lora-f16.gguf"
    assert got.headers["content-disposition"] == f'attachment; filename="{filename}"'
    assert int(got.headers["content-length"]) == len(got.content)
    (tmp_path / filename).write_bytes(got.content)
    reader = gguf.GGUFReader(tmp_path / filename)
    assert reader.fields["adapter.type"].contents() == "lora"
    assert len(reader.tensors) == 30 * 2 * 2  # 30 layers, q and k, A and B
    assert list((settings.home / "exports").iterdir()) == []


def test_a_folder_export_is_a_tar_that_unpacks_to_the_folder(server):
    _, http = server
    got = http["alpha"].post(f"/models/{NAME}/export", json={"format": "peft"})
    assert got.status_code == 200, got.text
    assert got.headers["content-type"] == "application/x-tar"
    folder = "smollm2-135m-instruct-alpha-api-Xy12AbCd-peft"
    with tarfile.open(fileobj=io.BytesIO(got.content)) as tar:
        assert sorted(tar.getnames()) == [f"{folder}/adapter_config.json", f"{folder}/adapter_model.safetensors"]
        config = json.load(tar.extractfile(f"{folder}/adapter_config.json"))
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_another_projects_model_is_missing_as_everywhere(server):
    _, http = server
    got = http["beta"].post(f"/models/{NAME}/export", json={"format": "peft"})
    assert (got.status_code, got.json()["error"]["code"]) == (404, "model_not_found")


@pytest.mark.parametrize(("body", "param", "message"), [
    ({"format": "onnx"}, "format", "format: Input should be"),
    ({"format": "gguf", "quant": "q4_k_m"}, "quant", "llama-quantize"),
    ({"format": "hf", "quant": "q8_0"}, "quant", "--quant applies to gguf, gguf-lora, ollama only"),
    ({"format": "peft", "extra": 1}, "extra", "Extra inputs are not permitted"),
])
def test_a_bad_request_is_a_400_naming_the_field(server, body, param, message):
    _, http = server
    got = http["alpha"].post(f"/models/{NAME}/export", json=body)
    assert (got.status_code, got.json()["error"]["param"]) == (400, param)
    assert message in got.json()["error"]["message"]


def test_a_base_model_exports_but_not_as_an_adapter(server):
    _, http = server
    got = http["alpha"].post(f"/models/{SMOL}/export", json={"format": "peft"})
    assert got.status_code == 400
    assert got.json()["error"]["message"] == f"cannot export {SMOL} as peft: it is a base model; use --format hf"


def test_one_export_at_a_time(server):
    _, http = server
    with models_api._EXPORTING:  # an export being written
        busy = http["alpha"].post(f"/models/{NAME}/export", json={"format": "peft"})
    assert (busy.status_code, busy.json()["error"]["code"]) == (429, "rate_limit_exceeded")
    assert http["alpha"].post(f"/models/{NAME}/export", json={"format": "peft"}).status_code == 200


def test_the_source_knows_the_system_prompt_its_job_trained_with(server):
    from tunesmith.export.source import source_of

    settings, _ = server
    source = source_of(registry.resolve(NAME, Store(settings)), settings)
    assert (source.kind, source.system) == ("lora", "You are terse.")
