"""Recall in injection: how often the cosine gate lets earlier turns in, for questions that have an answer in the
user's history (LoCoMo) and for requests that have none (the repeat-mistake benchmark's unrelated requests and
trivia questions, asked as each LoCoMo user).

python bench/recall_gate.py ../shared/data/locomo/locomo_dev7.json [--k 2] [--gates 0.35 0.4 0.45 0.5 0.55 0.6]

For each gate: the share of LoCoMo questions that get at least one recalled turn injected, the share that get one of
their evidence turns among the k, and the false-injection rate on the unrelated requests.
``MemoryConfig.recall_min_cosine`` is the gate (default 0.45); recall in injection is off unless ``recall_turns`` > 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from afterword.importers.locomo import load_qa, parse
from afterword.memory import MemoryConfig
from afterword.memory.bench import normalise_evidence
from afterword.memory.bench_repeat import ITEMS, UNRELATED
from afterword.memory.episodic import drop, recall
from afterword.store import Store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path, help="A LoCoMo JSON file.")
    ap.add_argument("--k", type=int, default=2, help="Turns recalled per request (MemoryConfig.recall_turns).")
    ap.add_argument("--gates", type=float, nargs="+", default=[0.35, 0.4, 0.45, 0.5, 0.55, 0.6])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "recall_gate.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    unrelated = list(UNRELATED) + [item[0] for item in ITEMS]
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'locomo.db'}")
        store.import_conversations([c for c in parse(args.path) if not isinstance(c, Exception)])
        qa = [q for q in load_qa(args.path) if normalise_evidence(q.get("evidence", []))]
        own, own_ev = [], []
        for q in qa:
            hits = recall(store, q["question"], user_id=q["sample_id"], k=args.k)
            ev = set(normalise_evidence(q["evidence"]))
            own.append([h.cosine for h in hits])
            own_ev.append([h.metadata.get("dia_id") in ev for h in hits])
        far = []
        for user in sorted({q["sample_id"] for q in qa}):
            for text in unrelated:
                far.append([h.cosine for h in recall(store, text, user_id=user, k=args.k)])
        drop(store)
        store.close()
    rows = []
    for g in args.gates:
        injected = [any(c >= g for c in cs) for cs in own]
        with_ev = [any(c >= g and e for c, e in zip(cs, es, strict=True)) for cs, es in zip(own, own_ev, strict=True)]
        rows.append(
            {
                "gate": g,
                "answerable_injected": round(float(np.mean(injected)), 3),
                "answerable_evidence_injected": round(float(np.mean(with_ev)), 3),
                "unrelated_injected": round(float(np.mean([any(c >= g for c in cs) for cs in far])), 3),
            }
        )
    res = {
        "default_gate": MemoryConfig().recall_min_cosine,
        "k": args.k,
        "answerable": len(own),
        "unrelated": len(far),
        "gates": rows,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "command": " ".join(["python", *sys.argv]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(f"{len(own)} answerable LoCoMo questions, {len(far)} unrelated requests, k = {args.k}")
    print(f"{'gate':>6s} {'answerable: any turn':>21s} {'an evidence turn':>17s} {'unrelated: any turn':>20s}")
    for r in rows:
        mark = "  (default)" if r["gate"] == res["default_gate"] else ""
        print(
            f"{r['gate']:6.2f} {r['answerable_injected']:21.3f} {r['answerable_evidence_injected']:17.3f} "
            f"{r['unrelated_injected']:20.3f}{mark}"
        )
    print(json.dumps(res))


if __name__ == "__main__":
    main()
