"""The ``datasets`` stage of ``afterword run``: SFT, DPO and KTO in TRL columns, redacted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from afterword.datasets.build import build_dataset
from afterword.errors import ExportError
from afterword.store.store import Store

__all__ = ["stage"]


def stage(store: Store, opts: dict[str, Any]) -> dict[str, Any]:
    """Build ``sft``, ``dpo`` and ``kto`` into ``opts["out_dir"]/datasets/<kind>``; a kind with no rows is skipped."""
    root = Path(opts.get("out_dir", "afterword-out")) / "datasets"
    out: dict[str, Any] = {"out_dir": str(root)}
    for kind in ("sft", "dpo", "kto"):
        try:
            res = build_dataset(store, kind, "trl", root / kind, redact=True, command=opts.get("command"))
        except ExportError as exc:
            out[kind] = {"rows": 0, "skipped": str(exc)}
            continue
        out[kind] = {"rows": res.rows, "splits": res.card["counts"]["splits"], "export_id": res.export_id}
    return out
