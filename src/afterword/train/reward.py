"""The preference (reward) model: score a (context, response) pair.

The default runs on CPU in seconds and needs no torch: each pair becomes
MiniLM features ``[e(context), e(response), e(context) * e(response),
log-length]`` and a small head is fitted with a Bradley-Terry objective on
preference pairs (the chosen response must score above the rejected one):

- ``logreg``: a linear head, scikit-learn logistic regression on feature
  differences (no intercept, both orders), the default;
- ``mlp``: one hidden layer in numpy, trained with Adam on the same loss.

Training data comes from the store, as for the datasets: corrections (the
correction beats the original), same-prompt pairs of a well and a badly judged
response, and pairs of any desirable against any undesirable response of the
same split (how satisfaction data such as USS is usually turned into pairs).
Users and conversations never straddle the train/test split. The report gives
held-out pairwise accuracy next to a length baseline (the longer response
wins) and a random baseline.

:func:`train_transformer_reward` is the GPU option: TRL's ``RewardTrainer`` on
a reward dataset folder, with a LoRA adapter (lazy imports).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from afterword.datasets.collect import collect_turns, make_examples
from afterword.datasets.formats import Example
from afterword.datasets.splits import assign_pair_splits, check_no_leak
from afterword.errors import ConfigError, ExportError
from afterword.export import record_export
from afterword.records import utcnow
from afterword.store.store import Store

__all__ = [
    "RewardConfig",
    "RewardModel",
    "RewardResult",
    "train_reward",
    "pairwise_accuracy",
    "length_baseline",
    "random_baseline",
    "fit_head",
    "train_transformer_reward",
]

HEADS = ("logreg", "mlp")
FEATURE_VERSION = "minilm-ctx-resp-prod-loglen-v1"


@dataclass
class RewardConfig:
    """How the CPU reward model is trained. Unknown keys are rejected by the dataclass."""

    head: str = "logreg"  # logreg | mlp
    C: float | None = None  # logreg: inverse L2 strength; None picks it by 4-fold cross-validation on train pairs
    hidden: int = 64  # mlp: hidden units
    epochs: int = 200  # mlp: full-batch Adam steps
    lr: float = 1e-2  # mlp: Adam step size
    weight_decay: float = 1e-4  # mlp: L2
    min_confidence: float = 0.6  # judgments below this are not trained on
    pair_threshold: float = 0.92  # prompt similarity for same-prompt judged pairs
    split: str = "user"  # user | time | none
    test_fraction: float = 0.2
    seed: int = 0
    cross_pairs_per_item: int = 4  # desirable-vs-undesirable pairs sampled per desirable response
    max_pairs: int = 50_000
    context_turns: int = 3  # how many turns before the response the context feature reads


# -- features -----------------------------------------------------------------------------------


def _context_text(context: Sequence[dict[str, str]] | str, turns: int) -> str:
    if isinstance(context, str):
        return context
    return "\n".join(f"{m['role']}: {m['content']}" for m in list(context)[-turns:])


def _features(ctx_emb: np.ndarray, resp_emb: np.ndarray, resp_texts: Sequence[str]) -> np.ndarray:
    # Unscaled: under L2 a length weight is cheap, so the head can fall back on length when text says little.
    loglen = np.log1p([len(t.split()) for t in resp_texts]).astype(np.float32)[:, None]
    return np.hstack([ctx_emb, resp_emb, ctx_emb * resp_emb, loglen]).astype(np.float32)


_SHARED_CACHE: dict[str, np.ndarray] = {}  # text -> embedding, shared by every model in the process


class _EmbedCache:
    max_entries = 200_000  # about 300 MB of float32 vectors at most

    def __init__(self) -> None:
        from afterword.embed import get_embedder

        self.emb = get_embedder()
        self.cache = _SHARED_CACHE
        if len(self.cache) > self.max_entries:
            self.cache.clear()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if todo:
            for t, v in zip(todo, self.emb.encode(todo), strict=True):
                self.cache[t] = v
        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)


# -- heads --------------------------------------------------------------------------------------


def fit_head(
    diffs_a: np.ndarray, diffs_b: np.ndarray, config: RewardConfig
) -> tuple[dict[str, np.ndarray], list[float]]:
    """Fit a head so that score(a) > score(b) for each row (a = chosen, b = rejected); returns params, loss curve."""
    if config.head == "logreg":
        from sklearn.linear_model import LogisticRegression

        d = diffs_a - diffs_b
        X = np.vstack([d, -d])
        y = np.r_[np.ones(len(d)), np.zeros(len(d))]
        C = config.C if config.C is not None else _pick_C(d, config.seed)
        clf = LogisticRegression(C=C, fit_intercept=False, max_iter=3000)
        clf.fit(X, y)
        w = clf.coef_[0].astype(np.float32)
        margin = d @ w
        return {"w": w}, [float(np.mean(np.logaddexp(0, -margin)))]
    if config.head == "mlp":
        return _fit_mlp(diffs_a, diffs_b, config)
    raise ValueError(f"unknown head {config.head!r}; known: {', '.join(HEADS)}")


def _pick_C(d: np.ndarray, seed: int, grid: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0)) -> float:
    """The C with the best mean held-out pairwise accuracy over 4 folds of pairs (1.0 when too few)."""
    from sklearn.linear_model import LogisticRegression

    n = len(d)
    if n < 20:
        return 1.0
    folds = np.random.default_rng(seed).permutation(n) % 4
    best, best_acc = 1.0, -1.0
    for C in grid:
        accs = []
        for f in range(4):
            tr, te = d[folds != f], d[folds == f]
            clf = LogisticRegression(C=C, fit_intercept=False, max_iter=3000)
            clf.fit(np.vstack([tr, -tr]), np.r_[np.ones(len(tr)), np.zeros(len(tr))])
            accs.append(float(np.mean(te @ clf.coef_[0] > 0)))
        if np.mean(accs) > best_acc:
            best, best_acc = C, float(np.mean(accs))
    return best


def _mlp_score(p: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    return np.maximum(X @ p["W1"] + p["b1"], 0) @ p["w2"]


def _fit_mlp(A: np.ndarray, B: np.ndarray, c: RewardConfig) -> tuple[dict[str, np.ndarray], list[float]]:
    rng = np.random.default_rng(c.seed)
    d = A.shape[1]
    p = {
        "W1": (rng.standard_normal((d, c.hidden)) * np.sqrt(2 / d)).astype(np.float32),
        "b1": np.zeros(c.hidden, np.float32),
        "w2": (rng.standard_normal(c.hidden) * 0.1).astype(np.float32),
    }
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    losses = []
    for step in range(1, c.epochs + 1):
        ha, hb = A @ p["W1"] + p["b1"], B @ p["W1"] + p["b1"]
        ra, rb = np.maximum(ha, 0), np.maximum(hb, 0)
        margin = (ra - rb) @ p["w2"]
        losses.append(float(np.mean(np.logaddexp(0, -margin))))
        g = -1 / (1 + np.exp(margin)) / len(margin)  # d loss / d margin
        gw2 = (ra - rb).T @ g
        ga = np.outer(g, p["w2"]) * (ha > 0)
        gb = -np.outer(g, p["w2"]) * (hb > 0)
        grads = {"W1": A.T @ ga + B.T @ gb, "b1": ga.sum(0) + gb.sum(0), "w2": gw2}
        for k in p:
            gk = grads[k] + c.weight_decay * p[k]
            m[k] = 0.9 * m[k] + 0.1 * gk
            v[k] = 0.999 * v[k] + 0.001 * gk * gk
            p[k] -= c.lr * (m[k] / (1 - 0.9**step)) / (np.sqrt(v[k] / (1 - 0.999**step)) + 1e-8)
    return p, losses


# -- the model ----------------------------------------------------------------------------------


class RewardModel:
    """A trained head plus the embedder: ``score`` pairs, ``rank`` candidates."""

    def __init__(self, params: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.params = params
        self.meta = meta
        self._embed: _EmbedCache | None = None

    @property
    def head(self) -> str:
        return str(self.meta["head"])

    def _raw(self, X: np.ndarray) -> np.ndarray:
        return X @ self.params["w"] if self.head == "logreg" else _mlp_score(self.params, X)

    def features(self, contexts: Sequence[Sequence[dict[str, str]] | str], responses: Sequence[str]) -> np.ndarray:
        if self._embed is None:
            self._embed = _EmbedCache()
        turns = int(self.meta.get("context_turns", 3))
        ctx = self._embed([_context_text(c, turns) for c in contexts])
        resp = self._embed(list(responses))
        return _features(ctx, resp, responses)

    def score(self, contexts: Sequence[Sequence[dict[str, str]] | str], responses: Sequence[str]) -> np.ndarray:
        """One score per (context, response): higher is better. A context is a message list or a string."""
        if len(contexts) != len(responses):
            raise ValueError("contexts and responses differ in length")
        if not responses:
            return np.zeros(0, np.float32)
        return self._raw(self.features(contexts, responses)).astype(np.float32)

    def rank(self, context: Sequence[dict[str, str]] | str, candidates: Sequence[str]) -> list[dict[str, Any]]:
        """Candidates best first, each with its index in ``candidates`` and its score."""
        s = self.score([context] * len(candidates), candidates)
        order = np.argsort(-s, kind="stable")
        return [{"index": int(i), "score": float(s[i]), "response": candidates[i]} for i in order]

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "reward_model.partial.npz"
        np.savez(tmp, **self.params)
        os.replace(tmp, out / "reward_model.npz")
        (out / "reward_model.json").write_text(json.dumps(self.meta, indent=2, default=str) + "\n")
        return out

    @classmethod
    def load(cls, path: str | Path) -> RewardModel:
        p = Path(path)
        folder = p.parent if p.is_file() or p.name.startswith("reward_model.") else p  # the folder, or a file in it
        if not (folder / "reward_model.npz").is_file():
            raise ConfigError(f"no reward model in {folder}: train one first (`afterword train reward --out {folder}`)")
        with np.load(folder / "reward_model.npz") as z:
            params = {k: z[k] for k in z.files}
        meta = json.loads((folder / "reward_model.json").read_text())
        if meta.get("feature_version") != FEATURE_VERSION:
            raise ExportError(f"{folder} was trained on other features ({meta.get('feature_version')})")
        return cls(params, meta)


# -- metrics ------------------------------------------------------------------------------------


def pairwise_accuracy(chosen_scores: np.ndarray, rejected_scores: np.ndarray) -> float | None:
    """Share of pairs where the chosen response scores higher (ties count half)."""
    if len(chosen_scores) == 0:
        return None
    d = np.asarray(chosen_scores) - np.asarray(rejected_scores)
    return float(np.mean((d > 0) + 0.5 * (d == 0)))


def length_baseline(chosen: Sequence[str], rejected: Sequence[str]) -> float | None:
    """Accuracy of "the longer response (in words) is better"."""
    return pairwise_accuracy(
        np.array([len(t.split()) for t in chosen], float), np.array([len(t.split()) for t in rejected], float)
    )


def random_baseline(n: int, seed: int = 0) -> float | None:
    """Accuracy of a fair coin on ``n`` pairs (its expectation is 0.5)."""
    if n == 0:
        return None
    return float(np.random.default_rng(seed).integers(0, 2, n).mean())


# -- training from the store --------------------------------------------------------------------


@dataclass
class _Pair:
    context: list[dict[str, str]]
    chosen: str
    rejected: str
    kind: str  # same-prompt | cross
    rejected_context: list[dict[str, str]] | None = None  # cross pairs: the rejected response's own context


@dataclass
class RewardResult:
    out_dir: str
    export_id: str | None
    metrics: dict[str, Any]
    counts: dict[str, Any]
    config: dict[str, Any]
    seconds: float
    model: RewardModel = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir,
            "export_id": self.export_id,
            "metrics": self.metrics,
            "counts": self.counts,
            "config": self.config,
            "seconds": round(self.seconds, 2),
        }


def _pairs(items: list[Example], explicit: list[Example], split: str, c: RewardConfig, rng: Any) -> list[_Pair]:
    out = [_Pair(e.prompt, e.chosen or "", e.rejected or "", "same-prompt") for e in explicit if e.split == split]
    goods = [e for e in items if e.split == split and e.label]
    bads = [e for e in items if e.split == split and e.label is False]
    if goods and bads:
        k = min(c.cross_pairs_per_item, len(bads))
        for g in goods:
            for j in rng.choice(len(bads), size=k, replace=False):
                b = bads[int(j)]
                out.append(_Pair(g.prompt, g.completion or "", b.completion or "", "cross", b.prompt))
    if len(out) > c.max_pairs:
        out = [out[int(i)] for i in sorted(rng.choice(len(out), size=c.max_pairs, replace=False))]
    return out


def _pair_features(model: RewardModel, pairs: list[_Pair]) -> tuple[np.ndarray, np.ndarray]:
    ca = [p.context for p in pairs]
    cb = [p.rejected_context or p.context for p in pairs]
    return model.features(ca, [p.chosen for p in pairs]), model.features(cb, [p.rejected for p in pairs])


def _evaluate(model: RewardModel, pairs: list[_Pair], seed: int) -> dict[str, Any]:
    if not pairs:
        return {"pairs": 0, "accuracy": None, "length_baseline": None, "random_baseline": None}
    A, B = _pair_features(model, pairs)
    return {
        "pairs": len(pairs),
        "accuracy": pairwise_accuracy(model._raw(A), model._raw(B)),
        "length_baseline": length_baseline([p.chosen for p in pairs], [p.rejected for p in pairs]),
        "random_baseline": random_baseline(len(pairs), seed),
    }


def train_reward(
    store: Store,
    out: str | Path = "models/reward",
    *,
    config: RewardConfig | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    users: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
    command: str | None = None,
    record: bool = True,
    progress: Callable[[int], None] | None = None,
) -> RewardResult:
    """Train the CPU reward model on the store's judgments and corrections; save it to ``out`` and record it."""
    c = config or RewardConfig()
    t0 = time.perf_counter()
    turns, _ = collect_turns(store, since=since, until=until, users=users, models=models, tags=tags, progress=progress)
    items = make_examples(turns, "kto", min_confidence=c.min_confidence)
    explicit = make_examples(turns, "reward", min_confidence=c.min_confidence, pair_threshold=c.pair_threshold)
    if not items:
        raise ExportError("no judged or corrected responses to train a reward model on")
    # Items are one response each; same-prompt pairs whose responses fall on both sides are dropped.
    assign_pair_splits(items + explicit, c.split, c.test_fraction, c.seed)
    explicit = [e for e in explicit if e.split != "drop"]
    both = items + explicit
    check_no_leak(both)
    rng = np.random.default_rng(c.seed)
    train_pairs = _pairs(items, explicit, "train", c, rng)
    test_pairs = _pairs(items, explicit, "test", c, rng)
    if not train_pairs:
        raise ExportError("no preference pairs: the store needs both desirable and undesirable responses")
    model = RewardModel({}, {"head": c.head, "feature_version": FEATURE_VERSION, "context_turns": c.context_turns})
    A, B = _pair_features(model, train_pairs)
    params, losses = fit_head(A, B, c)
    model.params = params
    metrics: dict[str, Any] = {
        "train": {**_evaluate(model, train_pairs, c.seed), "final_loss": losses[-1]},
        "test": _evaluate(model, test_pairs, c.seed),
        "test_same_prompt": _evaluate(model, [p for p in test_pairs if p.kind == "same-prompt"], c.seed),
    }
    counts = {
        "items": len(items),
        "desirable": sum(1 for e in items if e.label),
        "undesirable": sum(1 for e in items if e.label is False),
        "same_prompt_pairs": len(explicit),
        "train_pairs": len(train_pairs),
        "test_pairs": len(test_pairs),
        "users": len({u for e in items for u in e.user_ids if u}),
    }
    model.meta.update(
        {
            "created_utc": utcnow().isoformat(),
            "embedder": "all-MiniLM-L6-v2-onnx-int8",
            "config": asdict(c),
            "metrics": metrics,
            "counts": counts,
            "command": command,
        }
    )
    out_dir = model.save(out)
    export_id = None
    if record:
        lineage = [(m, u, e.split) for e in both for m, u in zip(e.message_ids, e.user_ids, strict=True) if m]
        card = {"kind": "reward-model", "head": c.head, "metrics": metrics, "counts": counts, "path": str(out_dir)}
        export_id = record_export(
            store,
            kind="model",
            fmt=f"reward-{c.head}",
            path=str(out_dir.resolve()),
            command=command,
            card=card,
            items=lineage,
        )
        model.meta["export_id"] = export_id
        model.save(out_dir)
    _write_reward_card(out_dir, model.meta)
    return RewardResult(str(out_dir), export_id, metrics, counts, asdict(c), time.perf_counter() - t0, model)


