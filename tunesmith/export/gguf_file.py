"""``gguf`` and ``gguf-lora``: GGUF files written with the ``gguf`` package, as llama.cpp's converters write them.

The model file (``convert_hf_to_gguf.py``'s layout for the llama architecture): ``general.*``,
``llama.*`` hyperparameters, the tokenizer copied from the base's own GGUF (tokens, types, merges,
pre-tokenizer, special ids: exactly what llama.cpp made of it) with tunesmith's chat template, and
every weight under its GGUF name. llama.cpp's rotary embedding pairs dimensions differently from
Hugging Face's, so its converter permutes the rows of the q and k projections; so do we (and
transformers' GGUF loader permutes them back).

The adapter file (``convert_lora_to_gguf.py``'s layout): ``general.type=adapter``,
``adapter.type=lora``, ``adapter.lora.alpha``, and per adapted weight ``<name>.lora_a`` (r × in) and
``<name>.lora_b`` (out × r). The permutation of q/k rows applies to ``lora_b``, whose rows are the
weight's rows: P(W + s·B·A) = P·W + s·(P·B)·A.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np

from tunesmith.export import ExportError, file_stem
from tunesmith.export.source import ADAPTER_CONFIG, ADAPTER_WEIGHTS, Source

ARCH = "llama"
CHAT_TEMPLATE_KEY = "tokenizer.chat_template"


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
    base_gguf = _check_llama(source, fmt, config)
    progress("merging the adapter into the base" if source.kind == "lora" else "loading the model", 0, 1)
    model = source.merged_model()
    renderer = source.renderer()
    writer = gguf.GGUFWriter(path, ARCH)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(source.name)
    _add_hparams(writer, config)
    writer.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _copy_tokenizer(base_gguf, writer, source, fmt, config.vocab_size)
    writer.add_chat_template(renderer.tokenizer.chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    weights = [(k, v) for k, v in model.state_dict().items()
               if not (k == "lm_head.weight" and config.tie_word_embeddings)]  # tied: the embedding is the output
    for i, (hf_name, tensor) in enumerate(weights):
        progress(f"encoding weights ({quant})", i, len(weights))
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(source.name, fmt, f"no GGUF name for its weight {hf_name}")
        _add(writer, name, permuted(name, tensor.float().numpy(), config), quant)
    progress(f"encoding weights ({quant})", len(weights), len(weights))
    _write(writer)


def write_lora_gguf(source: Source, path: Path, quant: str, progress) -> Path:
    """Write the adapter; returns the base GGUF it applies to."""
    import gguf
    from safetensors.numpy import load_file

    adapter = source.adapter("gguf-lora", instead="gguf")
    config = source.config()
    base_gguf = _check_llama(source, "gguf-lora", config)
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

    writer = gguf.GGUFWriter(path, ARCH)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(lora["lora_alpha"]))
    writer.add_name(source.name)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for i, (hf_name, pair) in enumerate(sorted(pairs.items())):
        progress(f"encoding the adapter ({quant})", i, len(pairs))
        name = names.get_name(hf_name, try_suffixes=(".weight",))
        if name is None:
            raise ExportError(source.name, "gguf-lora", f"no GGUF name for the adapted weight {hf_name}")
        _add(writer, f"{name}.lora_a", pair["A"], quant)
        _add(writer, f"{name}.lora_b", permuted(name, pair["B"], config), quant)
    progress(f"encoding the adapter ({quant})", len(pairs), len(pairs))
    _write(writer)
    return base_gguf


def permuted(name: str, data: np.ndarray, config) -> np.ndarray:
    """``data`` with its rows in llama.cpp's order where ``name`` is a q or k projection (weight, bias, or
    a LoRA B), as ``convert_hf_to_gguf.py``'s ``LlamaModel.permute``: each head's two rotary halves interleaved."""
    if re.search(r"\.attn_q\.(weight|bias)$", name):
        heads = config.num_attention_heads
    elif re.search(r"\.attn_k\.(weight|bias)$", name):
        heads = config.num_key_value_heads
    else:
        return data
    return data.reshape(heads, 2, data.shape[0] // heads // 2, *data.shape[1:]).swapaxes(1, 2).reshape(data.shape)


def _check_llama(source: Source, fmt: str, config) -> Path:
    """The base GGUF, for a llama-architecture model tunesmith can write as llama.cpp does; else ExportError."""
    if config.model_type != "llama":
        raise ExportError(source.name, fmt, f"tunesmith writes GGUF for llama-architecture models, and "
                          f"{source.info.name} is {config.model_type}; export --format hf and convert that "
                          "with llama.cpp's convert_hf_to_gguf.py")
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope != "default":
        raise ExportError(source.name, fmt, f"its rotary embedding is scaled ({rope}), which tunesmith's GGUF "
                          "writer does not write; export --format hf and use llama.cpp's convert_hf_to_gguf.py")
    base_gguf = source.base_gguf()
    if base_gguf is None:
        raise ExportError(source.name, fmt, f"its base {source.info.name} did not come from a GGUF file, whose "
                          "tokenizer the GGUF reuses; export --format hf and use llama.cpp's convert_hf_to_gguf.py")
    return base_gguf


def _add_hparams(writer, config) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config.vocab_size)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _copy_tokenizer(base_gguf: Path, writer, source: Source, fmt: str, vocab_size: int) -> None:
    """The tokenizer as llama.cpp made it for the base (``tokenizer.ggml.*``); the chat template is ours."""
    from gguf import GGUFReader, GGUFValueType

    fields = {k: f for k, f in GGUFReader(base_gguf).fields.items()
              if k.startswith("tokenizer.") and k != CHAT_TEMPLATE_KEY}
    tokens = len(fields["tokenizer.ggml.tokens"].data)
    if tokens != vocab_size:
        raise ExportError(source.name, fmt, f"its vocabulary ({vocab_size} tokens) is not its base GGUF's "
                          f"({tokens}); export --format hf and use llama.cpp's convert_hf_to_gguf.py")
    for key, f in fields.items():
        array = f.types[0] == GGUFValueType.ARRAY
        writer.add_key_value(key, f.contents(), f.types[0], sub_type=f.types[-1] if array else None)


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
