"""Load on the proxy: N uvicorn workers on PostgreSQL (pgserver) in front of a stub upstream with a fixed delay.

An open-loop async httpx generator sends --rate requests/s for --seconds (each request scheduled at its
own time, so a slow server cannot slow the generator down and hide its latency), first straight to the
stub (the baseline) and then through the proxy. Overhead = proxy latency - direct latency, per percentile.
At the end the stored rows are counted against the requests that succeeded: every successful request's
assistant message id (X-Afterword-Message-Id) must be in the store exactly once. Loopback only.

    python bench/proxy_load.py --rate 300 --seconds 60 --workers 2 --delay-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def load(base: str, rate: float, seconds: float, tag: str, conns: int) -> dict:
    """Send ``rate`` requests/s for ``seconds``: a scheduler starts each request at its own tick, so the
    number in flight is whatever the server's latency makes it (open loop); latency is send -> response."""
    lat: list[float] = []
    errors: dict[str, int] = {}
    ids: list[str] = []
    n = int(rate * seconds)
    lag_ms: list[float] = []
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def one(i: int) -> None:
            body = {
                "model": "stub",
                "user": f"{tag}-user{i % 50}",
                "messages": [{"role": "user", "content": f"{tag} request {i}: what is {i} plus {i}?"}],
            }
            t0 = time.perf_counter()
            try:
                r = await client.post("/chat/completions", json=body)
                dt = (time.perf_counter() - t0) * 1000
                if r.status_code == 200:
                    lat.append(dt)
                    mid = r.headers.get("x-afterword-message-id")
                    if mid:
                        ids.append(mid)
                else:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

        tasks = []
        t_start = time.perf_counter()
        for i in range(n):
            at = t_start + i / rate
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                lag_ms.append(-delay * 1000)  # the generator itself fell behind its schedule
            tasks.append(asyncio.create_task(one(i)))
        done, pending = await asyncio.wait(tasks, timeout=60)
        for task in pending:
            task.cancel()
        if pending:
            errors["unfinished"] = len(pending)
        wall = time.perf_counter() - t_start
    return {
        "sent": n,
        "ok": len(lat),
        "errors": errors,
        "achieved_rps": round(len(lat) / wall, 1),
        "offered_rps": rate,
        "generator_max_lag_ms": round(max(lag_ms), 1) if lag_ms else 0.0,
        "p50_ms": round(pct(lat, 0.50), 2),
        "p95_ms": round(pct(lat, 0.95), 2),
        "p99_ms": round(pct(lat, 0.99), 2),
        "ids": ids,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=300)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--delay-ms", type=float, default=20)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--out", default=str(HERE / "results" / "proxy_load.json"))
    args = ap.parse_args()
    # `timeout` sends SIGTERM: turn it into an exception so the servers and PostgreSQL are stopped.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    import pgserver
    import sqlalchemy as sa

    from afterword.store import Store
    from afterword.store import schema as t

    tmp = Path(tempfile.mkdtemp(prefix="aw-load-"))
    srv = pgserver.get_server(str(tmp / "pg"), cleanup_mode="stop")
    srv.psql("CREATE DATABASE load;")
    url = srv.get_uri().replace("/postgres?", "/load?")
    up, px = free_port(), free_port()
    env = {**os.environ, "AFTERWORD_SPOOL": str(tmp / "spool.jsonl"), "AFTERWORD_DB": url}
    procs = [
        subprocess.Popen(
            [PY, "-m", "afterword.serve.stub", "--port", str(up), "--delay-ms", str(args.delay_ms)], env=env, cwd=tmp
        )
    ]
    res: dict = {"command": "python " + " ".join(sys.argv), "args": vars(args)}
    try:
        wait_http(f"http://127.0.0.1:{up}/v1/models", 30)
        procs.append(
            subprocess.Popen(
                [PY, "-c", "from afterword.cli import main; main()", "serve", "--upstream", f"http://127.0.0.1:{up}/v1",
                 "--port", str(px), "--workers", str(args.workers), "--no-memory", "--json"],
                env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        wait_http(f"http://127.0.0.1:{px}/healthz", 60)
        asyncio.run(load(f"http://127.0.0.1:{px}/v1", 50, 2, "warmup", args.connections))
        asyncio.run(load(f"http://127.0.0.1:{up}/v1", 50, 2, "warmup", args.connections))
        direct = asyncio.run(load(f"http://127.0.0.1:{up}/v1", args.rate, args.seconds, "direct", args.connections))
        proxied = asyncio.run(load(f"http://127.0.0.1:{px}/v1", args.rate, args.seconds, "proxy", args.connections))
        ids = proxied.pop("ids")
        direct.pop("ids")
        store = Store(url)

        def stored() -> int:
            found = 0
            with store.read() as conn:
                for i in range(0, len(ids), 1000):
                    found += conn.execute(
                        sa.select(sa.func.count()).select_from(t.messages).where(t.messages.c.id.in_(ids[i : i + 1000]))
                    ).scalar()
            return int(found)

        end = time.monotonic() + 60
        while stored() < len(ids) and time.monotonic() < end:
            time.sleep(0.5)
        with store.read() as conn:
            # Requests logged at all: includes ones the upstream answered after the client gave up.
            proxy_convs = conn.execute(
                sa.select(sa.func.count()).select_from(t.messages).where(t.messages.c.content.like("proxy request %"))
            ).scalar()
            dup_q = (
                sa.select(t.messages.c.content)
                .where(t.messages.c.content.like("proxy request %"))
                .group_by(t.messages.c.content)
                .having(sa.func.count() > 1)
                .subquery()
            )
            duplicates = conn.execute(sa.select(sa.func.count()).select_from(dup_q)).scalar()
        res.update(
            direct=direct,
            proxy=proxied,
            overhead_p50_ms=round(proxied["p50_ms"] - direct["p50_ms"], 2),
            overhead_p95_ms=round(proxied["p95_ms"] - direct["p95_ms"], 2),
            successful_requests=len(ids),
            stored_logs=stored(),
            logged_requests=int(proxy_convs or 0),
            logged_without_client_success=int(proxy_convs or 0) - len(set(ids)),
            lost_logs=len(ids) - stored(),
            duplicate_logs=int(duplicates or 0),
        )
        store.close()
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGINT)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        srv.cleanup()
    res["machine"] = {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2), "note": "shared 2-core CPU"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("args",)}, indent=2))


if __name__ == "__main__":
    main()
