"""``/v1/votes`` (tunesmith's own): the playground's thumbs up/down on answers, kept per project, and
exported as a DPO preference file.

Stored as one append-only JSONL file per project under the home (``votes/<project id>.jsonl``), not
in the store: a vote is written once and only ever read back whole, to count or export, and the
export is itself JSONL; so no table or migration is needed. The home already holds the uploaded
files, so it is where a server's data lives in either database setup.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from tunesmith.api.deps import current_project, get_store, resolve_model
from tunesmith.api.errors import ApiError
from tunesmith.jobs import store as st
from tunesmith.jobs.store import Project, Store

router = APIRouter(prefix="/v1/votes")
MAX_VOTES = 10_000  # per project: the file is read whole to count and export
MAX_TEXT = 32_768  # characters of one message or answer
_WRITING = threading.Lock()  # appends from concurrent requests never interleave


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, Field(max_length=MAX_TEXT)]


class CreateVote(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    messages: Annotated[list[Message], Field(min_length=1, max_length=64)]  # the conversation answered
    answer: Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
    model: Annotated[str, Field(max_length=256)]
    vote: Literal["up", "down"]


class Vote(BaseModel):
    object: Literal["vote"]
    created_at: int
    model: str
    vote: Literal["up", "down"]


class VoteSummary(BaseModel):
    object: Literal["vote.summary"]
    votes: int
    pairs: int  # lines the export would hold


def votes_file(store: Store, project: Project) -> Path:
    return store.settings.home / "votes" / f"{project.id}.jsonl"


def read_votes(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def preference_pairs(votes: list[dict]) -> Iterator[dict]:
    """One line per (liked, disliked) pair of different answers to the same conversation; an answer's
    latest vote counts (a changed mind replaces the earlier vote)."""
    latest: dict[tuple[str, str], str] = {}
    for v in votes:
        latest[(json.dumps(v["messages"], sort_keys=True), v["answer"])] = v["vote"]
    by_conversation: dict[str, dict[str, list[str]]] = {}
    for (conversation, answer), vote in latest.items():
        by_conversation.setdefault(conversation, {"up": [], "down": []})[vote].append(answer)
    for conversation, sides in by_conversation.items():
        for good in sides["up"]:
            for bad in sides["down"]:
                yield {"input": {"messages": json.loads(conversation)},
                       "preferred_output": [{"role": "assistant", "content": good}],
                       "non_preferred_output": [{"role": "assistant", "content": bad}]}


@router.post("", response_model=Vote)
def create(body: CreateVote, project: Project = Depends(current_project), store: Store = Depends(get_store)) -> dict:
    resolve_model(store, project, body.model)  # a model this key can see
    record = {"created_at": st.now(), "model": body.model, "vote": body.vote, "answer": body.answer,
              "messages": [m.model_dump() for m in body.messages]}
    path = votes_file(store, project)
    with _WRITING:
        if len(read_votes(path)) >= MAX_VOTES:
            raise ApiError(429, f"This project has {MAX_VOTES:,} votes, the most kept; export them and start a "
                                "new project, or remove its votes file.", "insufficient_quota", code="quota_exceeded")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as out:  # one line per write: a crash loses at most that vote
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return {"object": "vote", "created_at": record["created_at"], "model": body.model, "vote": body.vote}


@router.get("", response_model=VoteSummary)
def summary(project: Project = Depends(current_project), store: Store = Depends(get_store)) -> dict:
    votes = read_votes(votes_file(store, project))
    return {"object": "vote.summary", "votes": len(votes), "pairs": sum(1 for _ in preference_pairs(votes))}


@router.get("/export", response_class=Response,
            responses={200: {"content": {"application/jsonl": {"schema": {"type": "string"}}}}})
def export(project: Project = Depends(current_project), store: Store = Depends(get_store)) -> Response:
    """The preference pairs as a DPO training file (OpenAI's line shape), ready to upload."""
    lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preference_pairs(read_votes(votes_file(store, project))))
    return Response(lines, media_type="application/jsonl",
                    headers={"Content-Disposition": 'attachment; filename="preferences.jsonl"'})
