"""Copy a store to another engine, and check a store's integrity.

``copy_store`` moves every table of :data:`afterword.store.schema.metadata`
from one store to another (SQLite to PostgreSQL when a deployment outgrows
one file, and back for a local investigation). It streams: each table is read
in primary-key order, ``batch_size`` rows at a time (keyset pagination, so
memory stays flat and a page never shifts under concurrent inserts), and each
page is written in one transaction with insert-or-ignore. A copy killed
part-way is resumed by running it again: rows already there are skipped,
which is also what makes a repeated copy idempotent. Tables are copied in
dependency order (``metadata.sorted_tables``), conversations before messages.

Derived structures are rebuilt in the target, never copied: the SQLite FTS5
table (its rowid watermark in ``job_state`` is the source's, so it is left
out and the target re-indexes) and the memory vector index.

``verify_store`` is the integrity check run at the end of a copy and by
``afterword db verify``: every message's conversation exists, no feedback,
judgment or injection hangs off a missing message, sequences have no gaps,
one judgment per (message, source), and the full-text index is in sync.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from afterword.store import schema as t
from afterword.store.migrate import SCHEMA_HEAD, current_revision
from afterword.store.search import sync_fulltext
from afterword.store.store import Store, aware

__all__ = ["copy_store", "verify_store", "table_counts", "DERIVED_STATE"]

log = logging.getLogger("afterword.store")

#: ``job_state`` entries that describe the source's physical layout, not its data.
DERIVED_STATE = frozenset({"fts_rowid"})


def table_counts(store: Store) -> dict[str, int]:
    """Rows per table of the schema."""
    with store.read() as conn:
        return {
            tbl.name: int(conn.execute(sa.select(sa.func.count()).select_from(tbl)).scalar() or 0)
            for tbl in t.metadata.sorted_tables
        }


def _pages(store: Store, table: sa.Table, batch_size: int) -> Any:
    """Yield lists of row dicts in primary-key order, one page per read transaction."""
    pk = list(table.primary_key.columns)
    last: tuple[Any, ...] | None = None
    while True:
        q = sa.select(table).order_by(*pk).limit(batch_size)
        if last is not None:
            q = q.where(sa.tuple_(*pk) > sa.tuple_(*last)) if len(pk) > 1 else q.where(pk[0] > last[0])
        with store.read() as conn:
            rows = [dict(r._mapping) for r in conn.execute(q)]
        if not rows:
            return
        yield rows
        last = tuple(rows[-1][c.name] for c in pk)
        if len(rows) < batch_size:
            return


def _normalise(table: sa.Table, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SQLite hands back naive datetimes (UTC by convention): make them aware for PostgreSQL."""
    ts_cols = [c.name for c in table.columns if isinstance(c.type, sa.DateTime)]
    if not ts_cols:
        return rows
    for r in rows:
        for c in ts_cols:
            v = r.get(c)
            if isinstance(v, datetime):
                r[c] = aware(v)
    return rows


def _insert_ignore(dst: Store, table: sa.Table) -> Any:
    mod = sqlite if dst.is_sqlite else postgresql
    return mod.insert(table).on_conflict_do_nothing()


def _fix_sequences(dst: Store) -> None:
    """PostgreSQL: rows copied with explicit integer ids leave the serial sequence behind."""
    if dst.is_sqlite:
        return
    with dst.write() as conn:
        for table in t.metadata.sorted_tables:
            for col in table.primary_key.columns:
                if isinstance(col.type, sa.Integer) and col.autoincrement in (True, "auto"):
                    seq = conn.execute(sa.select(sa.func.pg_get_serial_sequence(table.name, col.name))).scalar()
                    if seq:
                        top = conn.execute(sa.select(sa.func.max(col))).scalar()
                        conn.execute(sa.select(sa.func.setval(seq, top or 1, top is not None)))


def copy_store(
    src: Store,
    dst: Store,
    *,
    batch_size: int = 5000,
    progress: Callable[[str, int], None] | None = None,
    rebuild_derived: bool = True,
) -> dict[str, Any]:
    """Copy every table of ``src`` into ``dst`` (idempotent, resumable); returns counts and the check.

    ``progress(table, n)`` is called after each page. The result has, per
    table, the rows read and the rows newly written, the counts of both stores
    after the copy, ``match`` (every table of ``dst`` holds at least the rows of
    ``src``, and exactly as many when ``dst`` started empty) and ``dst``'s
    :func:`verify_store` report.
    """
    before = table_counts(dst)
    tables: dict[str, dict[str, int]] = {}
    for table in t.metadata.sorted_tables:
        read = written = 0
        for rows in _pages(src, table, batch_size):
            read += len(rows)
            if table is t.job_state:
                rows = [r for r in rows if r["name"] not in DERIVED_STATE]
            rows = _normalise(table, rows)
            if rows:
                with dst.write() as conn:
                    res = conn.execute(_insert_ignore(dst, table), rows)
                    written += max(int(res.rowcount or 0), 0)
            if progress:
                progress(table.name, len(rows))
        tables[table.name] = {"read": read, "written": written}
    _fix_sequences(dst)
    derived: dict[str, Any] = {}
    if rebuild_derived:
        derived["fulltext_indexed"] = sync_fulltext(dst)
        derived["memory_index"] = _rebuild_memory_index(dst)
    src_counts, dst_counts = table_counts(src), table_counts(dst)
    was_empty = not any(before.values())
    mismatched = {
        name: {"src": n, "dst": dst_counts.get(name, 0)}
        for name, n in src_counts.items()
        if name not in ("job_state",) and (dst_counts.get(name, 0) != n if was_empty else dst_counts.get(name, 0) < n)
    }
    return {
        "src": src._safe_url(),
        "dst": dst._safe_url(),
        "tables": tables,
        "src_counts": src_counts,
        "dst_counts": dst_counts,
        "match": not mismatched,
        "mismatched": mismatched,
        "derived": derived,
        "verify": verify_store(dst),
    }


