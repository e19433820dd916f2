"""LoCoMo: does a question->turn encoder fine-tuned on other conversations lift evidence recall?

python bench/locomo_finetune.py ../shared/data/locomo/locomo_dev7.json [--epochs 2] [--lr 3e-5] [--json]

An experiment, not the shipped path (needs the ``train`` extra: torch, transformers). The samples are split in
two halves. For each half, all-MiniLM-L6-v2 is fine-tuned on the *other* half's (question without the speakers'
names, evidence turn) pairs, with in-batch negatives and one hard negative a pair (a non-evidence turn from the
hybrid's top 15), then the held-out half is scored three ways, side by side:

- ``base``: the shipped hybrid's 13 signals on the general MiniLM (the baseline);
- ``finetuned``: the same 13 signals with the fine-tuned encoder's vectors in place of the general ones;
- ``both``: the 26 signals together (two encodings a turn).

Each way's blend weights are a logistic regression refitted leave-one-sample-out *inside* the held-out half, so
neither the encoder nor the weights saw the sample they score (with 2 to 3 samples to fit on, the baseline comes
out a little under the shipped weights' in-sample 0.725). Dense-only recall@5 is printed for both encoders.
Writes ``bench/results/locomo_finetune.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from afterword.memory.bench import _load, normalise_evidence
from afterword.memory.turns import FEATURES, TurnIndex

_Row = tuple[np.ndarray, np.ndarray]  # features (turns x signals), evidence mask


class Encoder:
    """MiniLM with mean pooling, in torch: fine-tuned here, then used to encode."""

    def __init__(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        from afterword.judge.finetune import base_model_dir

        self.tok = AutoTokenizer.from_pretrained(base_model_dir())
        self.model = AutoModel.from_pretrained(base_model_dir())

    def _embed(self, texts: list[str]) -> Any:
        import torch

        enc = self.tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        hidden = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        import torch

        self.model.eval()
        with torch.no_grad():
            return np.vstack([self._embed(texts[i : i + batch_size]).numpy() for i in range(0, len(texts), batch_size)])

    def fit(self, triples: list[tuple[str, str, str]], epochs: int, lr: float, batch_size: int = 32) -> float:
        """Multiple-negatives ranking loss (scale 20) over (query, positive, hard negative); returns the last loss."""
        import torch

        self.model.train()
        opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.01)
        steps = epochs * ((len(triples) + batch_size - 1) // batch_size)
        warm = max(1, int(0.1 * steps))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, (steps - s) / steps)
        )
        loss = torch.tensor(0.0)
        for _ in range(epochs):
            random.shuffle(triples)
            for i in range(0, len(triples), batch_size):
                b = triples[i : i + batch_size]
                q = self._embed([x[0] for x in b])
                d = self._embed([x[1] for x in b] + [x[2] for x in b])
                loss = torch.nn.functional.cross_entropy(20 * q @ d.T, torch.arange(len(b)))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad()
        return float(loss.item())


def _loso_recall(rows: dict[str, list[_Row]], cols: list[int]) -> dict[str, float]:
    """Recall@1/5/10, each sample ranked with blend weights fitted on the other samples of ``rows``."""
    from sklearn.linear_model import LogisticRegression

    out: dict[int, list[float]] = {1: [], 5: [], 10: []}
    for u in rows:
        fit = [r for v in rows if v != u for r in rows[v]]
        x = np.vstack([f[:, cols] for f, _ in fit])
        y = np.concatenate([m for _, m in fit])
        w = LogisticRegression(C=1.0, max_iter=5000, class_weight="balanced").fit(x, y).coef_[0]
        for f, m in rows[u]:
            top = np.argsort(-(f[:, cols] @ w), kind="stable")[:10]
            for k in out:
                out[k].append(float(m[top[:k]].sum() / m.sum()))
    return {f"recall_at_{k}": round(float(np.mean(v)), 4) for k, v in out.items()} | {"n": len(out[5])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path, help="A LoCoMo JSON file (list of samples).")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "locomo_finetune.json")
    ap.add_argument("--json", action="store_true", help="Print the result as one JSON line.")
    args = ap.parse_args()
    import torch

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    with _load(args.path) as data:
        users, indexes, dia_ids = data.users, data.indexes, data.dia_ids
        questions: dict[str, list[tuple[str, np.ndarray]]] = {u: [] for u in users}
        for q in data.questions:
            ev = set(normalise_evidence(q["evidence"]))
            mask = np.array([d in ev for d in dia_ids[q["sample_id"]]])
            if mask.any():
                questions[q["sample_id"]].append((q["question"], mask))

    half = (len(users) + 1) // 2
    n = len(FEATURES)
    folds = []
    for train, test in ((users[half:], users[:half]), (users[:half], users[half:])):
        triples = []
        for u in train:
            idx = indexes[u]
            for question, mask in questions[u]:
                negatives = [i for i in np.argsort(-idx.scores(question))[:15] if not mask[i]]
                for i in np.flatnonzero(mask):
                    neg = idx.turns[random.choice(negatives)].text
                    triples.append((idx.dense_query(question), idx.turns[i].text, neg))
        enc = Encoder()
        t0 = time.perf_counter()
        loss = enc.fit(triples, args.epochs, args.lr)
        train_s = time.perf_counter() - t0
        rows: dict[str, list[_Row]] = {}
        dense: dict[str, list[float]] = {"base": [], "finetuned": []}
        for u in test:
            idx = indexes[u]
            tuned = TurnIndex(idx.turns, enc.encode([t.text for t in idx.turns]))
            qvecs = enc.encode([idx.dense_query(q) for q, _ in questions[u]])
            rows[u] = []
            for (question, mask), qv in zip(questions[u], qvecs, strict=True):
                fb, ff = idx.features(question), tuned.features(question, qvec=qv)
                rows[u].append((np.hstack([fb, ff]), mask))
                for name, s in (("base", fb[:, 0]), ("finetuned", ff[:, 0])):
                    dense[name].append(float(mask[np.argsort(-s)[:5]].sum() / mask.sum()))
        fold = {
            "trained_on": train,
            "checked_on": test,
            "train_pairs": len(triples),
            "train_seconds": round(train_s, 1),
            "last_loss": round(loss, 3),
            "dense_recall_at_5": {k: round(float(np.mean(v)), 4) for k, v in dense.items()},
            "base": _loso_recall(rows, list(range(n))),
            "finetuned": _loso_recall(rows, list(range(n, 2 * n))),
            "both": _loso_recall(rows, list(range(2 * n))),
        }
        folds.append(fold)
        print(
            f"checked on {', '.join(test)}: {json.dumps({k: fold[k] for k in fold if k != 'trained_on'})}",
            file=sys.stderr,
        )

    def pooled(key: str, sub: str | None = None) -> float:
        vals = [(f[key][sub] if sub else f[key]["recall_at_5"], f["base"]["n"]) for f in folds]
        return round(sum(v * k for v, k in vals) / sum(k for _, k in vals), 4)

    res = {
        "folds": folds,
        "pooled_recall_at_5": {k: pooled(k) for k in ("base", "finetuned", "both")},
        "pooled_dense_recall_at_5": {k: pooled("dense_recall_at_5", k) for k in ("base", "finetuned")},
        "epochs": args.epochs,
        "lr": args.lr,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "command": " ".join(["python", *sys.argv]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    if args.json:
        print(json.dumps(res))
        return
    print("LoCoMo recall@5 on held-out halves (encoder and blend weights never saw the scored sample):")
    for k in ("base", "finetuned", "both"):
        print(f"  hybrid, {k:10s} {res['pooled_recall_at_5'][k]:.4f}")
    for k in ("base", "finetuned"):
        print(f"  dense only, {k:10s} {res['pooled_dense_recall_at_5'][k]:.4f}")


if __name__ == "__main__":
    main()
