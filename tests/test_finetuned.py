from pathlib import Path

import pytest

from tunesmith.config import Settings
from tunesmith.errors import UnknownModelError
from tunesmith.jobs import registry
from tunesmith.jobs.store import Store
from tunesmith.models import finetuned
from tunesmith.models.registry import resolve_base

NAME = "ft:smollm2-135m-instruct:local:bot:AbC12xYz"


@pytest.fixture
def store(tmp_path):
    store = Store(Settings(home=tmp_path))
    record = finetuned.FineTunedModel(
        id="AbC12xYz", name=NAME, base="smollm2-135m-instruct", job_id="ftjob-1", method="lora", format="chat",
        path=str(tmp_path / "final"), created_at=1, trained_tokens=10,
        checkpoints={5: str(tmp_path / "c5"), 10: str(tmp_path / "c10")})
    with store.session() as s:
        registry.register(s, record, store.project(s, "local").id, job_id=None)
        store.project(s, "other")
    return store


def test_names_follow_openai_shape():
    assert finetuned.model_name("b", "local", None, "x1") == "ft:b:local::x1"
    assert finetuned.model_name("b", "org", "sfx", "x1") == "ft:b:org:sfx:x1"


def test_resolve_model_checkpoint_and_base(store, tmp_path):
    m = registry.resolve(NAME, store)
    assert (m.base, m.weights, m.method) == ("smollm2-135m-instruct", tmp_path / "final", "lora")
    c = registry.resolve(f"{NAME}:ckpt-step-5", store)
    assert c.weights == tmp_path / "c5"
    b = registry.resolve("smollm2-135m-instruct", store)
    assert b.weights is None and b.base == "smollm2-135m-instruct"
    assert [m.name for m in registry.list_models(store)] == [NAME]


@pytest.mark.parametrize("name, message", [
    ("ft:smollm2-135m-instruct:local:bot:nope", "unknown model"),
    ("ft:smollm2-135m-instruct:local:other:AbC12xYz", "did you mean"),
    (f"{NAME}:ckpt-step-7", "checkpoints: ckpt-step-5, ckpt-step-10"),
])
def test_resolve_errors_are_helpful(store, name, message):
    with pytest.raises(UnknownModelError, match=message):
        registry.resolve(name, store)


def test_a_model_is_its_projects_and_deleting_it_removes_its_weights(store, tmp_path):
    with store.read() as s:
        other = store.project(s, "other").id
    with pytest.raises(UnknownModelError):
        registry.resolve(NAME, store, other)
    assert registry.list_models(store, other) == []
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "adapter_model.safetensors").write_bytes(b"weights")
    registry.delete(store, NAME)
    assert not (tmp_path / "final").exists()
    with pytest.raises(UnknownModelError):
        registry.resolve(NAME, store)
    assert registry.list_models(store) == []


def test_unknown_base_lists_known_models(tmp_path):
    with pytest.raises(UnknownModelError, match="known models: smollm2-135m-instruct, gemma-3-270m"):
        resolve_base("llama-9000")
    gguf = tmp_path / "my.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_base(str(gguf)).name.startswith("my-")
    assert resolve_base(str(gguf)).locate(Path(".")) == gguf.resolve()
