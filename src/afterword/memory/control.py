"""Memories in the store: add, read, edit, pin, delete, forget.

Every memory write goes through here, in one transaction with the matching
index update (``memory.index``), so the table and its search structures
never disagree. Ids are content hashes of what a memory *is* (kind, owner,
key or situation, and its right answer), so building the same lesson twice
is a no-op and its usefulness statistics survive rebuilds. Preferences and
facts carry a ``key``; adding a new value for an existing key supersedes the
old memory (``superseded_by``, ``active=False``) instead of deleting it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa

from afterword.embed import get_embedder
from afterword.errors import NotFoundError
from afterword.memory.index import get_index, to_blob
from afterword.records import Memory, stable_id, utcnow
from afterword.store import schema as t
from afterword.store.store import Store, aware

__all__ = [
    "memory_id_for",
    "add_memories",
    "get_memory",
    "list_memories",
    "edit_memory",
    "pin_memory",
    "set_active",
    "delete_memory",
    "forget_memories",
    "embed_text",
]

_EDITABLE = ("text", "situation", "wrong", "right", "key", "scope", "metadata")


def memory_id_for(m: Memory) -> str:
    anchor = m.key if m.key and m.kind != "lesson" else (m.situation or m.text)
    value = m.text if m.key and m.kind != "lesson" else (m.right or m.text)
    return stable_id("mem", m.kind, m.scope, m.user_id or "", anchor, value)


def embed_text(m: Memory | dict[str, Any]) -> str:
    """What is embedded for retrieval: the situation (the trigger) when there is one, else the text."""
    get = m.get if isinstance(m, dict) else lambda k: getattr(m, k)
    return str(get("situation") or get("text") or "")


def _row(m: Memory, now: Any) -> dict[str, Any]:
    return {
        "id": m.id or memory_id_for(m),
        "kind": m.kind,
        "scope": "global" if m.scope == "global" or not m.user_id else "user",
        "user_id": m.user_id,
        "text": m.text,
        "situation": m.situation,
        "wrong": m.wrong,
        "right": m.right,
        "key": m.key,
        "embedding": None,
        "evidence_json": list(m.evidence_ids),
        "pinned": m.pinned,
        "uses": m.uses,
        "helpful": m.helpful,
        "harmful": m.harmful,
        "usefulness": m.usefulness,
        "superseded_by": m.superseded_by,
        "active": m.active,
        "created_utc": m.created_utc or now,
        "updated_utc": now,
        "metadata_json": m.metadata or None,
    }


def to_memory(r: Any) -> Memory:
    return Memory(
        id=r.id,
        kind=r.kind,
        scope=r.scope,
        user_id=r.user_id,
        text=r.text,
        situation=r.situation,
        wrong=r.wrong,
        right=r.right,
        key=r.key,
        evidence_ids=list(r.evidence_json or []),
        pinned=bool(r.pinned),
        uses=int(r.uses or 0),
        helpful=float(r.helpful or 0),
        harmful=float(r.harmful or 0),
        usefulness=float(r.usefulness or 0),
        superseded_by=r.superseded_by,
        active=bool(r.active),
        created_utc=aware(r.created_utc),
        metadata=r.metadata_json or {},
    )


def add_memories(
    store: Store, memories: Sequence[Memory], *, index: str = "auto", vectors: np.ndarray | None = None
) -> list[str]:
    """Write memories (embedding them, unless ``vectors`` are given); returns their ids in order.

    A memory already present keeps its statistics and pin. A preference or
    fact supersedes the active memory holding the same key for the same user.
    """
    if not memories:
        return []
    now = utcnow()
    rows = [_row(m, now) for m in memories]
    vecs = vectors if vectors is not None else get_embedder().encode([embed_text(r) for r in rows])
    for r, v in zip(rows, vecs, strict=True):
        r["embedding"] = to_blob(v)
    idx = get_index(store, index)
    m = t.memories
    with store.write() as conn:
        ids = [r["id"] for r in rows]
        present: dict[str, bool] = {}
        for s in range(0, len(ids), 900):
            q = sa.select(m.c.id, m.c.active).where(m.c.id.in_(ids[s : s + 900]))
            present.update({i: bool(a) for i, a in conn.execute(q)})
        bulk: dict[str, dict[str, Any]] = {}
        for r in rows:
            keyed = bool(r["key"]) and r["kind"] != "lesson"
            if not keyed:
                if r["id"] not in present:
                    bulk.setdefault(r["id"], r)
                continue
            if present.get(r["id"]) is True:
                continue
            # Keyed values go in order: the newest statement for a key wins, older ones are kept inactive.
            _supersede(conn, idx, r, now)
            if r["id"] in present:  # an older value said again: it becomes current once more
                conn.execute(
                    m.update().where(m.c.id == r["id"]).values(active=True, superseded_by=None, updated_utc=now)
                )
                idx.add(conn, [dict(conn.execute(sa.select(m).where(m.c.id == r["id"])).one()._mapping)])
            else:
                conn.execute(m.insert(), [r])
                idx.add(conn, [r])
            present[r["id"]] = True
        if bulk:
            for s in range(0, len(bulk), 1000):
                chunk = list(bulk.values())[s : s + 1000]
                conn.execute(m.insert(), chunk)
                idx.add(conn, chunk)
    return ids


def _supersede(conn: sa.Connection, idx: Any, r: dict[str, Any], now: Any) -> None:
    m = t.memories
    old = list(
        conn.execute(
            sa.select(m.c.id).where(
                m.c.kind == r["kind"],
                m.c.key == r["key"],
                m.c.scope == r["scope"],
                (m.c.user_id == r["user_id"]) if r["user_id"] else m.c.user_id.is_(None),
                m.c.active.is_(True),
                m.c.id != r["id"],
            )
        ).scalars()
    )
    if old:
        conn.execute(m.update().where(m.c.id.in_(old)).values(active=False, superseded_by=r["id"], updated_utc=now))
        idx.remove(conn, old)


def get_memory(store: Store, memory_id: str) -> Memory:
    with store.read() as conn:
        r = conn.execute(sa.select(t.memories).where(t.memories.c.id == memory_id)).first()
    if r is None:
        raise NotFoundError("memory", memory_id)
    return to_memory(r)


def list_memories(
    store: Store,
    *,
    user_id: str | None = None,
    kind: str | None = None,
    include_global: bool = True,
    include_inactive: bool = False,
    limit: int | None = 100,
) -> list[Memory]:
    """Memories newest first. With ``user_id``: that user's, plus global ones unless told otherwise."""
    m = t.memories
    q = sa.select(m).order_by(m.c.created_utc.desc(), m.c.id)
    if user_id:
        own = m.c.user_id == user_id
        q = q.where(sa.or_(own, m.c.scope == "global") if include_global else own)
    if kind:
        q = q.where(m.c.kind == kind)
    if not include_inactive:
        q = q.where(m.c.active.is_(True))
    if limit:
        q = q.limit(limit)
    with store.read() as conn:
        return [to_memory(r) for r in conn.execute(q)]


