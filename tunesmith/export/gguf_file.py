"""``gguf`` and ``gguf-lora``: GGUF files written with the ``gguf`` package, as llama.cpp's converters write them.

The model file (``convert_hf_to_gguf.py``'s layout for the llama and Gemma 3 architectures):
``general.*``, the architecture's hyperparameters, the tokenizer copied from the base's own GGUF
(tokens, types, merges, pre-tokenizer, special ids: exactly what llama.cpp made of it) plus the tokens
tunesmith added to it (Gemma's ChatML markers), with tunesmith's chat template, and every weight under
its GGUF name. llama.cpp's llama rotary embedding pairs dimensions differently from Hugging Face's, so
its converter permutes the rows of the q and k projections; so do we (and transformers' GGUF loader
permutes them back). Gemma's RMSNorm multiplies by 1 + w where llama.cpp's multiplies by w, so its
converter stores every norm weight plus one; so do we.

The adapter file (``convert_lora_to_gguf.py``'s layout): ``general.type=adapter``,
``adapter.type=lora``, ``adapter.lora.alpha``, and per adapted weight ``<name>.lora_a`` (r × in) and
``<name>.lora_b`` (out × r). The permutation of q/k rows applies to ``lora_b``, whose rows are the
weight's rows: P(W + s·B·A) = P·W + s·(P·B)·A.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunesmith.export import ExportError, file_stem
from tunesmith.export.source import ADAPTER_CONFIG, ADAPTER_WEIGHTS, Source

CHAT_TEMPLATE_KEY = "tokenizer.chat_template"
ADDED_TOKEN_SCORE = -1000.0  # what convert_hf_to_gguf.py scores a token added to a SentencePiece vocabulary


def export_gguf(source: Source, out: Path, quant: str, refer_to: Path, progress) -> list[str]:
    name = model_file_name(source, quant)
    write_model_gguf(source, out / name, quant, progress)
    return [f"llama-cli -m {refer_to / name}", f"llama-server -m {refer_to / name}  # OpenAI-compatible server"]


def export_lora_gguf(source: Source, out: Path, quant: str, include_base: bool, refer_to: Path,
                     progress) -> list[str]:
    name = f"{file_stem(source.name)}-lora-{quant}.gguf"
    base_gguf = write_lora_gguf(source, out / name, quant, progress)
    if include_base:
        shutil.copyfile(base_gguf, out / base_gguf.name)
        base_gguf = refer_to / base_gguf.name
    return [f"llama-cli -m {base_gguf} --lora {refer_to / name}"]


def model_file_name(source: Source, quant: str) -> str:
    return f"{file_stem(source.name)}-{quant}.gguf"


def write_model_gguf(source: Source, path: Path, quant: str, progress, fmt: str = "gguf") -> None:
    import gguf

    config = source.config()
    layout, base_gguf = _checked(source, fmt, config)
    progress("merging the adapter into the base" if source.kind == "lora" else "loading the model", 0, 1)
    model = source.merged_model()
    renderer = source.renderer()
    writer = gguf.GGUFWriter(path, layout.arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(source.name)
    layout.hparams(writer, config)
    writer.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _copy_tokenizer(base_gguf, writer, source, fmt, config.vocab_size, renderer.tokenizer)
    writer.add_chat_template(renderer.tokenizer.chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[layout.arch.upper()], config.num_hidden_layers)
    weights = [(k, v) for k, v in model.state_dict().items()
               if not (k == "lm_head.weight" and config.tie_word_embeddings)]  # tied: the embedding is the output
    for i, (hf_name, tensor) in enumerate(weights):
        progress(f"encoding weights ({quant})", i, len(weights))
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(source.name, fmt, f"no GGUF name for its weight {hf_name}")
        data = tensor.float().numpy()
        if layout.norm_shift and name.endswith("norm.weight"):
            data = data + np.float32(layout.norm_shift)
        _add(writer, name, permuted(layout, name, data, config), quant)
    progress(f"encoding weights ({quant})", len(weights), len(weights))
    _write(writer)


def write_lora_gguf(source: Source, path: Path, quant: str, progress) -> Path:
    """Write the adapter; returns the base GGUF it applies to."""
    import gguf
    from safetensors.numpy import load_file

    adapter = source.adapter("gguf-lora", instead="gguf")
    config = source.config()
    layout, base_gguf = _checked(source, "gguf-lora", config)
    lora = json.loads((adapter / ADAPTER_CONFIG).read_text())
    # llama.cpp scales every adapted weight by alpha / rank: plain LoRA only.
    if lora.get("use_rslora") or lora.get("use_dora") or lora.get("alpha_pattern"):
        raise ExportError(source.name, "gguf-lora", "a GGUF LoRA scales by alpha / rank only (no rsLoRA, DoRA or "
                          "per-module alpha); use --format gguf")
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in load_file(adapter / ADAPTER_WEIGHTS).items():
        found = re.fullmatch(r"base_model\.model\.(.+)\.lora_([AB])\.weight", key)
        if found is None:
            raise ExportError(source.name, "gguf-lora", f"the adapter also trains {key}, which a GGUF LoRA cannot "
                              "carry; use --format gguf")
        pairs.setdefault(found.group(1) + ".weight", {})[found.group(2)] = value.astype(np.float32)

    writer = gguf.GGUFWriter(path, layout.arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(lora["lora_alpha"]))
    writer.add_name(source.name)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[layout.arch.upper()], config.num_hidden_layers)
    for i, (hf_name, pair) in enumerate(sorted(pairs.items())):
        progress(f"encoding the adapter ({quant})", i, len(pairs))
        name = names.get_name(hf_name, try_suffixes=(".weight",))
        if name is None:
            raise ExportError(source.name, "gguf-lora", f"no GGUF name for the adapted weight {hf_name}")
        _add(writer, f"{name}.lora_a", pair["A"], quant)
        _add(writer, f"{name}.lora_b", permuted(layout, name, pair["B"], config), quant)
    progress(f"encoding the adapter ({quant})", len(pairs), len(pairs))
    _write(writer)
    return base_gguf


def permuted(layout: Layout, name: str, data: np.ndarray, config) -> np.ndarray:
    """``data`` with its rows in llama.cpp's order where ``name`` is a q or k projection (weight, bias, or
    a LoRA B), as ``convert_hf_to_gguf.py``'s ``LlamaModel.permute``: each head's two rotary halves interleaved.
    Unchanged for a layout whose rotary needs no permutation (Gemma's)."""
    if not layout.permute_qk:
        return data
    if re.search(r"\.attn_q\.(weight|bias)$", name):
        heads = config.num_attention_heads
    elif re.search(r"\.attn_k\.(weight|bias)$", name):
        heads = config.num_key_value_heads
    else:
        return data
    return data.reshape(heads, 2, data.shape[0] // heads // 2, *data.shape[1:]).swapaxes(1, 2).reshape(data.shape)


def _shape_hparams(writer, config) -> None:
    """The keys every architecture has: sizes, heads, norm epsilon."""
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)


def _llama_hparams(writer, config) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    _shape_hparams(writer, config)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config.vocab_size)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _llama_unsupported(config) -> str | None:
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    return None if rope == "default" else f"its rotary embedding is scaled ({rope}), which tunesmith does not write"


