"""Who changed a job's status last; models as a registry that holds CLI-trained models too; file hashes.

Revision ID: 0002_lifecycle_registry
Revises: 0001_initial
"""

import json
import secrets
from pathlib import Path

import sqlalchemy as sa
from alembic import context, op

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
    home = context.config.attributes.get("home")
    if home is not None:
        _adopt_model_files(Path(home) / "models")


_models = sa.table("models", *(sa.column(c) for c in ("name", "project_id", "job_id", "created_at", "deleted", "base",
                                                      "method", "format", "path", "trained_tokens")),
                   sa.column("metrics", sa.JSON), sa.column("checkpoints", sa.JSON))
_projects = sa.table("projects", sa.column("id"), sa.column("name"), sa.column("created_at"))
_jobs = sa.table("jobs", sa.column("id"))


def _adopt_model_files(models_dir: Path) -> None:
    """Until now a model's metadata was a JSON file, ``models/<short id>.json``, and only the API's models
    had a row; the rows are the registry from this revision on. A file that cannot be read was a model
    that never resolved either, and is left where it is."""
    bind = op.get_bind()
    for path in sorted(models_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            name, checkpoints = data["name"], {str(k): v for k, v in data.get("checkpoints", {}).items()}
            values = {"base": data["base"], "method": data["method"], "format": data.get("format", "chat"),
                      "path": data["path"], "trained_tokens": data.get("trained_tokens"),
                      "metrics": data.get("metrics", {}), "checkpoints": checkpoints}
        except (OSError, ValueError, KeyError, AttributeError):
            continue
        if bind.execute(sa.select(_models.c.name).where(_models.c.name == name)).first():
            bind.execute(sa.update(_models).where(_models.c.name == name).values(**values))
            continue
        org = name.split(":")[2]  # ft:base:org:suffix:id; `tunesmith train` named them with the org setting
        project = bind.execute(sa.select(_projects.c.id).where(_projects.c.name == org)).scalar()
        if project is None:
            project = f"proj_{secrets.token_hex(12)}"
            bind.execute(sa.insert(_projects).values(id=project, name=org, created_at=data.get("created_at", 0)))
        job = bind.execute(sa.select(_jobs.c.id).where(_jobs.c.id == data.get("job_id"))).scalar()
        bind.execute(sa.insert(_models).values(name=name, project_id=project, job_id=job, deleted=False,
                                               created_at=data.get("created_at", 0), **values))
