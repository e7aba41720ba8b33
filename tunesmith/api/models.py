"""``/v1/models``: the bundled base models and the caller's fine-tuned models, and their exports."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict

from tunesmith.api.deps import current_project, get_store, resolve_model
from tunesmith.api.errors import ApiError, model_not_found
from tunesmith.api.lists import Deleted
from tunesmith.errors import UnknownModelError
from tunesmith.export import FORMATS, QUANTS, check_request, export, file_stem
from tunesmith.export.archive import download
from tunesmith.export.source import source_of
from tunesmith.jobs import registry
from tunesmith.jobs.store import Model, Project, Store
from tunesmith.models.registry import BUNDLED

router = APIRouter(prefix="/v1/models")
BASE_CREATED = 1730419200  # the bundled models carry no date of their own
# One export at a time per server: each loads a whole model and writes it out (CPU, memory, disk).
_EXPORTING = threading.Lock()
_BINARY = {"schema": {"type": "string", "format": "binary"}}


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
def delete(name: str, request: Request, project: Project = Depends(current_project),
           store: Store = Depends(get_store)) -> dict:
    if name in BUNDLED or name in store.settings.aliases:
        raise ApiError(400, f"{name} is a base model; only fine-tuned models can be deleted", param="model")
    resolved = resolve_model(store, project, name)
    try:
        registry.delete(store, name, project.id)
    except UnknownModelError:
        raise model_not_found(name) from None
    request.app.state.engines.unload(resolved)  # its adapter leaves the serving cache
    return {"id": name, "object": "model", "deleted": True}


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    format: Literal[FORMATS]
    quant: Literal[QUANTS] | None = None  # gguf, gguf-lora, ollama: f16 when not given
    include_base: bool = False  # peft: the base model beside the adapter; gguf-lora: the base GGUF


@router.post("/{name:path}/export", response_class=StreamingResponse, responses={200: {
    "description": "The export: a GGUF file as it is, or a tar of the export folder",
    "content": {"application/octet-stream": _BINARY, "application/x-tar": _BINARY}}})
def export_model(name: str, body: ExportRequest, project: Project = Depends(current_project),
                 store: Store = Depends(get_store)) -> StreamingResponse:
    """``tunesmith export`` over HTTP, for the model's owner. The export is written to a temporary folder under
    the home, then streamed and removed; a second export while one is being written gets a 429."""
    resolved = resolve_model(store, project, name)
    check_request(name, body.format, body.quant, body.include_base)
    if not _EXPORTING.acquire(blocking=False):
        raise ApiError(429, "Another export is being written; this server writes one at a time. Try again when it "
                       "has finished.", "requests", code="rate_limit_exceeded")
    root = store.settings.home / "exports"
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=root))
    folder = f"{file_stem(name)}-{body.format}"
    try:
        # Paths inside the export (an adapter's base) name the folder as the archive unpacks it.
        done = export(source_of(resolved, store.settings), body.format, work / folder, body.quant,
                      body.include_base, refer_to=Path(folder))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        _EXPORTING.release()
    size, chunks, media_type, filename = download(done.path, done.files)
    return StreamingResponse(_then_removed(chunks, work), media_type=media_type,
                             headers={"Content-Length": str(size),
                                      "Content-Disposition": f'attachment; filename="{filename}"'})


def _then_removed(chunks: Iterator[bytes], work: Path) -> Iterator[bytes]:
    """The download's bytes; the export is removed once sent, or once the client has gone (the generator is
    closed then)."""
    try:
        yield from chunks
    finally:
        shutil.rmtree(work, ignore_errors=True)
