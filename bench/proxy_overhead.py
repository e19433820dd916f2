"""The proxy's own overhead, its throughput, and whether any log is lost.

A stub upstream (``afterword.serve.stub``) answers every chat completion after
a fixed delay. An open-loop async httpx load generator sends requests at a
fixed rate, first straight to the stub (the baseline), then through
``afterword serve`` in front of the same stub. The overhead is the proxy's
latency minus the direct latency, at p50 and p95. Afterwards the proxy is
stopped gracefully and the assistant messages in its store are counted
against the successful requests: every one must be there, exactly once.

    python bench/proxy_overhead.py --rate 300 --duration 60 --delay-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import sqlalchemy as sa

from afterword.store import Store
from afterword.store import schema as t


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not start")


async def load(
    url: str, rate: float, duration_s: float, run: str, stream_every: int, max_inflight: int
) -> dict[str, Any]:
    """Open loop: request i is due at i / rate; latency is measured from when it was sent."""
    n = int(rate * duration_s)
    lat: list[float] = []
    errors: dict[str, int] = {}
    ids: list[str] = []
    late = 0
    limits = httpx.Limits(max_connections=max_inflight, max_keepalive_connections=max_inflight)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        sem = asyncio.Semaphore(max_inflight)

        async def one(i: int) -> None:
            body = {
                "model": "bench",
                "messages": [{"role": "user", "content": f"request {i} of run {run}"}],
                "stream": bool(stream_every and i % stream_every == 0),
            }
            headers = {"X-Afterword-User": f"user-{i % 50}"}
            async with sem:
                t0 = time.perf_counter()
                try:
                    if body["stream"]:
                        async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                            async for _ in r.aiter_bytes():
                                pass
                    else:
                        r = await client.post("/v1/chat/completions", json=body, headers=headers)
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    return
                dt = (time.perf_counter() - t0) * 1000
            if r.status_code != 200:
                errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                return
            lat.append(dt)
            mid = r.headers.get("x-afterword-message-id")
            if mid:
                ids.append(mid)

        start = time.perf_counter()
        stop_at = start + 1.5 * duration_s  # bounded: an overloaded target does not stretch the run
        tasks = []
        for i in range(n):
            if time.perf_counter() > stop_at:
                n = i
                break
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.05:
                late += 1
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
    a = np.array(lat) if lat else np.array([float("nan")])
    return {
        "planned": int(rate * duration_s),
        "sent": n,
        "ok": len(lat),
        "errors": errors,
        "wall_s": round(wall, 2),
        "rps": round(len(lat) / wall, 1),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p95_ms": round(float(np.percentile(a, 95)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "late_sends": late,
        "_ids": ids,
    }


def cpu_s(pid: int) -> float:
    """CPU seconds of a process and its children (the uvicorn workers)."""
    import psutil

    proc = psutil.Process(pid)
    total = sum(proc.cpu_times()[:2])
    for child in proc.children(recursive=True):
        total += sum(child.cpu_times()[:2])
    return total


def run_loop(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def count_rows(db: str, run: str) -> tuple[int, int]:
    s = Store(db)
    try:
        with s.read() as conn:
            q = sa.select(sa.func.count(), sa.func.count(sa.distinct(t.messages.c.content))).where(
                t.messages.c.role == "user", t.messages.c.content.like(f"% of run {run}")
            )
            total, distinct = conn.execute(q).one()
    finally:
        s.close()
    return int(total), int(distinct)


def main() -> None:
    ap = argparse.ArgumentParser(description="Proxy overhead, throughput and lost logs against a stub upstream.")
    ap.add_argument("--rate", type=float, default=300, help="requests per second (open loop)")
    ap.add_argument("--duration", type=float, default=20, help="seconds per phase (at most 120)")
    ap.add_argument("--delay-ms", type=float, default=20, help="the stub's fixed answer time")
    ap.add_argument("--workers", type=int, default=1, help="proxy worker processes")
    ap.add_argument("--memory", action="store_true", help="inject memories (the store has none: retrieval cost only)")
    ap.add_argument("--stream-every", type=int, default=0, help="every Nth request streams (0: none)")
    ap.add_argument("--max-inflight", type=int, default=512)
    ap.add_argument("--db", default=None, help="store URL or SQLite path (default: a temporary SQLite file)")
    ap.add_argument("--warmup", type=float, default=3, help="seconds of warm-up traffic per phase (not measured)")
    ap.add_argument("--out", default="bench/results/proxy_overhead.json")
    args = ap.parse_args()
    duration = min(args.duration, 120)

    tmp = Path(tempfile.mkdtemp(prefix="aw-proxy-bench-"))
    db = args.db or str(tmp / "bench.db")
    env = {**os.environ, "AFTERWORD_DB": db, "AFTERWORD_SPOOL": str(tmp / "spool.jsonl")}
    stub_port, proxy_port = free_port(), free_port()
    exe = Path(sys.executable).parent / "afterword"
    stub = subprocess.Popen(
        [sys.executable, "-m", "afterword.serve.stub", "--port", str(stub_port), "--delay-ms", str(args.delay_ms)],
        env=env,
    )
    proxy_cmd = [str(exe), "serve", "--upstream", f"http://127.0.0.1:{stub_port}/v1", "--port", str(proxy_port)]
    proxy_cmd += ["--workers", str(args.workers), "--no-auth", "--memory" if args.memory else "--no-memory", "--json"]
    proxy = subprocess.Popen(proxy_cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stub_url, proxy_url = f"http://127.0.0.1:{stub_port}", f"http://127.0.0.1:{proxy_port}"
    try:
        wait_up(stub_url + "/v1/models", stub)
        wait_up(proxy_url + "/healthz", proxy)
        results: dict[str, Any] = {}
        run = uuid.uuid4().hex[:8]
        for phase, url in (("direct", stub_url), ("proxy", proxy_url)):
            run_loop(load(url, args.rate, args.warmup, "warmup", args.stream_every, args.max_inflight))
            cpu0 = {"proxy": cpu_s(proxy.pid), "stub": cpu_s(stub.pid), "bench": time.process_time()}
            results[phase] = run_loop(load(url, args.rate, duration, run, args.stream_every, args.max_inflight))
            n_ok = max(results[phase]["ok"], 1)
            results[phase]["cpu_ms_per_request"] = {
                "proxy": round((cpu_s(proxy.pid) - cpu0["proxy"]) * 1000 / n_ok, 3),
                "stub": round((cpu_s(stub.pid) - cpu0["stub"]) * 1000 / n_ok, 3),
                "load_generator": round((time.process_time() - cpu0["bench"]) * 1000 / n_ok, 3),
            }
            print(f"{phase:>6}: {json.dumps({k: v for k, v in results[phase].items() if k != '_ids'})}", flush=True)
    finally:
        proxy.send_signal(signal.SIGTERM)  # graceful: every worker drains its capture queue
        try:
            _, err = proxy.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proxy.kill()
            err = b""
        stub.terminate()
        stub.wait(10)
    ids = results["proxy"].pop("_ids")
    results["direct"].pop("_ids")
    stored, distinct = count_rows(db, run)
    ok = results["proxy"]["ok"]
    out = {
        "bench": "proxy_overhead",
        "rate_rps": args.rate,
        "duration_s": duration,
        "stub_delay_ms": args.delay_ms,
        "workers": args.workers,
        "memory": args.memory,
        "stream_every": args.stream_every,
        "store": "sqlite" if "://" not in db or db.startswith("sqlite") else db.split("://")[0],
        "direct": results["direct"],
        "proxy": results["proxy"],
        "overhead_p50_ms": round(results["proxy"]["p50_ms"] - results["direct"]["p50_ms"], 2),
        "overhead_p95_ms": round(results["proxy"]["p95_ms"] - results["direct"]["p95_ms"], 2),
        "requests_ok": ok,
        "message_ids_returned": len(set(ids)),
        "stored_user_rows": stored,
        "stored_distinct": distinct,
        "lost_logs": ok - distinct,
        "duplicated_logs": stored - distinct,
        "spool_left": (tmp / "spool.jsonl").exists(),
        "cpus": os.cpu_count(),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }
    print(
        f"overhead p50 {out['overhead_p50_ms']} ms, p95 {out['overhead_p95_ms']} ms; "
        f"{results['proxy']['rps']} req/s through the proxy; stored {distinct}/{ok} (lost {out['lost_logs']}, "
        f"duplicated {out['duplicated_logs']})"
    )
    if proxy.returncode not in (0, None) and err:
        print(err.decode()[-2000:], file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
