"""Exact and near-duplicate removal.

Exact duplicates share a key built from the whitespace- and case-normalised
text of every field. Near duplicates are found on the text of the last
prompt turn plus the response(s), either with MiniLM embeddings (cosine at
or above the threshold; the default, since the embedder ships with
afterword) or with MinHash over word 3-shingles (estimated Jaccard at or
above the threshold; no model at all). The first example of each cluster,
in input order, is kept.

>>> from afterword.datasets.formats import Example
>>> p = [{"role": "user", "content": "hi"}]
>>> kept, stats = dedupe([Example("sft", p, "Hello!"), Example("sft", p, "hello! "), Example("sft", p, "Bye")],
...                      near_dup_threshold=None)
>>> [e.completion for e in kept], stats["exact"]
(['Hello!', 'Bye'], 1)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from afterword.datasets.formats import Example

__all__ = ["exact_key", "dedupe", "minhash_signatures", "near_duplicate_mask"]


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def exact_key(ex: Example) -> str:
    h = hashlib.sha256()
    for t in ex.texts():
        h.update(_norm(t).encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()


def _near_text(ex: Example) -> str:
    last = ex.prompt[-1]["content"] if ex.prompt else ""
    return " \n ".join([last, *[t for t in (ex.completion, ex.chosen, ex.rejected) if t is not None]])


_P = (1 << 61) - 1


def minhash_signatures(texts: Sequence[str], num_perm: int = 64, seed: int = 1) -> np.ndarray:
    """MinHash signatures over word 3-shingles: shape (len(texts), num_perm)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, _P, num_perm, dtype=np.uint64)
    b = rng.integers(0, _P, num_perm, dtype=np.uint64)
    sigs = np.full((len(texts), num_perm), np.iinfo(np.uint64).max, dtype=np.uint64)
    for i, t in enumerate(texts):
        words = re.findall(r"\w+", t.lower())
        shingles = {" ".join(words[j : j + 3]) for j in range(max(1, len(words) - 2))}
        hs = np.array(
            [int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") for s in shingles],
            dtype=np.uint64,
        )
        # (a*h + b) mod p with wrap-around multiplication: a universal-enough family for estimation.
        with np.errstate(over="ignore"):
            vals = (hs[:, None] * a[None, :] + b[None, :]) % np.uint64(_P)
        sigs[i] = vals.min(axis=0)
    return sigs


def near_duplicate_mask(texts: Sequence[str], threshold: float, method: str = "embedding") -> np.ndarray:
    """True for each text that nearly duplicates an earlier kept one."""
    n = len(texts)
    drop = np.zeros(n, dtype=bool)
    if n < 2:
        return drop
    if method == "embedding":
        from afterword.embed import get_embedder

        vecs = get_embedder().encode(list(texts))
        for start in range(0, n, 1024):
            block = vecs[start : start + 1024] @ vecs.T  # cosine: unit vectors
            for r in range(block.shape[0]):
                i = start + r
                if drop[i]:
                    continue
                later = np.nonzero(block[r, i + 1 :] >= threshold)[0] + i + 1
                drop[later] = True
    elif method == "minhash":
        sigs = minhash_signatures(texts)
        for i in range(n):
            if drop[i]:
                continue
            sim = (sigs[i + 1 :] == sigs[i]).mean(axis=1)
            drop[np.nonzero(sim >= threshold)[0] + i + 1] = True
    else:
        raise ValueError(f"unknown near-duplicate method {method!r}; use 'embedding' or 'minhash'")
    return drop


def dedupe(
    examples: Sequence[Example], *, near_dup_threshold: float | None = 0.95, method: str = "embedding"
) -> tuple[list[Example], dict[str, Any]]:
    """Drop exact then near duplicates; returns the kept examples and counts."""
    seen: set[str] = set()
    kept: list[Example] = []
    for ex in examples:
        k = exact_key(ex)
        if k not in seen:
            seen.add(k)
            kept.append(ex)
    n_exact = len(examples) - len(kept)
    n_near = 0
    if near_dup_threshold is not None and len(kept) > 1:
        mask = near_duplicate_mask([_near_text(e) for e in kept], near_dup_threshold, method)
        n_near = int(mask.sum())
        kept = [e for e, d in zip(kept, mask, strict=True) if not d]
    return kept, {"exact": n_exact, "near": n_near, "method": method, "threshold": near_dup_threshold}
