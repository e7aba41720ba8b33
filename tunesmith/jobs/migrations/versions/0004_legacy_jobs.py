"""Jobs created through the legacy ``/v1/fine-tunes`` API (openai 0.28): their models get legacy names.

Revision ID: 0004_legacy_jobs
Revises: 0003_key_roles
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_legacy_jobs"
down_revision = "0003_key_roles"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("legacy", sa.Boolean, nullable=False, server_default=sa.false()))
