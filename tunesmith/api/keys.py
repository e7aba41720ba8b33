"""``/v1/admin/keys``: create, list and revoke API keys; admin keys only (and the keyless local user).

The API twin of ``tunesmith keys``. A key's text is shown once, when it is created; the store keeps
its hash. A revoked key is refused from the next request on (the gate looks every key up).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from tunesmith.api.deps import admin_caller, get_store
from tunesmith.api.errors import not_found
from tunesmith.jobs.store import ApiKey, Store

router = APIRouter(prefix="/v1/admin/keys", dependencies=[Depends(admin_caller)])
PROJECT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    project: Annotated[str, Field(min_length=1, max_length=64, pattern=PROJECT_NAME)]
    admin: bool = False


class KeyObject(BaseModel):
    object: str = "api_key"
    id: str
    project: str
    redacted_value: str  # the key's first characters, enough to recognise it
    admin: bool
    created_at: int
    revoked_at: int | None


class CreatedKey(KeyObject):
    value: str  # the whole key: shown this once


class KeyList(BaseModel):
    object: str = "list"
    data: list[KeyObject]


def key_object(key: ApiKey, project: str) -> KeyObject:
    return KeyObject(id=key.id, project=project, redacted_value=key.prefix + "…", admin=key.admin,
                     created_at=key.created_at, revoked_at=key.revoked_at)


@router.post("")
def create(body: CreateKey, store: Store = Depends(get_store)) -> CreatedKey:
    row, value = store.create_key(body.project, admin=body.admin)
    return CreatedKey(**key_object(row, body.project).model_dump(), value=value)


@router.get("")
def list_keys(store: Store = Depends(get_store)) -> KeyList:
    return KeyList(data=[key_object(k, p.name) for k, p in store.keys()])


@router.delete("/{key_id}")
def revoke(key_id: Annotated[str, Field(max_length=64)], store: Store = Depends(get_store)) -> KeyObject:
    found = store.revoke_key(key_id) if key_id.startswith("key_") else None
    if found is None:
        raise not_found("API key", key_id)
    key, project = found
    return key_object(key, project.name)
