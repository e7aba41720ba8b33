"""``/v1/fine_tuning/alpha/graders``: OpenAI's graders API. ``validate`` checks a grader object;
``run`` grades one model sample against one item and answers OpenAI's GraderRunResponse.

A python grader runs in a child process and may take its whole timeout, so grading runs on a worker
thread, and only a few runs at a time: each may start processes.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from tunesmith.api.deps import current_project
from tunesmith.api.errors import ApiError
from tunesmith.graders import Grade, GraderError, MultiGrader, Scorer, grader_dict, make_sample, parse_grader
from tunesmith.jobs.store import Project

router = APIRouter(prefix="/v1/fine_tuning/alpha/graders")
MAX_SAMPLE = 32_768  # characters of model_sample: one answer
MAX_ITEM_BYTES = 256 * 1024  # of the item as JSON: it is sent to a python grader's process
MAX_RUNNING = 4  # runs at a time, across projects: each may start a process per python grader
_RUNNING = threading.BoundedSemaphore(MAX_RUNNING)
# OpenAI's error flags of a run; an error sets one of them (Grade.error_type).
FLAGS = ("formula_parse_error", "sample_parse_error", "truncated_observation_error", "unresponsive_reward_error",
         "invalid_variable_error", "other_error", "python_grader_server_error", "python_grader_runtime_error",
         "model_grader_server_error", "model_grader_refusal_error", "model_grader_parse_error")


class ValidateGrader(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    grader: dict[str, Any]  # checked by parse_grader, whose errors name the field at fault


class RunGrader(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    grader: dict[str, Any]
    model_sample: Annotated[str, Field(max_length=MAX_SAMPLE)]
    item: dict[str, Any] = {}

    @field_validator("item")
    @classmethod
    def _bounded(cls, item: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(item)) > MAX_ITEM_BYTES:  # ASCII: \u escapes count, and no surrogate can fail it
            raise ValueError(f"the item is over {MAX_ITEM_BYTES // 1024} KiB as JSON")
        return item


class ValidatedGrader(BaseModel):
    grader: dict[str, Any]


class RunErrors(BaseModel):
    model_config = ConfigDict(protected_namespaces=())  # OpenAI's field names start with model_
    formula_parse_error: bool
    sample_parse_error: bool
    truncated_observation_error: bool
    unresponsive_reward_error: bool
    invalid_variable_error: bool
    other_error: bool
    python_grader_server_error: bool
    python_grader_server_error_type: str | None
    python_grader_runtime_error: bool
    python_grader_runtime_error_details: str | None
    model_grader_server_error: bool
    model_grader_refusal_error: bool
    model_grader_parse_error: bool
    model_grader_server_error_details: str | None


class RunMetadata(BaseModel):
    name: str
    type: str
    errors: RunErrors
    execution_time: float  # seconds
    scores: dict[str, Any]
    token_usage: int | None
    sampled_model_name: str | None


class RunResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    reward: float
    metadata: RunMetadata
    sub_rewards: dict[str, Any]
    model_grader_token_usage_per_model: dict[str, Any]


def _parse(obj: dict[str, Any]):
    try:
        return parse_grader(obj)
    except GraderError as exc:
        raise ApiError(400, str(exc), param=exc.param, code="invalid_value") from None


def _errors(grade: Grade) -> dict[str, Any]:
    errors: dict[str, Any] = dict.fromkeys(FLAGS, False)
    if grade.error:
        errors[grade.error_type if grade.error_type in FLAGS else "other_error"] = True
    runtime, server = errors["python_grader_runtime_error"], errors["python_grader_server_error"]
    return {**errors, "python_grader_runtime_error_details": grade.error if runtime else None,
            "python_grader_server_error_type": grade.error if server else None,
            "model_grader_server_error_details": None}


def _grade(grader, sample: str, item: dict[str, Any]) -> tuple[Grade, float]:
    start = time.monotonic()
    with Scorer(grader) as scorer:
        grade = scorer.score([make_sample(sample)], [item])[0]
    return grade, time.monotonic() - start


@router.post("/validate", response_model=ValidatedGrader)
def validate(body: ValidateGrader, project: Project = Depends(current_project)) -> dict:
    return {"grader": grader_dict(_parse(body.grader))}


@router.post("/run", response_model=RunResponse)
async def run(body: RunGrader, project: Project = Depends(current_project)) -> dict:
    grader = _parse(body.grader)
    if not _RUNNING.acquire(blocking=False):
        raise ApiError(429, f"{MAX_RUNNING} grader runs are in progress, the most at a time; retry shortly.",
                       "requests", code="rate_limit_exceeded", headers={"Retry-After": "1"})
    try:
        grade, seconds = await run_in_threadpool(_grade, grader, body.model_sample, body.item)
    finally:
        _RUNNING.release()
    sub_rewards = grade.sub_scores or {}
    return {"reward": grade.score, "sub_rewards": sub_rewards, "model_grader_token_usage_per_model": {},
            "metadata": {"name": grader.name, "type": grader.type, "errors": _errors(grade),
                         "execution_time": seconds, "token_usage": None, "sampled_model_name": None,
                         "scores": sub_rewards if isinstance(grader, MultiGrader) else {grader.name: grade.score}}}
