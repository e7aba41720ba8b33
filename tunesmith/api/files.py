"""``/v1/files``: uploads stored on disk (written atomically), metadata in the store."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Form, Query, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from tunesmith.api.deps import current_project, get_store, resolve_model
from tunesmith.api.errors import ApiError, not_found
from tunesmith.api.lists import After, Deleted, Page, page
from tunesmith.data.formats import PREFERENCE
from tunesmith.data.formats import Problem as DataProblem
from tunesmith.data.validate import DEFAULT_MAX_LENGTH, MIN_EXAMPLES, validate_file
from tunesmith.errors import TunesmithError
from tunesmith.jobs import store as st
from tunesmith.jobs.store import File, Project, Store
from tunesmith.models.loading import ensure_cached, load_renderer
from tunesmith.train import hyper

router = APIRouter(prefix="/v1/files")
CHUNK = 1 << 20
# One validation at a time per server: it tokenizes the whole file (up to the upload limit) on the CPU.
_VALIDATING = threading.Lock()
_RENDERERS: dict[str, object] = {}  # base model → its chat template and tokenizer, loaded once (under the lock)
Auto = Literal["auto"]


class FileObject(BaseModel):
    id: str
    object: Literal["file"]
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    status_details: str | None
    expires_at: int | None


def file_object(f: File) -> dict:
    return {"id": f.id, "object": "file", "bytes": f.bytes, "created_at": f.created_at, "filename": f.filename,
            "purpose": f.purpose, "status": "processed", "status_details": None, "expires_at": None}


def owned_file(store: Store, project: Project, file_id: str, param: str = "id") -> File:
    with store.read() as s:
        f = s.get(File, file_id)
    if f is None or f.project_id != project.id:
        raise not_found("File object", file_id, param)
    return f


@router.post("", response_model=FileObject)
def upload(file: UploadFile, purpose: Annotated[Literal["fine-tune"], Form()],
           project: Project = Depends(current_project), store: Store = Depends(get_store)) -> dict:
    limit = store.settings.max_upload_bytes
    file_id = st.make_id("file-")
    path = store.settings.files_dir / file_id
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".upload")
    size = 0
    try:
        with open(tmp, "wb") as out:
            while chunk := file.file.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"File is larger than the limit of {limit:,} bytes "
                                        "(setting TUNESMITH_MAX_UPLOAD_BYTES).", param="file", code="file_too_large")
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    row = File(id=file_id, project_id=project.id, filename=Path(file.filename or "upload.jsonl").name,
               purpose=purpose, bytes=size, path=str(path), created_at=st.now())
    quota = store.settings.project_max_bytes
    with store.session() as s:  # the write lock: two uploads cannot both take the last of the quota
        used = s.scalar(select(func.coalesce(func.sum(File.bytes), 0)).where(File.project_id == project.id))
        if used + size <= quota:
            s.add(row)
    if used + size > quota:
        path.unlink(missing_ok=True)
        raise ApiError(429, f"Storage quota exceeded: this project keeps {used:,} bytes of files and may keep "
                            f"{quota:,} (setting TUNESMITH_PROJECT_MAX_BYTES); delete files to make room.",
                       "insufficient_quota", param="file", code="quota_exceeded")
    return file_object(row)


@router.get("", response_model=Page[FileObject])
def list_files(purpose: Annotated[str | None, Query(max_length=64)] = None,
               limit: Annotated[int, Query(ge=1, le=10000)] = 10000, after: After = None,
               order: Literal["asc", "desc"] = "desc",
               project: Project = Depends(current_project), store: Store = Depends(get_store)) -> dict:
    with store.read() as s:
        query = select(File).where(File.project_id == project.id)
        if purpose:
            query = query.where(File.purpose == purpose)
        rows = s.scalars(query).all()
    rows = sorted(rows, key=lambda f: (f.created_at, f.id), reverse=order == "desc")
    return page(rows, file_object, limit, after)


@router.get("/{file_id}", response_model=FileObject)
def retrieve(file_id: str, project: Project = Depends(current_project), store: Store = Depends(get_store)) -> dict:
    return file_object(owned_file(store, project, file_id))


@router.get("/{file_id}/content", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string",
                                                                             "format": "binary"}}}}})
def content(file_id: str, project: Project = Depends(current_project),
            store: Store = Depends(get_store)) -> FileResponse:
    f = owned_file(store, project, file_id)
    return FileResponse(f.path, media_type="application/octet-stream", filename=f.filename)


@router.delete("/{file_id}", response_model=Deleted)
def delete(file_id: str, project: Project = Depends(current_project), store: Store = Depends(get_store)) -> dict:
    f = owned_file(store, project, file_id)
    with store.session() as s:
        s.delete(s.get(File, f.id))
    Path(f.path).unlink(missing_ok=True)
    return {"id": f.id, "object": "file", "deleted": True}


class ValidateRequest(BaseModel):
    """tunesmith's own: what `tunesmith validate` checks, for an uploaded file and the job it would make."""
    model_config = ConfigDict(extra="forbid", strict=True)
    model: Annotated[str, Field(max_length=256)] | None = None  # default: the server's default base model
    method: Literal["supervised", "dpo", "reinforcement"] | None = None  # None: the method follows the file
    purpose: Literal["training", "validation"] = "training"  # a validation file needs one example, not ten
    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] = "auto"
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] = "auto"
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=100)] = "auto"
    beta: Auto | Annotated[float, Field(gt=0, le=2)] = "auto"


