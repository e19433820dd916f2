"""Memory retrieval latency at 100k and 1M memories (see afterword.memory.bench_scale for the method).

python bench/memory_scale.py /work/shared/data/locomo/locomo_dev7.json [--sizes 100000 1000000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from afterword.importers.locomo import parse
from afterword.memory.bench_scale import REFERENCE_P95_MS, run_scale_bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("texts", type=Path, help="A LoCoMo JSON file whose turns are the real texts to embed.")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--pool", type=int, default=2000, help="Real texts embedded to build the corpus from.")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--sqlite-vec-max", type=int, default=100_000, help="Largest size to run sqlite-vec at.")
    ap.add_argument("--store-max", type=int, default=1_000_000, help="Largest size to run the store path at.")
    ap.add_argument("--store-index", default="auto", choices=["auto", "numpy"], help="Vector index of the store path.")
    ap.add_argument("--numpy-ivf-max", type=int, default=1_000_000, help="Largest size to build the numpy IVF at.")
    ap.add_argument("--exact-queries", type=int, default=30, help="Queries also run with exact candidates (recall).")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "memory_scale.json")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    texts = [m.content for c in parse(args.texts) if not isinstance(c, Exception) for m in c.messages]
    t0 = time.perf_counter()
    res = run_scale_bench(
        texts,
        args.sizes,
        pool=args.pool,
        queries=args.queries,
        nprobe=args.nprobe,
        sqlite_vec_max=args.sqlite_vec_max,
        store_max=args.store_max,
        store_index=args.store_index,
        exact_queries=args.exact_queries,
        numpy_ivf_max=args.numpy_ivf_max,
        log=(lambda s: None) if args.json else print,
    )
    res["wall_seconds"] = round(time.perf_counter() - t0, 1)
    res["command"] = " ".join(["python", *sys.argv])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    if args.json:
        print(json.dumps(res))
        return
    cols = ("p50_ms", "p95_ms", "cpu_p50_ms", "cpu_p95_ms")
    print(f"\n{'memories':>10s} {'path':14s} {'p50 ms':>8s} {'p95 ms':>8s} {'cpu p50':>8s} {'cpu p95':>8s}  notes")
    for n, r in res["sizes"].items():
        for name, v in r.items():
            notes = {k: x for k, x in v.items() if k not in cols}
            nums = " ".join(f"{v.get(c, float('nan')):8.2f}" for c in cols)
            print(f"{int(n):>10,d} {name:14s} {nums}  {notes}")
    print(f"query embedding (not included above): {res['query_embedding']}")
    print("reference search p95 (their reports): " + ", ".join(f"{k} {v:.0f} ms" for k, v in REFERENCE_P95_MS.items()))
    print("(2-core machine shared with other engineers' jobs while this ran)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
