"""Exports of tiny random models over the real SmolLM2 tokenizer: every format read back by the tool that
consumes it (transformers, PEFT, transformers' GGUF loader, gguf's reader), weight for weight."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import SMOL
from tunesmith.export import ExportError, export
from tunesmith.export.archive import tar_stream
from tunesmith.export.ollama import chatml, default_system
from tunesmith.export.source import Source
from tunesmith.models.loading import BaseInfo
from tunesmith.models.registry import BUNDLED, SMOLLM_SYSTEM
from tunesmith.train.run import shared_system

NAME = "ft:smollm2-135m-instruct:local:tiny:AbC12xYz"
PROMPT = [{"role": "user", "content": "Name a colour, number 7."}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_model_factory, renderer, smol_info):
    """A tiny base (with the real tokenizer), a LoRA adapter over it with non-zero B, and a full model."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("tiny")
    tiny_model_factory(1).save_pretrained(root / "base")
    renderer.tokenizer.save_pretrained(root / "base")
    adapter = get_peft_model(tiny_model_factory(1), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # LoRA starts with B = 0: a merge would change nothing
    adapter.save_pretrained(root / "adapter")
    tiny_model_factory(3).save_pretrained(root / "full")
    info = BaseInfo("smollm2-135m-instruct", root / "base", smol_info.end_of_turn)

    def source(kind: str, **kwargs) -> Source:
        weights = {"base": None, "lora": root / "adapter", "full": root / "full"}[kind]
        return Source(NAME if weights else SMOL, info, BUNDLED[SMOL], weights, **kwargs)

    return source


def logits(model, renderer) -> torch.Tensor:
    ids = torch.tensor([renderer.encode_prompt(PROMPT)])
    with torch.no_grad():
        return model(input_ids=ids).logits[0]


def test_kinds_are_read_from_the_weights(tiny):
    assert [tiny(k).kind for k in ("base", "lora", "full")] == ["base", "lora", "full"]


def test_gguf_f16_loads_in_transformers_with_every_weight_as_written(tiny, tmp_path, renderer):
    source = tiny("lora")
    done = export(source, "gguf", tmp_path / "out", "f16")
    [name] = done.files
    assert name.name == "smollm2-135m-instruct-local-tiny-AbC12xYz-f16.gguf"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", gguf_file=str(name), dtype=torch.float32)
    merged = source.merged_model().state_dict()
    for key, value in loaded.state_dict().items():
        # f16 → f32 is exact, and the q/k rows come back in Hugging Face's order: equal to the bit.
        assert torch.equal(value, merged[key].half().float()), key
    torch.testing.assert_close(logits(loaded, renderer), logits(source.merged_model(), renderer), atol=2e-3, rtol=0)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out", gguf_file=str(name))
    text = renderer.render(PROMPT, generation_prompt=True) + "Colour 7: ochre, 1234."
    assert tokenizer(text)["input_ids"] == renderer.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.chat_template == renderer.tokenizer.chat_template


def test_gguf_q8_0_is_within_its_block_precision(tiny, tmp_path):
    import gguf

    source = tiny("full")
    [name] = export(source, "gguf", tmp_path / "out", "q8_0").files
    reader = gguf.GGUFReader(tmp_path / "out" / name)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["token_embd.weight"] == "Q8_0" and types["blk.0.attn_q.weight"] == "Q8_0"
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", gguf_file=str(name), dtype=torch.float32)
    merged = source.merged_model().state_dict()
    for key, value in loaded.state_dict().items():
        # q8_0: 32 values share one scale, max|x| / 127 (kept in f16); an error is within a step
        bound = merged[key].abs().max().item() / 127
        assert (value - merged[key]).abs().max().item() <= bound, key


def test_lora_gguf_holds_the_adapter_with_llama_cpp_names_and_permuted_b(tiny, tmp_path):
    import gguf
    from safetensors.torch import load_file
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    source = tiny("lora")
    done = export(source, "gguf-lora", tmp_path / "out", include_base=True)
    base_gguf = BUNDLED[SMOL].locate(tmp_path)
    lora = "smollm2-135m-instruct-local-tiny-AbC12xYz-lora-f16.gguf"
    assert sorted(f.name for f in done.files) == sorted([base_gguf.name, lora])
    assert done.usage == [f"llama-cli -m {done.path.resolve() / base_gguf.name} --lora {done.path.resolve() / lora}"]
    reader = gguf.GGUFReader(done.path / lora)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert (fields["general.type"], fields["adapter.type"], fields["adapter.lora.alpha"]) == ("adapter", "lora", 8.0)
    assert fields["general.architecture"] == "llama"
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    assert len(tensors) == 2 * 7 * 2  # two layers, seven linear weights each, A and B
    peft = load_file(source.weights / "adapter_model.safetensors")
    unpermute = LlamaTensorProcessor({"num_attention_heads": 4, "num_key_value_heads": 2})  # transformers' own
    for layer in range(2):
        prefix = f"base_model.model.model.layers.{layer}.self_attn"
        a = tensors[f"blk.{layer}.attn_q.weight.lora_a"]
        assert a.shape == (4, 64) and np.array_equal(a, peft[f"{prefix}.q_proj.lora_A.weight"].half().numpy())
        for proj, gguf_name in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v")):
            b = tensors[f"blk.{layer}.{gguf_name}.weight.lora_b"]
            back = unpermute.process(b, f"blk.{layer}.{gguf_name}.weight").weights
            assert np.array_equal(back, peft[f"{prefix}.{proj}.lora_B.weight"].half().numpy()), (layer, proj)
        assert not np.array_equal(tensors[f"blk.{layer}.attn_q.weight.lora_b"],
                                  peft[f"{prefix}.q_proj.lora_B.weight"].half().numpy())  # it was permuted


def test_peft_export_loads_with_peft_and_points_at_its_base(tiny, tmp_path, renderer):
    from peft import PeftModel

    source = tiny("lora")
    done = export(source, "peft", tmp_path / "alone")
    config = json.loads((done.path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert [str(f) for f in done.files] == ["adapter_config.json", "adapter_model.safetensors"]
    assert "--lora-modules" in done.usage[1]

    done = export(source, "peft", tmp_path / "with-base", include_base=True)
    config = json.loads((done.path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(done.path.resolve() / "base")
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"], dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, done.path).eval()
    torch.testing.assert_close(logits(tuned, renderer), logits(source.merged_model(), renderer), atol=1e-4, rtol=0)


def test_hf_export_is_one_model_with_chat_template_and_end_of_turn(tiny, tmp_path, renderer):
    for kind in ("lora", "full"):
        source = tiny(kind)
        done = export(source, "hf", tmp_path / kind)
        loaded = AutoModelForCausalLM.from_pretrained(done.path, dtype=torch.float32)
        torch.testing.assert_close(logits(loaded, renderer), logits(source.merged_model(), renderer), atol=1e-4, rtol=0)
        assert loaded.generation_config.eos_token_id == renderer.end_of_turn_id
        assert AutoTokenizer.from_pretrained(done.path).chat_template == renderer.tokenizer.chat_template
        assert not any("adapter" in str(f) for f in done.files)


def test_ollama_folder_has_the_gguf_and_a_modelfile_in_the_models_chat_format(tiny, tmp_path, renderer):
    done = export(tiny("lora", system="You are terse."), "ollama", tmp_path / "out", "q8_0")
    assert sorted(str(f) for f in done.files) == ["Modelfile", "smollm2-135m-instruct-local-tiny-AbC12xYz-q8_0.gguf"]
    text = (done.path / "Modelfile").read_text()
    assert "FROM ./smollm2-135m-instruct-local-tiny-AbC12xYz-q8_0.gguf\n" in text
    assert 'PARAMETER stop "<|im_end|>"\n' in text
    assert 'SYSTEM """You are terse."""\n' in text
    assert '{{ "' + SMOLLM_SYSTEM + '" }}' in text  # the template's own default, as SmolLM2's
    assert done.usage[0] == f"ollama create smollm2-135m-instruct-local-tiny-abc12xyz -f {done.path / 'Modelfile'}"


def test_the_modelfiles_template_renders_as_the_models_own(renderer):
    assert default_system(renderer) == SMOLLM_SYSTEM
    for messages in ([{"role": "user", "content": "Hi"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"},
                      {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]):
        assert chatml(messages, SMOLLM_SYSTEM) == renderer.render(messages, generation_prompt=True)


def test_a_completion_model_gets_a_raw_template_and_no_system(tiny, tmp_path):
    done = export(tiny("lora", format="completion", system="ignored"), "ollama", tmp_path / "out")
    text = (done.path / "Modelfile").read_text()
    assert 'TEMPLATE """{{ .Prompt }}{{ .Response }}"""' in text and "SYSTEM" not in text


@pytest.mark.parametrize(("kind", "fmt", "kwargs", "message"), [
    ("full", "peft", {}, "as peft: it is fully fine-tuned (it has no adapter); use --format hf"),
    ("base", "gguf-lora", {}, "as gguf-lora: it is a base model; use --format gguf"),
    ("lora", "gguf", {"quant": "q4_k_m"}, "llama-quantize"),
    ("lora", "hf", {"quant": "q8_0"}, "--quant applies to gguf, gguf-lora, ollama only"),
    ("lora", "gguf", {"include_base": True}, "--base applies to peft and gguf-lora"),
    ("lora", "onnx", {}, "unknown format; expected one of peft, hf, gguf, gguf-lora, ollama"),
])
def test_what_cannot_be_exported_is_refused_naming_model_and_format(tiny, tmp_path, kind, fmt, kwargs, message):
    with pytest.raises(ExportError, match="cannot export .* as") as refused:
        export(tiny(kind), fmt, tmp_path / "out", **kwargs)
    assert message in str(refused.value)
    assert not (tmp_path / "out").exists()


def _gemma(**changes):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(**{"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 6,
                               "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
                               "query_pre_attn_scalar": 16, **changes})


def _qwen2():
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1)


@pytest.mark.parametrize("config, message", [
    (_qwen2, "tunesmith writes GGUF for llama and gemma3_text models, and gemma-3-270m is qwen2; export --format hf"),
    (lambda: _gemma(query_pre_attn_scalar=256), "its attention is not llama.cpp's Gemma 3 attention"),
    (lambda: _gemma(final_logit_softcapping=30.0), "its attention is not llama.cpp's Gemma 3 attention"),
    (lambda: _gemma(layer_types=["full_attention"] * 6), "its layers are not llama.cpp's Gemma 3 pattern"),
    (lambda: _gemma(rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                     "sliding_attention": {"rope_type": "default", "rope_theta": 1e4 * 2}}),
     "its rotary embedding is not llama.cpp's Gemma 3 one"),
])
def test_what_llama_cpp_would_run_differently_is_refused_for_gguf_before_any_work(tmp_path, smol_info, config,
                                                                                   message):
    config().save_pretrained(tmp_path / "model")
    source = Source("gemma-3-270m", BaseInfo("gemma-3-270m", tmp_path / "model", smol_info.end_of_turn),
                    BUNDLED["gemma-3-270m"], None)
    with pytest.raises(ExportError, match="cannot export gemma-3-270m as gguf") as refused:
        export(source, "gguf", tmp_path / "out")
    assert message in str(refused.value) and "convert_hf_to_gguf.py" in str(refused.value)


def test_an_existing_folder_is_not_overwritten(tiny, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists and is not empty"):
        export(tiny("lora"), "peft", tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_tar_stream_is_a_tar_of_the_folder_with_its_announced_size(tmp_path):
    (tmp_path / "d" / "base").mkdir(parents=True)
    (tmp_path / "d" / "a.json").write_text("{}")
    (tmp_path / "d" / "base" / "w.bin").write_bytes(bytes(range(256)) * 5)
    (tmp_path / "d" / "empty").write_bytes(b"")
    size, body = tar_stream(tmp_path / "d", "export")
    data = b"".join(body)
    assert len(data) == size
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert sorted(tar.getnames()) == ["export/a.json", "export/base/w.bin", "export/empty"]
        assert tar.extractfile("export/base/w.bin").read() == bytes(range(256)) * 5


def test_shared_system_is_the_prompt_of_most_examples():
    class Ex:
        def __init__(self, system):
            self.messages = [{"role": "system", "content": system}] if system else [{"role": "user", "content": "q"}]
            self.has_system = bool(system)

    assert shared_system([Ex("A"), Ex("A"), Ex(None)]) == "A"
    assert shared_system([Ex("A"), Ex("B"), Ex(None)]) is None
    assert shared_system([Ex(None), Ex(None)]) is None
