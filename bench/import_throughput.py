"""Import throughput: a generated OpenAI-format JSONL into a fresh SQLite store.

Generates ``--messages`` messages (default 100,000) of varied text in
conversations of 2-12 turns, imports them with ``run_import`` into a new
SQLite file, prints messages/s, then imports the same file again and prints
how many rows that added (it must be 0). Writes
``bench/results/import_throughput.json``.

    python bench/import_throughput.py [--messages 100000] [--workdir DIR] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from afterword.importers import run_import
from afterword.store import Store

_SUBJECTS = [
    "my pandas groupby",
    "the SQL join",
    "this regex",
    "a risotto for four",
    "the flight to Lisbon",
    "my quarterly tax estimate",
    "the derivative of x^2 sin x",
    "our billing webhook",
    "the Docker build",
    "a bread dough that will not rise",
    "the train from Milan to Zurich",
    "the asyncio event loop",
    "a cover letter",
    "the React useEffect hook",
    "a 10k training plan",
]
_ASKS = [
    "Can you help me with {s}?",
    "Why does {s} keep failing?",
    "What is the best way to handle {s}?",
    "I'm stuck on {s}, any ideas?",
    "Explain {s} like I'm new to this.",
    "Is there a faster approach to {s}?",
    "Quick question about {s}.",
]
_DETAILS = [
    "I'm on Python 3.{n} and the error mentions line {k}.",
    "It worked yesterday, but now it takes {k} seconds.",
    "We have about {k} rows and {n} columns.",
    "I need it for {n} people by Friday.",
    "The budget is around {k} euros.",
    "My teacher says the answer should be {k}.",
    "",
]
_ANSWERS = [
    "Start by checking {s}: most of the time the issue is an off-by-one in the index.",
    "For {s}, I'd split the work into two steps and measure each one separately.",
    "The simplest fix for {s} is to cache the intermediate result; that cut the time by {k}% in similar cases.",
    "Here is a sketch for {s}: read the input, validate it, then transform it in one pass.",
    "With {s}, remember that the default changed in version {n}; pass it explicitly.",
    "Try this for {s}: use a dictionary keyed by id instead of scanning the list each time.",
]
_FOLLOW = [
    "Thanks, that worked!",
    "That's not what I asked.",
    "Still failing after your suggestion.",
    "Can you show the code?",
    "What about the edge case with {k} items?",
    "ok",
    "Perfect, thank you.",
]


def generate(path: Path, n_messages: int, seed: int = 7) -> int:
    """Write conversations until ``n_messages`` messages; returns the number of conversations."""
    rnd = random.Random(seed)
    t0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    written = convs = 0
    with open(path, "w", encoding="utf-8") as fh:
        while written < n_messages:
            s = rnd.choice(_SUBJECTS)
            n_turns = min(rnd.randint(1, 6) * 2, n_messages - written)
            start = t0 + timedelta(minutes=convs * 7 + rnd.randint(0, 5))
            msgs = []
            for i in range(n_turns):
                k, n = rnd.randint(2, 9999), rnd.randint(3, 12)
                if i == 0:
                    text = rnd.choice(_ASKS).format(s=s) + " " + rnd.choice(_DETAILS).format(k=k, n=n)
                    role = "user"
                elif i % 2:
                    text = rnd.choice(_ANSWERS).format(s=s, k=k % 90, n=n)
                    role = "assistant"
                else:
                    text = rnd.choice(_FOLLOW).format(k=k)
                    role = "user"
                msgs.append(
                    {
                        "role": role,
                        "content": text.strip(),
                        "timestamp": (start + timedelta(seconds=20 * i)).isoformat(),
                    }
                )
            rec = {
                "user": f"user-{rnd.randint(1, 500)}",
                "session_id": f"s-{convs}",
                "timestamp": start.isoformat(),
                "model": "gpt-4o-mini",
                "messages": msgs,
            }
            if n_turns >= 2 and rnd.random() < 0.2:
                rec["feedback"] = [{"thumbs": rnd.choice([1, -1])}]
            fh.write(json.dumps(rec) + "\n")
            written += n_turns
            convs += 1
    return convs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--workdir", type=Path, default=None, help="where the JSONL and the db go (default: a temp dir)")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of the first import")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "import_throughput.json")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="aw-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    data, db = work / "chat.jsonl", work / "bench.db"
    for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        p.unlink(missing_ok=True)
    n_convs = generate(data, args.messages)
    size_mb = data.stat().st_size / 1e6
    print(f"generated {args.messages} messages in {n_convs} conversations ({size_mb:.1f} MB) at {data}")

    store = Store(str(db))
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0, c0 = time.perf_counter(), time.process_time()
    first = run_import(store, data, "openai")
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    if prof is not None:
        import pstats

        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
    rate = first.messages / elapsed
    print(f"first import: {first.messages} messages, {first.conversations} conversations in {elapsed:.2f}s")
    print(f"  -> {rate:,.0f} messages/s (process CPU {cpu:.2f}s, both threads; load average {os.getloadavg()[0]:.1f})")

    t0 = time.perf_counter()
    again = run_import(store, data, "openai")
    elapsed2 = time.perf_counter() - t0
    added = again.messages + again.conversations + again.feedback
    print(f"re-import: added {added} rows ({again.messages_present} messages already present) in {elapsed2:.2f}s")
    stats = store.stats()
    store.close()

    result = {
        "messages": args.messages,
        "conversations": n_convs,
        "file_mb": round(size_mb, 2),
        "first_import_s": round(elapsed, 3),
        "messages_per_s": round(rate),
        "first_import_cpu_s": round(cpu, 3),
        "reimport_s": round(elapsed2, 3),
        "reimport_rows_added": added,
        "store_messages": stats["messages"],
        "target_messages_per_s": 50_000,
        "meets_target": rate >= 50_000 and added == 0,
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "when_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if added != 0:
        sys.exit("re-import added rows: the import is not idempotent")


if __name__ == "__main__":
    main()
