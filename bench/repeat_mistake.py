"""Repeat-mistake benchmark with the real local model (see afterword.memory.bench_repeat).

python bench/repeat_mistake.py                 # starts SmolLM2-135M-Instruct via llama-cpp
python bench/repeat_mistake.py --endpoint URL --model NAME
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from afterword.memory.bench_repeat import ITEMS, run_repeat_mistake_bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint", default=None, help="An OpenAI-compatible /v1 URL (default: start the local model).")
    ap.add_argument("--model", default=None)
    ap.add_argument("--items", type=int, default=None, help="Only the first N questions (CPU time).")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "repeat_mistake.json")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    server = None
    if args.endpoint is None:
        from afterword.llm import serve_local_model

        server = serve_local_model()
        base_url, model = server.base_url, server.model
    else:
        base_url, model = args.endpoint, args.model or "local"
    t0 = time.perf_counter()
    try:
        res = run_repeat_mistake_bench(
            base_url, model, items=ITEMS[: args.items], log=(lambda s: None) if args.json else print
        )
    finally:
        if server is not None:
            server.stop()
    res["wall_seconds"] = round(time.perf_counter() - t0, 1)
    res["command"] = " ".join(["python", *sys.argv])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2, ensure_ascii=False))
    if args.json:
        print(json.dumps({k: v for k, v in res.items() if k not in ("session1", "session2", "unrelated")}))
        return
    n = res["corrected"]
    print(f"model {res['model']}: {n}/{res['items']} questions answered wrongly in session 1 and corrected")
    print(
        f"mistake recurs on the paraphrase, without afterword: {res['recurred_without']}/{n} "
        f"= {res['recur_rate_without']}"
    )
    print(
        f"mistake recurs on the paraphrase, with afterword memory: {res['recurred_with']}/{n} "
        f"= {res['recur_rate_with']}"
    )
    print(
        f"the right lesson was injected for {res['lesson_injected_rate']} of the paraphrases "
        f"(other lessons beside it: {res['other_lessons_injected']})"
    )
    print(
        f"near misses (paraphrases of the {res['near_miss']} questions answered right in session 1): "
        f"something injected into {res['near_miss_injected']}, answer broken by memory {res['near_miss_broken']}, "
        f"fixed {res['near_miss_fixed']}"
    )
    print(f"false-injection rate on {len(res['unrelated'])} unrelated requests: {res['false_injection_rate']}")
    print(f"injection for another user asking the same paraphrases: {res['other_user_injection_rate']}")
    print(f"{res['wall_seconds']} s; load average (1, 5, 15 min) {res['load_avg_start']} -> {res['load_avg_end']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
