"""``/v1/files``: uploads stored on disk (written atomically), metadata in the store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Form, Query, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel
from sqlalchemy import func, select

from tunesmith.api.deps import current_project, get_store
from tunesmith.api.errors import ApiError, not_found
from tunesmith.api.lists import After, Deleted, Page, page
from tunesmith.jobs import store as st
from tunesmith.jobs.store import File, Project, Store

router = APIRouter(prefix="/v1/files")
CHUNK = 1 << 20


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
