"""Fine-tuned models on disk: ``ft:`` names, their metadata, and resolution to weights.

Layout under the tunesmith home::

    jobs/<job_id>/checkpoints/step-000120/   PEFT adapter (or full model) + trainer state
    jobs/<job_id>/model/                     the final weights
    models/<short_id>.json                   metadata of ``ft:{base}:{org}:{suffix}:{short_id}``

A checkpoint is addressed as ``ft:{base}:{org}:{suffix}:{short_id}:ckpt-step-{N}``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunesmith.config import Settings, get_settings
from tunesmith.errors import UnknownModelError

_ALPHABET = string.ascii_letters + string.digits
_CKPT = re.compile(r"^ckpt-step-(\d+)$")


def new_id(n: int = 8) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def model_name(base: str, org: str, suffix: str | None, short_id: str) -> str:
    return f"ft:{base}:{org}:{suffix or ''}:{short_id}"


@dataclass
class FineTunedModel:
    id: str  # short id, the last part of the name
    name: str
    base: str
    job_id: str
    method: str  # "lora" | "full"
    format: str  # data format trained on: chat | pairs | completion
    path: str  # final weights
    created_at: int
    trained_tokens: int
    checkpoints: dict[int, str] = field(default_factory=dict)  # step → weights dir
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class ResolvedModel:
    """What the engine needs to serve a model name."""

    name: str
    base: str
    weights: Path | None  # None for a base model
    method: str | None
    format: str = "chat"


def save(model: FineTunedModel, settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    target = settings.models_dir / f"{model.id}.json"
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(model), indent=2))
    os.replace(tmp, target)


def forget(name: str, settings: Settings | None = None) -> None:
    """Drop a model's metadata: its name no longer resolves."""
    settings = settings or get_settings()
    (settings.models_dir / f"{name.split(':')[-1]}.json").unlink(missing_ok=True)


def list_models(settings: Settings | None = None) -> list[FineTunedModel]:
    settings = settings or get_settings()
    found = [_load(p) for p in sorted(settings.models_dir.glob("*.json"))]
    return sorted(found, key=lambda m: m.created_at)


def _load(path: Path) -> FineTunedModel:
    data = json.loads(path.read_text())
    data["checkpoints"] = {int(k): v for k, v in data.get("checkpoints", {}).items()}
    return FineTunedModel(**data)


def resolve(name: str, settings: Settings | None = None) -> ResolvedModel:
    """A base model name (returned as is) or an ``ft:`` model / checkpoint name."""
    if not name.startswith("ft:"):
        return ResolvedModel(name, name, None, None)
    settings = settings or get_settings()
    parts = name.split(":")
    step = None
    if len(parts) == 6 and _CKPT.match(parts[5]):
        step = int(_CKPT.match(parts[5]).group(1))
        parts = parts[:5]
    path = settings.models_dir / f"{parts[-1]}.json" if len(parts) == 5 else None
    if path is None or not path.exists():
        raise UnknownModelError(f"unknown model {name!r} (see `tunesmith models`)")
    model = _load(path)
    if ":".join(parts) != model.name:
        raise UnknownModelError(f"unknown model {name!r} (did you mean {model.name!r}?)")
    if step is None:
        return ResolvedModel(name, model.base, Path(model.path), model.method, model.format)
    if step not in model.checkpoints:
        steps = ", ".join(f"ckpt-step-{s}" for s in model.checkpoints) or "none"
        raise UnknownModelError(f"{model.name} has no checkpoint at step {step} (checkpoints: {steps})")
    return ResolvedModel(name, model.base, Path(model.checkpoints[step]), model.method, model.format)
