"""What every request needs: the store, the caller's project, and model names resolved for it."""

from __future__ import annotations

from fastapi import Request
from sqlalchemy import select

from tunesmith.api.errors import ApiError, model_not_found
from tunesmith.errors import UnknownModelError
from tunesmith.jobs import registry
from tunesmith.jobs.store import Project, Store
from tunesmith.models.finetuned import ResolvedModel
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
        with store.read() as s:  # the write lock only the first time, to create it
            found = s.scalar(select(Project).where(Project.name == LOCAL_PROJECT))
        if found is not None:
            return found
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


def resolve_model(store: Store, project: Project, name: str, param: str = "model") -> ResolvedModel:
    """A bundled base model, or a fine-tuned model or checkpoint that belongs to ``project``; else 404."""
    if not name.startswith("ft:") and name not in BUNDLED:
        raise model_not_found(name, param)
    try:
        return registry.resolve(name, store, project.id)
    except UnknownModelError:
        raise model_not_found(name, param) from None
