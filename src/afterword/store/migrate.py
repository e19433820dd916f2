"""Schema migrations (Alembic), run automatically when a store opens.

Migrations live in ``store/migrations/versions`` and are append-only: each is
named, runs in its own transaction, and never changes once released. Opening
a store compares the recorded revision with the newest one and only starts
Alembic when they differ, so a CLI call on an up-to-date store costs one query.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import sqlalchemy as sa

__all__ = ["alembic_config", "head_revision", "current_revision", "upgrade", "SCHEMA_HEAD"]

#: The newest migration. Kept here so opening an up-to-date store needs no
#: Alembic import; ``tests/test_store.py`` checks it against Alembic's head.
SCHEMA_HEAD = "0004"


def alembic_config(connection: sa.Connection | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("afterword") / "store" / "migrations"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """Alembic's own idea of the head (imports Alembic)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head() or ""


def current_revision(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: sa.Engine, revision: str = "head") -> str:
    """Upgrade the schema to ``revision``; returns the revision now in place."""
    if revision == "head" and current_revision(engine) == SCHEMA_HEAD:
        return SCHEMA_HEAD
    from alembic import command

    with engine.connect() as conn:
        conn = conn.execution_options(immediate=True)
        command.upgrade(alembic_config(conn), revision)
        conn.commit()
    return current_revision(engine) or ""
