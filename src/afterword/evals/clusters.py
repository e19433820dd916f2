"""Failure clustering: what kinds of request the system keeps getting wrong.

Each failing request group (from :func:`afterword.evals.failures.mine_failures`
with ``min_count=1``) is embedded with MiniLM and clustered with scikit-learn's
HDBSCAN, which needs no cluster count and leaves outliers unclustered rather
than forcing them into a cluster. Each bad response is one point, so a
request that fails often weighs more; clusters nearer than
``merge_similarity`` (cosine of centroids) are merged, because exact repeats
would otherwise each form a cluster of their own. A cluster is named by its top TF-IDF terms
(its mean TF-IDF row over the failing requests and responses) and shown with
its most central requests. Its size is the number of bad responses, counted
per ISO week (the Monday that starts it), so a report can show a cluster
growing or fading.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from afterword.evals.failures import Failure, mine_failures
from afterword.records import stable_id
from afterword.store.store import Store

__all__ = ["FailureCluster", "ClusterResult", "cluster_failures", "week_of"]


def week_of(dt: datetime) -> str:
    """The ISO date of the Monday starting ``dt``'s week."""
    return (dt.date() - timedelta(days=dt.weekday())).isoformat()


@dataclass
class FailureCluster:
    id: str
    name: str
    terms: list[str]
    size: int  # bad responses
    failures: list[Failure]
    examples: list[str]  # the most central requests
    weekly: dict[str, int] = field(default_factory=dict)

    @property
    def message_ids(self) -> list[str]:
        return [m for f in self.failures for m in f.message_ids]

    def as_dict(self, with_failures: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "terms": self.terms,
            "size": self.size,
            "groups": len(self.failures),
            "examples": self.examples,
            "weekly": self.weekly,
        }
        if with_failures:
            d["failures"] = [f.as_dict() for f in self.failures]
        return d


@dataclass
class ClusterResult:
    clusters: list[FailureCluster]
    unclustered: list[Failure]

    def find(self, key: str) -> FailureCluster:
        """A cluster by id, by exact name, or by its 1-based rank."""
        for c in self.clusters:
            if key in (c.id, c.name):
                return c
        if key.isdigit() and 0 < int(key) <= len(self.clusters):
            return self.clusters[int(key) - 1]
        from afterword.errors import NotFoundError

        raise NotFoundError("cluster", key)

    def as_dict(self, with_failures: bool = False) -> dict[str, Any]:
        return {
            "clusters": [c.as_dict(with_failures) for c in self.clusters],
            "unclustered_groups": len(self.unclustered),
            "unclustered_size": sum(f.n_bad for f in self.unclustered),
        }


def _top_terms(docs: list[str], labels: np.ndarray, n_terms: int) -> dict[int, list[str]]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        vec = TfidfVectorizer(stop_words="english", ngram_range=(1, 2), min_df=1, sublinear_tf=True)
        x = vec.fit_transform(docs)
    except ValueError:  # only stop words
        return {}
    vocab = np.asarray(vec.get_feature_names_out())
    out: dict[int, list[str]] = {}
    for lab in sorted(set(labels.tolist()) - {-1}):
        mean = np.asarray(x[labels == lab].mean(axis=0)).ravel()
        top = [i for i in np.argsort(-mean) if mean[i] > 0]
        terms: list[str] = []
        for i in top:  # skip unigrams already inside a chosen bigram and vice versa
            term = str(vocab[i])
            if any(term in t or t in term for t in terms):
                continue
            terms.append(term)
            if len(terms) == n_terms:
                break
        out[lab] = terms
    return out


def _merge_close(points: np.ndarray, labels: np.ndarray, similarity: float) -> np.ndarray:
    """Merge clusters whose centroids are at least ``similarity`` apart (cosine), transitively.

    Repeats of one request sit at distance 0 and each would stay a cluster of its own.
    (HDBSCAN's ``cluster_selection_epsilon`` does this job but fails on such trees in
    scikit-learn 1.9.)"""
    labs = sorted(set(labels.tolist()) - {-1})
    if len(labs) < 2:
        return labels
    cents = np.stack([points[labels == k].mean(axis=0) for k in labs])
    cents /= np.clip(np.linalg.norm(cents, axis=1, keepdims=True), 1e-12, None)
    parent = list(range(len(labs)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    sims = cents @ cents.T
    for i in range(len(labs)):
        for j in range(i + 1, len(labs)):
            if sims[i, j] >= similarity:
                parent[root(j)] = root(i)
    remap = {k: labs[root(i)] for i, k in enumerate(labs)}
    return np.asarray([remap.get(int(x), -1) for x in labels])


def cluster_failures(
    store: Store | None = None,
    *,
    failures: list[Failure] | None = None,
    min_cluster_size: int = 2,
    merge_similarity: float = 0.75,
    n_terms: int = 4,
    n_examples: int = 3,
    **mine_kwargs: Any,
) -> ClusterResult:
    """Cluster failing request groups; pass ``failures`` or a store to mine them from."""
    if failures is None:
        if store is None:
            raise ValueError("cluster_failures needs a store or failures")
        mine_kwargs.setdefault("min_count", 1)
        failures = mine_failures(store, **mine_kwargs)
    if not failures:
        return ClusterResult([], [])
    from afterword.embed import get_embedder

    # One point per bad response (a request asked often weighs more), embedded once per group.
    gvecs = get_embedder().encode([f.prompt or f.responses[0] for f in failures])
    owner = np.repeat(np.arange(len(failures)), [f.n_bad for f in failures])
    points = gvecs[owner]
    if len(points) > max(2, min_cluster_size):
        from sklearn.cluster import HDBSCAN

        hdb = HDBSCAN(min_cluster_size=max(2, min_cluster_size), min_samples=1, copy=True)
        plabels = _merge_close(points, hdb.fit_predict(points), merge_similarity)
        # A group goes to the cluster most of its responses fell in.
        labels = np.asarray([np.bincount(plabels[owner == g] + 1).argmax() - 1 for g in range(len(failures))])
    else:  # too few to find density: one cluster if they are alike, else none
        alike = len(failures) > 1 and float(np.min(gvecs @ gvecs.T)) >= 0.6
        labels = np.zeros(len(failures), dtype=int) if alike else -np.ones(len(failures), dtype=int)
    vecs = gvecs
    docs = [f"{f.prompt} {' '.join(f.responses[:1])}" for f in failures]
    terms = _top_terms(docs, labels, n_terms)
    clusters = []
    for lab in sorted(set(labels.tolist()) - {-1}):
        idx = np.flatnonzero(labels == lab)
        centre = vecs[idx].mean(axis=0)
        central = idx[np.argsort(-(vecs[idx] @ centre))]
        members = [failures[i] for i in central]
        weekly = Counter(week_of(ts) for f in members for ts in f.times_utc)
        words = terms.get(lab) or [members[0].prompt[:40]]
        clusters.append(
            FailureCluster(
                id=stable_id("cluster", sorted(f.id for f in members), n=10),
                name=" / ".join(words[:3]),
                terms=words,
                size=sum(f.n_bad for f in members),
                failures=members,
                examples=[failures[i].prompt for i in central[:n_examples]],
                weekly=dict(sorted(weekly.items())),
            )
        )
    clusters.sort(key=lambda c: (-c.size, c.id))
    unclustered = [failures[i] for i in np.flatnonzero(labels == -1)]
    return ClusterResult(clusters, unclustered)
