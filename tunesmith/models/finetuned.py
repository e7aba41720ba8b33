"""Fine-tuned models: ``ft:`` names and what a model is made of.

Layout under the tunesmith home::

    jobs/<job_id>/checkpoints/step-000120/   PEFT adapter (or full model) + trainer state
    jobs/<job_id>/model/                     the final weights

A model is ``ft:{base}:{org}:{suffix}:{short_id}``, a checkpoint of it ``…:ckpt-step-{N}``. Which
names exist, and whose they are, is the store's to say (``jobs/registry.py``).
"""

from __future__ import annotations

import re
import secrets
import string
import time
from dataclasses import dataclass, field
from pathlib import Path

_ALPHABET = string.ascii_letters + string.digits


def new_id(n: int = 8) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def model_name(base: str, org: str, suffix: str | None, short_id: str) -> str:
    return f"ft:{base}:{org}:{suffix or ''}:{short_id}"


# The legacy API's model names: ``curie:ft-acme-bot-2023-01-31-12-00-00`` (base, org, suffix, time).
_LEGACY_NAME = re.compile(r"^[\w.-]+:ft-[\w.-]+$")


def legacy_name(base: str, org: str, suffix: str | None, finished: int) -> str:
    stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime(finished))
    return f"{base}:ft-{org}{'-' + suffix if suffix else ''}-{stamp}"


def is_tuned(name: str) -> bool:
    """Whether a name is a fine-tuned model's (``ft:…``, or a legacy ``base:ft-…``), not a base model's."""
    return name.startswith("ft:") or _LEGACY_NAME.match(name) is not None


def family(name: str) -> str:
    """The base a model's name shows, as its first client named it: ``gpt-4o-mini`` for a job created
    on that alias and for every model tuned from its models, as OpenAI names them."""
    if name.startswith("ft:"):
        return name.split(":")[1]
    return name.split(":")[0] if _LEGACY_NAME.match(name) else name


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
