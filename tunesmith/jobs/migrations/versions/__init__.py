"""Revisions, one module each. A package so that setuptools ships it (Alembic skips this file)."""