def _rebuild_memory_index(dst: Store) -> Any:
    """Rebuild the memory vector index from the copied memories (when the memory module is present)."""
    try:
        from afterword.memory.index import rebuild_index
    except ImportError:
        return None
    try:
        return rebuild_index(dst)
    except Exception as exc:  # the index is derived: a failure here loses nothing
        log.warning("afterword: memory index not rebuilt (%s); run `afterword memory reindex`", exc)
        return {"error": str(exc)}


def _scalar(conn: sa.Connection, q: Any) -> int:
    return int(conn.execute(q).scalar() or 0)


def verify_store(store: Store) -> dict[str, Any]:
    """Integrity report of ``store``: ``ok`` is False when any check found a problem."""
    m, c, f, j, mi, mem = t.messages, t.conversations, t.feedback, t.judgments, t.memory_injections, t.memories
    ex, ei, u = t.exports, t.export_items, t.users

    def orphans(child: sa.Table, col: sa.Column[Any], parent_col: sa.Column[Any]) -> Any:
        missing = ~sa.select(parent_col).where(parent_col == col).exists()
        return sa.select(sa.func.count()).select_from(child).where(col.is_not(None), missing)

    checks: dict[str, int] = {}
    with store.read() as conn:
        checks["messages_without_conversation"] = _scalar(conn, orphans(m, m.c.conversation_id, c.c.id))
        checks["feedback_without_message"] = _scalar(conn, orphans(f, f.c.message_id, m.c.id))
        checks["judgments_without_message"] = _scalar(conn, orphans(j, j.c.message_id, m.c.id))
        checks["injections_without_memory"] = _scalar(conn, orphans(mi, mi.c.memory_id, mem.c.id))
        checks["export_items_without_export"] = _scalar(conn, orphans(ei, ei.c.export_id, ex.c.id))
        checks["conversations_without_user"] = _scalar(conn, orphans(c, c.c.user_id, u.c.id))
        dup = (
            sa.select(j.c.message_id, j.c.source)
            .group_by(j.c.message_id, j.c.source)
            .having(sa.func.count() > 1)
            .subquery()
        )
        checks["duplicate_judgments"] = _scalar(conn, sa.select(sa.func.count()).select_from(dup))
        # A conversation written whole has seq 0..n-1: a gap means a partial write.
        per_conv = (
            sa.select(m.c.conversation_id)
            .group_by(m.c.conversation_id)
            .having(sa.func.count() != sa.func.max(m.c.seq) + 1)
            .subquery()
        )
        checks["conversations_with_seq_gaps"] = _scalar(conn, sa.select(sa.func.count()).select_from(per_conv))
        fts: dict[str, Any] = {}
        if store.is_sqlite:
            fts_t = sa.table("messages_fts", sa.column("message_id"), sa.column("rowid"))
            mark = int(
                conn.execute(sa.select(t.job_state.c.value).where(t.job_state.c.name == "fts_rowid")).scalar() or 0
            )
            rowid = sa.literal_column("messages.rowid")
            fts["indexed"] = _scalar(conn, sa.select(sa.func.count()).select_from(fts_t))
            fts["pending"] = _scalar(conn, sa.select(sa.func.count()).select_from(m).where(rowid > mark))
            checks["fts_orphans"] = _scalar(
                conn,
                sa.select(sa.func.count())
                .select_from(fts_t)
                .where(~sa.select(m.c.id).where(m.c.id == fts_t.c.message_id).exists()),
            )
            checks["fts_missing"] = _scalar(
                conn,
                sa.select(sa.func.count())
                .select_from(m)
                .where(rowid <= mark, ~sa.select(fts_t.c.message_id).where(fts_t.c.message_id == m.c.id).exists()),
            )
        else:
            present = conn.execute(
                sa.select(sa.func.count())
                .select_from(sa.table("pg_indexes", sa.column("indexname")))
                .where(sa.column("indexname") == "ix_messages_content_fts")
            ).scalar()
            fts["gin_index"] = bool(present)
            checks["fts_index_missing"] = 0 if present else 1
    revision = current_revision(store.engine)
    problems = {k: v for k, v in checks.items() if v}
    if revision != SCHEMA_HEAD:
        problems["schema_revision"] = 1
    return {
        "store": store._safe_url(),
        "ok": not problems,
        "problems": problems,
        "checks": checks,
        "fulltext": fts,
        "schema_revision": revision,
        "schema_head": SCHEMA_HEAD,
        "counts": table_counts(store),
    }