def _gemma3_hparams(writer, config) -> None:
    """As convert_hf_to_gguf.py's Gemma3Model writes them (the bundled Gemma GGUF has exactly these keys)."""
    _shape_hparams(writer, config)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_freq_base(config.rope_parameters["full_attention"]["rope_theta"])
    writer.add_sliding_window(config.sliding_window)


def _gemma3_unsupported(config) -> str | None:
    """What llama.cpp's gemma3 graph fixes and a config could change: every 6th layer global, local layers'
    rotary base 10,000, queries scaled by 1/sqrt(head_dim), no soft-capping, unscaled rotary, causal attention."""
    pattern = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(config.num_hidden_layers)]
    rope = config.rope_parameters
    if list(config.layer_types) != pattern:
        return "its layers are not llama.cpp's Gemma 3 pattern (every sixth one global)"
    if rope.get("sliding_attention", {}).get("rope_theta") != 10_000.0 or any(
            r.get("rope_type", "default") != "default" for r in rope.values()):
        return "its rotary embedding is not llama.cpp's Gemma 3 one (unscaled, base 10,000 on local layers)"
    if config.query_pre_attn_scalar != config.head_dim or config.final_logit_softcapping is not None \
            or config.attn_logit_softcapping is not None or getattr(config, "use_bidirectional_attention", False):
        return "its attention is not llama.cpp's Gemma 3 attention (query scale, soft-capping or bidirectional)"
    return None


