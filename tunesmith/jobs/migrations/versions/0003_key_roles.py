"""API keys that administer the server, and keys revoked without losing their record.

Revision ID: 0003_key_roles
Revises: 0002_lifecycle_registry
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_key_roles"
down_revision = "0002_lifecycle_registry"


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("api_keys", sa.Column("revoked_at", sa.Integer))
