"""Export a model to run elsewhere: a PEFT adapter, a merged Hugging Face model, GGUF, or an Ollama folder.

Every format writes one directory. It is written beside its destination and renamed into place
when complete, so a failed or interrupted export never leaves a half-written model behind.

==========  =====================================================================================
peft        the LoRA adapter as PEFT saves it (optionally with its base model in ``base/``)
hf          base + adapter merged into one Hugging Face model directory (or a full model as is)
gguf        the merged model as one GGUF file (f16 or q8_0), llama or gemma3 architecture
gguf-lora   the LoRA alone as a GGUF adapter for the base's own GGUF file (optionally a copy of it)
ollama      the GGUF file and a Modelfile
==========  =====================================================================================
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.errors import TunesmithError

FORMATS = ("peft", "hf", "gguf", "gguf-lora", "ollama")
QUANTS = ("f16", "q8_0", "q4_k_m")
GGUF_FORMATS = ("gguf", "gguf-lora", "ollama")

# progress(what, done, total): called as an export goes; "total" is the number of steps of "what".
Progress = Callable[[str, int, int], None]


class ExportError(TunesmithError):
    """A model cannot be exported in the format asked for; the message names both."""

    def __init__(self, model: str, fmt: str, why: str, param: str = "format"):
        super().__init__(f"cannot export {model} as {fmt}: {why}")
        self.param = param  # the API request's field at fault


@dataclass
class Exported:
    path: Path  # the export directory
    files: list[Path] = field(default_factory=list)  # what it holds, relative to path
    usage: list[str] = field(default_factory=list)  # commands that consume it


def export(source, fmt: str, out: Path, quant: str | None = None, include_base: bool = False,
           refer_to: Path | None = None, progress: Progress | None = None) -> Exported:
    """Write ``source`` (a ``source.Source``) in format ``fmt`` to the new directory ``out``.

    ``refer_to`` is where the user will find ``out`` (an archive's folder name, when it travels): files
    that point at each other, like an adapter's base, name it; by default ``out`` itself."""
    check_request(source.name, fmt, quant, include_base)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(source.name, fmt, f"{out} already exists and is not empty; remove it or choose another --out")
    progress = progress or (lambda what, done, total: None)
    refer_to = refer_to or out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        usage = _write(source, fmt, tmp, quant or "f16", include_base, refer_to, progress)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    return Exported(out, files, usage)


def check_request(model: str, fmt: str, quant: str | None, include_base: bool) -> None:
    """Refuse what no model can be exported as, before any work."""
    if fmt not in FORMATS:
        raise ExportError(model, fmt, f"unknown format; expected one of {', '.join(FORMATS)}")
    if quant is not None and fmt not in GGUF_FORMATS:
        raise ExportError(model, fmt, f"--quant applies to {', '.join(GGUF_FORMATS)} only", "quant")
    if quant is not None and quant not in QUANTS:
        raise ExportError(model, fmt, f"unknown quantization {quant!r}; expected one of {', '.join(QUANTS)}", "quant")
    if quant == "q4_k_m":
        # gguf-py (the package llama.cpp ships) has no k-quant encoder in Python, only decoders.
        raise ExportError(model, fmt, "q4_k_m is a k-quant that the gguf package cannot write; export with --quant "
                          "f16 and run llama.cpp's `llama-quantize MODEL-f16.gguf MODEL-q4_k_m.gguf Q4_K_M`", "quant")
    if include_base and fmt not in ("peft", "gguf-lora"):
        raise ExportError(model, fmt, "--base applies to peft and gguf-lora (the other formats hold the whole model)",
                          "include_base")


def _write(source, fmt: str, out: Path, quant: str, include_base: bool, refer_to: Path,
           progress: Progress) -> list[str]:
    from tunesmith.export import gguf_file, hf_model, ollama, peft_adapter

    if fmt == "peft":
        return peft_adapter.export_peft(source, out, include_base, refer_to, progress)
    if fmt == "hf":
        return hf_model.export_hf(source, out, refer_to, progress)
    if fmt == "gguf":
        return gguf_file.export_gguf(source, out, quant, refer_to, progress)
    if fmt == "gguf-lora":
        return gguf_file.export_lora_gguf(source, out, quant, include_base, refer_to, progress)
    return ollama.export_ollama(source, out, quant, refer_to, progress)


def file_stem(model: str) -> str:
    """A model name as a file name: ``ft:smollm2-135m-instruct:local:bot:AbC`` → ``smollm2-135m-instruct-local-bot-AbC``
    (Ollama and file systems take no colons)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model.removeprefix("ft:")).strip("-.") or "model"
