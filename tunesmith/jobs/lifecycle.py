"""The job state machine, as data, and the only code that changes a job's status.

``TRANSITIONS`` lists every allowed (from, to) and who may cause it. ``transition`` checks a move
against it, applies it and adds the event that explains it, in the caller's transaction; anything
not in the table is refused with ``InvalidTransition`` (the API answers 400 ``invalid_state``).

Who causes a move (the actor):
- ``api``: a client's request (cancel, pause, resume);
- ``operator``: the same requests from ``tunesmith jobs`` on the server's machine;
- ``worker``: the queue (files validated, a process started, a job that cannot be run);
- ``job``: the outcome a job process reported (succeeded, failed), applied by the worker;
- ``system``: the service itself (shutdown pauses running jobs, the next start resumes them; a
  crash of the service requeues what it was running).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from tunesmith.errors import TunesmithError
from tunesmith.jobs.store import (CANCELLED, FAILED, PAUSED, QUEUED, RUNNING, SUCCEEDED, VALIDATING, Event, Job,
                                  make_id, now)

ACTORS = ("api", "operator", "worker", "job", "system")
CLIENTS = frozenset({"api", "operator"})
STATUSES = (VALIDATING, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, PAUSED)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)


def _ran(job: Job) -> str | None:
    """A failed job resumes from its checkpoints; one that never started has none to resume from."""
    return None if job.started_at is not None else "it failed before training started; create a new job instead"


@dataclass(frozen=True)
class Rule:
    actors: frozenset[str]
    verb: str  # what a client calls this move, for messages: "cancelled", "resumed", …
    guard: Callable[[Job], str | None] | None = None  # why not, for this job; None: allowed


def _rule(actors: set[str], verb: str, guard=None) -> Rule:
    return Rule(frozenset(actors), verb, guard)


TRANSITIONS: dict[tuple[str, str], Rule] = {
    (VALIDATING, QUEUED): _rule({"worker"}, "queued"),
    (VALIDATING, FAILED): _rule({"worker"}, "failed"),
    (VALIDATING, CANCELLED): _rule(CLIENTS, "cancelled"),
    (QUEUED, RUNNING): _rule({"worker"}, "started"),
    (QUEUED, FAILED): _rule({"worker"}, "failed"),  # it could not be started (its file is gone, …)
    (QUEUED, CANCELLED): _rule(CLIENTS, "cancelled"),
    (QUEUED, PAUSED): _rule(CLIENTS, "paused"),
    (RUNNING, SUCCEEDED): _rule({"job"}, "succeeded"),
    (RUNNING, FAILED): _rule({"job", "worker"}, "failed"),  # its error, or its process died
    (RUNNING, CANCELLED): _rule(CLIENTS, "cancelled"),
    (RUNNING, PAUSED): _rule(CLIENTS | {"system"}, "paused"),  # system: the service shuts down
    (RUNNING, QUEUED): _rule({"system"}, "requeued"),  # the service died under it: found at the next start
    (PAUSED, QUEUED): _rule(CLIENTS | {"system"}, "resumed"),  # system: resumes its own pauses at start
    (PAUSED, CANCELLED): _rule(CLIENTS, "cancelled"),
    (FAILED, QUEUED): _rule(CLIENTS, "resumed", _ran),  # continues from its newest checkpoint
}


class InvalidTransition(TunesmithError):
    def __init__(self, message: str, job_id: str):
        super().__init__(message)
        self.job_id = job_id


def allowed_from(to: str, actor: str) -> list[str]:
    """The statuses from which ``actor`` may move a job to ``to``."""
    return [a for (a, b), rule in TRANSITIONS.items() if b == to and actor in rule.actors]


def transition(session: Session, job: Job, to: str, actor: str, reason: str, *, level: str = "info",
               **values) -> Job:
    """Move ``job`` to ``to`` for ``actor``, set ``values`` on it and add ``reason`` as its event.

    The job's row is read again (and locked where the database can) so that the check is made
    against its status now, not when the caller loaded it."""
    if actor not in ACTORS:
        raise ValueError(f"unknown actor {actor!r}")
    session.refresh(job, with_for_update=True)
    rule = TRANSITIONS.get((job.status, to))
    refusal = None
    if rule is None or actor not in rule.actors:
        verb = next((r.verb for (_, b), r in TRANSITIONS.items() if b == to and actor in r.actors), f"moved to {to}")
        sources = allowed_from(to, actor)
        refusal = (f"only a job that is {' or '.join(sources)} can be {verb}" if sources
                   else f"it cannot be {verb} that way")
    elif rule.guard is not None:
        refusal = rule.guard(job)
    if refusal:
        raise InvalidTransition(f"Job {job.id} is {job.status}; {refusal}.", job.id)
    job.status, job.status_actor = to, actor
    if to in FINISHED:
        job.finished_at, job.estimated_finish = now(), None
    for name, value in values.items():
        setattr(job, name, value)
    add_event(session, job.id, reason, level=level)
    session.flush()
    return job


def attempt(session: Session, job: Job, to: str, actor: str, reason: str, **kwargs) -> bool:
    """``transition``, for the worker and the system: a job that a client moved meanwhile (cancelled
    while validating, say) is left as the client put it."""
    try:
        transition(session, job, to, actor, reason, **kwargs)
        return True
    except InvalidTransition:
        return False


def add_event(session: Session, job_id: str, message: str, level: str = "info", key: str | None = None,
              type: str = "message", data: dict | None = None, created_at: int | None = None) -> None:
    """Insert an event unless one with the same key exists (keys make re-ingestion harmless)."""
    key = key or make_id("w-")
    if session.scalar(select(Event.seq).where(Event.job_id == job_id, Event.key == key)) is None:
        session.add(Event(id=make_id("ftevent-"), job_id=job_id, key=key, level=level, type=type,
                          message=message, data=data, created_at=created_at or now()))
