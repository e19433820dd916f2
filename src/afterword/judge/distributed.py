"""Judging the store on Ray: the same pending set as ``judge_store``, spread over actors.

The driver computes the pending conversations exactly as the local runner
does (:func:`afterword.judge.runner.pending_conversations`, derived from the
store, so a killed run resumes where it stopped) and hands their ids to Ray
Data. Each actor loads the hindsight model once, opens its own connection to
the store, and for every batch of ids reads the conversations, judges them
with :meth:`HindsightJudge.judge_many`, and writes the judgments back through
:meth:`Store.put_judgments`: one transaction per batch, one row per
(message, source), so a batch is either all there or not at all.

The store must be reachable from every worker: a PostgreSQL URL on a real
cluster; a SQLite path only when all workers share the machine (or the file
system), since SQLite serialises the writers anyway. ``address`` is passed
to ``ray.init``: ``None`` starts a local Ray, ``"auto"`` joins the cluster
this machine belongs to, ``"ray://head:10001"`` connects a client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from afterword.errors import require
from afterword.judge.judge_config import JudgeConfig
from afterword.judge.runner import pending_conversations
from afterword.store.store import Store

__all__ = ["judge_store_ray", "ray_session", "open_worker_store"]


def ray_session(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Start or join Ray unless this process already has; returns True when it started it here."""
    ray = require("ray", "scale")
    require("ray.data", "scale")
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True}
    if address is None:
        kwargs["num_cpus"] = num_cpus
    ray.init(address=address, **kwargs)
    ray.data.DataContext.get_current().enable_progress_bars = False
    return True


def open_worker_store(url: str) -> Store:
    """A store handle for one worker process: a small pool, since each actor runs one batch at a time."""
    pool = {} if url.startswith("sqlite") else {"pool_size": 2, "max_overflow": 2}
    return Store(url, migrate=False, **pool)


class _JudgeActor:
    """One Ray actor: one model load, one store connection, many batches."""

    def __init__(self, store_url: str, config: dict[str, Any]) -> None:
        import os

        from afterword.judge.hindsight import HindsightJudge

        # Ray gives each actor one CPU: one ONNX thread, unless the operator says otherwise.
        os.environ.setdefault("AFTERWORD_EMBED_THREADS", "1")
        self.store = open_worker_store(store_url)
        self.config = JudgeConfig(**config)
        self.judge = HindsightJudge(self.config)
        try:
            from afterword.judge.calibrate import load_calibrator

            self.calibrator = load_calibrator(self.store)
        except ImportError:
            self.calibrator = None

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from afterword.judge.runner import _later_for

        ids = [str(x) for x in batch["conversation_id"]]
        convs = self.store.conversations_by_id(ids)
        later = _later_for(self.store, convs, self.config.later_window_days)
        results = self.judge.judge_many([(cv, later.get(cv.id or "", [])) for cv in convs])
        out = []
        labels: dict[str, int] = {}
        for js in results:
            for jd in js:
                if self.calibrator is not None:
                    jd = self.calibrator.apply(jd)
                out.append(jd)
                labels[str(jd.label)] = labels.get(str(jd.label), 0) + 1
        self.store.put_judgments(out)  # one transaction per batch: resumable
        return {
            "conversations": np.array([len(convs)]),
            "judged": np.array([len(out)]),
            "labels_json": np.array([json.dumps(labels)]),
        }


def judge_store_ray(
    store: Store,
    since: datetime | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    *,
    config: JudgeConfig | None = None,
    num_workers: int | None = None,
    batch_size: int = 200,
    progress: Callable[[int], None] | None = None,
    limit: int | None = None,
    rejudge: bool = False,
) -> dict[str, Any]:
    """Judge every pending conversation of ``store`` on Ray; returns the same keys as ``judge_store``.

    With ``rejudge``, every conversation in scope (as ``judge_store`` does).

    ``num_workers`` actors (default: the CPUs Ray reports) each judge
    ``batch_size`` conversations at a time. ``num_cpus`` caps a local Ray.
    """
    ray = require("ray", "scale")
    from afterword.judge.hindsight import HindsightJudge

    cfg = config or JudgeConfig()
    model_version = HindsightJudge(cfg).model_version  # also fails early on a missing model file
    pending = pending_conversations(store, since=since, window_days=cfg.later_window_days, rejudge=rejudge)
    if limit is not None:
        pending = pending[:limit]
    result: dict[str, Any] = {
        "conversations": len(pending),
        "judged": 0,
        "labels": {},
        "turns_per_s": None,
        "model_version": model_version,
    }
    if not pending:
        return {**result, "engine": "ray", "workers": 0}
    started = ray_session(address, num_cpus)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        n_batches = -(-len(pending) // batch_size)
        workers = max(1, min(num_workers or cpus, n_batches))
        t0 = time.perf_counter()
        ds = ray.data.from_items(
            [{"conversation_id": cid} for cid in pending], override_num_blocks=min(n_batches, 4 * workers)
        )
        judged = ds.map_batches(
            _JudgeActor,
            fn_constructor_kwargs={"store_url": store.url, "config": cfg.model_dump()},
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
        )
        for row in judged.iter_rows():
            result["judged"] += int(row["judged"])
            for k, v in json.loads(str(row["labels_json"])).items():
                result["labels"][k] = result["labels"].get(k, 0) + v
            if progress:
                progress(int(row["conversations"]))
        dt = time.perf_counter() - t0
    finally:
        if started:
            ray.shutdown()
    result["turns_per_s"] = round(result["judged"] / dt, 1) if dt > 0 and result["judged"] else None
    return {**result, "engine": "ray", "workers": workers, "seconds": round(dt, 2)}
