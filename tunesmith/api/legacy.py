"""``/v1/fine-tunes``: OpenAI's legacy fine-tuning API, as the ``openai`` 0.28 library and CLI speak it.

A legacy job is a job like any other (the same store, worker and lifecycle; it shows in
``/v1/fine_tuning/jobs`` too); only its shape differs: statuses ``pending``/``running``/…, events
embedded in the object, ``hyperparams``, file objects in ``training_files``/``result_files``, and its
model named as the legacy API named them (``curie:ft-org-suffix-2023-01-31-12-00-00``, served by
``/v1/completions`` and ``/v1/chat/completions`` like any other). ``fine_tunes.follow`` reads the
job's events as server-sent events (``GET …/events?stream=true``) until the job ends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from tunesmith.api.deps import current_project, get_store
from tunesmith.api.errors import ApiError
from tunesmith.api.files import FileObject, file_object
from tunesmith.api.fine_tuning import SUFFIX_PATTERN, new_job, owned_job, transition_job
from tunesmith.errors import UnknownModelError
from tunesmith.jobs import registry
from tunesmith.jobs import store as st
from tunesmith.jobs.store import Event, File, Job, Project, Store

router = APIRouter(prefix="/v1/fine-tunes")
JobId = Annotated[str, PathParam(max_length=64)]
STATUS = {st.VALIDATING: "pending", st.QUEUED: "pending", st.PAUSED: "pending", st.RUNNING: "running",
          st.SUCCEEDED: "succeeded", st.FAILED: "failed", st.CANCELLED: "cancelled"}
FINISHED = (st.SUCCEEDED, st.FAILED, st.CANCELLED)
FOLLOW_POLL_SECONDS = 0.5
DEFAULT_PROMPT_LOSS_WEIGHT = 0.01  # as the legacy API had it
CLASSIFICATION = ("classification_n_classes", "classification_positive_class", "classification_betas")


class CreateFineTune(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    training_file: Annotated[str, Field(max_length=64)]
    validation_file: Annotated[str, Field(max_length=64)] | None = None
    model: Annotated[str, Field(max_length=256)] = "curie"  # the legacy API's default
    n_epochs: Annotated[int, Field(ge=1, le=50)] | None = None  # unset: tunesmith's "auto", not the old 4
    batch_size: Annotated[int, Field(ge=1, le=256)] | None = None
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=100)] | None = None
    prompt_loss_weight: Annotated[float, Field(ge=0, le=1)] | None = None
    suffix: Annotated[str, Field(min_length=1, max_length=40, pattern=SUFFIX_PATTERN)] | None = None
    compute_classification_metrics: bool | None = None
    classification_n_classes: int | None = None
    classification_positive_class: Annotated[str, Field(max_length=256)] | None = None
    classification_betas: Annotated[list[float], Field(max_length=16)] | None = None


class LegacyEvent(BaseModel):
    object: Literal["fine-tune-event"]
    created_at: int
    level: str
    message: str


class FineTune(BaseModel):
    id: str
    object: Literal["fine-tune"]
    model: str
    created_at: int
    updated_at: int
    status: Literal["pending", "running", "succeeded", "failed", "cancelled"]
    fine_tuned_model: str | None
    organization_id: str
    hyperparams: dict[str, Any]
    training_files: list[FileObject]
    validation_files: list[FileObject]
    result_files: list[FileObject]
    events: list[LegacyEvent] | None = None


class FineTuneList(BaseModel):
    object: Literal["list"]
    data: list[FineTune]


class EventList(BaseModel):
    object: Literal["list"]
    data: list[LegacyEvent]


def event_object(e: Event) -> dict:
    return {"object": "fine-tune-event", "created_at": e.created_at, "level": e.level, "message": e.message}


def fine_tune(s, job: Job, org: str, with_events: bool = True) -> dict:
    files = {f.id: file_object(f) for f in s.scalars(select(File).where(
        File.id.in_([job.training_file, job.validation_file or "", *job.result_files])))}
    # a listing needs only the newest event's time, not every event of every job
    events = s.scalars(select(Event).where(Event.job_id == job.id).order_by(Event.seq)).all() if with_events else []
    newest = max((e.created_at for e in events), default=None) if with_events else s.scalar(
        select(func.max(Event.created_at)).where(Event.job_id == job.id))
    hp = job.hyperparameters
    body = {
        "id": job.id, "object": "fine-tune", "model": job.model, "created_at": job.created_at,
        "updated_at": max(job.created_at, newest or 0), "status": STATUS[job.status],
        "fine_tuned_model": job.fine_tuned_model, "organization_id": org,
        "hyperparams": {"n_epochs": hp.get("n_epochs"), "batch_size": hp.get("batch_size"),
                        "learning_rate_multiplier": hp.get("learning_rate_multiplier"),
                        "prompt_loss_weight": hp.get("prompt_loss_weight", 0.0)},
        "training_files": [files[job.training_file]] if job.training_file in files else [],
        "validation_files": [files[job.validation_file]] if job.validation_file in files else [],
        "result_files": [files[f] for f in job.result_files if f in files],
    }
    return {**body, "events": [event_object(e) for e in events]} if with_events else body


@router.post("", response_model=FineTune)
def create(body: CreateFineTune, project: Project = Depends(current_project),
           store: Store = Depends(get_store)) -> dict:
    if body.compute_classification_metrics or any(getattr(body, name) is not None for name in CLASSIFICATION):
        param = "compute_classification_metrics" if body.compute_classification_metrics else next(
            name for name in CLASSIFICATION if getattr(body, name) is not None)
        raise ApiError(400, "Classification metrics are not computed by tunesmith: leave out "
                            "compute_classification_metrics and the classification_* options (`tunesmith eval` "
                            "scores a held-out file instead).", param=param, code="unsupported_parameter")
    hp = {"n_epochs": body.n_epochs or "auto", "batch_size": body.batch_size or "auto",
          "learning_rate_multiplier": body.learning_rate_multiplier or "auto",
          "prompt_loss_weight": DEFAULT_PROMPT_LOSS_WEIGHT if body.prompt_loss_weight is None
          else body.prompt_loss_weight}
    job = new_job(store, project, Job(model=body.model, training_file=body.training_file,
                                      validation_file=body.validation_file, method="supervised",
                                      hyperparameters=hp, suffix=body.suffix, legacy=True))
    with store.read() as s:
        return fine_tune(s, s.get(Job, job.id), project.name)


@router.get("", response_model=FineTuneList)
def list_fine_tunes(project: Project = Depends(current_project), store: Store = Depends(get_store)) -> dict:
    with store.read() as s:
        jobs = s.scalars(select(Job).where(Job.project_id == project.id).order_by(Job.created_at, Job.id)).all()
        return {"object": "list", "data": [fine_tune(s, j, project.name, with_events=False) for j in jobs]}


@router.get("/{job_id}", response_model=FineTune)
def retrieve(job_id: JobId, project: Project = Depends(current_project),
             store: Store = Depends(get_store)) -> dict:
    with store.read() as s:
        return fine_tune(s, owned_job(s, project, job_id), project.name)


@router.post("/{job_id}/cancel", response_model=FineTune)
def cancel(job_id: JobId, project: Project = Depends(current_project),
           store: Store = Depends(get_store)) -> dict:
    transition_job(store, project, job_id, st.CANCELLED, "Fine-tuning job cancelled")
    return retrieve(job_id, project, store)


@router.delete("/{job_id}")
def delete(job_id: JobId, project: Project = Depends(current_project),
           store: Store = Depends(get_store)) -> dict:
    """``fine_tunes.delete``: the job's fine-tuned model is deleted (the job and its events stay)."""
    with store.read() as s:
        job = owned_job(s, project, job_id)
    if job.fine_tuned_model is None:
        raise ApiError(400, f"fine-tune {job_id} has no model to delete (it is {STATUS[job.status]})", param="id")
    try:
        registry.delete(store, job.fine_tuned_model, project.id)
    except UnknownModelError:
        raise ApiError(400, f"the model of fine-tune {job_id} is deleted already", param="id") from None
    return {"id": job_id, "object": "fine-tune", "deleted": True}


