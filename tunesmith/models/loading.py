"""Load base models: GGUF → a safetensors cache under the tunesmith home → fast reloads.

The first use of a base model de-quantises its GGUF into fp32 safetensors (seconds to a minute);
every later load reads the cache (well under a second). Training must use the cached copy: a
model loaded straight from GGUF keeps a quantizer that reports it as not trainable.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunesmith.config import Settings, enforce_offline, get_settings
from tunesmith.data.tokenize import Renderer
from tunesmith.models.chatml import IM_END, IM_START, chatml_template
from tunesmith.models.registry import BaseModel, resolve_base

META_FILE = "tunesmith_base.json"


@dataclass
class BaseInfo:
    name: str
    path: Path
    end_of_turn: str
    added_token_ids: list[int] = field(default_factory=list)  # tokens we added (need training)


def ensure_cached(name: str, settings: Settings | None = None, status=None) -> BaseInfo:
    """Return the cached safetensors copy of a base model, converting it on first use.

    ``status`` is an optional callable(message) used to tell the user about the slow first use.
    """
    settings = settings or get_settings()
    base = resolve_base(name)
    target = settings.base_cache_dir / base.name
    if not (target / META_FILE).exists():
        if status:
            status(f"First use of {base.name}: converting to a safetensors cache in {target} …")
        _convert(base, target, settings.base_cache_dir)
    meta = json.loads((target / META_FILE).read_text())
    return BaseInfo(base.name, target, meta["end_of_turn"], meta.get("added_token_ids", []))


def _convert(base: BaseModel, target: Path, cache_root: Path) -> None:
    enforce_offline()
    from transformers import AddedToken, AutoModelForCausalLM, AutoTokenizer

    cache_root.mkdir(parents=True, exist_ok=True)
    src = base.locate(cache_root / "_sources")
    if src.suffix == ".gguf":
        kwargs = {"gguf_file": src.name}
        src_dir = src.parent
    else:
        kwargs, src_dir = {}, src
    tokenizer = AutoTokenizer.from_pretrained(src_dir, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(src_dir, dtype=torch.float32, **kwargs)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)

    added: list[int] = []
    if base.chatml_system is not None:
        tokenizer.chat_template = chatml_template(base.chatml_system)
    elif not tokenizer.chat_template:
        missing = [t for t in (IM_START, IM_END) if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing],
                                 special_tokens=True)
            model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
            added = tokenizer.convert_tokens_to_ids(missing)
        adds_bos = tokenizer.bos_token_id is not None and \
            tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
        tokenizer.chat_template = chatml_template(bos=adds_bos)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    end_of_turn = IM_END if IM_END in tokenizer.chat_template else tokenizer.eos_token

    # Write next to the target and rename, so a crash never leaves a half-written cache.
    tmp = Path(tempfile.mkdtemp(prefix=f".{base.name}-", dir=cache_root))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta = {"name": base.name, "source": str(src), "end_of_turn": end_of_turn,
                "added_token_ids": added}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_tokenizer(info: BaseInfo):
    enforce_offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(info.path)


def load_renderer(info: BaseInfo) -> Renderer:
    return Renderer(load_tokenizer(info), info.end_of_turn)


def load_model(info: BaseInfo, dtype: torch.dtype = torch.float32):
    enforce_offline()
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(info.path, dtype=dtype)
