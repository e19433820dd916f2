"""The main job: every stage of the flywheel that exists, run in order on a log file.

``afterword run [FILE]`` imports the file (by default the shipped sample) and
then runs each registered stage against the store. A stage is a function
``(store, options) -> dict`` named in ``STAGES`` as ``module:function``; a
stage whose module is not part of this build is skipped, so the command
always shows the loop as far as it is built.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from afterword.importers import run_import
from afterword.store.store import Store

__all__ = ["STAGES", "sample_path", "run_pipeline"]

#: (stage name, "module:function"), in flywheel order.
STAGES: list[tuple[str, str]] = [
    ("judge", "afterword.judge.runner:stage"),
    ("remember", "afterword.memory.stage:stage"),
    ("datasets", "afterword.datasets.stage:stage"),
    ("report", "afterword.evals.stage:stage"),
]


def sample_path() -> Path:
    return Path(str(resources.files("afterword") / "data" / "sample.jsonl"))


def _resolve(target: str) -> Callable[[Store, dict[str, Any]], dict[str, Any]] | None:
    mod, fn = target.split(":")
    if importlib.util.find_spec(mod.rsplit(".", 1)[0]) is None or importlib.util.find_spec(mod) is None:
        return None
    return getattr(importlib.import_module(mod), fn)  # type: ignore[no-any-return]


def run_pipeline(
    store: Store,
    path: str | Path | None = None,
    *,
    fmt: str = "auto",
    out_dir: str | Path = "afterword-out",
    on_stage: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run import and then every available stage; returns a summary per stage."""
    path = Path(path) if path else sample_path()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"file": str(path), "stages": {}}
    t0 = time.perf_counter()
    counts = run_import(store, path, fmt)
    summary["stages"]["import"] = {
        **counts.as_dict(),
        "errors": counts.errors[:20],
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if on_stage:
        on_stage("import", summary["stages"]["import"])
    opts = {"out_dir": out}
    for name, target in STAGES:
        fn = _resolve(target)
        if fn is None:
            continue
        t0 = time.perf_counter()
        result = fn(store, opts)
        result["seconds"] = round(time.perf_counter() - t0, 3)
        summary["stages"][name] = result
        if on_stage:
            on_stage(name, result)
    summary["stats"] = store.stats()
    return summary
