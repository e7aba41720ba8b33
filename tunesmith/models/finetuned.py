"""Fine-tuned models: ``ft:`` names and what a model is made of.

Layout under the tunesmith home::

    jobs/<job_id>/checkpoints/step-000120/   PEFT adapter (or full model) + trainer state
    jobs/<job_id>/model/                     the final weights

A model is ``ft:{base}:{org}:{suffix}:{short_id}``, a checkpoint of it ``…:ckpt-step-{N}``. Which
names exist, and whose they are, is the store's to say (``jobs/registry.py``).
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from pathlib import Path

_ALPHABET = string.ascii_letters + string.digits


def new_id(n: int = 8) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def model_name(base: str, org: str, suffix: str | None, short_id: str) -> str:
    return f"ft:{base}:{org}:{suffix or ''}:{short_id}"


def family(name: str) -> str:
    """The base a model's name shows, as its first client named it: ``gpt-4o-mini`` for a job created
    on that alias and for every model tuned from its models, as OpenAI names them."""
    return name.split(":")[1] if name.startswith("ft:") else name


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

    @classmethod
    def of_base(cls, name: str) -> "ResolvedModel":
        """A base model, which needs no registry to resolve."""
        return cls(name, name, None, None)
