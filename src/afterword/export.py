"""Plain export of the history as OpenAI-format JSONL (the import format).

This is the generic "get my data out" path; training datasets are built by
``afterword.datasets``. Redaction is on by default: raw user text leaves the
store only when the caller asks for it with ``redact=False``. Every export
is recorded in the lineage tables (``exports``/``export_items``), so that
forgetting a user marks it stale. The file is written to a temporary name
and renamed into place, so a failed export leaves no partial file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from afterword.records import Feedback, stable_id, utcnow
from afterword.redact import Redactor
from afterword.store import schema as t
from afterword.store.store import Store

__all__ = ["export_jsonl", "record_export"]


def record_export(
    store: Store,
    *,
    kind: str,
    fmt: str,
    path: str,
    command: str | None,
    card: dict[str, Any],
    items: list[tuple[str, str | None, str | None]],
) -> str:
    """Write the lineage manifest: one row per (message id, user id, split).

    The path is recorded absolute. An earlier export recorded at the same path
    is replaced in the same transaction: its file has just been overwritten, so
    its manifest no longer describes anything on disk (a model trained from it
    keeps its own copy of the lineage).
    """
    path = str(Path(path).resolve())
    export_id = stable_id("export", kind, fmt, path, utcnow().isoformat(), n=16)
    with store.write() as conn:
        old = [r[0] for r in conn.execute(sa.select(t.exports.c.id).where(t.exports.c.path == path))]
        if old:
            conn.execute(t.export_items.delete().where(t.export_items.c.export_id.in_(old)))
            conn.execute(t.exports.delete().where(t.exports.c.id.in_(old)))
        conn.execute(
            t.exports.insert().values(
                id=export_id,
                kind=kind,
                format=fmt,
                path=path,
                command=command,
                card_json=card,
                created_utc=utcnow(),
            )
        )
        seen: set[str] = set()
        rows = []
        for mid, uid, split in items:
            if mid not in seen:
                seen.add(mid)
                rows.append({"export_id": export_id, "message_id": mid, "user_id": uid, "split": split})
        for i in range(0, len(rows), 5000):
            conn.execute(t.export_items.insert(), rows[i : i + 5000])
    return export_id


def export_jsonl(
    store: Store,
    out: str | Path,
    *,
    redact: bool = True,
    redactor: Redactor | None = None,
    user_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    command: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    out = Path(out)
    red = redactor or (Redactor() if redact else None)
    tmp = out.with_name(out.name + ".partial")
    items: list[tuple[str, str | None, str | None]] = []
    n = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        for conv in store.iter_conversations(user_id=user_id, since=since, until=until):
            by_msg: dict[str, list[Feedback]] = {}
            for fb in conv.feedback:
                by_msg.setdefault(fb.message_id or "", []).append(fb)
            msgs, fbs = [], []
            for i, m in enumerate(conv.messages):
                content = red.redact(m.content) if red else m.content
                msgs.append(
                    {"role": m.role, "content": content, **({"tool_calls": m.tool_calls} if m.tool_calls else {})}
                )
                for fb in by_msg.get(m.id or "", []):
                    d: dict[str, Any] = {"message_index": i}
                    for k in ("thumbs", "rating", "comment", "correction"):
                        v = getattr(fb, k)
                        if v is not None:
                            d[k] = red.redact(v) if red and isinstance(v, str) else v
                    fbs.append(d)
                items.append((m.id or "", conv.user_id, None))
            rec: dict[str, Any] = {
                "session_id": conv.external_id or conv.id,
                "user": conv.user_id,
                "timestamp": conv.started_utc.isoformat() if conv.started_utc else None,
                "messages": msgs,
            }
            if fbs:
                rec["feedback"] = fbs
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
            if progress:
                progress(1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out)
    card = {"conversations": n, "redacted": bool(red), "redaction": red.report.as_dict() if red else None}
    export_id = record_export(store, kind="jsonl", fmt="openai", path=str(out), command=command, card=card, items=items)
    return {"export_id": export_id, "path": str(out), **card}
