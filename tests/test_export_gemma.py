"""GGUF and Ollama exports of a Gemma 3 model, laid out as llama.cpp's own Gemma GGUF (the bundled one).

The model is a tiny random Gemma 3 over the real Gemma tokenizer with tunesmith's two added ChatML
tokens, so that the vocabulary, the added rows and the chat template are the real ones; its norm
weights are random, so that the +1 of llama.cpp's norm convention shows.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunesmith.export import export
from tunesmith.export.source import Source
from tunesmith.models.chatml import IM_END, IM_START
from tunesmith.models.loading import BaseInfo
from tunesmith.models.registry import BUNDLED

pytestmark = pytest.mark.slow
GEMMA = "gemma-3-270m"
NAME = "ft:gemma-3-270m:local:tiny:AbC12xYz"
PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour, number 7."}]
# What the bundled GGUF has and an export names for itself, or cannot have (a chat template: ours).
OWN_KEYS = {"general.name", "general.basename", "general.size_label", "general.license", "general.tags",
            "general.file_type", "tokenizer.chat_template", "GGUF.tensor_count", "GGUF.kv_count"}


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from tunesmith.models.loading import ensure_cached, load_renderer

    info = ensure_cached(GEMMA)
    renderer = load_renderer(info)
    root = tmp_path_factory.mktemp("gemma")
    config = Gemma3TextConfig(vocab_size=len(renderer.tokenizer), hidden_size=32, intermediate_size=64,
                              num_hidden_layers=6, num_attention_heads=2, num_key_value_heads=1,
                              # Gemma 3 270M's head size: transformers' GGUF loader assumes its query scale
                              head_dim=256, query_pre_attn_scalar=256, sliding_window=512, max_position_embeddings=32768,
                              bos_token_id=2, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0, 0.5)  # Gemma starts its norms at 0 (a scale of 1): random ones show the +1
    model.save_pretrained(root / "base")
    renderer.tokenizer.save_pretrained(root / "base")
    adapter = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    adapter.save_pretrained(root / "adapter")
    tiny = BaseInfo(GEMMA, root / "base", info.end_of_turn, info.added_token_ids)
    source = Source(NAME, tiny, BUNDLED[GEMMA], root / "adapter")
    return source, renderer, source.base_gguf()


def _fields(reader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items()}


def test_gguf_has_the_keys_and_tensor_names_of_llama_cpps_own_gemma_gguf(gemma, tmp_path):
    import gguf

    source, renderer, base_gguf = gemma
    [name] = export(source, "gguf", tmp_path / "out", "f16").files
    ours, theirs = gguf.GGUFReader(tmp_path / "out" / name), gguf.GGUFReader(base_gguf)
    mine, base = _fields(ours), _fields(theirs)
    assert set(mine) - OWN_KEYS == set(base) - OWN_KEYS
    assert mine["general.architecture"] == "gemma3"
    assert {k: mine[k] for k in mine if k.startswith("gemma3.")} == {
        "gemma3.context_length": 32768, "gemma3.embedding_length": 32, "gemma3.block_count": 6,
        "gemma3.feed_forward_length": 64, "gemma3.attention.head_count": 2, "gemma3.attention.head_count_kv": 1,
        "gemma3.attention.key_length": 256, "gemma3.attention.value_length": 256,
        "gemma3.attention.layer_norm_rms_epsilon": pytest.approx(1e-6), "gemma3.rope.freq_base": 1e6,
        "gemma3.attention.sliding_window": 512}
    # The base's vocabulary as llama.cpp made it, then tunesmith's ChatML markers as control tokens.
    assert mine["tokenizer.ggml.tokens"] == base["tokenizer.ggml.tokens"] + [IM_START, IM_END]
    assert mine["tokenizer.ggml.token_type"][-2:] == [gguf.TokenType.CONTROL] * 2
    assert mine["tokenizer.ggml.scores"][:-2] == base["tokenizer.ggml.scores"]
    assert mine["tokenizer.ggml.eos_token_id"] == renderer.end_of_turn_id
    assert mine["tokenizer.ggml.add_bos_token"] is True and mine["tokenizer.chat_template"] == renderer.tokenizer.chat_template
    in_six = {t.name for t in theirs.tensors if not t.name.startswith("blk.") or int(t.name.split(".")[1]) < 6}
    assert {t.name for t in ours.tensors} == in_six


def test_gguf_loads_in_transformers_as_the_merged_model(gemma, tmp_path):
    source, renderer, _ = gemma
    [name] = export(source, "gguf", tmp_path / "out", "f16").files
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", gguf_file=str(name), dtype=torch.float32)
    merged = source.merged_model()
    state = merged.state_dict()
    for key, value in loaded.state_dict().items():
        # f16 and back, and the norms' +1 taken off again by transformers' loader
        torch.testing.assert_close(value, state[key].half().float(), atol=2e-3 if "norm" in key else 0, rtol=0,
                                   msg=key)
    ids = torch.tensor([renderer.encode_prompt(PROMPT)])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, merged(input_ids=ids).logits, atol=5e-3, rtol=0)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out", gguf_file=str(name))
    text = renderer.render(PROMPT, generation_prompt=True) + "Colour 7: ochre."
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == \
        renderer.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_ollama_export_leaves_the_bos_to_ollama_and_stops_at_the_end_of_turn(gemma, tmp_path):
    source, renderer, _ = gemma
    done = export(source, "ollama", tmp_path / "out", "q8_0")
    modelfile = (done.path / "Modelfile").read_text()
    assert "FROM ./gemma-3-270m-local-tiny-AbC12xYz-q8_0.gguf" in modelfile
    assert "<bos>" not in modelfile and renderer.render(PROMPT).startswith("<bos>")
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
