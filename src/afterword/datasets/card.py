"""Dataset cards: what is in a dataset, where it came from, how to rebuild it.

A card is a plain dict (stored as ``dataset_card.json`` beside the data and in
the ``exports`` row) rendered to ``dataset_card.md`` for people. It holds the
counts per split, the label balance, where rows came from (corrections,
judgments by source), what was filtered and deduplicated, the redaction
report, and the exact command that built it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from afterword.datasets.formats import Example

__all__ = ["summarise", "render_markdown", "write_card"]


def summarise(examples: Sequence[Example]) -> dict[str, Any]:
    """Counts per split, label balance, sources and synthetic share of ``examples``."""
    splits = Counter(e.split for e in examples)
    labels = Counter(("desirable" if e.label else "undesirable") for e in examples if e.label is not None)
    sources = Counter(e.source for e in examples)
    jsrc = Counter(e.judgment_source or "none" for e in examples)
    users = {u for e in examples for u in e.user_ids if u}
    convs = {c for e in examples for c in e.conversation_ids}
    return {
        "rows": len(examples),
        "splits": dict(splits),
        "label_balance": dict(labels) or None,
        "sources": dict(sources),
        "judgment_sources": dict(jsrc),
        "users": len(users),
        "conversations": len(convs),
        "messages": len({m for e in examples for m in e.message_ids}),
        "synthetic": sum(1 for e in examples if e.synthetic),
    }


def _table(d: dict[str, Any] | None) -> str:
    if not d:
        return "_none_\n"
    lines = ["| key | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in d.items()]
    return "\n".join(lines) + "\n"


def render_markdown(card: dict[str, Any]) -> str:
    c = card.get("counts", {})
    red = card.get("redaction") or {}
    parts = [
        f"# Dataset card: {card.get('kind')} ({card.get('format')})\n",
        f"Built {card.get('created_utc')} by afterword {card.get('afterword_version')}.",
        f"Export id `{card.get('export_id')}` in the store's lineage tables.\n",
        "## Rebuild\n",
        f"```\n{card.get('command') or '(library call, no command line)'}\n```\n",
        "## Counts\n",
        _table({k: c.get(k) for k in ("rows", "users", "conversations", "messages", "synthetic")}),
        "### Splits\n",
        _table(c.get("splits")),
        f"Split by `{card.get('split', {}).get('by')}`: no user or conversation is on both sides.\n",
        "### Label balance\n",
        _table(c.get("label_balance")),
        "### Sources\n",
        _table(c.get("sources")),
        "### Judgment sources\n",
        _table(c.get("judgment_sources")),
        "## Filters\n",
        _table(card.get("filters")),
        "## Removed\n",
        _table(card.get("removed")),
        "## Redaction\n",
        f"Redacted: **{bool(card.get('redacted'))}** (presidio: {red.get('presidio', False)}).\n",
        _table({"texts": red.get("texts"), "texts_changed": red.get("texts_changed")}) if red else "",
        _table(red.get("by_type")) if red else "",
        "## Files\n",
        _table(card.get("files")),
    ]
    return "\n".join(parts)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_card(out_dir: str | Path, card: dict[str, Any]) -> dict[str, str]:
    """Write ``dataset_card.json`` and ``dataset_card.md``; returns their paths."""
    out = Path(out_dir)
    js, md = out / "dataset_card.json", out / "dataset_card.md"
    _atomic_write(js, json.dumps(card, indent=2, default=str, ensure_ascii=False) + "\n")
    _atomic_write(md, render_markdown(card))
    return {"json": str(js), "markdown": str(md)}
