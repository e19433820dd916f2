"""``build_dataset``: the store in, a training dataset with its card and lineage out.

The steps, in order: collect the trainable turns (filters, forgotten users and
frozen suites applied), make examples of the kind asked for, cap the synthetic
share, redact (on by default), drop exact and near duplicates, split by user
or time with no leakage, write each split atomically (``train.jsonl`` /
``test.jsonl`` or ``.parquet``), record the lineage (every message that went
in, with its user and split) and write the dataset card.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from afterword.datasets.card import summarise, write_card
from afterword.datasets.collect import collect_turns, make_examples
from afterword.datasets.dedupe import dedupe as dedupe_examples
from afterword.datasets.formats import Example, check_row, converter
from afterword.datasets.splits import assign_pair_splits, assign_splits, check_no_leak
from afterword.errors import ExportError
from afterword.export import record_export
from afterword.records import stable_id, utcnow
from afterword.redact import Redactor
from afterword.store import schema as t
from afterword.store.store import Store, aware

__all__ = ["DatasetResult", "build_dataset", "list_exports", "export_items"]

FILE_FORMATS = ("jsonl", "parquet")


@dataclass
class DatasetResult:
    export_id: str
    kind: str
    format: str
    out_dir: str
    files: dict[str, str]
    card: dict[str, Any]
    examples: list[Example] = field(default_factory=list, repr=False)

    @property
    def rows(self) -> int:
        return int(self.card["counts"]["rows"])

    def as_dict(self) -> dict[str, Any]:
        return {
            "export_id": self.export_id,
            "kind": self.kind,
            "format": self.format,
            "out_dir": self.out_dir,
            "files": self.files,
            "rows": self.rows,
            "splits": self.card["counts"]["splits"],
            "card": str(Path(self.out_dir) / "dataset_card.md"),
        }


def _redact_examples(examples: list[Example], red: Redactor) -> None:
    cache: dict[str, str] = {}

    def r(text: str | None) -> str | None:
        if text is None:
            return None
        if text not in cache:
            cache[text] = red.redact(text)
        return cache[text]

    for ex in examples:
        ex.prompt = [{"role": m["role"], "content": r(m["content"]) or ""} for m in ex.prompt]
        ex.completion, ex.chosen, ex.rejected = r(ex.completion), r(ex.chosen), r(ex.rejected)


def _cap_synthetic(examples: list[Example], share: float | None) -> tuple[list[Example], int]:
    if share is None:
        return examples, 0
    real = [e for e in examples if not e.synthetic]
    synth = sorted((e for e in examples if e.synthetic), key=lambda e: stable_id("synth", e.message_ids))
    # synthetic / (real + synthetic) <= share
    keep = len(synth) if share >= 1 else int(share * len(real) / (1 - share)) if share > 0 else 0
    kept = real + synth[:keep]
    order = {id(e): i for i, e in enumerate(examples)}
    kept.sort(key=lambda e: order[id(e)])
    return kept, len(synth) - min(keep, len(synth))


def _write_rows(path: Path, rows: list[dict[str, Any]], file_format: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    if file_format == "jsonl":
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, path)


def build_dataset(
    store: Store,
    kind: str,
    fmt: str = "trl",
    out: str | Path = "dataset",
    *,
    file_format: str = "jsonl",
    redact: bool = True,
    redactor: Redactor | None = None,
    min_confidence: float = 0.6,
    since: datetime | None = None,
    until: datetime | None = None,
    users: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
    split: str = "user",
    test_fraction: float = 0.1,
    seed: int = 0,
    dedupe: bool = True,
    near_dup_threshold: float | None = 0.95,
    near_dup_method: str = "embedding",
    pair_threshold: float = 0.92,
    include_synthetic: bool = True,
    max_synthetic_share: float | None = None,
    command: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> DatasetResult:
    """Build a ``kind`` dataset (sft|dpo|kto|reward) in ``fmt`` (trl|openai|sharegpt) into the folder ``out``.

    Raises :class:`ExportError` when the kind/format pair is impossible or no row qualifies.
    """
    to_row = converter(fmt, kind)
    if file_format not in FILE_FORMATS:
        raise ExportError(f"unknown file format {file_format!r}; use jsonl or parquet")
    turns, collect_stats = collect_turns(
        store,
        since=since,
        until=until,
        users=users,
        models=models,
        tags=tags,
        include_synthetic=include_synthetic,
        progress=progress,
    )
    examples = make_examples(turns, kind, min_confidence=min_confidence, pair_threshold=pair_threshold)
    made = len(examples)
    examples, synth_dropped = _cap_synthetic(examples, max_synthetic_share)
    red = redactor or (Redactor() if redact else None)
    if red is not None:
        _redact_examples(examples, red)
    dedupe_stats: dict[str, Any] = {"exact": 0, "near": 0}
    if dedupe:
        examples, dedupe_stats = dedupe_examples(
            examples, near_dup_threshold=near_dup_threshold, method=near_dup_method
        )
    if not examples:
        raise ExportError(
            f"no {kind} rows qualify: {collect_stats['assistant_turns']} assistant turns, {made} candidate rows "
            f"(min_confidence={min_confidence}); judge the store or add feedback first"
        )
    if kind in ("dpo", "reward"):
        split_stats = assign_pair_splits(examples, split, test_fraction, seed)
        examples = [e for e in examples if e.split != "drop"]
    else:
        split_stats = assign_splits(examples, split, test_fraction, seed)
    check_no_leak(examples)

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ext = file_format
    files: dict[str, str] = {}
    for name in ("train", "test"):
        rows = [to_row(e) for e in examples if e.split == name]
        path = out_dir / f"{name}.{ext}"
        for other in FILE_FORMATS:  # a rebuild must not leave an older split beside the new one
            old = out_dir / f"{name}.{other}"
            if old.exists() and (other != ext or not rows):
                old.unlink()
        if not rows:
            continue
        bad = next((r for r in rows if not check_row(fmt, kind, r)), None)
        if bad is not None:
            raise ExportError(f"row does not match the {fmt}/{kind} spec: {json.dumps(bad)[:300]}")
        _write_rows(path, rows, file_format)
        files[name] = str(path)

    from afterword import __version__

    card: dict[str, Any] = {
        "kind": kind,
        "format": fmt,
        "file_format": file_format,
        "afterword_version": __version__,
        "created_utc": utcnow().isoformat(),
        "command": command,
        "store": repr(store),
        "counts": summarise(examples),
        "split": {**split_stats, "test_fraction": test_fraction, "seed": seed},
        "filters": {
            "min_confidence": min_confidence,
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            "users": list(users) if users else None,
            "models": list(models) if models else None,
            "tags": list(tags) if tags else None,
            "include_synthetic": include_synthetic,
            "max_synthetic_share": max_synthetic_share,
            "pair_threshold": pair_threshold if kind in ("dpo", "reward") else None,
        },
        "removed": {
            "suite_excluded_turns": collect_stats["suite_excluded"],
            "forgotten_user_conversations": collect_stats["forgotten"],
            "filtered": collect_stats["filtered"],
            "turns_without_prompt": collect_stats["no_prompt"],
            "synthetic_over_cap": synth_dropped,
            "exact_duplicates": dedupe_stats["exact"],
            "near_duplicates": dedupe_stats["near"],
            "near_dup_method": near_dup_method if dedupe and near_dup_threshold is not None else None,
            "near_dup_threshold": near_dup_threshold if dedupe else None,
            "pairs_straddling_the_split": split_stats.get("straddling_pairs_dropped", 0),
        },
        "candidates": {"assistant_turns": collect_stats["assistant_turns"], "rows_before_cleaning": made},
        "redacted": red is not None,
        "redaction": ({**red.report.as_dict(), "presidio": red.uses_presidio} if red is not None else None),
        "files": files,
    }
    items = [(mid, uid, e.split) for e in examples for mid, uid in zip(e.message_ids, e.user_ids, strict=True) if mid]
    export_id = record_export(
        store, kind=kind, fmt=fmt, path=str(out_dir.resolve()), command=command, card=card, items=items
    )
    card["export_id"] = export_id
    with store.write() as conn:
        conn.execute(t.exports.update().where(t.exports.c.id == export_id).values(card_json=card))
    write_card(out_dir, card)
    return DatasetResult(export_id, kind, fmt, str(out_dir), files, card, examples)


def list_exports(store: Store, kinds: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Recorded datasets and models, newest first, with their stale flags and row counts."""
    q = sa.select(t.exports).order_by(t.exports.c.created_utc.desc())
    if kinds:
        q = q.where(t.exports.c.kind.in_(list(kinds)))
    with store.read() as conn:
        rows = conn.execute(q).all()
        counts = dict(
            conn.execute(
                sa.select(t.export_items.c.export_id, sa.func.count()).group_by(t.export_items.c.export_id)
            ).all()
        )
    out = []
    for r in rows:
        card = r.card_json or {}
        out.append(
            {
                "export_id": r.id,
                "kind": r.kind,
                "format": r.format,
                "path": r.path,
                "rows": (card.get("counts") or {}).get("rows", card.get("rows")),
                "messages": counts.get(r.id, 0),
                "stale": r.stale_reason is not None,
                "stale_reason": r.stale_reason,
                "created_utc": aware(r.created_utc).isoformat() if r.created_utc else None,
                "command": r.command,
            }
        )
    return out


def export_items(store: Store, export_id: str) -> list[tuple[str, str | None, str | None]]:
    """The lineage of one export: (message id, user id, split) rows."""
    ei = t.export_items
    with store.read() as conn:
        rows = conn.execute(sa.select(ei.c.message_id, ei.c.user_id, ei.c.split).where(ei.c.export_id == export_id))
        return [(r[0], r[1], r[2]) for r in rows]
