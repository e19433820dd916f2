"""Artifacts: expert documents mined for their questions, sources and conclusions.

One row per ingested document (memo, report). ``citations_json`` holds each
cited source with its normalised key (what replay scoring matches on);
``reconstruction_json`` and ``conversation_id`` are filled by ``reverse`` and
link the artifact to the training conversation made from it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_ts = sa.DateTime(timezone=True)


def _json():
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "artifacts",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("format", sa.String(length=8), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("citations_json", _json(), nullable=False),
        sa.Column("conclusion", sa.Text(), nullable=True),
        sa.Column("reconstruction_json", _json(), nullable=True),
        sa.Column("conversation_id", sa.String(), nullable=True),
        sa.Column("ingested_utc", _ts, nullable=False),
        sa.Column("reversed_utc", _ts, nullable=True),
        sa.Column("metadata_json", _json(), nullable=True),
    )
    op.create_index("ix_artifacts_sha256", "artifacts", ["sha256"], unique=False)
    op.create_index("ix_artifacts_conversation_id", "artifacts", ["conversation_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_artifacts_conversation_id", table_name="artifacts")
    op.drop_index("ix_artifacts_sha256", table_name="artifacts")
    op.drop_table("artifacts")
