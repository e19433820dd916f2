"""Benchmark the hindsight judge against baselines on human-rated turns (USS / ASAP).

:func:`run_bench` judges every rated reaction in the given files with the
shipped :class:`~afterword.judge.HindsightJudge` and, in the same run, with
three baselines:

- ``majority``: the most frequent class of the training data;
- ``lexicon``: the signed sum of the polar cue lexicon on the reaction;
- ``tfidf_lr``: TF-IDF (words, 1-2 grams) of the reaction and of the
  response, class-balanced logistic regression, trained on ``train_files``
  (default: the ASAP valid split of the same domain, as in the literature);
- ``llm_judge`` (only with ``endpoint``): the rubric LLM judge
  (:class:`~afterword.judge.llm_judge.LLMJudge`) over an OpenAI-compatible
  endpoint. An LLM call per turn is slow, so it judges an evenly spread
  sample of ``llm_limit`` examples; its entry carries ``n``, the number of
  replies it could not use (scored neutral), and afterword's own metrics on
  the very same sample (``afterword_same_sample``) for a fair comparison.

The judge sees what the rating was given with and nothing later: the
conversation up to the rated user message (``lookahead_turns=0``). Each
judged assistant turn is scored against the 3-class label (mean rating
below 3, equal to 3, above 3).

Metrics, for each system: ``uar`` (macro recall), ``kappa`` (Cohen),
``rho`` (Spearman, labels as ordinal), ``bi_f1`` (F1 of dissatisfied vs
rest), ``acc``, ``macro_f1``, and ``turns_per_s`` (judged assistant turns a
second, embedding included).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from afterword.records import Conversation, Message

from .datasets import Example, load_examples
from .hindsight import HindsightJudge
from .judge_config import JudgeConfig
from .signals import CUE_POLARITY, cue_counts

__all__ = ["run_bench", "metrics", "METRIC_KEYS"]

METRIC_KEYS = ("uar", "kappa", "rho", "bi_f1", "acc", "macro_f1", "turns_per_s")
_LABEL_INDEX = {"dissatisfied": 0, "neutral": 1, "satisfied": 2}


def metrics(y_true: Sequence[int], y_pred: Sequence[int], turns_per_s: float) -> dict[str, float]:
    """The six agreement metrics plus throughput, rounded for printing."""
    from scipy.stats import spearmanr
    from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, recall_score

    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    rho = spearmanr(yt, yp).statistic if len(set(yp.tolist())) > 1 else 0.0
    out = {
        "uar": recall_score(yt, yp, average="macro", labels=[0, 1, 2], zero_division=0),
        "kappa": cohen_kappa_score(yt, yp) if len(set(yp.tolist())) > 1 else 0.0,
        "rho": float(rho),
        "bi_f1": f1_score(yt == 0, yp == 0, zero_division=0),
        "acc": accuracy_score(yt, yp),
        "macro_f1": f1_score(yt, yp, average="macro", labels=[0, 1, 2], zero_division=0),
        "turns_per_s": turns_per_s,
    }
    # Throughput to 0.1 turn/s, or to 0.001 for slow judges (an LLM on CPU can take seconds a turn).
    return {k: round(float(v), 4 if k != "turns_per_s" else (1 if v >= 10 else 3)) for k, v in out.items()}


def _with_ids(messages: Sequence[Message], tag: str) -> Conversation:
    return Conversation(messages=[m.model_copy(update={"id": f"{tag}:{i}"}) for i, m in enumerate(messages)])


def _hosts(examples: Sequence[Example]) -> tuple[list[Conversation], list[tuple[int, int] | None]]:
    """Group examples into as few judged conversations as possible.

    A rated reaction at ``index`` is judged on the conversation cut right
    after its user block; examples whose cut conversations are prefixes of
    one another (nested ASAP prefixes, turns of one USS dialogue) share
    one host, so each assistant turn is judged once. Returns the hosts and,
    per example, (host number, assistant index) or None when no response
    precedes the reaction.
    """
    hosts: list[Conversation] = []
    by_key: dict[tuple, int] = {}
    where: list[tuple[int, int] | None] = [None] * len(examples)
    order = sorted(range(len(examples)), key=lambda i: -examples[i].index)
    for i in order:
        ex = examples[i]
        msgs = ex.conv.messages
        resp = next((k for k in range(ex.index - 1, -1, -1) if msgs[k].role == "assistant"), None)
        if resp is None:
            continue
        cut = ex.index + 1
        # Cut inside a user block (consecutive user lines): later lines must not leak in.
        key = tuple((m.role, m.content) for m in msgs[:cut])
        h = by_key.get(key)
        if h is None:
            h = len(hosts)
            hosts.append(_with_ids(msgs[:cut], f"h{h}"))
            prefix: list[tuple[str, str]] = []
            for k, m in enumerate(msgs[:cut]):
                prefix.append((m.role, m.content))
                nxt = msgs[k + 1].role if k + 1 < cut else None
                if m.role == "user" and nxt != "user":
                    by_key.setdefault(tuple(prefix), h)
        where[i] = (h, resp)
    return hosts, where


def _afterword(examples: Sequence[Example], judge: HindsightJudge) -> tuple[list[int], float]:
    hosts, where = _hosts(examples)
    judge.warm_up()  # load the ONNX sessions outside the timed part
    t0 = time.perf_counter()
    judged = judge.judge_many([(h, []) for h in hosts])
    elapsed = time.perf_counter() - t0
    n_turns = sum(len(j) for j in judged)
    by_id = {j.message_id: j for js in judged for j in js}
    preds = []
    for w in where:
        if w is None:
            preds.append(1)  # no response before the reaction: nothing to judge, neutral
            continue
        h, resp = w
        preds.append(_LABEL_INDEX[by_id[hosts[h].messages[resp].id].label])
    return preds, n_turns / max(elapsed, 1e-9)


def _lexicon(examples: Sequence[Example]) -> tuple[list[int], float]:
    t0 = time.perf_counter()
    preds = []
    for ex in examples:
        s = sum(CUE_POLARITY[c] * n for c, n in cue_counts(ex.reaction).items())
        preds.append(2 if s > 0 else (0 if s < 0 else 1))
    return preds, len(examples) / max(time.perf_counter() - t0, 1e-9)


def _tfidf_lr(train: Sequence[Example], test: Sequence[Example]) -> tuple[list[int], float]:
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    def fields(exs: Sequence[Example]) -> tuple[list[str], list[str]]:
        return [e.reaction for e in exs], [e.response for e in exs]

    tr_react, tr_resp = fields(train)
    v1 = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit(tr_react)
    v2 = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit(tr_resp)
    X = sp.hstack([v1.transform(tr_react), v2.transform(tr_resp)]).tocsr()
    clf = LogisticRegression(C=1.0, max_iter=3000, class_weight="balanced").fit(X, [e.label for e in train])
    t0 = time.perf_counter()
    te_react, te_resp = fields(test)
    preds = clf.predict(sp.hstack([v1.transform(te_react), v2.transform(te_resp)]).tocsr())
    return [int(p) for p in preds], len(test) / max(time.perf_counter() - t0, 1e-9)


def _llm_judge(
    test: Sequence[Example], endpoint: str, model: str | None, limit: int
) -> tuple[list[int], list[int], float, int]:
    """LLM-judge labels for an evenly spread sample of ``test``: (sample indices, labels, turns/s, unusable)."""
    from afterword.llm import LLMClient

    from .llm_judge import LLMJudge

    picks = sorted({int(i) for i in np.linspace(0, len(test) - 1, num=min(limit, len(test)))})
    client = LLMClient(endpoint, model or _first_model(endpoint))
    judge = LLMJudge(client)
    preds, unusable, n_judged = [], 0, 0
    t0 = time.perf_counter()
    try:
        for i in picks:
            ex = test[i]
            msgs = ex.conv.messages
            resp = next((k for k in range(ex.index - 1, -1, -1) if msgs[k].role == "assistant"), None)
            if resp is None:
                preds.append(1)
                continue
            conv = _with_ids(msgs[: ex.index + 1], "llm")
            j = judge.judge_message(conv, conv.messages[resp].id or "")
            n_judged += 1
            if j is None:
                unusable += 1
                preds.append(1)
            else:
                preds.append(_LABEL_INDEX[j.label])
    finally:
        client.close()
    return picks, preds, n_judged / max(time.perf_counter() - t0, 1e-9), unusable


def _first_model(endpoint: str) -> str:
    """The first model the endpoint lists (``/v1/models``), or ``local``."""
    import httpx

    url = endpoint.rstrip("/")
    url = url if url.endswith("/v1") else url + "/v1"
    try:
        data = httpx.get(f"{url}/models", timeout=10).json().get("data") or []
        return str(data[0]["id"]) if data else "local"
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
        return "local"


def _default_train(files: Sequence[str], fmt: str) -> list[str]:
    if fmt != "asap":
        raise ValueError("uss-format benchmarks need train_files for the trained baselines")
    out = []
    for f in files:
        p = Path(f)
        valid = p.with_name(p.name.replace("test_", "valid_"))
        if valid == p or not valid.exists():
            raise ValueError(f"no ASAP valid split beside {p}; pass train_files")
        out.append(str(valid))
    return out


def run_bench(
    format: str,  # noqa: A002 - the CLI's own word
    files: Sequence[str | Path],
    train_files: Sequence[str | Path] | None = None,
    endpoint: str | None = None,
    *,
    config: JudgeConfig | None = None,
    llm_model: str | None = None,
    llm_limit: int = 200,
) -> dict:
    """Judge every rated reaction in ``files``; return afterword's metrics with the baselines nested.

    ``format`` is ``"asap"`` or ``"uss"``; ``train_files`` (either format)
    train the TF-IDF baseline and set the majority class. With ``endpoint``
    (an OpenAI-compatible URL; ``llm_model`` defaults to the first model it
    lists), the LLM judge runs too, on ``llm_limit`` evenly spread examples.
    With the default head, the shipped ``lr`` head runs too (``baselines.afterword_head_lr``).
    """
    if format not in ("asap", "uss"):
        raise ValueError(f"format must be 'asap' or 'uss', not {format!r}")
    files = [str(f) for f in files]
    test = load_examples(files, format, need_response=(format == "uss"))
    if not test:
        raise ValueError("no rated examples in the given files")
    train_paths = [str(f) for f in train_files] if train_files else _default_train(files, format)
    train = load_examples(train_paths, need_response=True)
    y = [e.label for e in test]
    cfg = (config or JudgeConfig()).model_copy(update={"lookahead_turns": 0})
    judge = HindsightJudge(cfg)

    preds, tps = _afterword(test, judge)
    result: dict = metrics(y, preds, tps)
    majority = int(np.bincount([e.label for e in train], minlength=3).argmax())
    t0 = time.perf_counter()
    maj = [majority] * len(test)
    baselines = {"majority": metrics(y, maj, len(test) / max(time.perf_counter() - t0, 1e-9))}
    baselines["lexicon"] = metrics(y, *_lexicon(test))
    baselines["tfidf_lr"] = metrics(y, *_tfidf_lr(train, test))
    if cfg.model_path in (None, "finetuned"):
        # The other shipped head, side by side: the faster, less accurate choice (``--head lr``).
        baselines["afterword_head_lr"] = metrics(
            y, *_afterword(test, HindsightJudge(cfg.model_copy(update={"model_path": "lr"})))
        )
    if endpoint:
        picks, llm_preds, llm_tps, unusable = _llm_judge(test, endpoint, llm_model, llm_limit)
        ys = [y[i] for i in picks]
        baselines["llm_judge"] = {
            **metrics(ys, llm_preds, llm_tps),
            "n": len(picks),
            "unusable": unusable,
            "afterword_same_sample": metrics(ys, [preds[i] for i in picks], tps),
        }
    result["baselines"] = baselines
    return result
