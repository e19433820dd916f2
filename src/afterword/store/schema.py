"""The SQL schema, shared by SQLite and PostgreSQL.

Tables are SQLAlchemy Core ``Table`` objects (not ORM classes): the hot paths
(bulk import, proxy logging) insert many rows at once, and Core keeps that
fast on both engines. The Alembic migrations in ``store/migrations`` create
exactly these tables; ``tests/test_store.py`` checks that they agree.

Conventions: ids are text content hashes (see ``records.stable_id``), time
columns end in ``_utc`` (timezone-aware UTC), JSON columns end in ``_json``,
and units are in the name (``_ms``).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

__all__ = [
    "metadata",
    "users",
    "conversations",
    "messages",
    "feedback",
    "judgments",
    "memories",
    "memory_injections",
    "exports",
    "export_items",
    "api_keys",
    "suites",
    "suite_items",
    "job_state",
    "artifacts",
    "eval_runs",
    "eval_results",
    "review_items",
    "tandem_tasks",
    "coaching_items",
    "USER_TABLES",
]

metadata = sa.MetaData()
_ts = sa.DateTime(timezone=True)
_json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("created_utc", _ts, nullable=False),
    # When set, every dataset built later must skip this user (see forget).
    sa.Column("forgotten_utc", _ts),
    sa.Column("metadata_json", _json),
)

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("user_id", sa.String, index=True),
    # Where it came from: import:<format>, sdk, proxy, review, tandem ...
    sa.Column("source", sa.String, nullable=False),
    # The id the source gave the session, if any (kept for show/search).
    sa.Column("external_id", sa.String, index=True),
    sa.Column("started_utc", _ts, index=True),
    sa.Column("metadata_json", _json),
)

messages = sa.Table(
    "messages",
    metadata,
    # sha of (conversation, parent, role, content): resent histories dedupe.
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("conversation_id", sa.String, nullable=False),
    # Position in the conversation, 0-based. Ordering key.
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("parent_id", sa.String),
    # Denormalised from the conversation: per-user queries and forget need no join.
    sa.Column("user_id", sa.String, index=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("tool_calls_json", _json),
    sa.Column("created_utc", _ts),
    sa.Column("model", sa.String),
    sa.Column("latency_ms", sa.Float),
    sa.Column("prompt_tokens", sa.Integer),
    sa.Column("completion_tokens", sa.Integer),
    sa.Column("metadata_json", _json),
    sa.Index("ix_messages_conv_seq", "conversation_id", "seq"),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("message_id", sa.String, nullable=False, index=True),
    sa.Column("user_id", sa.String, index=True),
    sa.Column("kind", sa.String(16), nullable=False),  # thumbs|rating|comment|correction
    sa.Column("thumbs", sa.Integer),  # -1 or +1
    sa.Column("rating", sa.Float),  # 1..5
    sa.Column("comment", sa.Text),
    # The human's ground truth for a correction; the error is the message itself.
    sa.Column("correction", sa.Text),
    sa.Column("source", sa.String, nullable=False),  # user|reviewer|import
    sa.Column("created_utc", _ts, nullable=False, index=True),
)

judgments = sa.Table(
    "judgments",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("message_id", sa.String, nullable=False),  # indexed by the unique constraint
    sa.Column("user_id", sa.String, index=True),
    sa.Column("source", sa.String(24), nullable=False),
    sa.Column("label", sa.String(16), nullable=False),
    sa.Column("score", sa.Float, nullable=False),  # -1 .. 1
    sa.Column("confidence", sa.Float, nullable=False),  # 0 .. 1
    # [{signal, message_id, weight, detail}]: exactly what the judge used.
    sa.Column("evidence_json", _json, nullable=False),
    sa.Column("model_version", sa.String),
    sa.Column("created_utc", _ts, nullable=False, index=True),
    sa.UniqueConstraint("message_id", "source", name="uq_judgment_message_source"),
)

memories = sa.Table(
    "memories",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # lesson|preference|fact
    sa.Column("scope", sa.String(8), nullable=False),  # user|global
    sa.Column("user_id", sa.String, index=True),
    sa.Column("text", sa.Text, nullable=False),  # what gets injected
    sa.Column("situation", sa.Text),  # the trigger, embedded for retrieval
    sa.Column("wrong", sa.Text),
    sa.Column("right", sa.Text),
    # Preferences/facts: the slot ("units", "python_version") a newer value supersedes.
    sa.Column("key", sa.String, index=True),
    sa.Column("embedding", sa.LargeBinary),  # float32 x 384, little-endian
    sa.Column("evidence_json", _json),
    sa.Column("pinned", sa.Boolean, nullable=False, default=False),
    sa.Column("uses", sa.Integer, nullable=False, default=0),
    sa.Column("helpful", sa.Float, nullable=False, default=0.0),
    sa.Column("harmful", sa.Float, nullable=False, default=0.0),
    sa.Column("usefulness", sa.Float, nullable=False, default=0.0),
    # History is kept: a superseded or faded memory stays, but is not retrieved.
    sa.Column("superseded_by", sa.String),
    sa.Column("active", sa.Boolean, nullable=False, default=True),
    sa.Column("created_utc", _ts, nullable=False),
    sa.Column("updated_utc", _ts, nullable=False),
    sa.Column("metadata_json", _json),
)

memory_injections = sa.Table(
    "memory_injections",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("memory_id", sa.String, nullable=False, index=True),
    # The assistant response the memory shaped; its later judgment credits the memory.
    sa.Column("message_id", sa.String, index=True),
    sa.Column("user_id", sa.String, index=True),
    sa.Column("tokens", sa.Integer, nullable=False),
    sa.Column("score", sa.Float),  # retrieval score
    sa.Column("credited", sa.Boolean, nullable=False, default=False),
    sa.Column("created_utc", _ts, nullable=False),
)

exports = sa.Table(
    "exports",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # sft|dpo|kto|reward|jsonl|model
    sa.Column("format", sa.String(16)),
    sa.Column("path", sa.Text),
    sa.Column("command", sa.Text),
    sa.Column("card_json", _json),
    # Set when a forgotten user's data is in its lineage: rebuild it.
    sa.Column("stale_reason", sa.Text),
    sa.Column("created_utc", _ts, nullable=False),
)

export_items = sa.Table(
    "export_items",
    metadata,
    sa.Column("export_id", sa.String, primary_key=True),
    sa.Column("message_id", sa.String, primary_key=True),
    sa.Column("user_id", sa.String, index=True),
    sa.Column("split", sa.String(8)),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("key_hash", sa.String, nullable=False, unique=True),  # sha256; the key is never stored
    sa.Column("scope", sa.String, nullable=False),  # proxy|ui|all
    sa.Column("created_utc", _ts, nullable=False),
    sa.Column("revoked_utc", _ts),
)

suites = sa.Table(
    "suites",
    metadata,
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("description", sa.Text),
    sa.Column("created_utc", _ts, nullable=False),
    sa.Column("metadata_json", _json),
)

suite_items = sa.Table(
    "suite_items",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("suite", sa.String, nullable=False, index=True),
    # Frozen source message: never exported to training (dataset builds check this).
    sa.Column("message_id", sa.String, index=True),
    sa.Column("prompt_json", _json, nullable=False),
    sa.Column("reference", sa.Text),
    sa.Column("rubric", sa.Text),
    sa.Column("metadata_json", _json),
)

job_state = sa.Table(
    "job_state",
    metadata,
    # Watermarks of resumable jobs (judge, fts sync, credit): name -> value.
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("value", sa.Text),
    sa.Column("updated_utc", _ts, nullable=False),
)

# -- evals, review queue, tandem (migration 0003) ------------------------------

eval_runs = sa.Table(
    "eval_runs",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("suite", sa.String, nullable=False, index=True),
    # The version under test, as the caller names it ("prompt-v2"); compare picks runs by it.
    sa.Column("label", sa.String, nullable=False),
    sa.Column("model", sa.String, nullable=False),
    sa.Column("endpoint", sa.Text),
    sa.Column("system_prompt", sa.Text),
    sa.Column("params_json", _json),  # temperature, max_tokens, scorers used
    sa.Column("summary_json", _json),  # mean scores, pass rate, repeat-mistake rate
    sa.Column("created_utc", _ts, nullable=False, index=True),
)

eval_results = sa.Table(
    "eval_results",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("run_id", sa.String, nullable=False, index=True),
    sa.Column("item_id", sa.String, nullable=False, index=True),
    sa.Column("output", sa.Text, nullable=False),
    sa.Column("score", sa.Float, nullable=False),  # 0 .. 1, the headline score of this item
    # {reference_f1, reference_sim, reward, rubric, mistake_sim}: every scorer that ran.
    sa.Column("scores_json", _json, nullable=False),
    # For items frozen from a corrected mistake: does the output still make it?
    sa.Column("repeat_mistake", sa.Boolean),
    sa.Column("latency_ms", sa.Float),
    sa.Column("error", sa.Text),
)

review_items = sa.Table(
    "review_items",
    metadata,
    # Explicit entries of the review queue beyond judged messages (tandem disagreements).
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("message_id", sa.String, nullable=False, index=True),
    sa.Column("reason", sa.String, nullable=False),
    sa.Column("priority", sa.Float, nullable=False),
    sa.Column("detail_json", _json),
    sa.Column("created_utc", _ts, nullable=False),
    sa.Column("resolved_utc", _ts),
)

tandem_tasks = sa.Table(
    "tandem_tasks",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("reference", sa.Text),
    sa.Column("rubric", sa.Text),
    sa.Column("human_id", sa.String, index=True),
    sa.Column("human_answer", sa.Text),
    sa.Column("human_answered_utc", _ts),
    sa.Column("model", sa.String, index=True),
    sa.Column("ai_answer", sa.Text),
    sa.Column("ai_answered_utc", _ts),
    # The AI answer as a stored assistant message: what review, corrections and DPO pairs hang off.
    sa.Column("message_id", sa.String, index=True),
    sa.Column("method", sa.String(16)),  # reference|rubric|pick
    sa.Column("human_score", sa.Float),  # 0 .. 1
    sa.Column("ai_score", sa.Float),
    sa.Column("human_correct", sa.Boolean),
    sa.Column("ai_correct", sa.Boolean),
    sa.Column("outcome", sa.String(16)),  # agree|ai_wrong|human_wrong|both_wrong
    sa.Column("compared_utc", _ts, index=True),
    sa.Column("created_utc", _ts, nullable=False),
    sa.Column("metadata_json", _json),
)

coaching_items = sa.Table(
    "coaching_items",
    metadata,
    # A tandem task the human got wrong and the AI got right: shown back to that human.
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("human_id", sa.String, nullable=False, index=True),
    sa.Column("task_id", sa.String, nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("your_answer", sa.Text),
    sa.Column("better_answer", sa.Text),
    sa.Column("note", sa.Text),
    sa.Column("created_utc", _ts, nullable=False),
    sa.Column("seen_utc", _ts),
)

artifacts = sa.Table(
    "artifacts",
    metadata,
    # Expert documents (memos, reports) mined by ``afterword artifacts``; id = hash of the extracted text.
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("path", sa.Text, nullable=False),  # where it was read from
    sa.Column("format", sa.String(8), nullable=False),  # md|txt|html|pdf
    sa.Column("sha256", sa.String(64), nullable=False, index=True),  # of the raw file: re-ingest is a no-op
    sa.Column("title", sa.Text),
    sa.Column("text", sa.Text, nullable=False),  # the plain text citations and conclusion were read from
    # [{raw, kind, key, method}]: every cited source, with its normalised matching key.
    sa.Column("citations_json", _json, nullable=False),
    sa.Column("conclusion", sa.Text),
    # ``reverse``: {question, steps, sources, conclusion, question_source, model}.
    sa.Column("reconstruction_json", _json),
    # The training conversation ``reverse`` built from it: lineage from artifact to dataset rows.
    sa.Column("conversation_id", sa.String, index=True),
    sa.Column("ingested_utc", _ts, nullable=False),
    sa.Column("reversed_utc", _ts),
    sa.Column("metadata_json", _json),  # labelled options, extraction details
)

#: Tables holding a ``user_id`` column: what ``forget`` must clear.
USER_TABLES = (messages, feedback, judgments, memories, memory_injections, export_items, conversations)
