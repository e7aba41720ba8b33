"""What every request needs: the store, the caller's project, and model names resolved for it."""

from __future__ import annotations

from fastapi import Request

from tunesmith.api.errors import ApiError, model_not_found
from tunesmith.api.gate import Caller
from tunesmith.errors import UnknownModelError
from tunesmith.jobs import registry
from tunesmith.jobs.store import Project, Store
from tunesmith.models.finetuned import ResolvedModel
from tunesmith.models.registry import BUNDLED


def get_store(request: Request) -> Store:
    return request.app.state.store


def current_caller(request: Request) -> Caller:
    """Who is asking: the gate (``api/gate.py``) checked the key before the route ran."""
    return request.state.caller


def current_project(request: Request) -> Project:
    return current_caller(request).project


def admin_caller(request: Request) -> Caller:
    caller = current_caller(request)
    if not caller.admin:
        raise ApiError(403, "This needs an admin key (`tunesmith keys create --project NAME --admin`).",
                       "permission_error", code="admin_required")
    return caller


def resolve_model(store: Store, project: Project, name: str, param: str = "model") -> ResolvedModel:
    """A bundled base model, or a fine-tuned model or checkpoint that belongs to ``project``; else 404."""
    if not name.startswith("ft:") and name not in BUNDLED:
        raise model_not_found(name, param)
    try:
        return registry.resolve(name, store, project.id)
    except UnknownModelError:
        raise model_not_found(name, param) from None
