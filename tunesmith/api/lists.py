"""OpenAI's list bodies and cursor pagination (``after`` = the id of the last object already seen)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, Literal, TypeVar

from fastapi import Query
from pydantic import BaseModel

T = TypeVar("T")
# The cursor of a list request: an object id
After = Annotated[str | None, Query(max_length=64)]


class Page(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    first_id: str | None
    last_id: str | None


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool


def page(rows: Sequence[Any], render: Callable[[Any], dict], limit: int, after: str | None) -> dict:
    """``rows`` in the order the client sees them; the page after ``after``, ``limit`` long."""
    if after is not None:
        ids = [r.id for r in rows]
        rows = rows[ids.index(after) + 1:] if after in ids else []
    data = [render(r) for r in rows[:limit]]
    body = {"object": "list", "data": data, "has_more": len(rows) > limit}
    body["first_id"] = data[0]["id"] if data else None
    body["last_id"] = data[-1]["id"] if data else None
    return body
