"""``/v1/fine_tuning/jobs``: create, list, retrieve, cancel, pause, resume, events, checkpoints.

The API only records what the caller asks for; the worker (``jobs/worker.py``) acts on it. Every
status change goes through ``jobs/lifecycle.py``, which refuses what its table does not allow.
"""

from __future__ import annotations

import random
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from tunesmith.api.deps import current_project, get_store, resolve_model
from tunesmith.api.errors import ApiError, not_found
from tunesmith.api.files import owned_file
from tunesmith.api.lists import After, Page, page
from tunesmith.graders import GraderError, grader_dict, parse_grader
from tunesmith.jobs import store as st
from tunesmith.jobs.store import Checkpoint, Event, Job, Project, Store
from tunesmith.jobs import lifecycle
from tunesmith.jobs.launcher import nproc_per_node
from tunesmith.models import finetuned
from tunesmith.train.hyper import DEFAULT_GROUP_SIZE, DEFAULT_PATIENCE, MAX_COMPLETION_TOKENS, MAX_GROUP_SIZE

router = APIRouter(prefix="/v1/fine_tuning/jobs")

Auto = Literal["auto"]
# A suffix is part of the model's name (ft:base:org:suffix:id): printable, and without the name's separator.
SUFFIX_PATTERN = r"^[^:\x00-\x1f\x7f-\x9f]*$"


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] = "auto"
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] = "auto"
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=100)] = "auto"
    # tunesmith's overfitting guard, active when there is a validation file (OpenAI has no such fields)
    early_stopping: bool = True
    patience: Annotated[int, Field(ge=1, le=50)] = DEFAULT_PATIENCE
    eval_steps: Annotated[int, Field(ge=1, le=1_000_000)] | None = None


class DpoHyperparameters(Hyperparameters):
    beta: Auto | Annotated[float, Field(gt=0, le=2)] = "auto"
    rpo_alpha: Auto | Annotated[float, Field(ge=0, le=10)] = "auto"  # tunesmith's: see `tunesmith train --rpo-alpha`


class ReinforcementHyperparameters(Hyperparameters):
    """OpenAI's reinforcement hyperparameters, and tunesmith's GRPO settings (``tunesmith train --help``)."""
    # OpenAI's "compute spent exploring": scales the answers sampled per prompt (auto: 8, TRL's default)
    compute_multiplier: Auto | Annotated[float, Field(gt=0, le=8)] = "auto"
    eval_interval: Auto | Annotated[int, Field(ge=1, le=1_000_000)] = "auto"  # OpenAI's name for eval_steps
    # Validation answers each prompt once, greedily: more samples of a greedy answer are the same answer.
    eval_samples: Auto | Literal[1] = "auto"
    reasoning_effort: Literal["default"] | None = None  # the embedded models have no reasoning modes
    group_size: Auto | Annotated[int, Field(ge=2, le=MAX_GROUP_SIZE)] = "auto"
    beta: Auto | Annotated[float, Field(ge=0, le=2)] = "auto"  # the KL penalty's weight; 0: none
    max_completion_tokens: Auto | Annotated[int, Field(ge=1, le=MAX_COMPLETION_TOKENS)] = "auto"

    def training_settings(self) -> dict:
        """What the job trains with, in tunesmith's names (OpenAI's exploration and eval knobs mapped)."""
        own = self.model_dump(exclude={"compute_multiplier", "eval_interval", "eval_samples", "reasoning_effort"})
        if self.group_size == "auto" and self.compute_multiplier != "auto":
            own["group_size"] = min(MAX_GROUP_SIZE, max(2, round(DEFAULT_GROUP_SIZE * self.compute_multiplier)))
        if self.eval_interval != "auto" and self.eval_steps is None:
            own["eval_steps"] = self.eval_interval
        return own


class Supervised(BaseModel):
    model_config = ConfigDict(strict=True)  # JSON types as the schema states them, no coercion
    hyperparameters: Hyperparameters | None = None


class Dpo(BaseModel):
    model_config = ConfigDict(strict=True)  # JSON types as the schema states them, no coercion
    hyperparameters: DpoHyperparameters | None = None


class Reinforcement(BaseModel):
    model_config = ConfigDict(strict=True)  # JSON types as the schema states them, no coercion
    grader: dict[str, Any]  # checked by tunesmith.graders.parse_grader, which names the field at fault
    hyperparameters: ReinforcementHyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(strict=True)  # JSON types as the schema states them, no coercion
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: Supervised | None = None
    dpo: Dpo | None = None
    reinforcement: Reinforcement | None = None