def _fmt(x: Any) -> str:
    return "n/a" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))


def _write_reward_card(out_dir: Path, meta: dict[str, Any]) -> None:
    m = meta["metrics"]
    rows = [
        f"| {name} | {_fmt(v['pairs'])} | {_fmt(v['accuracy'])} | {_fmt(v['length_baseline'])} "
        f"| {_fmt(v['random_baseline'])} |"
        for name, v in m.items()
    ]
    text = "\n".join(
        [
            "# Reward model card\n",
            f"Head `{meta['head']}` on MiniLM features ({meta['feature_version']}). "
            f"Lineage export id: `{meta.get('export_id')}`.\n",
            "## Pairwise accuracy\n",
            "| pairs | n | model | length baseline | random baseline |",
            "| --- | --- | --- | --- | --- |",
            *rows,
            "\n## Data\n",
            "```json",
            json.dumps(meta["counts"], indent=2),
            "```\n",
            "## Rebuild\n",
            f"```\n{meta.get('command') or '(library call)'}\n```",
        ]
    )
    (out_dir / "README.md").write_text(text + "\n", encoding="utf-8")


# -- the transformer option (GPU) ---------------------------------------------------------------


def train_transformer_reward(
    dataset: str | Path,
    out: str | Path,
    *,
    base: str | None = None,
    max_steps: int = -1,
    epochs: float = 1.0,
    learning_rate: float = 1e-4,
    batch_size: int = 4,
    lora_r: int = 16,
    max_length: int = 1024,
    store: Store | None = None,
    command: str | None = None,
    model: Any = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """TRL's RewardTrainer with LoRA on a ``reward`` (or ``dpo``) dataset folder in TRL format. Use a GPU."""
    from afterword.train.finetune import finetune

    return finetune(
        "reward",
        dataset,
        out=out,
        base=base,
        max_steps=max_steps,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        lora_r=lora_r,
        max_length=max_length,
        store=store,
        command=command,
        model=model,
        tokenizer=tokenizer,
    ).as_dict()