def _update(store: Store, memory_id: str, values: dict[str, Any], reindex: bool = True) -> Memory:
    m = t.memories
    values = {**values, "updated_utc": utcnow()}
    with store.write() as conn:
        n = conn.execute(m.update().where(m.c.id == memory_id).values(**values)).rowcount
        if not n:
            raise NotFoundError("memory", memory_id)
        if reindex:
            row = dict(conn.execute(sa.select(m).where(m.c.id == memory_id)).one()._mapping)
            get_index(store).add(conn, [row])
    return get_memory(store, memory_id)


def edit_memory(store: Store, memory_id: str, **changes: Any) -> Memory:
    """Change a memory's text, situation, wrong/right, key, scope or metadata; it is re-embedded."""
    unknown = set(changes) - set(_EDITABLE)
    if unknown:
        raise ValueError(f"cannot edit {sorted(unknown)}; editable: {', '.join(_EDITABLE)}")
    cur = get_memory(store, memory_id)
    values = {("metadata_json" if k == "metadata" else k): v for k, v in changes.items() if v is not None}
    merged = {**cur.model_dump(), **changes}
    values["embedding"] = to_blob(get_embedder().encode_one(embed_text(merged)))
    return _update(store, memory_id, values)


def pin_memory(store: Store, memory_id: str, pinned: bool = True) -> Memory:
    """Pinned memories get a retrieval bonus and never fade out."""
    return _update(store, memory_id, {"pinned": pinned, **({"active": True} if pinned else {})})


def set_active(store: Store, memory_id: str, active: bool) -> Memory:
    return _update(store, memory_id, {"active": active})


def delete_memory(store: Store, memory_id: str) -> None:
    """Delete one memory, its index entries and its injection log."""
    with store.write() as conn:
        n = conn.execute(t.memories.delete().where(t.memories.c.id == memory_id)).rowcount
        if not n:
            raise NotFoundError("memory", memory_id)
        conn.execute(t.memory_injections.delete().where(t.memory_injections.c.memory_id == memory_id))
        get_index(store).remove(conn, [memory_id])


def forget_memories(store: Store, memory_ids: list[str]) -> None:
    """Remove memories from the index (``store.search.forget_user`` already deleted their rows)."""
    if not memory_ids:
        return
    # Open the index before the transaction: opening it may write (CREATE VIRTUAL TABLE) on a fresh
    # connection, which would wait on this transaction's lock and fall back to an index that sees nothing.
    index = get_index(store)
    with store.write() as conn:
        index.remove(conn, memory_ids)
