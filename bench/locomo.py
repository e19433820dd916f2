"""LoCoMo evidence retrieval: recall@1/5/10 and latency, hybrid vs BM25-only vs dense-only.

python bench/locomo.py /work/shared/data/locomo/locomo_dev7.json [--json] [--heldout]

--heldout adds the generalisation check of the hybrid's fitted weights: each sample scored with weights fitted
on the other samples (leave one out), and the samples split in two halves, each scored with the other's weights.

The hybrid runs on the configured recall encoder (AFTERWORD_RECALL_ENCODER; by default the fine-tuned one
shipped in afterword/memory/assets), and, as one more baseline, on the general MiniLM in the same pass. When
the encoder was trained on the file's samples (the shipped one was trained on locomo_dev7.json) the hybrid's
figures are in-sample for it: the script says so and prints the held-out figure recorded by
scripts/train_recall_encoder.py. With a recall reranker (AFTERWORD_RECALL_RERANKER=PATH; none ships) the hybrid
is reranked, and the hybrid without it runs beside it; its held-out figure is scripts/train_recall_reranker.py's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from afterword.memory.bench import run_locomo_bench, run_locomo_heldout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path, help="A LoCoMo JSON file (list of samples).")
    ap.add_argument("--samples", type=int, default=None, help="Only the first N samples.")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "locomo.json")
    ap.add_argument("--json", action="store_true", help="Print the result as one JSON line.")
    ap.add_argument("--heldout", action="store_true", help="Also run the held-out check of the fitted weights.")
    args = ap.parse_args()
    t0 = time.perf_counter()
    res = run_locomo_bench(args.path, limit_samples=args.samples)
    if args.heldout:
        # Refitting weights over an encoder trained on these very samples checks nothing: then the check runs on
        # the general MiniLM's vectors (the encoder's own held-out figure is its training script's).
        enc = "general" if res["encoder"]["trained_on_these_samples"] else None
        res["heldout"] = run_locomo_heldout(args.path, limit_samples=args.samples, encoder=enc)
    res["wall_seconds"] = round(time.perf_counter() - t0, 1)
    res["command"] = " ".join(["python", *sys.argv])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    if args.json:
        print(json.dumps(res))
        return
    print(f"LoCoMo evidence retrieval: {res['samples']} samples, {res['turns']} turns, {res['questions']} questions")
    names = {"hybrid_general": "hybrid, general MiniLM", "hybrid_no_rerank": "hybrid, no reranker"}
    rows = [("hybrid (afterword)", res)] + [(names.get(k, f"{k}-only"), v) for k, v in res["baselines"].items()]
    print(f"{'method':24s} {'R@1':>6s} {'R@5':>6s} {'R@10':>6s} {'p50 ms':>8s} {'p95 ms':>8s} {'search p95':>10s}")
    for name, r in rows:
        print(
            f"{name:24s} {r['recall_at_1']:6.3f} {r['recall_at_5']:6.3f} {r['recall_at_10']:6.3f} "
            f"{r['p50_ms']:8.1f} {r['p95_ms']:8.1f} {r['search_p95_ms']:10.1f}"
        )
    print("recall@5 by category (hybrid):")
    for c, v in res["by_category"].items():
        print(f"  {c:12s} n={v['n']:4d}  R@5={v['recall_at_5']:.3f}")
    enc = res["encoder"]
    print(f"recall encoder: {enc['name']}" + (f" ({enc['version']})" if enc.get("version") else ""))
    if enc["trained_on_these_samples"]:
        held = enc["heldout_recall_at_5"]
        print(
            f"  NOTE: it was trained on {len(enc['trained_on_these_samples'])} of these samples, so the hybrid's "
            "figures above are in-sample for it. Held out (scripts/train_recall_encoder.py: encoder and weights "
            f"never saw the ranked sample): R@5 {held.get('tuned', float('nan')):.3f}, against "
            f"{held.get('general', float('nan')):.3f} for the general MiniLM in the same protocol."
        )
    rr = res.get("reranker")
    print(f"reranker: {rr['name']}" + (f" ({rr['version']})" if rr.get("version") else "") if rr else "reranker: off")
    if rr and rr["trained_on_these_samples"]:
        held = rr["heldout_recall_at_5"]
        print(
            f"  NOTE: it was trained on {len(rr['trained_on_these_samples'])} of these samples too. Held out "
            f"(scripts/train_recall_reranker.py): reranked R@5 {held.get('reranked', float('nan')):.3f}, its "
            f"hybrid {held.get('hybrid', float('nan')):.3f}."
        )
    if "heldout" in res:
        h = res["heldout"]
        lo = h["leave_one_out"]
        print(f"held-out check of the blend weights, on the vectors of: {h['encoder']}")
        print(
            f"held out, leave one sample out: R@1 {lo['recall_at_1']:.3f} R@5 {lo['recall_at_5']:.3f} "
            f"R@10 {lo['recall_at_10']:.3f} (shipped weights, all samples: R@5 {h['shipped']['recall_at_5']:.3f})"
        )
        for part in h["halves"]:
            print(
                f"held out, tuned on {len(part['tuned_on'])} samples, checked on {len(part['checked_on'])}: "
                f"R@5 {part['held_out']['recall_at_5']:.3f} "
                f"(shipped weights on the same: {part['shipped']['recall_at_5']:.3f})"
            )
        print(f"weights fitted on all samples: {h['fitted_on_all']}")
    print("(latency on a 2-core machine shared with other engineers' jobs; p*_ms include embedding the question)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
