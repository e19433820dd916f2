"""Full-text search over the history, and forgetting a user everywhere.

SQLite uses the FTS5 table from migration 0002, synced lazily from a rowid
watermark (``sync_fulltext``) so that imports stay fast; PostgreSQL uses
``to_tsvector`` with its GIN index. Both return the same hit shape.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from afterword.store import schema as t
from afterword.store.store import Store, aware

__all__ = ["sync_fulltext", "search", "forget_user"]

_FTS_STATE = "fts_rowid"

log = logging.getLogger("afterword.store")

# Constant SQL for forget's erasure (no statement here is built from strings).
_SECURE_DELETE = {0: "PRAGMA secure_delete=OFF", 1: "PRAGMA secure_delete=ON", 2: "PRAGMA secure_delete=FAST"}
_FTS_OPTIMIZE = {
    "messages_fts": "INSERT INTO messages_fts(messages_fts) VALUES('optimize')",
    "memory_search": "INSERT INTO memory_search(memory_search) VALUES('optimize')",
}
# The tables forget deletes from (memory_vectors, when present, is vacuumed on its own).
_PG_VACUUM = (
    "VACUUM users, conversations, messages, feedback, judgments, memory_injections, memories, export_items, exports"
)


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


def forget_user(store: Store, user_id: str, *, erase: bool = True) -> dict[str, Any]:
    """Delete every trace of ``user_id`` and mark datasets and models built from it as stale.

    Returns the number of rows removed per table, the ids of the user's memories, the
    stale exports, and ``erased``/``erasure``: whether the bytes themselves are gone.

    The rows go in one transaction, memory-index entries included (``memory_search``,
    ``memory_vec``, ``memory_ivf``, ``memory_vectors``), and that transaction commits
    before anything else runs, so a failure afterwards never undoes the forgetting.
    Deleting a row does not remove its bytes from the database, though, and with
    ``erase`` (the default) the deletion is then made physical:

    - SQLite: the full-text indexes (``messages_fts``, ``memory_search``) are
      ``optimize``-d, which rewrites their segments without the deleted documents'
      tokens; ``VACUUM`` rewrites every page, which drops freed pages and the stale
      copies of cells that b-tree rebalancing leaves inside live pages (``PRAGMA
      secure_delete`` alone misses those); ``sqlite_stat4`` samples are refreshed
      where they exist; and a ``wal_checkpoint(TRUNCATE)`` writes the rewritten pages
      over the old ones and empties the write-ahead log. ``erased`` is True only when
      every step completed, in which case no byte of the user's messages, memories or
      ids is left in the ``.db``/``-wal`` files (the filesystem or SSD may still hold
      old blocks; that is out of SQLite's reach). ``VACUUM`` costs time and temporary
      disk space in proportion to the whole database. The deletion itself also runs
      with ``secure_delete`` on, so even when erasure fails or is skipped the deleted
      cells and freed pages are zeroed.
    - PostgreSQL: a plain ``VACUUM`` of the affected tables (autocommit) removes the
      dead rows and index entries so their space is reused, but PostgreSQL does not
      zero that space, so ``erased`` stays False there (``VACUUM FULL`` would rewrite
      the tables, but it locks them exclusively and is not run).

    A failed erasure step is logged as a warning and reported in ``erasure``.
    """
    removed: dict[str, int] = {}
    index = _memory_index(store, user_id)  # opened before the transaction: opening it may write
    with store.write() as conn:
        if store.is_sqlite:  # zero the deleted cells and freed pages; put back for the pooled connection after
            secure = conn.exec_driver_sql("PRAGMA secure_delete").scalar()
            conn.exec_driver_sql("PRAGMA secure_delete=ON")
        mem_ids, stale = _delete_user(store, conn, user_id, removed, index)
        if store.is_sqlite:
            conn.exec_driver_sql(_SECURE_DELETE.get(secure, _SECURE_DELETE[0]))
    from afterword.memory.episodic import drop  # the turns this process holds in memory for recall

    drop(store, user_id)
    if not erase:
        erasure: dict[str, Any] = {"erased": False, "skipped": True}
    elif store.is_sqlite:
        erasure = _erase_sqlite(store)
    else:
        erasure = _vacuum_postgres(store)
    return {
        "user_id": user_id,
        "removed": removed,
        "memory_ids": mem_ids,
        "stale_exports": stale,
        "erased": bool(erasure["erased"]),
        "erasure": erasure,
    }


def _memory_index(store: Store, user_id: str) -> Any:
    """The store's memory index when the user may have entries in it, else None (nothing is created)."""
    with store.read() as conn:
        if store.is_sqlite:
            used = conn.exec_driver_sql(
                "SELECT 1 FROM sqlite_master WHERE name IN ('memory_search', 'memory_vec', 'memory_ivf')"
            ).first()
        else:
            used = conn.exec_driver_sql("SELECT to_regclass('memory_vectors')").scalar()
        if not used:
            used = conn.execute(sa.select(t.memories.c.id).where(t.memories.c.user_id == user_id).limit(1)).first()
    if not used:
        return None
    from afterword.memory.index import get_index

    return get_index(store)


def _indexed_ids(conn: sa.Connection, index: Any, user_id: str) -> list[str]:
    """Ids the memory index holds under the user as owner, memory rows or not (a crash between the two writes)."""
    from afterword.memory.index import owner_tag

    ids: list[str] = []
    if index.kind == "sqlite-vec":
        ids += conn.exec_driver_sql("SELECT memory_id FROM memory_ivf WHERE owner = ?", (user_id,)).scalars()
        ids += conn.exec_driver_sql("SELECT memory_id FROM memory_vec WHERE owner = ?", (user_id,)).scalars()
    elif index.kind == "pgvector":
        ids += conn.execute(sa.text("SELECT memory_id FROM memory_vectors WHERE owner = :o"), {"o": user_id}).scalars()
    if index.lexical_kind == "fts5":
        match = f'owner_tag : "{owner_tag(user_id)}"'  # "o" + hex digits: nothing FTS5 would parse
        sql = "SELECT memory_id FROM memory_search WHERE memory_search MATCH ?"
        ids += conn.exec_driver_sql(sql, (match,)).scalars()
    return ids


def _delete_user(
    store: Store, conn: sa.Connection, user_id: str, removed: dict[str, int], index: Any
) -> tuple[list[str], list[str]]:
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
            n += conn.exec_driver_sql(f"DELETE FROM messages_fts WHERE message_id IN ({marks})", tuple(chunk)).rowcount
        removed["messages_fts"] = n
    # Feedback/judgments written without a user id still hang off the user's messages.
    for table in (t.feedback, t.judgments, t.memory_injections):
        n = 0
        for i in range(0, len(mids), 900):
            n += conn.execute(table.delete().where(table.c.message_id.in_(mids[i : i + 900]))).rowcount
        n += conn.execute(table.delete().where(table.c.user_id == user_id)).rowcount
        removed[table.name] = n
    mem_ids = list(conn.execute(sa.select(t.memories.c.id).where(t.memories.c.user_id == user_id)).scalars())
    if index is not None:
        # In this transaction, so that the erasure below finds no index entry of the user left.
        gone = list(dict.fromkeys(mem_ids + _indexed_ids(conn, index, user_id)))
        if gone:
            index.remove(conn, gone)
    for table in (t.memories, t.export_items, t.messages, t.conversations):
        removed[table.name] = conn.execute(table.delete().where(table.c.user_id == user_id)).rowcount
    removed["users"] = conn.execute(t.users.delete().where(t.users.c.id == user_id)).rowcount
    if store.is_sqlite:
        _lower_fts_watermark(store, conn)
    return mem_ids, stale


def _lower_fts_watermark(store: Store, conn: sa.Connection) -> None:
    # SQLite reuses the rowids of deleted top rows: lower the FTS watermark so that
    # messages inserted next (with those rowids) are still indexed by sync_fulltext.
    top = conn.exec_driver_sql("SELECT coalesce(max(rowid), 0) FROM messages").scalar() or 0
    last = conn.execute(sa.select(t.job_state.c.value).where(t.job_state.c.name == _FTS_STATE)).scalar()
    if last is not None and int(last) > top:
        store.set_state(_FTS_STATE, str(top), conn)


def _erase_sqlite(store: Store) -> dict[str, Any]:
    """Make a committed deletion physical (see ``forget_user``); never raises."""
    db = store.engine.url.database
    if not db or db == ":memory:" or db.startswith("file::memory:"):
        return {"erased": True, "steps": [], "note": "in-memory database: nothing on disk"}
    steps: list[str] = []
    out: dict[str, Any] = {"erased": False, "steps": steps}
    try:
        # A connection of its own, closed afterwards: the pragmas set here never reach the pool.
        with store._write_lock:  # in-process writers wait instead of running into VACUUM's lock
            raw = store.engine.raw_connection()
            try:
                dbapi = raw.driver_connection
                dbapi.isolation_level = None  # autocommit: VACUUM and checkpoints run outside a transaction
                cur = dbapi.cursor()
                cur.execute("PRAGMA secure_delete=ON")
                cur.execute("PRAGMA temp_store=FILE")  # VACUUM's copy of the database goes to disk, not memory
                names = {r[0] for r in cur.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                for fts, optimize in _FTS_OPTIMIZE.items():
                    if fts in names:
                        # Deleting from FTS5 only adds delete markers; merging every segment into one drops
                        # the deleted documents' tokens (and the markers) from the index.
                        cur.execute(optimize)
                        steps.append(f"optimize:{fts}")
                top = cur.execute("SELECT coalesce(max(rowid), 0) FROM messages").fetchone()[0]
                cur.execute("VACUUM")
                steps.append("vacuum")
                if cur.execute("SELECT coalesce(max(rowid), 0) FROM messages").fetchone()[0] != top:
                    # VACUUM keeps the rowids of rowid tables in the SQLite versions seen; should it ever
                    # renumber them, the FTS rowid watermark would be meaningless: re-index from scratch.
                    cur.execute("DELETE FROM messages_fts")
                    cur.execute("DELETE FROM job_state WHERE name = ?", (_FTS_STATE,))
                    steps.append("fts_reset")
                if "sqlite_stat4" in names:  # ANALYZE's samples are copies of index keys (user ids among them)
                    cur.execute("ANALYZE")
                    steps.append("analyze")
                busy, log_frames, done = cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                steps.append("checkpoint")
                cur.close()
            finally:
                raw.detach()
                raw.close()
        # busy: a reader kept the checkpoint from finishing, so the log may still hold old pages.
        # log_frames == -1: not in WAL mode, nothing to checkpoint.
        out["checkpoint"] = {"busy": busy, "log_frames": log_frames, "checkpointed": done}
        out["erased"] = busy == 0 and (log_frames == -1 or log_frames == done)
        if not out["erased"]:
            log.warning("forget: the write-ahead log could not be emptied (a reader is open); rerun to erase fully")
    except Exception as exc:  # the deletion is committed: report, do not raise
        out["error"] = f"{type(exc).__name__}: {exc}"
        log.warning("forget: rows deleted, but erasing their bytes failed after %s: %s", steps or "no step", exc)
    return out


def _vacuum_postgres(store: Store) -> dict[str, Any]:
    """Plain VACUUM of the tables forget deletes from (dead rows and index entries become reusable space)."""
    out: dict[str, Any] = {"erased": False, "vacuumed": False, "note": "PostgreSQL VACUUM does not zero freed space"}
    try:
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(_PG_VACUUM)
            if conn.exec_driver_sql("SELECT to_regclass('memory_vectors')").scalar():
                conn.exec_driver_sql("VACUUM memory_vectors")
        out["vacuumed"] = True
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        log.warning("forget: rows deleted, but VACUUM failed: %s", exc)
    return out
