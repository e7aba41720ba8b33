"""Alembic's entry point: runs the revisions on the connection that ``migrations.upgrade`` passes."""

from alembic import context

context.configure(connection=context.config.attributes["connection"])
with context.begin_transaction():  # inside the caller's transaction: it commits, not Alembic
    context.run_migrations()
