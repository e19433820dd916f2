"""The experience store: every interaction, feedback event and judgment.

``Store`` is the one public way to read and write afterword's data. It owns
id assignment (content hashes, so re-imports and re-sent chat histories are
idempotent), the transaction boundaries (a batch of whole conversations is
one transaction, so nothing is ever half-written), and the translation of
SQLAlchemy errors into :class:`afterword.errors.StoreError`.

Writes on SQLite take the write lock up front (``BEGIN IMMEDIATE``) and a
per-process lock serialises writers inside one process, which is the
single-writer discipline SQLite wants; PostgreSQL takes them concurrently.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from hashlib import sha256 as _sha256
from itertools import compress
from operator import is_
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from afterword.errors import NotFoundError, StoreError
from afterword.records import (
    Conversation,
    Evidence,
    Feedback,
    Judgment,
    Message,
    stable_id,
    utcnow,
)
from afterword.store import schema as t
from afterword.store.engine import is_sqlite, make_engine, resolve_url
from afterword.store.migrate import upgrade

__all__ = ["Store", "ImportCounts", "PreparedImport", "conversation_id_for", "message_id_for", "aware"]


def aware(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; afterword's are always UTC-aware."""
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def conversation_id_for(conv: Conversation) -> str:
    """Stable id: from the source's session id when there is one, else from content."""
    if conv.id:
        return conv.id
    if conv.external_id:
        return stable_id("conv", conv.user_id or "", conv.external_id)
    head = [(m.role, m.content) for m in conv.messages[:2]]
    return stable_id("conv", conv.user_id or "", head, conv.started_utc)


def message_id_for(conversation_id: str, parent_id: str | None, msg: Message) -> str:
    """``stable_id("msg", conversation, parent, role, content, tool_calls)``, inlined: the import hot path."""
    calls = msg.tool_calls
    tail = "\x00" if calls is None else json.dumps(calls, sort_keys=True, default=str)
    data = "\x1f".join(("msg", conversation_id, parent_id or "", msg.role, msg.content, tail))
    return _sha256(data.encode("utf-8", "surrogatepass")).hexdigest()[:24]


@dataclass
class ImportCounts:
    conversations: int = 0
    conversations_present: int = 0
    messages: int = 0
    messages_present: int = 0
    feedback: int = 0
    skipped: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def add(self, other: ImportCounts) -> None:
        self.conversations += other.conversations
        self.conversations_present += other.conversations_present
        self.messages += other.messages
        self.messages_present += other.messages_present
        self.feedback += other.feedback
        self.skipped += other.skipped
        self.errors.extend(other.errors)

    def as_dict(self) -> dict[str, Any]:
        return {
            "imported_conversations": self.conversations,
            "present_conversations": self.conversations_present,
            "imported_messages": self.messages,
            "present_messages": self.messages_present,
            "imported_feedback": self.feedback,
            "skipped": self.skipped,
            "errors": self.errors,
        }


@dataclass
class PreparedImport:
    """Rows of a batch of conversations, ready for ``Store.write_prepared`` (one transaction)."""

    counts: ImportCounts
    conv_rows: dict[str, tuple[Any, ...]]
    msg_rows: list[tuple[Any, ...]]
    fb_rows: dict[str, dict[str, Any]]
    user_ids: set[str]
    now: datetime

    @property
    def n_conversations(self) -> int:
        return len(self.conv_rows) + self.counts.conversations_present


def _insert_ignore(engine: sa.Engine, table: sa.Table) -> Any:
    if is_sqlite(engine):
        return sqlite.insert(table).on_conflict_do_nothing()
    return postgresql.insert(table).on_conflict_do_nothing()


def _sqlite_value(col: sa.Column[Any]) -> Any:
    """Converter from a Python value to what SQLAlchemy's SQLite types store."""
    if isinstance(col.type, sa.DateTime):

        def dt(v: datetime | None) -> str | None:
            if v is None:
                return None
            if v.tzinfo is not None:
                v = v.astimezone(UTC).replace(tzinfo=None)
            return v.isoformat(" ", "microseconds")

        return dt
    if isinstance(col.type, sa.JSON):
        return lambda v: None if v is None else json.dumps(v)
    if isinstance(col.type, sa.Boolean):
        return lambda v: None if v is None else int(v)
    return None


