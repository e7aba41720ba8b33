"""Reinforcement fine-tuning jobs keep the grader their answers are scored by.

Revision ID: 0005_job_graders
Revises: 0004_legacy_jobs
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_job_graders"
down_revision = "0004_legacy_jobs"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("grader", sa.JSON, nullable=True))
