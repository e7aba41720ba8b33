"""The one registry of fine-tuned models: the store's ``models`` rows, for the API, the worker and the CLI.

``tunesmith train`` registers its models here as the worker registers a job's, and ``tunesmith
models``, ``/v1/models`` and every command that takes a model name read the same rows (the CLI is
a client of the store, as ``docker`` is of its daemon's state). Weights stay on disk; a row says
where. A checkpoint ``ft:…:ckpt-step-N`` resolves through the job's checkpoint rows (usable while the
job runs, and after its model is deleted) or, for a ``tunesmith train`` run, through its model's row.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from sqlalchemy import select
from sqlalchemy.orm import Session

from tunesmith.errors import UnknownModelError
from tunesmith.jobs.store import Checkpoint, Job, Model, Store, now
from tunesmith.models.finetuned import FineTunedModel, ResolvedModel, is_tuned

_CKPT = re.compile(r"^(ft:[^:]*:[^:]*:[^:]*:[^:]+):ckpt-step-(\d+)$")


def register(session: Session, model: FineTunedModel, project_id: str, job_id: str | None) -> Model:
    """Add (or, for a job run again after a crash, update) the row of a newly trained model."""
    row = session.get(Model, model.name) or Model(name=model.name, project_id=project_id, created_at=now())
    row.job_id, row.base, row.method, row.format, row.path = job_id, model.base, model.method, model.format, model.path
    row.trained_tokens, row.metrics = model.trained_tokens, model.metrics
    row.checkpoints = {str(step): path for step, path in model.checkpoints.items()}
    session.add(row)
    return row


def record(data: dict) -> FineTunedModel:
    """A model record as a job process reports it (``FineTunedModel`` as JSON)."""
    return FineTunedModel(**{**data, "checkpoints": {int(k): v for k, v in data.get("checkpoints", {}).items()}})


def resolve(name: str, store: Store, project_id: str | None = None) -> ResolvedModel:
    """A base model name (returned as is), an alias of one (settings' ``aliases``: an OpenAI model
    name), or an ``ft:`` model or checkpoint of ``project_id`` (any project when None: the operator's
    CLI); ``UnknownModelError`` otherwise."""
    with store.read() as s:
        return lookup(s, name, project_id, store.settings.aliases)


def lookup(s: Session, name: str, project_id: str | None = None,
           aliases: Mapping[str, str] = MappingProxyType({})) -> ResolvedModel:
    """``resolve`` inside a transaction the caller holds."""
    if not is_tuned(name):
        return ResolvedModel(name, aliases[name], None, None) if name in aliases else ResolvedModel.of_base(name)
    ckpt = _CKPT.match(name)
    model_name = ckpt.group(1) if ckpt else name
    row = s.get(Model, model_name)
    if row is not None and (row.deleted or (project_id is not None and row.project_id != project_id)):
        row = None
    if ckpt:
        found = s.scalar(select(Checkpoint).where(Checkpoint.name == name))
        if found is not None and (project_id is None or found.project_id == project_id):
            job = s.get(Job, found.job_id)
            return ResolvedModel(name, job.base, Path(found.path), "lora", job.data_format or "chat")
    if row is None:
        raise UnknownModelError(_unknown(s, model_name, project_id))
    if not ckpt:
        return ResolvedModel(name, row.base, Path(row.path), row.method, row.format or "chat")
    step = ckpt.group(2)
    if step not in (row.checkpoints or {}):
        steps = ", ".join(f"ckpt-step-{k}" for k in sorted(row.checkpoints or {}, key=int)) or "none"
        raise UnknownModelError(f"{model_name} has no checkpoint at step {int(step)} (checkpoints: {steps})")
    return ResolvedModel(name, row.base, Path(row.checkpoints[step]), row.method, row.format or "chat")


def _unknown(s: Session, name: str, project_id: str | None) -> str:
    """Not found; a name that differs from a model of the caller's only in its suffix gets a hint."""
    short_id = name.rsplit(":", 1)[-1]
    query = select(Model.name).where(Model.name.endswith(":" + short_id), Model.deleted.is_(False))
    if project_id is not None:
        query = query.where(Model.project_id == project_id)
    near = s.scalar(query)
    hint = f" (did you mean {near!r}?)" if near else " (see `tunesmith models`)"
    return f"unknown model {name!r}{hint}"


def list_models(store: Store, project_id: str | None = None) -> list[Model]:
    with store.read() as s:
        query = select(Model).where(Model.deleted.is_(False)).order_by(Model.created_at, Model.name)
        if project_id is not None:
            query = query.where(Model.project_id == project_id)
        return list(s.scalars(query))


def delete(store: Store, name: str, project_id: str | None = None) -> None:
    """The name stops resolving and the final weights are removed; a job's checkpoints stay (they are
    the job's, listed with it)."""
    with store.session() as s:
        row = s.get(Model, name)
        if row is None or row.deleted or (project_id is not None and row.project_id != project_id):
            raise UnknownModelError(f"unknown model {name!r}")
        row.deleted = True
        path = row.path
    if path:
        shutil.rmtree(path, ignore_errors=True)
