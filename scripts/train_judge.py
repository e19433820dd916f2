"""Train the hindsight head shipped in src/afterword/judge/assets/ from public USS data.

    python scripts/train_judge.py ../shared/data

Training data: the USS train splits of MWOZ and SGD, rebuilt as the full USS
files minus every dialogue that appears in the ASAP valid or test splits
(matched on turn texts, see afterword.importers.uss.train_split). Every rated
user message is one example, labelled 0/1/2 for a mean rating below, equal
to, or above 3. CCPE is kept out of training entirely, as a held-out domain.

Model selection: the class-prior adjustment (``class_bias``) is tuned for
UAR on the ASAP valid splits of MWOZ and SGD together. The ASAP test splits
and CCPE are only evaluated, and the figures are stored in the asset.

The script prints its provenance (data hashes, command, versions, metrics)
as JSON and writes it into the asset's metadata.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from afterword.embed import MODEL_ID, get_embedder
from afterword.importers import asap, uss
from afterword.importers.base import raise_errors
from afterword.judge.bench import metrics
from afterword.judge.datasets import Example, asap_examples, uss_examples
from afterword.judge.features import EmbeddingCache, build_features, context_at, feature_names
from afterword.judge.model import HeadModel, default_model_path

VERSION = "uss-mwoz-sgd-lr-v1"
C = 0.003  # chosen on the ASAP valid splits among 0.003, 0.01, 0.03
SEED = 0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def featurise(examples: list[Example], cache: EmbeddingCache) -> tuple[np.ndarray, np.ndarray]:
    ctxs = [context_at(e.conv.messages, e.index) for e in examples]
    return build_features(ctxs, cache), np.asarray([e.label for e in examples])


def tune_bias(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The log-prior shift of classes 0 and 2 (class 1 fixed) that maximises UAR."""
    from sklearn.metrics import recall_score

    logp = np.log(proba + 1e-9)
    best, best_b = -1.0, np.zeros(3)
    grid = np.round(np.arange(-2.0, 2.01, 0.1), 2)
    for b0 in grid:
        for b2 in grid:
            b = np.array([b0, 0.0, b2])
            u = recall_score(y, (logp + b).argmax(1), average="macro")
            if u > best + 1e-12:
                best, best_b = u, b
    return best_b


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("data", type=Path, help="the shared data folder (holds uss/ and asap/)")
    ap.add_argument("--out", type=Path, default=default_model_path(), help="where to write the head (.npz)")
    args = ap.parse_args(argv)
    d: Path = args.data
    t_start = time.time()

    files = {
        "uss/MWOZ.txt": d / "uss/MWOZ.txt",
        "uss/SGD.txt": d / "uss/SGD.txt",
        "uss/CCPE.txt": d / "uss/CCPE.txt",
    }
    for dom in ("mwoz", "sgd"):
        for split in ("valid", "test"):
            files[f"asap/{dom}/{split}_{dom}.txt"] = d / f"asap/{dom}/{split}_{dom}.txt"

    held = {
        dom: [c for s in ("valid", "test") for c in raise_errors(asap.parse(files[f"asap/{dom}/{s}_{dom}.txt"]))]
        for dom in ("mwoz", "sgd")
    }
    train_convs = {
        name: list(uss.train_split(files[f"uss/{name}.txt"], held[name.lower()])) for name in ("MWOZ", "SGD")
    }
    train = [e for convs in train_convs.values() for e in uss_examples(convs)]
    valid = [e for dom in ("mwoz", "sgd") for e in asap_examples(files[f"asap/{dom}/valid_{dom}.txt"])]
    tests = {f"asap_{dom}_test": list(asap_examples(files[f"asap/{dom}/test_{dom}.txt"])) for dom in ("mwoz", "sgd")}
    tests["uss_ccpe_heldout"] = list(uss_examples(raise_errors(uss.parse(files["uss/CCPE.txt"])), need_response=True))

    emb = get_embedder()
    cache = EmbeddingCache(lambda texts: emb.encode(texts))
    X, y = featurise(train, cache)
    print(
        f"train: {len(y)} examples from {sum(map(len, train_convs.values()))} dialogues, "
        f"labels {np.bincount(y).tolist()}",
        file=sys.stderr,
    )

    from sklearn import __version__ as sk_version
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X)
    clf = LogisticRegression(C=C, max_iter=3000, class_weight="balanced", random_state=SEED)
    clf.fit(scaler.transform(X), y)
    head = HeadModel(
        mean=scaler.mean_.astype(np.float32),
        scale=scaler.scale_.astype(np.float32),
        layers=[(clf.coef_.T.astype(np.float32), clf.intercept_.astype(np.float32))],
    )
    Xv, yv = featurise(valid, cache)
    head.class_bias = tune_bias(head.predict_proba(Xv), yv).astype(np.float32)
    results = {"asap_valid_mwoz_sgd": metrics(yv, head.predict(Xv), 0.0)}
    for name, exs in tests.items():
        Xt, yt = featurise(exs, cache)
        results[name] = metrics(yt, head.predict(Xt), 0.0)
    for r in results.values():
        r.pop("turns_per_s")

    provenance = {
        "version": VERSION,
        "command": "python scripts/train_judge.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "data_sha256": {k: sha256(v) for k, v in files.items()},
        "train": {
            "dialogues": {k: len(v) for k, v in train_convs.items()},
            "examples": len(y),
            "labels": np.bincount(y, minlength=3).tolist(),
        },
        "head": {
            "kind": "logistic_regression",
            "C": C,
            "class_weight": "balanced",
            "class_bias": head.class_bias.round(2).tolist(),
            "n_features": X.shape[1],
        },
        "features": feature_names()[384:] and "react_emb[384] + " + ", ".join(feature_names()[384:]),
        "embedder": MODEL_ID,
        "versions": {"sklearn": sk_version, "numpy": np.__version__, "python": sys.version.split()[0]},
        "metrics": results,
        "train_seconds": round(time.time() - t_start, 1),
    }
    head.metadata = provenance
    args.out.parent.mkdir(parents=True, exist_ok=True)
    head.save(args.out)
    print(json.dumps(provenance, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