def _bulk_insert_ignore(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """INSERT-or-ignore many rows. On SQLite this goes straight to the driver's
    executemany with values converted as SQLAlchemy would: the bulk-import hot
    path, several times faster than per-row bind processing."""
    if not rows:
        return
    if conn.dialect.name != "sqlite":
        conn.execute(postgresql.insert(table).on_conflict_do_nothing(), rows)
        return
    cols = [c for c in table.columns if c.name in rows[0]]
    conv = [(c.name, _sqlite_value(c)) for c in cols]
    params = [tuple(f(r[n]) if f else r[n] for n, f in conv) for r in rows]
    _sqlite_insert_or_ignore(conn, table.name, tuple(c.name for c in cols), params)


def _same(v: Any) -> Any:
    return v


def _sqlite_ts(v: datetime | None) -> str | None:
    """A datetime as SQLAlchemy's SQLite DateTime stores it (naive UTC text)."""
    if v is None:
        return None
    tz = v.tzinfo
    if tz is UTC:
        return v.isoformat(" ", "microseconds")[:26]  # drop the "+00:00"
    if tz is not None:
        v = v.astimezone(UTC).replace(tzinfo=None)
    return v.isoformat(" ", "microseconds")


def _json_text(v: Any) -> str | None:
    return None if v is None else json.dumps(v)


_CONV_COLS = ("id", "user_id", "source", "external_id", "started_utc", "metadata_json")
_MSG_COLS = (
    "id",
    "conversation_id",
    "seq",
    "parent_id",
    "user_id",
    "role",
    "content",
    "tool_calls_json",
    "created_utc",
    "model",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "metadata_json",
)


def _insert_tuples(conn: sa.Connection, table: sa.Table, cols: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    """INSERT-or-ignore rows given as tuples in ``cols`` order. On SQLite the values
    are already converted (``_sqlite_ts``/``_json_text``) and go straight to executemany."""
    if not rows:
        return
    if conn.dialect.name != "sqlite":
        conn.execute(postgresql.insert(table).on_conflict_do_nothing(), [dict(zip(cols, r, strict=True)) for r in rows])
        return
    _sqlite_insert_or_ignore(conn, table.name, cols, rows)


def _sqlite_insert_or_ignore(
    conn: sa.Connection, table: str, cols: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> None:
    """executemany of INSERT OR IGNORE, with rows grouped by which of their values are NULL.

    Binding a Python None costs the sqlite3 drivers an adapter lookup per value
    (about 0.8 µs in pysqlite3, against 0.03 µs for a string); a message row
    carries half a dozen of them. So each group names only its non-NULL
    columns and the omitted ones take their NULL default: the same rows, about
    twice as fast to write.
    """
    nones = (None,) * len(cols)
    groups: dict[tuple[bool, ...], list[tuple[Any, ...]]] = {}
    for r in rows:
        key = tuple(map(is_, r, nones))
        group = groups.get(key)
        if group is None:
            groups[key] = group = []
        group.append(r)
    for key, group in groups.items():
        keep = [not null for null in key]
        names = list(compress(cols, keep))
        sql = f"INSERT OR IGNORE INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        conn.exec_driver_sql(sql, group if all(keep) else [tuple(compress(r, keep)) for r in group])


class Store:
    """A handle on one afterword database (SQLite file or PostgreSQL URL)."""

    def __init__(self, url: str | None = None, *, migrate: bool = True, **engine_kwargs: Any) -> None:
        self.url = resolve_url(url)
        try:
            self.engine = make_engine(self.url, **engine_kwargs)
            if migrate:
                upgrade(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open store {self._safe_url()}: {exc}") from exc
        self._write_lock = threading.RLock()

    def _safe_url(self) -> str:
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"Store({self._safe_url()!r})"

    @property
    def is_sqlite(self) -> bool:
        return is_sqlite(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- transactions ---------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[sa.Connection]:
        """One write transaction: commits on success, rolls back on any error."""
        with self._write_lock:
            try:
                with self.engine.connect() as conn:
                    conn = conn.execution_options(immediate=True)
                    with conn.begin():
                        yield conn
            except SQLAlchemyError as exc:
                raise StoreError(str(exc)) from exc

    @contextmanager
    def read(self) -> Iterator[sa.Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(str(exc)) from exc

    # -- conversations and messages ------------------------------------------

    def import_conversations(self, convs: Sequence[Conversation], default_source: str = "import") -> ImportCounts:
        """Write whole conversations in one transaction; already-present content is skipped."""
        return self.write_prepared(self.prepare_import(convs, default_source))

    def prepare_import(self, convs: Sequence[Conversation], default_source: str = "import") -> PreparedImport:
        """The rows ``write_prepared`` inserts, built without touching the database.

        The bulk-import hot path: rows are built once as tuples in column order
        (already converted to what SQLite stores, when it is SQLite) for the
        driver's executemany, with no per-row SQLAlchemy or pydantic work.
        ``run_import`` calls this in the parsing thread, so that the writer
        thread only writes.
        """
        counts = ImportCounts()
        now = utcnow()
        lite = self.is_sqlite
        ts = _sqlite_ts if lite else _same
        js = _json_text if lite else _same
        conv_rows: dict[str, tuple[Any, ...]] = {}
        msg_rows: list[tuple[Any, ...]] = []
        fb_rows: dict[str, dict[str, Any]] = {}
        user_ids: set[str] = set()
        mid_for = message_id_for
        seen: set[str] = set()  # message ids in this batch
        repeated = 0
        for conv in convs:
            cid = conversation_id_for(conv)
            uid = conv.user_id
            if cid in conv_rows:
                # The same conversation again in one batch, e.g. a log line per call with the growing
                # history: keep the first row, and below add only the messages not seen yet.
                counts.conversations_present += 1
            else:
                started = conv.started_utc or next((m.created_utc for m in conv.messages if m.created_utc), None)
                conv_rows[cid] = (
                    cid,
                    uid,
                    conv.source or default_source,
                    conv.external_id,
                    ts(started),
                    js(conv.metadata) if conv.metadata else None,
                )
            if uid:
                user_ids.add(uid)
            parent: str | None = None
            ids: list[str] = []
            for seq, m in enumerate(conv.messages):
                mid = m.id or mid_for(cid, parent, m)
                ids.append(mid)
                if mid in seen:
                    repeated += 1
                    parent = mid
                    continue
                seen.add(mid)
                msg_rows.append(
                    (
                        mid,
                        cid,
                        seq,
                        parent,
                        uid,
                        m.role,
                        m.content,
                        js(m.tool_calls) if m.tool_calls is not None else None,
                        ts(m.created_utc),
                        m.model,
                        m.latency_ms,
                        m.prompt_tokens,
                        m.completion_tokens,
                        js(m.metadata) if m.metadata else None,
                    )
                )
                parent = mid
            for fb in conv.feedback:
                mid = fb.message_id
                if mid is None and fb.message_index is not None and 0 <= fb.message_index < len(ids):
                    mid = ids[fb.message_index]
                if mid is None:
                    continue
                row = self._feedback_row(fb, mid, uid, now)
                fb_rows[row["id"]] = row
        counts.messages_present = repeated
        return PreparedImport(counts, conv_rows, msg_rows, fb_rows, user_ids, now)

    def write_prepared(self, prep: PreparedImport) -> ImportCounts:
        """Insert prepared rows in one transaction and count what was new."""
        counts, conv_rows, msg_rows, fb_rows, now = prep.counts, prep.conv_rows, prep.msg_rows, prep.fb_rows, prep.now
        if not conv_rows:
            return counts
        with self.write() as conn:
            existing = self._existing(conn, t.conversations, list(conv_rows))
            counts.conversations = len(conv_rows) - len(existing)
            counts.conversations_present += len(existing)
            new_msgs = msg_rows
            if existing:
                present = self._existing(conn, t.messages, [r[0] for r in msg_rows if r[1] in existing])
                new_msgs = [r for r in msg_rows if r[0] not in present]
            counts.messages = len(new_msgs)
            counts.messages_present += len(msg_rows) - len(new_msgs)
            present_fb = self._existing(conn, t.feedback, list(fb_rows)) if fb_rows else set()
            counts.feedback = len(fb_rows) - len(present_fb)
            _bulk_insert_ignore(
                conn, t.users, [{"id": u, "created_utc": now, "metadata_json": None} for u in sorted(prep.user_ids)]
            )
            _insert_tuples(conn, t.conversations, _CONV_COLS, [r for r in conv_rows.values() if r[0] not in existing])
            _insert_tuples(conn, t.messages, _MSG_COLS, new_msgs)
            _bulk_insert_ignore(conn, t.feedback, [r for k, r in fb_rows.items() if k not in present_fb])
        self.bound_wal()
        return counts

    #: Past this many bytes of write-ahead log, ``bound_wal`` checkpoints and truncates it.
    WAL_LIMIT_BYTES = 512 * 1024 * 1024

    def bound_wal(self) -> bool:
        """On SQLite, fold a write-ahead log larger than ``WAL_LIMIT_BYTES`` into the database and truncate it.

        SQLite's automatic checkpoints are passive: while several processes take turns writing
        (parallel import workers), none of them completes, the log is never reset, and it grows
        without bound (35 GB for a 1.9 GB database was seen). A ``TRUNCATE`` checkpoint waits (busy
        timeout) for the other connections to let go, copies every frame back and empties the log.
        Returns True when it ran. Bulk writers call this after each batch; it is a stat() otherwise.
        """
        if not self.is_sqlite:
            return False
        db = self.engine.url.database
        if not db or db == ":memory:":
            return False
        try:
            if os.path.getsize(db + "-wal") < self.WAL_LIMIT_BYTES:
                return False
        except OSError:
            return False
        with self._write_lock, self.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return True

    @staticmethod
    def _existing(conn: sa.Connection, table: sa.Table, ids: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(ids), 900):
            chunk = ids[i : i + 900]
            found.update(conn.execute(sa.select(table.c.id).where(table.c.id.in_(chunk))).scalars())
        return found

    def add_conversation(self, conv: Conversation) -> Conversation:
        """Write one conversation (idempotently) and return it with ids filled in."""
        self.import_conversations([conv], default_source=conv.source)
        return self.get_conversation(conversation_id_for(conv))

    def get_conversation(self, conversation_id: str) -> Conversation:
        with self.read() as conn:
            crow = conn.execute(
                sa.select(t.conversations).where(
                    sa.or_(t.conversations.c.id == conversation_id, t.conversations.c.external_id == conversation_id)
                )
            ).first()
            if crow is None:
                raise NotFoundError("conversation", conversation_id)
            mrows = conn.execute(
                sa.select(t.messages).where(t.messages.c.conversation_id == crow.id).order_by(t.messages.c.seq)
            ).all()
            mids = [r.id for r in mrows]
            fbs = self._feedback_for(conn, mids)
        return self._conversation_from_rows(crow, mrows, fbs)

    def conversations_by_id(self, ids: Sequence[str]) -> list[Conversation]:
        """Many conversations at once (one query per table), in the order given."""
        if not ids:
            return []
        with self.read() as conn:
            crows: dict[str, Any] = {}
            mrows: dict[str, list[Any]] = {}
            for i in range(0, len(ids), 500):
                chunk = list(ids[i : i + 500])
                for r in conn.execute(sa.select(t.conversations).where(t.conversations.c.id.in_(chunk))):
                    crows[r.id] = r
                for r in conn.execute(
                    sa.select(t.messages)
                    .where(t.messages.c.conversation_id.in_(chunk))
                    .order_by(t.messages.c.conversation_id, t.messages.c.seq)
                ):
                    mrows.setdefault(r.conversation_id, []).append(r)
            all_mids = [r.id for rows in mrows.values() for r in rows]
            fbs = self._feedback_for(conn, all_mids)
        return [self._conversation_from_rows(crows[i], mrows.get(i, []), fbs) for i in ids if i in crows]

    @staticmethod
    def _feedback_for(conn: sa.Connection, mids: list[str]) -> list[Any]:
        out: list[Any] = []
        for i in range(0, len(mids), 900):
            out.extend(
                conn.execute(
                    sa.select(t.feedback)
                    .where(t.feedback.c.message_id.in_(mids[i : i + 900]))
                    .order_by(t.feedback.c.created_utc)
                ).all()
            )
        return out

    @staticmethod
    def _conversation_from_rows(crow: Any, mrows: Sequence[Any], fbrows: Sequence[Any]) -> Conversation:
        mids = {r.id for r in mrows}
        return Conversation(
            id=crow.id,
            user_id=crow.user_id,
            external_id=crow.external_id,
            source=crow.source,
            started_utc=aware(crow.started_utc),
            metadata=crow.metadata_json or {},
            messages=[Store._message_from_row(r) for r in mrows],
            feedback=[Store._feedback_from_row(r) for r in fbrows if r.message_id in mids],
        )

    @staticmethod
    def _message_from_row(r: Any) -> Message:
        return Message(
            id=r.id,
            role=r.role,
            content=r.content,
            tool_calls=r.tool_calls_json,
            created_utc=aware(r.created_utc),
            model=r.model,
            latency_ms=r.latency_ms,
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
            metadata=r.metadata_json or {},
        )

    def get_message(self, message_id: str) -> tuple[Message, str]:
        """The message and its conversation id."""
        with self.read() as conn:
            r = conn.execute(sa.select(t.messages).where(t.messages.c.id == message_id)).first()
        if r is None:
            raise NotFoundError("message", message_id)
        return self._message_from_row(r), r.conversation_id

    def conversation_ids(
        self,
        *,
        user_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> list[str]:
        q = sa.select(t.conversations.c.id).order_by(t.conversations.c.started_utc, t.conversations.c.id)
        if user_id:
            q = q.where(t.conversations.c.user_id == user_id)
        if since:
            q = q.where(t.conversations.c.started_utc >= since)
        if until:
            q = q.where(t.conversations.c.started_utc < until)
        if limit:
            q = q.limit(limit)
        with self.read() as conn:
            return list(conn.execute(q).scalars())

    def iter_conversations(self, batch_size: int = 500, **filters: Any) -> Iterator[Conversation]:
        ids = self.conversation_ids(**filters)
        for i in range(0, len(ids), batch_size):
            yield from self.conversations_by_id(ids[i : i + batch_size])

    # -- feedback ---------------------------------------------------------------

    @staticmethod
    def _feedback_row(fb: Feedback, message_id: str, user_id: str | None, now: datetime) -> dict[str, Any]:
        created = fb.created_utc or now
        return {
            "id": stable_id(
                "fb",
                message_id,
                fb.kind,
                fb.thumbs,
                fb.rating,
                fb.comment,
                fb.correction,
                fb.source,
                fb.created_utc,
            ),
            "message_id": message_id,
            "user_id": fb.user_id or user_id,
            "kind": fb.kind,
            "thumbs": fb.thumbs,
            "rating": fb.rating,
            "comment": fb.comment,
            "correction": fb.correction,
            "source": fb.source,
            "created_utc": created,
        }

    @staticmethod
    def _feedback_from_row(r: Any) -> Feedback:
        return Feedback(
            kind=r.kind,
            message_id=r.message_id,
            thumbs=r.thumbs,
            rating=r.rating,
            comment=r.comment,
            correction=r.correction,
            user_id=r.user_id,
            created_utc=aware(r.created_utc),
            source=r.source,
        )

    def add_feedback(self, fb: Feedback) -> str:
        """Record explicit feedback on an existing message; returns the feedback id."""
        if not fb.message_id:
            raise StoreError("feedback needs a message_id")
        msg, _ = self.get_message(fb.message_id)
        with self.read() as conn:
            uid = conn.execute(sa.select(t.messages.c.user_id).where(t.messages.c.id == fb.message_id)).scalar()
        row = self._feedback_row(fb, fb.message_id, uid, utcnow())
        if fb.created_utc is None:  # a live event: distinct from an identical earlier one
            row["id"] = stable_id(row["id"], row["created_utc"].isoformat())
        with self.write() as conn:
            conn.execute(_insert_ignore(self.engine, t.feedback), [row])
        return row["id"]

    def feedback_for_messages(self, message_ids: Sequence[str]) -> list[Feedback]:
        with self.read() as conn:
            return [self._feedback_from_row(r) for r in self._feedback_for(conn, list(message_ids))]

    def corrections(self, user_id: str | None = None) -> list[tuple[Feedback, Message, str]]:
        """Every correction with the message it corrects and that message's conversation id."""
        q = (
            sa.select(t.feedback, t.messages.c.conversation_id)
            .join(t.messages, t.messages.c.id == t.feedback.c.message_id)
            .where(t.feedback.c.kind == "correction")
            .order_by(t.feedback.c.created_utc)
        )
        if user_id:
            q = q.where(t.feedback.c.user_id == user_id)
        out = []
        with self.read() as conn:
            rows = conn.execute(q).all()
        for r in rows:
            msg, cid = self.get_message(r.message_id)
            out.append((self._feedback_from_row(r), msg, cid))
        return out

    # -- judgments --------------------------------------------------------------

    def put_judgments(self, judgments: Iterable[Judgment]) -> int:
        """Insert or replace judgments (one per message and source)."""
        rows = []
        now = utcnow()
        for j in judgments:
            rows.append(
                {
                    "id": stable_id("jdg", j.message_id, j.source),
                    "message_id": j.message_id,
                    "source": j.source,
                    "label": j.label,
                    "score": float(j.score),
                    "confidence": float(j.confidence),
                    "evidence_json": [e.model_dump() for e in j.evidence],
                    "model_version": j.model_version,
                    "created_utc": j.created_utc or now,
                }
            )
        if not rows:
            return 0
        with self.write() as conn:
            ids = [r["message_id"] for r in rows]
            users = dict(
                conn.execute(sa.select(t.messages.c.id, t.messages.c.user_id).where(t.messages.c.id.in_(ids))).all()
            )
            for r in rows:
                r["user_id"] = users.get(r["message_id"])
            for i in range(0, len(rows), 900):
                chunk = rows[i : i + 900]
                conn.execute(t.judgments.delete().where(t.judgments.c.id.in_([r["id"] for r in chunk])))
                conn.execute(t.judgments.insert(), chunk)
        return len(rows)

    def judgments_for(self, message_ids: Sequence[str], source: str | None = None) -> list[Judgment]:
        if not message_ids:
            return []
        out = []
        with self.read() as conn:
            for i in range(0, len(message_ids), 900):
                q = sa.select(t.judgments).where(t.judgments.c.message_id.in_(list(message_ids[i : i + 900])))
                if source:
                    q = q.where(t.judgments.c.source == source)
                out.extend(conn.execute(q).all())
        return [
            Judgment(
                message_id=r.message_id,
                source=r.source,
                label=r.label,
                score=r.score,
                confidence=r.confidence,
                evidence=[Evidence(**e) for e in (r.evidence_json or [])],
                model_version=r.model_version,
                created_utc=aware(r.created_utc),
            )
            for r in out
        ]

    # -- job watermarks -------------------------------------------------------------

    def get_state(self, name: str) -> str | None:
        with self.read() as conn:
            return conn.execute(sa.select(t.job_state.c.value).where(t.job_state.c.name == name)).scalar()

    def set_state(self, name: str, value: str, conn: sa.Connection | None = None) -> None:
        def _do(c: sa.Connection) -> None:
            c.execute(t.job_state.delete().where(t.job_state.c.name == name))
            c.execute(t.job_state.insert().values(name=name, value=value, updated_utc=utcnow()))

        if conn is not None:
            _do(conn)
        else:
            with self.write() as c:
                _do(c)

    # -- overview -----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self.read() as conn:

            def count(table: sa.Table, *where: Any) -> int:
                return int(conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar() or 0)

            by_role = dict(
                conn.execute(sa.select(t.messages.c.role, sa.func.count()).group_by(t.messages.c.role)).all()
            )
            fb_kinds = dict(
                conn.execute(sa.select(t.feedback.c.kind, sa.func.count()).group_by(t.feedback.c.kind)).all()
            )
            labels: dict[str, dict[str, int]] = {}
            for src, label, n in conn.execute(
                sa.select(t.judgments.c.source, t.judgments.c.label, sa.func.count()).group_by(
                    t.judgments.c.source, t.judgments.c.label
                )
            ):
                labels.setdefault(src, {})[label] = n
            first, last = conn.execute(
                sa.select(sa.func.min(t.messages.c.created_utc), sa.func.max(t.messages.c.created_utc))
            ).one()
            return {
                "store": self._safe_url(),
                "users": count(t.users),
                "conversations": count(t.conversations),
                "messages": count(t.messages),
                "messages_by_role": by_role,
                "feedback": count(t.feedback),
                "feedback_by_kind": fb_kinds,
                "judgments": count(t.judgments),
                "judgments_by_source": labels,
                "memories": count(t.memories, t.memories.c.active.is_(True)),
                "exports": count(t.exports),
                "first_message_utc": aware(first).isoformat() if first else None,
                "last_message_utc": aware(last).isoformat() if last else None,
            }
