"""1,000,000 conversations through the Ray Data pipelines: import, judge and embed, 1 worker vs 2.

Data: the shipped sample (``afterword/data/sample.jsonl``) expanded into N
conversations with varied text, never plain copies: each conversation takes
a base dialogue, substitutes numbers, names, versions and entities, wraps the
user turns in paraphrase templates, swaps reactions across dialogues and
sometimes appends a second exchange from another dialogue. Users and times
are spread out. The script counts distinct conversations, distinct opening
requests and distinct message texts over the whole set (8-byte BLAKE2b
digests), so "not copies" is measured, not asserted.

Each worker count runs in its own fresh process (a clean driver and a fresh
``ray.init(num_cpus=2)``) on a fresh SQLite store, so both see identical data:
  import  ``import_sharded`` over every shard (the full set);
  judge   ``judge_store_ray(limit=--judge-limit)``: the oldest pending conversations of that store;
  embed   ``embed_sharded`` over the first ``--embed-conversations`` conversations (split over 8 shards).
Peak memory is sampled every 0.5 s over the driver and every descendant
process (Ray's GCS, raylet and workers): RSS (shared pages, such as the
object store, counted once per process: an upper bound) and PSS (shared
pages split between the processes sharing them: what the run holds).

    python bench/scale_1m.py --conversations 1000000 --shards 8 --workdir /tmp/aw_scale \
        --judge-limit 3000 --embed-conversations 5000
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
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

import numpy as np
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
    firsts: list[int] = []
    convs: list[int] = []
    texts: list[int] = []
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
            hashes = [_h64(m["content"]) for m in msgs]
            texts += hashes
            firsts.append(hashes[0])
            convs.append(_h64("\x1f".join(m["content"] for m in msgs)))
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    u64 = np.uint64
    return {
        "path": str(path),
        "n": n,
        "first": np.unique(np.array(firsts, u64)),
        "conv": np.unique(np.array(convs, u64)),
        "text": np.unique(np.array(texts, u64)),
        "messages": len(texts),
    }


def _h64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def generate(workdir: Path, total: int, shards: int, seed: int) -> dict:
    out = workdir / "shards"
    out.mkdir(parents=True, exist_ok=True)
    per = -(-total // shards)
    jobs = [(s, s * per, min(per, total - s * per), str(out / f"part-{s:04d}.jsonl"), seed) for s in range(shards)]
    t0 = time.perf_counter()
    with mp.Pool(2) as pool:
        res = pool.map(_gen_shard, [j for j in jobs if j[2] > 0])
    size = sum(os.path.getsize(r["path"]) for r in res)
    seeds = load_seeds(SAMPLE)

    def distinct(key: str) -> int:  # over the whole set, across shards
        return int(np.unique(np.concatenate([r[key] for r in res])).size)

    info = {
        "conversations": total,
        "messages": sum(r["messages"] for r in res),
        "shards": len(res),
        "seconds": round(time.perf_counter() - t0, 1),
        "jsonl_mb": round(size / 2**20, 1),
        "distinct_conversations": distinct("conv"),
        "distinct_first_requests": distinct("first"),
        "distinct_message_texts": distinct("text"),
        "seed_conversations": len(seeds),
        "seed_distinct_message_texts": len({m.get("content") or "" for s in seeds for m in s["messages"]}),
        "seed_source": str(SAMPLE) if SAMPLE.exists() else "built-in fallback seeds",
    }
    (out / "data.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def embed_subset(workdir: Path, n: int, shards: int = 8) -> Path:
    """The first ``n`` conversations of the set, in ``shards`` files (the embedding bench's input)."""
    out = workdir / "embed_subset"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    per = -(-n // shards)
    lines: list[str] = []
    for part in sorted((workdir / "shards").glob("part-*.jsonl")):
        with open(part, encoding="utf-8") as fh:
            for line in fh:
                lines.append(line)
                if len(lines) >= n:
                    break
        if len(lines) >= n:
            break
    for s in range(shards):
        chunk = lines[s * per : (s + 1) * per]
        if chunk:
            (out / f"part-{s:04d}.jsonl").write_text("".join(chunk), encoding="utf-8")
    return out


class PeakRSS:
    """Peak memory of this process and all its descendants (Ray's processes included), sampled."""

    def __init__(self, every_s: float = 0.5, wal: Path | None = None) -> None:
        self.every_s = every_s
        self.wal = wal  # a SQLite store's write-ahead log: its peak size is disk the run holds
        self.peak_wal = 0
        self.peak_total = self.peak_driver = self.peak_workers = self.peak_pss = 0
        self.niceness: set[int] = set()
        # CPU seconds per pid: at the start, and the latest sample (a process that exits between samples
        # loses at most one interval of CPU, so the sum is a slight lower bound).
        self._cpu0: dict[int, float] = {}
        self._cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample_cpu(self, p: psutil.Process) -> float:
        c = p.cpu_times()
        self._cpu[p.pid] = c.user + c.system
        return self._cpu[p.pid]

    def _run(self) -> None:
        me = psutil.Process()
        for p in [me, *me.children(recursive=True)]:
            try:
                self._cpu0[p.pid] = self._sample_cpu(p)
            except psutil.Error:
                continue
        while not self._stop.is_set():
            try:
                driver = me.memory_info().rss
                pss = _pss(me) or driver
                self._sample_cpu(me)
                workers = other = 0
                for p in me.children(recursive=True):
                    try:
                        rss = p.memory_info().rss
                        name = " ".join(p.cmdline()[:1])
                        pss += _pss(p) or rss
                        self._sample_cpu(p)
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        continue
                    if name.startswith("ray::"):
                        workers += rss
                        with contextlib.suppress(psutil.Error):
                            self.niceness.add(p.nice())
                    else:
                        other += rss
                self.peak_driver = max(self.peak_driver, driver)
                self.peak_workers = max(self.peak_workers, workers)
                self.peak_total = max(self.peak_total, driver + workers + other)
                self.peak_pss = max(self.peak_pss, pss)
                if self.wal is not None and self.wal.exists():
                    self.peak_wal = max(self.peak_wal, self.wal.stat().st_size)
            except (psutil.Error, OSError):
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
            "peak_pss_total_mb": round(self.peak_pss / mb),
            "peak_rss_driver_mb": round(self.peak_driver / mb),
            "peak_rss_ray_workers_mb": round(self.peak_workers / mb),
            "cpu_seconds_driver_and_ray": round(sum(v - self._cpu0.get(pid, 0.0) for pid, v in self._cpu.items()), 1),
            "ray_worker_niceness": sorted(self.niceness),
        } | ({"peak_sqlite_wal_mb": round(self.peak_wal / mb)} if self.wal is not None else {})


def _pss(p: psutil.Process) -> int:
    try:
        return int(getattr(p.memory_full_info(), "pss", 0))
    except (psutil.AccessDenied, psutil.ZombieProcess):
        return 0


class Load:
    """The machine's 1-minute load average over a phase, sampled every 15 s."""

    def __enter__(self) -> Load:
        self.load = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(15):
            self.load.append(os.getloadavg()[0])

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.load.append(os.getloadavg()[0])

    def as_dict(self) -> dict:
        return {
            "load_avg_1m_min": round(min(self.load), 2),
            "load_avg_1m_mean": round(sum(self.load) / len(self.load), 2),
            "load_avg_1m_max": round(max(self.load), 2),
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


def run_workers(workdir: Path, workers: int, judge_limit: int, embed_dir: Path | None, store_base: str | None) -> dict:
    """One worker count, in this (fresh) process: import everything, judge a subset, embed a subset."""
    import ray

    from afterword.judge.distributed import judge_store_ray
    from afterword.scale import embed_sharded, import_sharded
    from afterword.store import Store

    url = f"{store_base}_{workers}w" if store_base else f"sqlite:///{workdir / f'store_{workers}w.db'}"
    if not store_base:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{workdir / f'store_{workers}w.db'}{suffix}").unlink(missing_ok=True)
    wal = None if store_base else workdir / f"store_{workers}w.db-wal"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    out: dict = {"workers": workers, "store": url.split("@")[-1]}
    try:
        with PeakRSS(wal=wal) as mem, Load() as load:
            res = import_sharded(url, str(workdir / "shards" / "part-*.jsonl"), num_workers=workers)
        out["import"] = {k: v for k, v in res.items() if k not in ("per_shard", "errors")} | mem.as_dict()
        out["import"] |= load.as_dict()
        print(json.dumps({"workers": workers, "import": out["import"]}), flush=True)
        if judge_limit:
            cfg, head = judge_config(workdir)
            store = Store(url)
            with PeakRSS() as mem, Load() as load:
                t0 = time.perf_counter()
                jr = judge_store_ray(store, config=cfg, num_workers=workers, limit=judge_limit, batch_size=100)
                jr["wall_seconds_incl_pending_scan"] = round(time.perf_counter() - t0, 1)
            jr["conversations_per_s"] = round(jr["conversations"] / jr["seconds"], 2) if jr.get("seconds") else None
            out["judge"] = jr | mem.as_dict() | load.as_dict() | {"head": head}
            store.close()
            print(json.dumps({"workers": workers, "judge": out["judge"]}), flush=True)
        if embed_dir is not None:
            n_conv = sum(f.read_bytes().count(b"\n") for f in embed_dir.glob("*.jsonl"))
            with PeakRSS() as mem, Load() as load:
                er = embed_sharded(embed_dir, workdir / f"emb_{workers}w", num_workers=workers, overwrite=True)
            er["conversations"] = n_conv
            er["conversations_per_s"] = round(n_conv / er["seconds"], 1) if er["seconds"] else None
            out["embed"] = er | mem.as_dict() | load.as_dict()
            print(json.dumps({"workers": workers, "embed": out["embed"]}), flush=True)
    finally:
        ray.shutdown()
    return out


def _child(q: mp.Queue, *args: object) -> None:
    try:
        q.put(run_workers(*args))  # type: ignore[arg-type]
    except BaseException as exc:  # the parent records it and goes on to the next worker count
        q.put({"error": f"{type(exc).__name__}: {exc}"})
        raise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conversations", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--workdir", default="/tmp/aw_scale")
    ap.add_argument("--judge-limit", type=int, default=3000, help="Conversations judged per run (0: skip).")
    ap.add_argument("--embed-conversations", type=int, default=5000, help="Conversations embedded per run (0: skip).")
    ap.add_argument(
        "--worker-niceness",
        type=int,
        help="Set RAY_worker_niceness (Ray starts its workers at nice 15: on a shared machine they yield to every "
        "other job; 0 competes on equal terms).",
    )
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--store-url", help="Base PostgreSQL URL; '_1w'/'_2w' database suffixes (default: SQLite files)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--reuse-data", action="store_true", help="Reuse the shards already in --workdir (same args).")
    ap.add_argument("--keep", action="store_true", help="Keep the shards and stores.")
    ap.add_argument("--out", default=str(HERE / "results" / "scale_1m.json"))
    args = ap.parse_args()
    if args.worker_niceness is not None:
        # Ray reads its config from RAY_<name> with the name in its own (lower) case.
        os.environ["RAY_worker_niceness"] = str(args.worker_niceness)  # noqa: SIM112
    work = Path(args.workdir)
    t0 = time.time()
    result: dict = {"command": "python " + " ".join(sys.argv), "started_utc": datetime.now(UTC).isoformat()}
    result["machine"] = {
        "cpus": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "ray_worker_niceness": os.environ.get("RAY_worker_niceness", "15 (Ray's default)"),  # noqa: SIM112
        "note": "2 cores shared with other engineers' jobs: timings are noisy; see each phase's load_avg_1m_*",
    }
    meta = work / "shards" / "data.json"
    if args.reuse_data and meta.exists():
        result["data"] = json.loads(meta.read_text()) | {"reused": True}
        if result["data"]["conversations"] != args.conversations:
            sys.exit(f"{work} holds {result['data']['conversations']} conversations, not {args.conversations}")
    else:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        with Load() as load:
            result["data"] = generate(work, args.conversations, args.shards, args.seed)
        result["data"] |= {k: v for k, v in load.as_dict().items() if k.startswith("load")}
    print(json.dumps({"data": result["data"]}), flush=True)
    embed_dir = embed_subset(work, args.embed_conversations) if args.embed_conversations else None
    result["runs"] = []
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    for w in args.workers.split(","):
        q = ctx.Queue()
        proc = ctx.Process(target=_child, args=(q, work, int(w), args.judge_limit, embed_dir, args.store_url))
        proc.start()
        run = q.get()
        proc.join()
        result["runs"].append(run)
        result["total_seconds"] = round(time.time() - t0, 1)
        result["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        out_path.write_text(json.dumps(result, indent=2) + "\n")  # after each run: a stopped bench keeps its figures
    for r in result["runs"]:
        if "error" in r:
            print(f"run failed: {r['error']}")
            continue
        line = []
        imp = r["import"]
        line.append(
            f"import {imp['conversations_per_s']} conv/s ({imp['messages_per_s']} msg/s, {imp['seconds']} s, "
            f"peak RSS {imp['peak_rss_total_mb']} MB, PSS {imp['peak_pss_total_mb']} MB)"
        )
        if "judge" in r:
            jd = r["judge"]
            line.append(
                f"judge {jd['conversations_per_s']} conv/s ({jd['turns_per_s']} turns/s, "
                f"peak RSS {jd['peak_rss_total_mb']} MB)"
            )
        if "embed" in r:
            em = r["embed"]
            line.append(
                f"embed {em['messages_per_s']} msg/s ({em['conversations_per_s']} conv/s, "
                f"peak RSS {em['peak_rss_total_mb']} MB)"
            )
        print(f"{r['workers']} worker(s): " + "; ".join(line))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
