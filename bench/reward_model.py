"""Reward model: held-out pairwise accuracy against a length baseline and a random baseline.

Two sources, each loaded into a fresh SQLite store and trained through the
public API (afterword.train.train_reward), with both CPU heads:

- the shipped sample (or --sample FILE): imported, judged by the hindsight
  judge when it is available (--no-judge to use explicit feedback only);
- USS files (--uss PATH ...): each SYSTEM turn gets a rating feedback equal to
  the mean crowd rating of the USER turn after it (how satisfied the user was
  with it); pairs are responses with higher vs lower satisfaction. USS has no
  users, so the split holds whole dialogues out.

    python bench/reward_model.py --uss /work/shared/data/uss/MWOZ.txt /work/shared/data/uss/SGD.txt

Writes bench/results/reward_model.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from afterword.importers import run_import
from afterword.importers.base import raise_errors
from afterword.importers.uss import parse as parse_uss
from afterword.pipeline import sample_path
from afterword.records import Feedback
from afterword.store import Store
from afterword.train import RewardConfig, train_reward


def _uss_conversations(path: str, limit: int | None) -> list[Any]:
    convs = []
    for i, conv in enumerate(raise_errors(parse_uss(path))):
        if limit and i >= limit:
            break
        fbs = []
        for j in range(1, len(conv.messages)):
            prev, cur = conv.messages[j - 1], conv.messages[j]
            if prev.role == "assistant" and cur.role == "user" and cur.metadata.get("ratings"):
                r = cur.metadata["ratings"]
                fbs.append(Feedback(kind="rating", rating=sum(r) / len(r), message_index=j - 1, source="import"))
        conv.feedback = fbs
        convs.append(conv)
    return convs


def _run(store: Store, name: str, heads: list[str], min_conf: float, out: Path, seed: int) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for head in heads:
        cfg = RewardConfig(head=head, min_confidence=min_conf, test_fraction=0.2, seed=seed)
        t0 = time.perf_counter()
        r = train_reward(store, out / f"{name}-{head}", config=cfg, record=False)
        res[head] = {**r.as_dict(), "wall_s": round(time.perf_counter() - t0, 2)}
        t = r.metrics["test"]
        print(
            f"{name:>8} {head:>6}  test pairs {t['pairs']:>6}  model {t['accuracy']:.3f}  "
            f"length {t['length_baseline']:.3f}  random {t['random_baseline']:.3f}  "
            f"(same-prompt pairs: {r.metrics['test_same_prompt']['pairs']}, "
            f"acc {r.metrics['test_same_prompt']['accuracy']})  {res[head]['wall_s']} s"
        )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", default=None, help="A log file to import (default: the shipped sample).")
    ap.add_argument("--no-judge", action="store_true", help="Do not run the hindsight judge on the sample.")
    ap.add_argument("--uss", nargs="*", default=[], help="USS files (MWOZ.txt, SGD.txt, CCPE.txt).")
    ap.add_argument("--uss-limit", type=int, default=None, help="Dialogues per USS file.")
    ap.add_argument("--heads", nargs="+", default=["logreg", "mlp"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/reward_model.json")
    args = ap.parse_args()

    results: dict[str, Any] = {"machine": platform.machine(), "note": "shared 2-core CPU; timings are indicative"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sample = Path(args.sample) if args.sample else sample_path()
        if sample.exists():
            store = Store(str(work / "sample.db"))
            run_import(store, sample, "auto")
            judged = None
            if not args.no_judge:
                try:
                    from afterword.judge.runner import judge_store

                    judged = {k: v for k, v in judge_store(store).items() if k in ("judged", "messages", "labels")}
                except Exception as exc:  # the judge is another issue's work: run without it, and say so
                    judged = f"judge unavailable ({type(exc).__name__}: {exc}); explicit feedback only"
            results["sample"] = {
                "file": str(sample),
                "judge": judged,
                **_run(store, "sample", args.heads, 0.6, work, args.seed),
            }
            store.close()
        for path in args.uss:
            name = Path(path).stem.lower()
            store = Store(str(work / f"{name}.db"))
            convs = _uss_conversations(path, args.uss_limit)
            for i in range(0, len(convs), 200):
                store.import_conversations(convs[i : i + 200])
            results[f"uss-{name}"] = {
                "file": path,
                "dialogues": len(convs),
                # min_confidence 0: every rating off 3 counts; a mean of exactly 3 is neutral and unused.
                **_run(store, f"uss-{name}", args.heads, 0.0, work, args.seed),
            }
            store.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
