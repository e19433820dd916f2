"""Eval runs and results, explicit review-queue items, tandem tasks and coaching items.

``eval_runs``/``eval_results`` keep every run of a frozen suite against a model
version, so two versions can be compared item by item long after the fact.
``review_items`` holds queue entries that no judgment produces (a tandem
disagreement). ``tandem_tasks`` is one task answered independently by a human
and by the AI; ``coaching_items`` are the tasks a human got wrong.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ts = sa.DateTime(timezone=True)


def _json():
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _index(table: str, *cols: str) -> None:
    for c in cols:
        op.create_index(f"ix_{table}_{c}", table, [c], unique=False)


def upgrade() -> None:
    op.create_table(
        "eval_runs",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("suite", sa.String(), nullable=False),
        sa.Column("label", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=True),
        sa.Column("system_prompt", sa.Text(), nullable=True),
        sa.Column("params_json", _json(), nullable=True),
        sa.Column("summary_json", _json(), nullable=True),
        sa.Column("created_utc", _ts, nullable=False),
    )
    _index("eval_runs", "suite", "created_utc")
    op.create_table(
        "eval_results",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("item_id", sa.String(), nullable=False),
        sa.Column("output", sa.Text(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("scores_json", _json(), nullable=False),
        sa.Column("repeat_mistake", sa.Boolean(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    _index("eval_results", "run_id", "item_id")
    op.create_table(
        "review_items",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("message_id", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("priority", sa.Float(), nullable=False),
        sa.Column("detail_json", _json(), nullable=True),
        sa.Column("created_utc", _ts, nullable=False),
        sa.Column("resolved_utc", _ts, nullable=True),
    )
    _index("review_items", "message_id")
    op.create_table(
        "tandem_tasks",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("reference", sa.Text(), nullable=True),
        sa.Column("rubric", sa.Text(), nullable=True),
        sa.Column("human_id", sa.String(), nullable=True),
        sa.Column("human_answer", sa.Text(), nullable=True),
        sa.Column("human_answered_utc", _ts, nullable=True),
        sa.Column("model", sa.String(), nullable=True),
        sa.Column("ai_answer", sa.Text(), nullable=True),
        sa.Column("ai_answered_utc", _ts, nullable=True),
        sa.Column("message_id", sa.String(), nullable=True),
        sa.Column("method", sa.String(length=16), nullable=True),
        sa.Column("human_score", sa.Float(), nullable=True),
        sa.Column("ai_score", sa.Float(), nullable=True),
        sa.Column("human_correct", sa.Boolean(), nullable=True),
        sa.Column("ai_correct", sa.Boolean(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("compared_utc", _ts, nullable=True),
        sa.Column("created_utc", _ts, nullable=False),
        sa.Column("metadata_json", _json(), nullable=True),
    )
    _index("tandem_tasks", "human_id", "model", "message_id", "compared_utc")
    op.create_table(
        "coaching_items",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("human_id", sa.String(), nullable=False),
        sa.Column("task_id", sa.String(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("your_answer", sa.Text(), nullable=True),
        sa.Column("better_answer", sa.Text(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_utc", _ts, nullable=False),
        sa.Column("seen_utc", _ts, nullable=True),
    )
    _index("coaching_items", "human_id")


def downgrade() -> None:
    for table in ("coaching_items", "tandem_tasks", "review_items", "eval_results", "eval_runs"):
        op.drop_table(table)