class Problem(BaseModel):
    line: int | None
    field: str | None
    message: str


class Stats(BaseModel):
    min: int
    median: float
    p95: float
    max: int
    total: int


class ValidationReport(BaseModel):
    object: Literal["file.validation"]
    file: str
    ok: bool
    format: str | None
    method: Literal["supervised", "dpo", "reinforcement"]
    examples: int
    errors: list[Problem]
    warnings: list[Problem]
    tokens: Stats | None
    trained_tokens: Stats | None
    pair_tokens: dict[str, Stats] | None
    hyperparameters: dict[str, float | int | None] | None  # the "auto" values resolved, when the file is usable
    estimated_training_tokens: int | None


@router.post("/{file_id}/validate", response_model=ValidationReport)
def validate(file_id: str, body: ValidateRequest | None = None,
             project: Project = Depends(current_project), store: Store = Depends(get_store)) -> dict:
    """The report `tunesmith validate --json` prints, against the base model's chat template."""
    body = body or ValidateRequest()
    f = owned_file(store, project, file_id)
    base = resolve_model(store, project, body.model or store.settings.default_model).base
    if not _VALIDATING.acquire(blocking=False):
        raise ApiError(429, "Another file is being validated; try again shortly.", "rate_limit_exceeded",
                       code="rate_limit_exceeded")
    try:
        if base not in _RENDERERS:
            _RENDERERS[base] = load_renderer(ensure_cached(base, store.settings))
        preference = None if body.method is None else body.method == "dpo"
        minimum = MIN_EXAMPLES if body.purpose == "training" else 1
        report = validate_file(Path(f.path), _RENDERERS[base], DEFAULT_MAX_LENGTH, minimum, preference=preference,
                               prompts=body.method == "reinforcement")
    finally:
        _VALIDATING.release()
    method = body.method or ("dpo" if report.format == PREFERENCE else "supervised")
    hp = None
    if report.ok and body.purpose == "training":
        try:
            hp = hyper.resolve(len(report.tokenized), {"supervised": "lora"}.get(method, method), body.n_epochs,
                               body.batch_size, body.learning_rate_multiplier,
                               body.beta if method != "supervised" else "auto")
        except TunesmithError as exc:
            report.errors.append(DataProblem(None, None, str(exc)))
    data = report.as_dict()
    del data["path"]  # the server's own path of the file: the caller knows it by its id
    return {**data, "object": "file.validation", "file": f.id, "ok": report.ok, "method": method,
            "hyperparameters": hp.as_dict() if hp else None,
            "estimated_training_tokens": report.tokens.total * hp.n_epochs if hp and report.tokens else None}

