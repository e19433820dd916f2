"""Full-text search over the history, and forgetting a user everywhere.

SQLite uses the FTS5 table from migration 0002, synced lazily from a rowid
watermark (``sync_fulltext``) so that imports stay fast; PostgreSQL uses
``to_tsvector`` with its GIN index. Both return the same hit shape.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from afterword.store import schema as t
from afterword.store.store import Store, aware

__all__ = ["sync_fulltext", "search", "forget_user"]

_FTS_STATE = "fts_rowid"


def sync_fulltext(store: Store) -> int:
    """Index messages added since the last sync (SQLite only); returns how many."""
    if not store.is_sqlite:
        return 0
    with store.write() as conn:
        last = int(conn.execute(sa.select(t.job_state.c.value).where(t.job_state.c.name == _FTS_STATE)).scalar() or 0)
        top = conn.exec_driver_sql("SELECT coalesce(max(rowid), 0) FROM messages").scalar() or 0
        if top <= last:
            return 0
        n = conn.exec_driver_sql(
            "INSERT INTO messages_fts(rowid, content, message_id) "
            "SELECT rowid, content, id FROM messages WHERE rowid > ? AND rowid <= ?",
            (last, top),
        ).rowcount
        store.set_state(_FTS_STATE, str(top), conn)
    return int(n or 0)


def _fts_query(q: str) -> str:
    # Quote each word: user text must never be parsed as FTS5 syntax.
    words = re.findall(r"\w+", q)
    return " ".join('"' + w.replace('"', "") + '"' for w in words)


def search(
    store: Store,
    query: str,
    *,
    user_id: str | None = None,
    role: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    feedback: str | None = None,
    limit: int = 20,
) -> list[dict[str, Any]]:
    """Messages matching ``query``, best first.

    ``feedback`` filters on explicit feedback: ``any``, ``none``, ``up``,
    ``down``, ``correction``, ``rating`` or ``comment``.
    """
    m = t.messages
    if store.is_sqlite:
        sync_fulltext(store)
        fts = sa.table("messages_fts", sa.column("message_id"), sa.column("rank"))
        match_q = _fts_query(query)
        if not match_q:
            return []
        q = (
            sa.select(m, fts.c.rank.label("rank"))
            .select_from(fts.join(m, m.c.id == fts.c.message_id))
            .where(sa.text("messages_fts MATCH :q").bindparams(q=match_q))
            .order_by(fts.c.rank)
        )
    else:
        tsq = sa.func.plainto_tsquery("english", query)
        tsv = sa.func.to_tsvector("english", m.c.content)
        q = sa.select(m, (-sa.func.ts_rank(tsv, tsq)).label("rank")).where(tsv.op("@@")(tsq)).order_by("rank")
    if user_id:
        q = q.where(m.c.user_id == user_id)
    if role:
        q = q.where(m.c.role == role)
    if since:
        q = q.where(m.c.created_utc >= since)
    if until:
        q = q.where(m.c.created_utc < until)
    f = t.feedback
    has = sa.select(f.c.id).where(f.c.message_id == m.c.id)
    if feedback == "any":
        q = q.where(has.exists())
    elif feedback == "none":
        q = q.where(~has.exists())
    elif feedback == "up":
        q = q.where(has.where(sa.or_(f.c.thumbs == 1, f.c.rating >= 4)).exists())
    elif feedback == "down":
        q = q.where(has.where(sa.or_(f.c.thumbs == -1, f.c.rating <= 2)).exists())
    elif feedback in ("correction", "rating", "comment", "thumbs"):
        q = q.where(has.where(f.c.kind == feedback).exists())
    elif feedback:
        raise ValueError(f"unknown feedback filter {feedback!r}")
    with store.read() as conn:
        rows = conn.execute(q.limit(limit)).all()
    return [
        {
            "message_id": r.id,
            "conversation_id": r.conversation_id,
            "user_id": r.user_id,
            "role": r.role,
            "content": r.content,
            "created_utc": aware(r.created_utc).isoformat() if r.created_utc else None,
            "rank": float(r.rank),
        }
        for r in rows
    ]


def forget_user(store: Store, user_id: str) -> dict[str, Any]:
    """Delete every trace of ``user_id`` and mark datasets and models built from it as stale.

    Returns the number of rows removed per table and the stale exports.
    """
    removed: dict[str, int] = {}
    with store.write() as conn:
        mids = list(conn.execute(sa.select(t.messages.c.id).where(t.messages.c.user_id == user_id)).scalars())
        stale = list(
            conn.execute(
                sa.select(t.export_items.c.export_id).where(t.export_items.c.user_id == user_id).distinct()
            ).scalars()
        )
        if stale:
            conn.execute(
                t.exports.update()
                .where(t.exports.c.id.in_(stale))
                .values(stale_reason="contains data of a forgotten user")  # no id: forget leaves no trace
            )
        if store.is_sqlite:
            n = 0
            for i in range(0, len(mids), 900):
                chunk = mids[i : i + 900]
                marks = ",".join("?" * len(chunk))
                n += conn.exec_driver_sql(
                    f"DELETE FROM messages_fts WHERE message_id IN ({marks})", tuple(chunk)
                ).rowcount
            removed["messages_fts"] = n
        # Feedback/judgments written without a user id still hang off the user's messages.
        for table in (t.feedback, t.judgments, t.memory_injections):
            n = 0
            for i in range(0, len(mids), 900):
                n += conn.execute(table.delete().where(table.c.message_id.in_(mids[i : i + 900]))).rowcount
            n += conn.execute(table.delete().where(table.c.user_id == user_id)).rowcount
            removed[table.name] = n
        mem_ids = list(conn.execute(sa.select(t.memories.c.id).where(t.memories.c.user_id == user_id)).scalars())
        for table in (t.memories, t.export_items, t.messages, t.conversations):
            removed[table.name] = conn.execute(table.delete().where(table.c.user_id == user_id)).rowcount
        removed["users"] = conn.execute(t.users.delete().where(t.users.c.id == user_id)).rowcount
        if store.is_sqlite:
            # SQLite reuses the rowids of deleted top rows: lower the FTS watermark so that
            # messages inserted next (with those rowids) are still indexed by sync_fulltext.
            top = conn.exec_driver_sql("SELECT coalesce(max(rowid), 0) FROM messages").scalar() or 0
            last = conn.execute(sa.select(t.job_state.c.value).where(t.job_state.c.name == _FTS_STATE)).scalar()
            if last is not None and int(last) > top:
                store.set_state(_FTS_STATE, str(top), conn)
    from afterword.memory.episodic import drop  # the turns this process holds in memory for recall

    drop(store, user_id)
    return {"user_id": user_id, "removed": removed, "memory_ids": mem_ids, "stale_exports": stale}