class CreateJob(BaseModel):
    model_config = ConfigDict(strict=True)  # JSON types as the schema states them, no coercion
    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: Annotated[str, Field(min_length=1, max_length=64, pattern=SUFFIX_PATTERN)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    metadata: Annotated[dict[str, Annotated[str, Field(max_length=512)]], Field(max_length=16)] | None = None
    integrations: Annotated[list[dict[str, Any]], Field(max_length=8)] | None = None  # accepted, not run


class JobError(BaseModel):
    code: str | None
    message: str
    param: str | None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"]
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: dict[str, Any]
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: Literal[st.VALIDATING, st.QUEUED, st.RUNNING, st.SUCCEEDED, st.FAILED, st.CANCELLED, st.PAUSED]
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    integrations: list[dict[str, Any]]
    user_provided_suffix: str | None
    estimated_finish: int | None
    metadata: dict[str, str] | None
    method: dict[str, Any]


class JobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"]
    created_at: int
    level: str
    message: str
    data: dict[str, Any]
    type: str


class JobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"]
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, Any]
    step_number: int


def job_object(job: Job, org: str) -> dict:
    hp = job.hyperparameters
    own = {"hyperparameters": hp} if job.grader is None else {"grader": job.grader, "hyperparameters": hp}
    return {
        "id": job.id, "object": "fine_tuning.job", "created_at": job.created_at, "error": job.error,
        "fine_tuned_model": job.fine_tuned_model, "finished_at": job.finished_at, "hyperparameters": hp,
        "model": job.model, "organization_id": org, "result_files": job.result_files, "seed": job.seed,
        "status": job.status, "trained_tokens": job.trained_tokens, "training_file": job.training_file,
        "validation_file": job.validation_file, "integrations": [], "user_provided_suffix": job.suffix,
        "estimated_finish": job.estimated_finish if job.status == st.RUNNING else None,
        "metadata": job.meta, "method": {"type": job.method, job.method: own},
    }


def owned_job(s, project: Project, job_id: str) -> Job:
    job = s.get(Job, job_id)
    if job is None or job.project_id != project.id:
        raise not_found("fine-tuning job", job_id)
    return job


@router.post("", response_model=FineTuningJob)
def create(body: CreateJob, project: Project = Depends(current_project), store: Store = Depends(get_store)) -> dict:
    method = body.method.type if body.method else "supervised"
    own = getattr(body.method, method) if body.method else None
    grader = None
    if method == "reinforcement":
        if own is None:
            raise ApiError(400, "method type 'reinforcement' needs method.reinforcement with its grader",
                           param="method.reinforcement")
        try:
            grader = grader_dict(parse_grader(own.grader))
        except GraderError as exc:
            raise ApiError(400, str(exc), param=f"method.reinforcement.{exc.param or 'grader'}",
                           code="invalid_value") from exc
    schema = {"dpo": DpoHyperparameters, "reinforcement": ReinforcementHyperparameters}.get(method, Hyperparameters)
    hp = schema(**(body.hyperparameters.model_dump(exclude_unset=True) if body.hyperparameters else {}))
    nproc_per_node(store.settings, body.metadata)  # a process count the server cannot run is refused now
    if own and own.hyperparameters:
        hp = own.hyperparameters  # the method's own settings win, as at OpenAI
    settings = hp.training_settings() if isinstance(hp, ReinforcementHyperparameters) else hp.model_dump()
    job = new_job(store, project, Job(model=body.model, training_file=body.training_file,
                                      validation_file=body.validation_file, method=method, grader=grader,
                                      hyperparameters=settings, suffix=body.suffix, seed=body.seed,
                                      meta=body.metadata))
    return job_object(job, project.name)


def new_job(store: Store, project: Project, job: Job) -> Job:
    """Check and add a job a client asked for (through this API or the legacy one): its model and files
    must be the project's, and the project within its quota of waiting jobs."""
    start = resolve_model(store, project, job.model)
    for param in ("training_file", "validation_file"):
        file_id = getattr(job, param)
        if file_id is not None and owned_file(store, project, file_id, param).purpose != "fine-tune":
            raise ApiError(400, f"{param} {file_id} was not uploaded with purpose 'fine-tune'", param=param)
    job.id, job.project_id, job.status, job.created_at = st.make_id("ftjob-"), project.id, st.VALIDATING, st.now()
    job.model_id = finetuned.new_id()
    if job.seed is None:
        job.seed = random.randrange(2**31)
    quota = store.settings.project_max_queued_jobs
    with store.session() as s:  # the write lock: the count cannot change before the job is added
        waiting = s.scalar(select(func.count()).select_from(Job).where(
            Job.project_id == project.id, Job.status.in_((st.VALIDATING, st.QUEUED))))
        if waiting < quota:
            s.add(job)
            s.flush()
            alias = (f" ({job.model} stands for {start.base} here: the job trains {start.base})"
                     if job.model in store.settings.aliases else "")
            lifecycle.add_event(s, job.id, f"Created fine-tuning job: {job.id}{alias}")
    if waiting >= quota:
        raise ApiError(429, f"Job quota exceeded: this project has {waiting} jobs waiting to run, the most it may "
                            "have (setting TUNESMITH_PROJECT_MAX_QUEUED_JOBS); cancel one or wait for it to start.",
                       "insufficient_quota", code="quota_exceeded")
    return job


