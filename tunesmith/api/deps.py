"""What every request needs: the store, the caller's project, model names resolved for it, and whether
its client is still there."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tunesmith.api.errors import ApiError, model_not_found
from tunesmith.api.gate import Caller
from tunesmith.errors import UnknownModelError
from tunesmith.jobs import registry
from tunesmith.jobs.store import Project, Store
from tunesmith.models.finetuned import ResolvedModel, is_tuned
from tunesmith.models.registry import BUNDLED


def get_store(request: Request) -> Store:
    return request.app.state.store


# Declares the bearer key in the OpenAPI document; the gate (api/gate.py) has checked it before any route runs.
_bearer = HTTPBearer(auto_error=False, description="An API key: `tunesmith keys create --project NAME`")


def current_caller(request: Request, _: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Caller:
    """Who is asking, as the gate found from the key."""
    return request.state.caller


def current_project(caller: Caller = Depends(current_caller)) -> Project:
    return caller.project


def admin_caller(caller: Caller = Depends(current_caller)) -> Caller:
    if not caller.admin:
        raise ApiError(403, "This needs an admin key (`tunesmith keys create --project NAME --admin`).",
                       "permission_error", code="admin_required")
    return caller


def resolve_model(store: Store, project: Project, name: str, param: str = "model") -> ResolvedModel:
    """A bundled base model or an alias of one, or a fine-tuned model or checkpoint that belongs to
    ``project``; else 404."""
    if not is_tuned(name) and name not in BUNDLED and name not in store.settings.aliases:
        raise model_not_found(name, param)
    try:
        return registry.resolve(name, store, project.id)
    except UnknownModelError:
        raise model_not_found(name, param) from None


async def client_gone(request: Request) -> None:
    """Returns when the client disconnects: the body is read, so the next ASGI message is the disconnect.
    (A streamed answer needs no watch: Starlette stops the stream when its client goes.)"""
    while (await request.receive())["type"] != "http.disconnect":
        pass
