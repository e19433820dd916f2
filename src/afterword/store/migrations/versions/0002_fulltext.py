"""Full-text search over message content.

SQLite: an FTS5 table holding (content, message_id). It is filled lazily by
``Store.sync_fulltext`` from a rowid watermark rather than by triggers, so a
bulk import pays nothing for it. ``forget`` deletes from it explicitly.
PostgreSQL: a GIN index on ``to_tsvector('english', content)``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5("
            "content, message_id UNINDEXED, tokenize='porter unicode61')"
        )
    else:
        op.execute(
            "CREATE INDEX IF NOT EXISTS ix_messages_content_fts ON messages USING gin (to_tsvector('english', content))"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE IF EXISTS messages_fts")
    else:
        op.execute("DROP INDEX IF EXISTS ix_messages_content_fts")