@dataclass(frozen=True)
class Layout:
    """How convert_hf_to_gguf.py writes one Hugging Face architecture."""

    arch: str  # general.architecture, and the gguf package's tensor-name map
    hparams: Callable[[object, object], None]  # (writer, config): the architecture's keys
    unsupported: Callable[[object], str | None]  # config → what llama.cpp would run differently, or None
    permute_qk: bool  # llama's rotary pairs (LlamaModel.permute); Gemma's NeoX-style rotary needs none
    norm_shift: float = 0.0  # added to every norm weight (Gemma: llama.cpp multiplies by w, not 1 + w)


LAYOUTS = {"llama": Layout("llama", _llama_hparams, _llama_unsupported, permute_qk=True),
           "gemma3_text": Layout("gemma3", _gemma3_hparams, _gemma3_unsupported, permute_qk=False, norm_shift=1.0)}


def _checked(source: Source, fmt: str, config) -> tuple[Layout, Path]:
    """The layout and the base GGUF, for a model tunesmith can write as llama.cpp does; else ExportError."""
    convert = "export --format hf and use llama.cpp's convert_hf_to_gguf.py"
    layout = LAYOUTS.get(config.model_type)
    if layout is None:
        raise ExportError(source.name, fmt, f"tunesmith writes GGUF for {' and '.join(LAYOUTS)} models, and "
                          f"{source.info.name} is {config.model_type}; {convert}")
    why = layout.unsupported(config)
    if why:
        raise ExportError(source.name, fmt, f"{why}; {convert}")
    base_gguf = source.base_gguf()
    if base_gguf is None:
        raise ExportError(source.name, fmt, f"its base {source.info.name} did not come from a GGUF file, whose "
                          f"tokenizer the GGUF reuses; {convert}")
    return layout, base_gguf


def _copy_tokenizer(base_gguf: Path, writer, source: Source, fmt: str, vocab_size: int, tokenizer) -> None:
    """The tokenizer as llama.cpp made it for the base (``tokenizer.ggml.*``), with the tokens tunesmith added
    to the base appended as control tokens (what llama.cpp's converter makes of added special tokens) and
    the end-of-turn token as eos, so that llama.cpp and Ollama stop where tunesmith does; the chat
    template is ours."""
    from gguf import GGUFReader, GGUFValueType, TokenType

    fields = {k: f for k, f in GGUFReader(base_gguf).fields.items()
              if k.startswith("tokenizer.") and k != CHAT_TEMPLATE_KEY}
    tokens = len(fields["tokenizer.ggml.tokens"].data)
    added = list(source.info.added_token_ids)
    if added != list(range(tokens, tokens + len(added))) or tokens + len(added) != vocab_size:
        raise ExportError(source.name, fmt, f"its vocabulary ({vocab_size} tokens) is not its base GGUF's "
                          f"({tokens}) and the tokens tunesmith added; export --format hf and use llama.cpp's "
                          "convert_hf_to_gguf.py")
    appended = {"tokenizer.ggml.tokens": tokenizer.convert_ids_to_tokens(added),
                "tokenizer.ggml.scores": [ADDED_TOKEN_SCORE] * len(added),
                "tokenizer.ggml.token_type": [int(TokenType.CONTROL)] * len(added)}
    for key, f in fields.items():
        array = f.types[0] == GGUFValueType.ARRAY
        value = f.contents() + appended.get(key, []) if array else f.contents()
        if key == "tokenizer.ggml.eos_token_id":
            value = tokenizer.convert_tokens_to_ids(source.info.end_of_turn)
        writer.add_key_value(key, value, f.types[0], sub_type=f.types[-1] if array else None)


def _add(writer, name: str, data: np.ndarray, quant: str) -> None:
    """One tensor as llama.cpp's converter stores it: vectors in f32; matrices in f16, or q8_0 where their
    rows split into its 32-value blocks (f16 otherwise, as the converter falls back)."""
    from gguf import GGMLQuantizationType, quantize

    if data.ndim == 1:
        writer.add_tensor(name, data.astype(np.float32))
    elif quant == "q8_0" and data.shape[-1] % 32 == 0:
        writer.add_tensor(name, quantize(data, GGMLQuantizationType.Q8_0), raw_dtype=GGMLQuantizationType.Q8_0)
    else:
        writer.add_tensor(name, data.astype(np.float16))


def _write(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