@router.get("", response_model=Page[FineTuningJob])
def list_jobs(request: Request, limit: Annotated[int, Query(ge=1, le=100)] = 20, after: After = None,
              project: Project = Depends(current_project), store: Store = Depends(get_store)) -> dict:
    # metadata filters arrive as metadata[key]=value query parameters
    wanted = {k[len("metadata["):-1]: v for k, v in request.query_params.items()
              if k.startswith("metadata[") and k.endswith("]")}
    with store.read() as s:
        rows = s.scalars(select(Job).where(Job.project_id == project.id)).all()
    rows = [j for j in sorted(rows, key=lambda j: (j.created_at, j.id), reverse=True)
            if all((j.meta or {}).get(k) == v for k, v in wanted.items())]
    return page(rows, lambda j: job_object(j, project.name), limit, after)


@router.get("/{job_id}", response_model=FineTuningJob)
def retrieve(job_id: str, project: Project = Depends(current_project), store: Store = Depends(get_store)) -> dict:
    with store.read() as s:
        return job_object(owned_job(s, project, job_id), project.name)


def transition_job(store: Store, project: Project, job_id: str, to: str, message: str) -> dict:
    """A client's move of its job; one the lifecycle refuses is a 400 ``invalid_state``."""
    with store.session() as s:
        job = lifecycle.transition(s, owned_job(s, project, job_id), to, "api", message)
        return job_object(job, project.name)


@router.post("/{job_id}/cancel", response_model=FineTuningJob)
def cancel(job_id: str, project: Project = Depends(current_project), store: Store = Depends(get_store)) -> dict:
    return transition_job(store, project, job_id, st.CANCELLED, "Fine-tuning job cancelled")


@router.post("/{job_id}/pause", response_model=FineTuningJob)
def pause(job_id: str, project: Project = Depends(current_project), store: Store = Depends(get_store)) -> dict:
    return transition_job(store, project, job_id, st.PAUSED, "Fine-tuning job paused")


@router.post("/{job_id}/resume", response_model=FineTuningJob)
def resume(job_id: str, project: Project = Depends(current_project), store: Store = Depends(get_store)) -> dict:
    return transition_job(store, project, job_id, st.QUEUED, "Fine-tuning job resumed; it continues from its "
                                                          "newest checkpoint")


def event_object(e: Event) -> dict:
    return {"id": e.id, "object": "fine_tuning.job.event", "created_at": e.created_at, "level": e.level,
            "message": e.message, "data": e.data or {}, "type": e.type}


@router.get("/{job_id}/events", response_model=Page[JobEvent])
def events(job_id: str, limit: Annotated[int, Query(ge=1, le=1000)] = 20, after: After = None,
           project: Project = Depends(current_project), store: Store = Depends(get_store)) -> dict:
    return _job_children(store, project, job_id, select(Event).order_by(Event.seq.desc()), event_object, limit,
                         after)


def checkpoint_object(c: Checkpoint) -> dict:
    return {"id": c.id, "object": "fine_tuning.job.checkpoint", "created_at": c.created_at,
            "fine_tuned_model_checkpoint": c.name, "fine_tuning_job_id": c.job_id, "metrics": c.metrics,
            "step_number": c.step}


@router.get("/{job_id}/checkpoints", response_model=Page[JobCheckpoint])
def checkpoints(job_id: str, limit: Annotated[int, Query(ge=1, le=100)] = 10, after: After = None,
                project: Project = Depends(current_project), store: Store = Depends(get_store)) -> dict:
    return _job_children(store, project, job_id, select(Checkpoint).order_by(Checkpoint.step.desc()),
                         checkpoint_object, limit, after)


def _job_children(store: Store, project: Project, job_id: str, query, render, limit: int, after: str | None) -> dict:
    """A page of a job's events or checkpoints, newest first; 404 unless the job is the caller's."""
    with store.read() as s:
        owned_job(s, project, job_id)
        entity = query.column_descriptions[0]["entity"]
        rows = s.scalars(query.where(entity.job_id == job_id)).all()
    return page(rows, render, limit, after)
