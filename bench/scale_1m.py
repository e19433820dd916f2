"""1,000,000 conversations through the Ray Data pipelines: sharded import, then judging, 1 worker vs 2.

Data: the shipped sample (``afterword/data/sample.jsonl``) expanded into N
conversations with varied text, never plain copies: each conversation takes
a base dialogue, substitutes numbers, names, versions and entities, wraps the
user turns in paraphrase templates, swaps reactions across dialogues and
sometimes appends a second exchange from another dialogue. Users and times
are spread out. The script reports how many distinct first requests and
distinct conversations the generator produced, so "not copies" is measured.

Runs (each in a fresh store, so the two worker counts see identical data):
  import_sharded(...) with 1 worker, then with 2;
  judge_store_ray(..., limit=--judge-limit) on each store with 1 and 2 workers.
Peak memory is the RSS of the driver plus every descendant process (Ray's
raylet, GCS and workers), sampled every 0.5 s; RSS counts shared pages (the
object store) once per process, so it is an upper bound.

    python bench/scale_1m.py --conversations 1000000 --shards 8 --workdir /tmp/aw_scale
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import re
import shutil
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parent / "src" / "afterword" / "data" / "sample.jsonl"

NAMES = [
    "priya",
    "marco",
    "aiko",
    "lena",
    "omar",
    "sofia",
    "jonas",
    "mei",
    "ravi",
    "elena",
    "tomas",
    "nadia",
    "kofi",
    "ines",
    "yusuf",
    "hana",
    "pablo",
    "greta",
    "liam",
    "zara",
    "chen",
    "amara",
    "felix",
    "noor",
    "diego",
    "sana",
    "emil",
    "tara",
    "ivan",
    "lucia",
    "arjun",
    "maya",
    "noah",
    "leila",
    "hugo",
    "ada",
]
SWAPS = {
    "Python 3.9": ["Python 3.8", "Python 3.10", "Python 3.11", "Python 3.12"],
    "pandas": ["pandas", "polars", "pyarrow", "duckdb"],
    "vegetarian": ["vegan", "pescatarian", "gluten-free", "vegetarian"],
    "risotto": ["curry", "stir-fry", "pasta bake", "risotto", "chili"],
    "CSV": ["CSV", "Parquet file", "Excel sheet", "TSV"],
    "four": ["two", "three", "four", "six"],
    "miles": ["miles", "kilometres", "feet"],
    "Berlin": ["Berlin", "Lisbon", "Osaka", "Toronto", "Nairobi"],
}
OPENERS = ["", "", "Hi! ", "Quick question: ", "hey, ", "Hello, ", "Sorry to bother you, ", "Okay so ", "Help please: "]
CLOSERS = ["", "", "", " Thanks!", " Thanks in advance.", " (it's for work)", " Keep it short please.", " Any ideas?"]
_NUM = re.compile(r"\b\d+(?:\.\d+)?\b")


def load_seeds(path: Path) -> list[dict]:
    if path.exists():
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    # Fallback seed set when the sample is not shipped yet.
    return [
        {
            "messages": [
                {"role": "user", "content": "How do I convert 5 miles to km?"},
                {"role": "assistant", "content": "5 miles is about 8.05 km (multiply by 1.609)."},
                {"role": "user", "content": "perfect, thanks"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "I'm vegetarian, give me a quick risotto for four."},
                {"role": "assistant", "content": "Mushroom risotto: 320 g arborio, 1.2 l vegetable stock, 18 minutes."},
                {"role": "user", "content": "that has no protein, try again"},
            ]
        },
    ]


def _vary(text: str, rng: random.Random) -> str:
    for key, alts in SWAPS.items():
        if key in text:
            text = text.replace(key, rng.choice(alts))
    for name in NAMES:
        if name.capitalize() in text and rng.random() < 0.7:
            text = text.replace(name.capitalize(), rng.choice(NAMES).capitalize())

    def num(m: re.Match[str]) -> str:
        v = float(m.group(0))
        if v in (0.0, 1.0) or rng.random() < 0.3:
            return m.group(0)
        new = v * rng.uniform(0.5, 2.0)
        return f"{new:.1f}" if "." in m.group(0) else str(max(2, round(new)))

    return _NUM.sub(num, text)


def _gen_shard(args: tuple[int, int, int, str, int]) -> dict:
    shard, start, n, out, seed = args
    seeds = load_seeds(SAMPLE)
    reactions = [
        m["content"]
        for s in seeds
        for i, m in enumerate(s["messages"])
        if m["role"] == "user" and i > 0 and s["messages"][i - 1]["role"] == "assistant"
    ]
    rng = random.Random(seed * 1_000_003 + shard)
    base_t = datetime(2026, 1, 1, tzinfo=UTC)
    firsts: set[int] = set()
    convs: set[int] = set()
    path = Path(out)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(start, start + n):
            base = rng.choice(seeds)
            msgs = [dict(m) for m in base["messages"]]
            if rng.random() < 0.35:  # recombine: a second exchange from another dialogue
                other = rng.choice(seeds)["messages"]
                msgs += [dict(m) for m in other[:2]] + ([dict(other[2])] if len(other) > 2 else [])
            for k, m in enumerate(msgs):
                m.pop("timestamp", None)
                text = _vary(m.get("content") or "", rng)
                if m["role"] == "user":
                    if k > 0 and msgs[k - 1]["role"] == "assistant" and rng.random() < 0.4:
                        text = _vary(rng.choice(reactions), rng)
                    text = rng.choice(OPENERS) + text + rng.choice(CLOSERS)
                m["content"] = text
            uid = f"{rng.choice(NAMES)}-{rng.randrange(50_000)}"
            t0 = base_t + timedelta(seconds=rng.randrange(360 * 86400))
            rec = {
                "user": uid,
                "session_id": f"syn-{i}",
                "timestamp": t0.isoformat().replace("+00:00", "Z"),
                "model": base.get("model", "gpt-4o-mini"),
                "messages": msgs,
            }
            if base.get("feedback") and rng.random() < 0.3:
                rec["feedback"] = [{k: v for k, v in fb.items() if k != "timestamp"} for fb in base["feedback"]]
            firsts.add(hash(msgs[0]["content"]))
            convs.add(hash(tuple(m["content"] for m in msgs)))
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return {"path": str(path), "n": n, "distinct_first": len(firsts), "distinct_conversations": len(convs)}


def generate(workdir: Path, total: int, shards: int, seed: int) -> dict:
    out = workdir / "shards"
    out.mkdir(parents=True, exist_ok=True)
    per = -(-total // shards)
    jobs = [(s, s * per, min(per, total - s * per), str(out / f"part-{s:04d}.jsonl"), seed) for s in range(shards)]
    t0 = time.perf_counter()
    with mp.Pool(2) as pool:
        res = pool.map(_gen_shard, [j for j in jobs if j[2] > 0])
    size = sum(os.path.getsize(r["path"]) for r in res)
    return {
        "conversations": total,
        "shards": len(res),
        "seconds": round(time.perf_counter() - t0, 1),
        "jsonl_mb": round(size / 2**20, 1),
        # Per shard, summed: distinct texts within each shard (a lower bound on global distinctness).
        "distinct_first_requests": sum(r["distinct_first"] for r in res),
        "distinct_conversations": sum(r["distinct_conversations"] for r in res),
        "seed_conversations": len(load_seeds(SAMPLE)),
        "seed_source": str(SAMPLE) if SAMPLE.exists() else "built-in fallback seeds",
    }


class PeakRSS:
    """Samples the RSS of this process and all its descendants (Ray's processes included)."""

    def __init__(self, every_s: float = 0.5) -> None:
        self.every_s = every_s
        self.peak_total = self.peak_driver = self.peak_workers = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                driver = me.memory_info().rss
                workers = other = 0
                for p in me.children(recursive=True):
                    try:
                        rss = p.memory_info().rss
                        name = " ".join(p.cmdline()[:1])
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        continue
                    if name.startswith("ray::"):
                        workers += rss
                    else:
                        other += rss
                self.peak_driver = max(self.peak_driver, driver)
                self.peak_workers = max(self.peak_workers, workers)
                self.peak_total = max(self.peak_total, driver + workers + other)
            except psutil.Error:
                pass
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakRSS:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()

    def as_dict(self) -> dict:
        mb = 2**20
        return {
            "peak_rss_total_mb": round(self.peak_total / mb),
            "peak_rss_driver_mb": round(self.peak_driver / mb),
            "peak_rss_ray_workers_mb": round(self.peak_workers / mb),
        }


def judge_config(workdir: Path):  # noqa: ANN201
    import numpy as np

    from afterword.judge.features import feature_names
    from afterword.judge.judge_config import JudgeConfig
    from afterword.judge.model import HeadModel, default_model_path

    if default_model_path().exists():
        return JudgeConfig(), "shipped head"
    d = len(feature_names())
    rng = np.random.default_rng(0)
    HeadModel(
        mean=np.zeros(d, np.float32),
        scale=np.ones(d, np.float32),
        layers=[(rng.normal(0, 0.05, (d, 3)).astype(np.float32), np.zeros(3, np.float32))],
        metadata={"version": "bench-random"},
    ).save(workdir / "head.npz")
    return JudgeConfig(model_path=str(workdir / "head.npz")), "random head of the shipped shape (not shipped yet)"


def run_workers(workdir: Path, workers: int, judge_limit: int, store_base: str | None) -> dict:
    import ray

    from afterword.judge.distributed import judge_store_ray
    from afterword.scale import import_sharded
    from afterword.store import Store

    url = f"{store_base}_{workers}w" if store_base else f"sqlite:///{workdir / f'store_{workers}w.db'}"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    out: dict = {"workers": workers, "store": url.split("@")[-1]}
    try:
        with PeakRSS() as mem:
            res = import_sharded(url, str(workdir / "shards" / "part-*.jsonl"), num_workers=workers)
        out["import"] = {k: v for k, v in res.items() if k not in ("per_shard", "errors")} | mem.as_dict()
        print(json.dumps({"import": out["import"]}), flush=True)
        if judge_limit:
            cfg, head = judge_config(workdir)
            store = Store(url)
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                jr = judge_store_ray(store, config=cfg, num_workers=workers, limit=judge_limit, batch_size=100)
                jr["seconds"] = round(time.perf_counter() - t0, 1)
            jr["conversations_per_s"] = round(jr["conversations"] / jr["seconds"], 1)
            out["judge"] = jr | mem.as_dict() | {"head": head}
            store.close()
            print(json.dumps({"judge": out["judge"]}), flush=True)
    finally:
        ray.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conversations", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--workdir", default="/tmp/aw_scale")
    ap.add_argument("--judge-limit", type=int, default=2000, help="Conversations judged per run (0: skip).")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--store-url", help="Base PostgreSQL URL; '_1w'/'_2w' database suffixes (default: SQLite files)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", action="store_true", help="Keep the shards and stores.")
    ap.add_argument("--out", default=str(HERE / "results" / "scale_1m.json"))
    args = ap.parse_args()
    work = Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    t0 = time.time()
    result: dict = {"command": "python " + " ".join(sys.argv), "started_utc": datetime.now(UTC).isoformat()}
    result["data"] = generate(work, args.conversations, args.shards, args.seed)
    print(json.dumps({"data": result["data"]}), flush=True)
    result["runs"] = [run_workers(work, int(w), args.judge_limit, args.store_url) for w in args.workers.split(",")]
    result["total_seconds"] = round(time.time() - t0, 1)
    result["machine"] = {
        "cpus": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "note": "2 cores shared with other engineers' jobs: timings are noisy",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for r in result["runs"]:
        imp = r["import"]
        print(
            f"{r['workers']} worker(s): import {imp['conversations_per_s']} conv/s, {imp['messages_per_s']} msg/s, "
            f"{imp['seconds']} s, peak RSS {imp['peak_rss_total_mb']} MB"
            + (
                f"; judge {r['judge']['conversations_per_s']} conv/s ({r['judge']['turns_per_s']} turns/s), "
                f"peak RSS {r['judge']['peak_rss_total_mb']} MB"
                if "judge" in r
                else ""
            )
        )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
