"""Synthetic expansion against a real model: yield per filter and throughput, diversity strategy vs a fixed baseline.

    python bench/synth_expand.py --seeds bench/data/synth_seeds.jsonl --n 12
    python bench/synth_expand.py --seeds FILE --n 24 --endpoint http://host:8000/v1 --model M

Without --endpoint it starts the shipped SmolLM2-135M-Instruct (llama-cpp-python). Both arms run in the same
process on the same seeds: ``diverse`` (persona/style/difficulty rotation, temperature schedule, live
near-duplicate rejection) and ``baseline`` (one persona, one temperature, no live rejection). Figures: attempts,
LLM calls, drops per stage and reason, kept, yield, candidates/s, kept/s, and the diversity of what was
generated (mean pairwise cosine of candidate questions, lower = more diverse). Writes bench/results/synth_expand.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from afterword.embed import get_embedder
from afterword.synth import FilterConfig, Strategy, expand, read_seed_file


class CountingClient:
    """Counts chat calls and their wall time; everything else is the real client."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.model, self.calls, self.seconds = inner, inner.model, 0, 0.0

    def chat(self, messages: list[dict[str, Any]], **kw: Any) -> str:
        t0 = time.perf_counter()
        try:
            return self.inner.chat(messages, **kw)
        finally:
            self.calls += 1
            self.seconds += time.perf_counter() - t0

    def chat_json(self, messages: list[dict[str, Any]], retries: int = 1, **kw: Any) -> Any:
        from afterword.llm import extract_json

        last = self.chat(messages, **kw)
        try:
            return extract_json(last)
        except ValueError:
            if not retries:
                raise
            more = [*messages, {"role": "assistant", "content": last}, {"role": "user", "content": "JSON only."}]
            return extract_json(self.chat(more, **kw))


def mean_pairwise_cosine(texts: list[str]) -> float | None:
    if len(texts) < 2:
        return None
    v = get_embedder().encode(texts)
    sims = v @ v.T
    iu = np.triu_indices(len(texts), 1)
    return round(float(sims[iu].mean()), 4)


def run_arm(name: str, seeds: list[Any], n: int, client: Any, strategy: Strategy, cfg: FilterConfig) -> dict[str, Any]:
    counting = CountingClient(client)
    captured: list[str] = []
    ex = importlib.import_module("afterword.synth.expand")  # the module, not the expand() function

    orig = ex.run_filters

    def spy(items: Any, *a: Any, **kw: Any) -> Any:  # record the candidates' questions for the diversity figure
        captured.extend(it.prompt for it in items)
        return orig(items, *a, **kw)

    ex.run_filters = spy
    try:
        t0 = time.perf_counter()
        res = expand(seeds, n=n, llm=counting, strategy=strategy, filters=cfg, save=False)
        wall = time.perf_counter() - t0
    finally:
        ex.run_filters = orig
    d = res.as_dict(with_items=True)
    d.update(
        arm=name,
        wall_s=round(wall, 1),
        llm_calls=counting.calls,
        llm_s=round(counting.seconds, 1),
        s_per_call=round(counting.seconds / counting.calls, 2) if counting.calls else None,
        candidate_diversity_mean_cos=mean_pairwise_cosine(captured),
        kept_diversity_mean_cos=mean_pairwise_cosine([it["prompt"] for it in d["items"]]),
    )
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", required=True, help="JSONL seed file (prompt, answer, kind, tests).")
    ap.add_argument("--n", type=int, default=12, help="Generation attempts per arm.")
    ap.add_argument("--endpoint", default=None, help="OpenAI-compatible URL; default: start the local SmolLM2.")
    ap.add_argument("--model", default="local")
    ap.add_argument("--max-tokens", type=int, default=160, help="Per answer.")
    ap.add_argument("--no-judge", action="store_true")
    ap.add_argument("--arms", default="diverse,baseline")
    ap.add_argument("--out", default="bench/results/synth_expand.json")
    args = ap.parse_args()

    from afterword.llm import LLMClient, serve_local_model

    srv = None
    if args.endpoint:
        client = LLMClient(base_url=args.endpoint, model=args.model, timeout_s=600)
    else:
        srv = serve_local_model()
        client = srv.client(timeout_s=600)
    seeds = read_seed_file(args.seeds)
    cfg = FilterConfig(judge=not args.no_judge)
    get_embedder()  # load once, outside the timings
    arms = {
        "diverse": Strategy(max_tokens=args.max_tokens, question_tokens=96),
        "baseline": Strategy.fixed(),
    }
    arms["baseline"].max_tokens, arms["baseline"].question_tokens = args.max_tokens, 96
    results = []
    try:
        for name in args.arms.split(","):
            r = run_arm(name, seeds, args.n, client, arms[name], cfg)
            results.append(r)
            print(
                f"\n== {name}: {r['kept']}/{r['attempts']} kept (yield {r['yield']}), {r['llm_calls']} LLM calls, "
                f"{r['s_per_call']} s/call, {r['candidates_per_s']} candidates/s, {r['kept_per_s']} kept/s, "
                f"wall {r['wall_s']} s"
            )
            print(
                f"   diversity (mean pairwise cosine, lower is more diverse): candidates "
                f"{r['candidate_diversity_mean_cos']}, kept {r['kept_diversity_mean_cos']}"
            )
            for st in [r["generation"], *r["filters"]]:
                print(
                    f"   {st['filter']:<18} seen {st['seen']:>3}  dropped {st['dropped']:>3}  kept {st['kept']:>3}  "
                    f"{st['reasons']}"
                )
    finally:
        if srv:
            srv.stop()
    doc = {
        "bench": "synth_expand",
        "command": "python bench/synth_expand.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, False)),
        "model": client.model,
        "seeds": len(seeds),
        "seed_kinds": {k: sum(s.kind == k for s in seeds) for k in ("code", "math", "text")},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "note": "CPU shared with others"},
        "load_avg_at_end": os.getloadavg(),
        "arms": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1, ensure_ascii=False))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
