from pathlib import Path

import pytest

from tunesmith.config import Settings
from tunesmith.errors import UnknownModelError
from tunesmith.models import finetuned
from tunesmith.models.registry import resolve_base


@pytest.fixture
def settings(tmp_path):
    s = Settings(home=tmp_path)
    finetuned.save(finetuned.FineTunedModel(
        id="AbC12xYz", name="ft:smollm2-135m-instruct:local:bot:AbC12xYz", base="smollm2-135m-instruct",
        job_id="ftjob-1", method="lora", format="chat", path=str(tmp_path / "final"), created_at=1,
        trained_tokens=10, checkpoints={5: str(tmp_path / "c5"), 10: str(tmp_path / "c10")}), s)
    return s


def test_names_follow_openai_shape():
    assert finetuned.model_name("b", "local", None, "x1") == "ft:b:local::x1"
    assert finetuned.model_name("b", "org", "sfx", "x1") == "ft:b:org:sfx:x1"


def test_resolve_model_checkpoint_and_base(settings, tmp_path):
    m = finetuned.resolve("ft:smollm2-135m-instruct:local:bot:AbC12xYz", settings)
    assert (m.base, m.weights, m.method) == ("smollm2-135m-instruct", tmp_path / "final", "lora")
    c = finetuned.resolve("ft:smollm2-135m-instruct:local:bot:AbC12xYz:ckpt-step-5", settings)
    assert c.weights == tmp_path / "c5"
    b = finetuned.resolve("smollm2-135m-instruct", settings)
    assert b.weights is None and b.base == "smollm2-135m-instruct"
    assert [m.id for m in finetuned.list_models(settings)] == ["AbC12xYz"]


@pytest.mark.parametrize("name, message", [
    ("ft:smollm2-135m-instruct:local:bot:nope", "unknown model"),
    ("ft:smollm2-135m-instruct:local:other:AbC12xYz", "did you mean"),
    ("ft:smollm2-135m-instruct:local:bot:AbC12xYz:ckpt-step-7", "checkpoints: ckpt-step-5, ckpt-step-10"),
])
def test_resolve_errors_are_helpful(settings, name, message):
    with pytest.raises(UnknownModelError, match=message):
        finetuned.resolve(name, settings)


def test_unknown_base_lists_known_models(tmp_path):
    with pytest.raises(UnknownModelError, match="known models: smollm2-135m-instruct, gemma-3-270m"):
        resolve_base("llama-9000")
    gguf = tmp_path / "my.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_base(str(gguf)).name.startswith("my-")
    assert resolve_base(str(gguf)).locate(Path(".")) == gguf.resolve()
