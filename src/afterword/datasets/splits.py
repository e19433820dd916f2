"""Train/test splits that never leak a user or a conversation across the line.

Examples are first joined into groups: two examples share a group when they
share a user or a conversation (a DPO pair built from two users' responses
joins both users). Whole groups then go to one side:

- ``user``: groups are hashed (stable across runs and machines) and the
  first ``test_fraction`` of them, by hash, form the test side;
- ``time``: the latest groups by their newest example form the test side,
  so the test set is "the future" and no one in it was seen in training;
- ``none``: everything is train.

>>> from afterword.datasets.formats import Example
>>> exs = [Example("sft", [], message_ids=[f"m{i}"], user_ids=[u], conversation_ids=[f"c{i}"])
...        for i, u in enumerate("aabbcd")]
>>> s = assign_splits(exs, "user", 0.5)
>>> {e.user_ids[0] for e in exs if e.split == "test"} & {e.user_ids[0] for e in exs if e.split == "train"}
set()
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from afterword.datasets.formats import Example
from afterword.records import stable_id

__all__ = ["SPLITS", "group_examples", "assign_splits", "assign_pair_splits", "check_no_leak"]

SPLITS = ("user", "time", "none")


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _keys(ex: Example) -> list[str]:
    keys = [f"u:{u}" for u in ex.user_ids if u]
    keys += [f"c:{c}" for c in ex.conversation_ids if c]
    return keys or [f"m:{ex.message_ids[0] if ex.message_ids else id(ex)}"]


def group_examples(examples: Sequence[Example]) -> list[str]:
    """A group key per example: examples sharing a user or a conversation share a key."""
    uf = _UnionFind()
    for ex in examples:
        ks = _keys(ex)
        for k in ks[1:]:
            uf.union(ks[0], k)
    return [uf.find(_keys(ex)[0]) for ex in examples]


def assign_splits(
    examples: Sequence[Example], by: str = "user", test_fraction: float = 0.1, seed: int = 0
) -> dict[str, Any]:
    """Set ``ex.split`` to ``train`` or ``test`` in place; returns split counts and group counts."""
    if by not in SPLITS:
        raise ValueError(f"unknown split {by!r}; known: {', '.join(SPLITS)}")
    groups = group_examples(examples)
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    test: set[str] = set()
    if by != "none" and test_fraction > 0 and len(members) > 1:
        target = max(1, round(test_fraction * len(examples)))
        if by == "user":
            order = sorted(members, key=lambda g: stable_id("split", seed, g))
        else:
            floor = datetime.min.replace(tzinfo=UTC)

            def newest(g: str) -> datetime:
                return max((examples[i].time_utc or floor) for i in members[g])

            order = sorted(members, key=lambda g: (newest(g), g), reverse=True)
        n = 0
        for g in order:
            if n >= target or len(test) >= len(members) - 1:  # always keep a train side
                break
            test.add(g)
            n += len(members[g])
    for ex, g in zip(examples, groups, strict=True):
        ex.split = "test" if g in test else "train"
    n_test = sum(1 for ex in examples if ex.split == "test")
    return {"by": by, "train": len(examples) - n_test, "test": n_test, "groups": len(members), "test_groups": len(test)}


def _side_key(ex: Example, which: int) -> tuple[str, str]:
    """(user, conversation) of the chosen (0) or rejected (-1) response of a pair."""
    user = (ex.user_ids[which] if ex.user_ids else None) or ""
    conv = ex.conversation_ids[which] if ex.conversation_ids else ""
    return user, conv


def assign_pair_splits(
    pairs: Sequence[Example], by: str = "user", test_fraction: float = 0.1, seed: int = 0
) -> dict[str, Any]:
    """Split preference pairs by their responses' users and conversations, not by whole pairs.

    Grouping whole pairs would chain every user who ever asked a similar question into one
    group; instead each response is placed as :func:`assign_splits` would place it, and a
    pair whose two responses land on different sides is marked ``drop``.
    """
    sides: dict[tuple[str, str], Example] = {}
    for ex in pairs:
        for which in (0, -1):
            key = _side_key(ex, which)
            if key not in sides:
                sides[key] = Example(
                    ex.kind,
                    [],
                    message_ids=[f"{key}"],
                    user_ids=[key[0] or None],
                    conversation_ids=[key[1]] if key[1] else [],
                    time_utc=ex.time_utc,
                )
            elif ex.time_utc and (sides[key].time_utc is None or ex.time_utc > sides[key].time_utc):  # type: ignore[operator]
                sides[key].time_utc = ex.time_utc
    stats = assign_splits(list(sides.values()), by, test_fraction, seed)
    dropped = 0
    for ex in pairs:
        got = {sides[_side_key(ex, w)].split for w in (0, -1)}
        ex.split = got.pop() if len(got) == 1 else "drop"
        dropped += ex.split == "drop"
    n_test = sum(1 for ex in pairs if ex.split == "test")
    return {**stats, "train": len(pairs) - n_test - dropped, "test": n_test, "straddling_pairs_dropped": dropped}


def check_no_leak(examples: Sequence[Example]) -> None:
    """Raise AssertionError when a user or conversation is on both sides."""
    sides: dict[str, set[str]] = defaultdict(set)
    for ex in examples:
        for k in _keys(ex):
            sides[k].add(ex.split)
    leaked = [k for k, s in sides.items() if len(s) > 1]
    if leaked:
        raise AssertionError(f"in both train and test: {leaked[:5]}")
