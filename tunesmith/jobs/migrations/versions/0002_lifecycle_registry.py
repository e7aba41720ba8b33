"""Who changed a job's status last; models as a registry that holds CLI-trained models too; file hashes.

Revision ID: 0002_lifecycle_registry
Revises: 0001_initial
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_lifecycle_registry"
down_revision = "0001_initial"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("status_actor", sa.String(16)))
    op.add_column("files", sa.Column("sha256", sa.String(64)))
    # SQLite cannot make a column nullable in place: the batch copies the table (elsewhere: ALTER).
    with op.batch_alter_table("models") as batch:
        batch.alter_column("job_id", existing_type=sa.String(40), nullable=True)  # `tunesmith train`: no job
        batch.add_column(sa.Column("base", sa.String(128)))
        batch.add_column(sa.Column("method", sa.String(16)))
        batch.add_column(sa.Column("format", sa.String(16)))
        batch.add_column(sa.Column("path", sa.Text))
        batch.add_column(sa.Column("trained_tokens", sa.Integer))
        batch.add_column(sa.Column("metrics", sa.JSON))
        batch.add_column(sa.Column("checkpoints", sa.JSON))
