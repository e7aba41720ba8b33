"""``/v1/models``: the bundled base models and the caller's fine-tuned models."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from tunesmith.api.deps import current_project, get_store, resolve_model
from tunesmith.api.errors import ApiError, model_not_found
from tunesmith.api.lists import Deleted
from tunesmith.errors import UnknownModelError
from tunesmith.jobs import registry
from tunesmith.jobs.store import Model, Project, Store
from tunesmith.models.registry import BUNDLED

router = APIRouter(prefix="/v1/models")
BASE_CREATED = 1730419200  # the bundled models carry no date of their own


class ModelObject(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelObject]


def alias_owner(base: str) -> str:
    """``owned_by`` of an OpenAI model name: what it stands for here."""
    return f"tunesmith (alias of {base})"


def _object(name: str, created: int, owned_by: str) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by}


@router.get("", response_model=ModelList)
def list_models(project: Project = Depends(current_project), store: Store = Depends(get_store)) -> dict:
    data = [_object(name, BASE_CREATED, "tunesmith") for name in BUNDLED]
    data += [_object(alias, BASE_CREATED, alias_owner(base)) for alias, base in store.settings.aliases.items()]
    data += [_object(m.name, m.created_at, project.name) for m in registry.list_models(store, project.id)]
    return {"object": "list", "data": data}


@router.get("/{name:path}", response_model=ModelObject)
def retrieve(name: str, project: Project = Depends(current_project), store: Store = Depends(get_store)) -> dict:
    resolve_model(store, project, name)
    if name in BUNDLED:
        return _object(name, BASE_CREATED, "tunesmith")
    if name in store.settings.aliases:
        return _object(name, BASE_CREATED, alias_owner(store.settings.aliases[name]))
    with store.read() as s:
        row = s.get(Model, name)
    return _object(name, row.created_at if row else BASE_CREATED, project.name)


@router.delete("/{name:path}", response_model=Deleted)
def delete(name: str, project: Project = Depends(current_project), store: Store = Depends(get_store)) -> dict:
    if name in BUNDLED or name in store.settings.aliases:
        raise ApiError(400, f"{name} is a base model; only fine-tuned models can be deleted", param="model")
    try:
        registry.delete(store, name, project.id)
    except UnknownModelError:
        raise model_not_found(name) from None
    return {"id": name, "object": "model", "deleted": True}
