"""``POST /v1/evaluations``: score models on an uploaded file, the API's ``tunesmith eval``/``compare``.

A tunesmith extension (OpenAI's Evals API is a different, much larger thing). The request waits for
the report: loss and token accuracy on the file's assistant turns, then greedy answers scored like
the CLI's. The work runs on the base model's engine thread, in turn with chat requests for it.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from tunesmith.api.deps import client_gone, current_project, get_store, resolve_model
from tunesmith.api.errors import ApiError
from tunesmith.api.files import owned_file
from tunesmith.eval import report as reports
from tunesmith.eval.metrics import Checks
from tunesmith.eval.run import EvalOptions, evaluate_on
from tunesmith.graders import GraderError, grader_dict, parse_grader
from tunesmith.jobs.store import Project, Store

router = APIRouter(prefix="/v1/evaluations")
MAX_EXAMPLES = 1000  # examples scored per request: it holds its base model's engine while it runs


class CreateEvaluation(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    models: Annotated[list[str], Field(min_length=1, max_length=4)]  # two: the side-by-side comparison
    file: str  # an uploaded file, in any training format
    max_tokens: Annotated[int, Field(ge=1, le=4096)] = 256
    limit: Annotated[int, Field(ge=1, le=MAX_EXAMPLES)] | None = None  # the first N examples; at most MAX_EXAMPLES
    contains: Annotated[str, Field(max_length=1000)] | None = None
    regex: Annotated[str, Field(max_length=1000)] | None = None  # RE2 syntax: matched in linear time
    grader: dict[str, Any] | None = None  # an OpenAI grader object; its limits are graders.parse_grader's


class Evaluation(BaseModel):
    object: Literal["evaluation"]
    file: str
    models: list[str]
    reports: list[dict[str, Any]]  # one per model: eval/report.py's Report.as_dict()
    markdown: str
    html: str


@router.post("", response_model=Evaluation)
async def create(body: CreateEvaluation, request: Request, project: Project = Depends(current_project),
                 store: Store = Depends(get_store)) -> dict:
    models = [resolve_model(store, project, name, param=f"models.{i}") for i, name in enumerate(body.models)]
    path = Path(owned_file(store, project, body.file, "file").path)
    grader = None
    if body.grader is not None:
        try:
            grader = grader_dict(parse_grader(body.grader))
        except GraderError as exc:
            raise ApiError(400, str(exc), param=exc.param or "grader", code="invalid_value") from exc
    options = EvalOptions(max_tokens=body.max_tokens, limit=body.limit or MAX_EXAMPLES,
                          checks=Checks(body.contains, body.regex), grader=grader)
    done = {}
    for base in dict.fromkeys(m.base for m in models):
        group = [m for m in models if m.base == base]
        work = partial(evaluate_on, models=group, data=path, options=options, label=body.file)
        answers = await request.app.state.engines.run(base, work, partial(client_gone, request))
        done.update(zip((m.name for m in group), answers))
    ordered = [done[m.name] for m in models]
    return {"object": "evaluation", "file": body.file, "models": body.models,
            "reports": [r.as_dict() for r in ordered], "markdown": reports.markdown(ordered, questions=True),
            "html": reports.html_report(ordered)}
