"""The service's state: projects, API keys, files, jobs, events, checkpoints and models.

SQLite under the tunesmith home by default (WAL, so the API reads while the worker writes), or
PostgreSQL by setting the database URL. The schema is made and kept current by the Alembic revisions
in ``jobs/migrations``. Tables hold metadata only: uploaded bytes and weights live on disk.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import (JSON, Boolean, Connection, ForeignKey, Integer, String, Text, UniqueConstraint, create_engine,
                        event, false, func, select)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from tunesmith.config import Settings, get_settings
from tunesmith.jobs import migrations
from tunesmith.models.finetuned import new_id

# Job statuses, as OpenAI names them.
VALIDATING, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, PAUSED = (
    "validating_files", "queued", "running", "succeeded", "failed", "cancelled", "paused")
ACTIVE = (VALIDATING, QUEUED, RUNNING, PAUSED)
_BUSY_TIMEOUT_S = 30  # how long SQLite waits for another connection's lock
_READ_ONLY = "tunesmith_read_only"  # execution option that marks the transactions of Store.read()


def now() -> int:
    return int(time.time())


def make_id(prefix: str) -> str:
    return f"{prefix}{new_id(24)}"


class Base(DeclarativeBase):
    type_annotation_map = {dict: JSON, list: JSON}


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # enough to recognise a key in a listing
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # manages keys
    revoked_at: Mapped[int | None] = mapped_column(Integer)  # kept, so a listing shows what was revoked when


class File(Base):
    __tablename__ = "files"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(Integer, default=now)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    model: Mapped[str] = mapped_column(Text)
    base: Mapped[str | None] = mapped_column(String(128))  # known once the model is resolved
    training_file: Mapped[str] = mapped_column(String(40))
    validation_file: Mapped[str | None] = mapped_column(String(40))
    method: Mapped[str] = mapped_column(String(16), default="supervised")
    hyperparameters: Mapped[dict] = mapped_column(default=dict)  # "auto" until resolved
    grader: Mapped[dict | None] = mapped_column(JSON)  # reinforcement jobs: the OpenAI grader object, checked
    suffix: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(Integer)
    meta: Mapped[dict | None] = mapped_column("metadata", JSON)
    status: Mapped[str] = mapped_column(String(20), default=VALIDATING, index=True)
    # Who caused the last status change: api, worker, job, system, operator or cli.
    status_actor: Mapped[str | None] = mapped_column(String(16))
    data_format: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    started_at: Mapped[int | None] = mapped_column(Integer)
    finished_at: Mapped[int | None] = mapped_column(Integer)
    estimated_finish: Mapped[int | None] = mapped_column(Integer)
    model_id: Mapped[str] = mapped_column(String(16))  # short id of the model it will produce
    fine_tuned_model: Mapped[str | None] = mapped_column(Text)
    trained_tokens: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[dict | None] = mapped_column(JSON)
    result_files: Mapped[list] = mapped_column(default=list)
    events_offset: Mapped[int] = mapped_column(Integer, default=0)  # bytes of events.jsonl ingested
    # Created through /v1/fine-tunes: its model is named as that API named them (curie:ft-org-…)
    legacy: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (UniqueConstraint("job_id", "key"),)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    key: Mapped[str] = mapped_column(String(64))  # one logical event, once: "step-12", "msg-3", …
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    level: Mapped[str] = mapped_column(String(8), default="info")
    type: Mapped[str] = mapped_column(String(8), default="message")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict | None] = mapped_column(JSON)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(Text, unique=True)  # fine_tuned_model_checkpoint
    path: Mapped[str] = mapped_column(Text)
    metrics: Mapped[dict] = mapped_column(default=dict)
    created_at: Mapped[int] = mapped_column(Integer, default=now)


class Model(Base):
    """A fine-tuned model, the project that owns it, and where its weights are."""

    __tablename__ = "models"
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"))  # none when `tunesmith train` made it
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    base: Mapped[str | None] = mapped_column(String(128))
    method: Mapped[str | None] = mapped_column(String(16))
    format: Mapped[str | None] = mapped_column(String(16))
    path: Mapped[str | None] = mapped_column(Text)
    trained_tokens: Mapped[int | None] = mapped_column(Integer)
    metrics: Mapped[dict | None] = mapped_column(JSON)
    checkpoints: Mapped[dict | None] = mapped_column(JSON)  # step number (a string) → weights directory


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Store:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        url = self.settings.database_url or f"sqlite:///{self.settings.home / 'tunesmith.db'}"
        if url.startswith("sqlite:///"):
            self.settings.home.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        event.listen(self.engine, "begin", _begin)
        migrations.upgrade(self.engine, self.settings.home)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._reads = sessionmaker(self.engine.execution_options(**{_READ_ONLY: True}), expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A read-write transaction: committed when the block ends, rolled back if it raises.

        On SQLite it holds the write lock from its start: a transaction that reads and then writes
        cannot fail midway because another writer came between (it waits its turn instead).
        """
        with self._sessions.begin() as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction (writing in it raises): it never waits for a writer's lock."""
        with self._reads.begin() as session:
            yield session

    def project(self, session: Session, name: str) -> Project:
        """The project of that name, created on first use."""
        found = session.scalar(select(Project).where(Project.name == name))
        if found is None:
            found = Project(id=make_id("proj_"), name=name, created_at=now())
            session.add(found)
            session.flush()
        return found

    def create_key(self, project_name: str, admin: bool = False) -> tuple[ApiKey, str]:
        """A new API key for a project, and its text: only its hash is kept, so this is the one time
        it is seen."""
        key = f"sk-ts-{secrets.token_urlsafe(32)}"
        with self.session() as s:
            project = self.project(s, project_name)
            row = ApiKey(id=make_id("key_"), project_id=project.id, key_hash=hash_key(key), prefix=key[:10],
                         created_at=now(), admin=admin)
            s.add(row)
        return row, key

    def keys(self) -> list[tuple[ApiKey, Project]]:
        """Every key, revoked ones included, oldest first."""
        with self.read() as s:
            return [tuple(r) for r in s.execute(select(ApiKey, Project).join(Project).order_by(ApiKey.created_at,
                                                                                               ApiKey.id))]

    def revoke_key(self, ref: str) -> tuple[ApiKey, Project] | None:
        """Revoke the key with this id or prefix; the next request with it is refused. None: no such key
        (or a prefix that more than one key has)."""
        with self.session() as s:
            found = s.execute(select(ApiKey, Project).join(Project).where(
                (ApiKey.id == ref) | (ApiKey.prefix == ref))).all()
            if len(found) != 1:
                return None
            key, project = found[0]
            if key.revoked_at is None:
                key.revoked_at = now()
            return key, project

    def has_keys(self) -> bool:
        """Whether any key that is not revoked exists."""
        with self.read() as s:
            return s.scalar(select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)) is not None

    def caller(self, key: str) -> tuple[Project, bool] | None:
        """The project of a valid (not revoked) key, and whether the key is an admin's."""
        with self.read() as s:
            row = s.execute(select(Project, ApiKey.admin).join(ApiKey).where(
                ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))).first()
        return (row[0], row[1]) if row else None


