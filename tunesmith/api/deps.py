"""What every request needs: the store, the caller's project, and model names resolved for it."""

from __future__ import annotations

from pathlib import Path

from fastapi import Request
from sqlalchemy import select

from tunesmith.api.errors import ApiError, model_not_found
from tunesmith.jobs.store import Checkpoint, Job, Model, Project, Store
from tunesmith.models import finetuned
from tunesmith.models.registry import BUNDLED

LOCAL_PROJECT = "local"


def get_store(request: Request) -> Store:
    return request.app.state.store


def current_project(request: Request) -> Project:
    """The project of the request's API key; without any key configured, the local project.

    The keyless mode exists only on a loopback address (``tunesmith serve`` refuses otherwise)."""
    store: Store = request.app.state.store
    header = request.headers.get("authorization", "")
    if not store.has_keys():
        with store.session() as s:
            return store.project(s, LOCAL_PROJECT)
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "Missing API key: send it as 'Authorization: Bearer KEY' "
                            "(create one with `tunesmith keys create --project NAME`).",
                       "authentication_error", code="missing_api_key")
    project = store.project_for_key(key.strip())
    if project is None:
        raise ApiError(401, "Incorrect API key provided.", "authentication_error", code="invalid_api_key")
    return project


def resolve_model(store: Store, project: Project, name: str, param: str = "model") -> finetuned.ResolvedModel:
    """A base model, or a fine-tuned model or checkpoint that belongs to ``project``; else 404."""
    if not name.startswith("ft:"):
        if name in BUNDLED:
            return finetuned.ResolvedModel(name, name, None, None)
        raise model_not_found(name, param)
    with store.session() as s:
        model = s.get(Model, name)
        if model is not None and model.project_id == project.id and not model.deleted:
            return finetuned.resolve(name, store.settings)
        ckpt = s.scalar(select(Checkpoint).where(Checkpoint.name == name, Checkpoint.project_id == project.id))
        if ckpt is None:
            raise model_not_found(name, param)
        job = s.get(Job, ckpt.job_id)
        return finetuned.ResolvedModel(name, job.base, Path(ckpt.path), "lora", job.data_format or "chat")
