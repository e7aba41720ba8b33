"""The job state machine: every move in its table is allowed, every other one refused, each explained."""

import itertools

import pytest
from sqlalchemy import select

from tunesmith.config import Settings
from tunesmith.jobs import lifecycle
from tunesmith.jobs import store as st
from tunesmith.jobs.lifecycle import ACTORS, STATUSES, TRANSITIONS, InvalidTransition
from tunesmith.jobs.store import Event, Job, Store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Store(Settings(home=tmp_path_factory.mktemp("lifecycle")))


def new_job(store, status: str, started: bool = True) -> str:
    with store.session() as s:
        project = store.project(s, "p")
        job = Job(id=st.make_id("ftjob-"), project_id=project.id, model="m", training_file="file-x", seed=1,
                  status=status, model_id="abc", started_at=st.now() if started else None)
        s.add(job)
        return job.id


def events_of(store, job_id: str) -> list[str]:
    with store.read() as s:
        return list(s.scalars(select(Event.message).where(Event.job_id == job_id)))


@pytest.mark.parametrize("source, target, actor", list(itertools.product(STATUSES, STATUSES, ACTORS)))
def test_every_move_outside_the_table_is_refused(store, source, target, actor):
    job_id = new_job(store, source)
    rule = TRANSITIONS.get((source, target))
    with store.session() as s:
        job = s.get(Job, job_id)
        if rule is not None and actor in rule.actors:
            lifecycle.transition(s, job, target, actor, f"moved by {actor}")
            allowed = True
        else:
            with pytest.raises(InvalidTransition, match=f"Job {job_id} is {source}"):
                lifecycle.transition(s, job, target, actor, "must not happen")
            allowed = False
    with store.read() as s:
        job = s.get(Job, job_id)
        assert job.status == (target if allowed else source)
        assert job.status_actor == (actor if allowed else None)
        assert (job.finished_at is not None) == (allowed and target in lifecycle.FINISHED)
    assert events_of(store, job_id) == ([f"moved by {actor}"] if allowed else [])


def test_a_refusal_says_which_states_allow_the_move(store):
    job_id = new_job(store, st.SUCCEEDED)
    with store.session() as s, pytest.raises(InvalidTransition) as refused:
        lifecycle.transition(s, s.get(Job, job_id), st.QUEUED, "api", "resume")
    assert str(refused.value) == f"Job {job_id} is succeeded; only a job that is paused or failed can be resumed."


def test_a_job_that_failed_before_training_cannot_be_resumed(store):
    job_id = new_job(store, st.FAILED, started=False)
    with store.session() as s, pytest.raises(InvalidTransition, match="failed before training started"):
        lifecycle.transition(s, s.get(Job, job_id), st.QUEUED, "api", "resume")


def test_a_stale_job_object_is_checked_against_the_database(store):
    """The worker loaded the job while it was validating; a client cancelled it since."""
    job_id = new_job(store, st.VALIDATING)
    with store.read() as s:
        stale = s.get(Job, job_id)
    with store.session() as s:
        lifecycle.transition(s, s.get(Job, job_id), st.CANCELLED, "api", "cancelled")
    with store.session() as s:
        stale = s.merge(stale, load=False)
        assert not lifecycle.attempt(s, stale, st.QUEUED, "worker", "validated")
    with store.read() as s:
        assert s.get(Job, job_id).status == st.CANCELLED