def claim_queued(session: Session, limit: int) -> list[Job]:
    """Up to ``limit`` queued jobs for the caller to start, taken round-robin across projects.

    First the oldest queued job of each project (projects in the order of their oldest queued job),
    then each project's second-oldest, and so on: one project's long queue cannot starve another's
    single job. Call it inside ``Store.session()`` and move the jobs on in that same transaction:
    their status is left as it is. On PostgreSQL the jobs are locked FOR UPDATE SKIP LOCKED, so two
    workers never claim the same job; on SQLite the write transaction already serialises claimers.
    """
    project = {"partition_by": Job.project_id}
    turn = func.row_number().over(order_by=(Job.created_at, Job.id), **project)
    project_oldest = func.min(Job.created_at).over(**project)
    order = session.scalars(select(Job.id).where(Job.status == QUEUED)
                            .order_by(turn, project_oldest, Job.project_id)).all()
    # Ranked first, then locked in that order, no more rows than still wanted: PostgreSQL allows no
    # FOR UPDATE with window functions, and a job that another worker holds (or has just started)
    # is passed over for the next one rather than waited for.
    claimed: list[Job] = []
    position = 0
    while len(claimed) < limit and position < len(order):
        ids = order[position:position + limit - len(claimed)]
        position += len(ids)
        # populate_existing: a job this session loaded before is refreshed from the locked row.
        locked = {job.id: job for job in session.scalars(
            select(Job).where(Job.id.in_(ids), Job.status == QUEUED).with_for_update(skip_locked=True)
            .execution_options(populate_existing=True))}
        claimed += [locked[i] for i in ids if i in locked]
    return claimed


def _begin(connection: Connection) -> None:
    """Open a transaction as ``Store.session()`` or ``Store.read()`` wants it."""
    read_only = connection.get_execution_options().get(_READ_ONLY, False)
    if connection.dialect.name == "sqlite":
        # query_only is a property of the connection, so every transaction sets it (pooled
        # connections serve both kinds). A read begins deferred: under WAL it never takes a lock.
        connection.exec_driver_sql(f"PRAGMA query_only={int(read_only)}")
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
    elif read_only and connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")


def _sqlite_pragmas(connection, _record) -> None:
    connection.isolation_level = None  # pysqlite must not emit its own BEGIN (_begin does)
    cursor = connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_S * 1000}")
    # Two processes opening a new database at once: one's switch to WAL can fail at once with
    # "database is locked" (SQLite does not wait busy_timeout there), so it tries again.
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
