"""The store's schema history, as Alembic revisions shipped inside the package.

Alembic is configured here in code (no alembic.ini): the store hands over its connection, so the
whole upgrade runs in the one transaction the store opened, holding the database's write lock.
"""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

# The revision whose schema tunesmith made with ``create_all`` before it had migrations.
INITIAL = "0001_initial"
# Any constant: the key of the PostgreSQL advisory lock that serialises two upgrading processes.
_PG_LOCK_KEY = 0x7475_6E65  # "tune"
# Alembic's ``context`` and ``op`` are module globals: two upgrades at once in one process, even of
# two databases, would run each other's revisions.
_one_at_a_time = threading.Lock()


def config(connection: Connection | None = None, home: Path | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "tunesmith.jobs:migrations")
    cfg.attributes["connection"] = connection
    cfg.attributes["home"] = home  # for revisions that move what an older tunesmith kept in files
    return cfg


def head() -> str:
    return ScriptDirectory.from_config(config()).get_current_head()


def current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, home: Path | None = None) -> None:
    """Bring the database to the newest revision; a database from before migrations is adopted."""
    # On SQLite the store's "begin" hook makes this BEGIN IMMEDIATE: a second process starting at
    # the same time waits for the write lock, then finds the schema at head and has nothing to do.
    with _one_at_a_time, engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        tables = inspect(connection).get_table_names()
        cfg = config(connection, home)
        if "jobs" in tables and "alembic_version" not in tables:
            command.stamp(cfg, INITIAL)  # made by create_all: its schema is revision 1's
        command.upgrade(cfg, "head")