@router.get("/{job_id}/events", response_model=EventList,
            responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}})
def events(job_id: JobId, stream: bool = False,
           project: Project = Depends(current_project), store: Store = Depends(get_store)):
    with store.read() as s:
        owned_job(s, project, job_id)
        if not stream:
            rows = s.scalars(select(Event).where(Event.job_id == job_id).order_by(Event.seq)).all()
            return {"object": "list", "data": [event_object(e) for e in rows]}
    return StreamingResponse(_follow(store, job_id), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


async def _follow(store: Store, job_id: str) -> AsyncIterator[str]:
    """Every event of the job, oldest first, then new ones as they come; ``[DONE]`` once the job has
    ended and its last event is sent. A client that leaves ends it (Starlette stops the stream)."""
    seen = 0
    while True:
        rows, status = await run_in_threadpool(_events_after, store, job_id, seen)
        for seq, event in rows:
            seen = seq
            yield f"data: {json.dumps(event)}\n\n"
        if status in FINISHED and not rows:
            yield "data: [DONE]\n\n"
            return
        await asyncio.sleep(FOLLOW_POLL_SECONDS)


def _events_after(store: Store, job_id: str, seq: int) -> tuple[list[tuple[int, dict]], str]:
    with store.read() as s:
        rows = s.scalars(select(Event).where(Event.job_id == job_id, Event.seq > seq).order_by(Event.seq)).all()
        return [(e.seq, event_object(e)) for e in rows], s.get(Job, job_id).status
