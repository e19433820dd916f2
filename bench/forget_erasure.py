"""Forgetting a user: is their text gone from the database *file*, and what does making sure cost?

python bench/forget_erasure.py [--users 100] [--conversations 20] [--turns 10] [--memories 2000]

Builds a SQLite store of synthetic conversations (each user's text carries unique marker tokens) and memories
with vectors, then forgets users two ways, side by side in the same run:

- ``rows only`` (the baseline, ``forget_user(..., erase=False)``): the rows and index entries are deleted in
  one transaction (with ``secure_delete`` on);
- ``erase`` (the default, what ``afterword forget`` runs): the same, then FTS ``optimize``, ``VACUUM`` and a WAL
  checkpoint.

For each, the seconds taken and how many times the forgotten user's id and marker token still occur in the raw
bytes of the ``.db`` and ``-wal`` files once the store is closed (FTS5 stores terms prefix-compressed, so the
token is searched by a prefix that no other user's text contains).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from afterword.memory import add_memories
from afterword.records import Conversation, Memory, Message
from afterword.store import Store
from afterword.store.search import forget_user, sync_fulltext


def _build(path: Path, users: int, conversations: int, turns: int, memories: int) -> None:
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(5000)]
    store = Store(f"sqlite:///{path}")
    batch: list[Conversation] = []
    for u in range(users):
        for c in range(conversations):
            msgs = [
                Message(
                    role="user" if k % 2 == 0 else "assistant",
                    content=" ".join(rng.choice(words, 40)) + f" zqmark{u:04d}x{c}k{k}",
                )
                for k in range(turns)
            ]
            batch.append(Conversation(user_id=f"person{u:04d}", external_id=f"u{u}c{c}", source="bench", messages=msgs))
            if len(batch) == 500:
                store.import_conversations(batch)
                batch = []
    if batch:
        store.import_conversations(batch)
    sync_fulltext(store)
    mems = [
        Memory(kind="fact", scope="user", user_id=f"person{i % users:04d}", text=f"prefers w{i} zqmark{i % users:04d}m")
        for i in range(memories)
    ]
    vecs = rng.normal(size=(memories, 384)).astype(np.float32)
    add_memories(store, mems, vectors=vecs / np.linalg.norm(vecs, axis=1, keepdims=True))
    store.close()


def _leftovers(path: Path, user: int) -> dict[str, int]:
    data = b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())
    return {"user_id": data.count(f"person{user:04d}".encode()), "marker": data.count(f"zqmark{user:04d}".encode())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--conversations", type=int, default=20, help="Per user.")
    ap.add_argument("--turns", type=int, default=10, help="Per conversation.")
    ap.add_argument("--memories", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "forget_erasure.json")
    args = ap.parse_args()
    out: dict[str, object] = {"config": vars(args) | {"out": str(args.out)}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "forget.db"
        t0 = time.perf_counter()
        _build(path, args.users, args.conversations, args.turns, args.memories)
        out["build_s"] = round(time.perf_counter() - t0, 1)
        out["messages"] = args.users * args.conversations * args.turns
        out["db_mb"] = round(path.stat().st_size / 1e6, 1)
        before = _leftovers(path, 0)
        arms = {}
        for user, (name, erase) in enumerate([("rows only", False), ("erase", True)]):
            store = Store(f"sqlite:///{path}")
            t1 = time.perf_counter()
            res = forget_user(store, f"person{user:04d}", erase=erase)
            seconds = time.perf_counter() - t1
            store.close()
            arms[name] = {
                "seconds": round(seconds, 3),
                "rows_removed": sum(res["removed"].values()),
                "erased": res["erased"],
                "left_in_file": _leftovers(path, user),
            }
        out["arms"] = arms
        out["before_forget_occurrences"] = before
    print(f"{out['messages']:,} messages, {args.memories:,} memories, {out['db_mb']} MB (built in {out['build_s']} s)")
    print(f"occurrences of one user's id / marker in the file before forget: {before['user_id']} / {before['marker']}")
    print(f"{'arm':<10} {'seconds':>8} {'rows':>6} {'erased':>7} {'id left':>8} {'marker left':>12}")
    for name, a in arms.items():
        left = a["left_in_file"]
        print(
            f"{name:<10} {a['seconds']:>8} {a['rows_removed']:>6} {a['erased']!s:>7} "
            f"{left['user_id']:>8} {left['marker']:>12}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
