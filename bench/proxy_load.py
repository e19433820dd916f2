"""Load on the proxy: N uvicorn workers on PostgreSQL (pgserver) in front of a stub upstream with a fixed delay.

An open-loop generator sends --rate requests/s for --seconds (each request scheduled at its own time, so a
slow server cannot slow the generator down and hide its latency), first straight to the stub (the
baseline) and then through the proxy. Overhead = proxy latency - direct latency, per percentile. At the end
the stored rows are counted against the requests that succeeded: every successful request's assistant
message id (X-Afterword-Message-Id) must be in the store exactly once. Loopback only.

The generator is a lean HTTP/1.1 client on raw asyncio protocols (uvloop when installed, keep-alive
connections, one request per connection at a time): on a small machine every process shares the same cores,
and an httpx client costs several times more CPU per request than the proxy's own work. ``--client httpx``
keeps the old generator for comparison.

Every phase also reports CPU time per request of each process group (generator, stub, proxy workers,
PostgreSQL), from /proc, so the figures mean something on a busy machine: the sum is the machine's cost of
one proxied request, and ``cores / sum`` the rate the machine can hold.

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
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import psutil

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


# -- CPU accounting ---------------------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds (user + system) of process groups, each a root pid and all its descendants."""

    def __init__(self, groups: dict[str, int]) -> None:
        self.groups = groups

    def _group(self, root: int) -> dict[int, float]:
        out: dict[int, float] = {}
        try:
            top = psutil.Process(root)
            procs = [top, *top.children(recursive=True)]
        except psutil.Error:
            return out
        for p in procs:
            try:
                c = p.cpu_times()
                out[p.pid] = c.user + c.system
            except psutil.Error:
                pass
        return out

    def snapshot(self) -> dict[str, dict[int, float]]:
        return {name: self._group(pid) for name, pid in self.groups.items()}

    @staticmethod
    def diff(a: dict[str, dict[int, float]], b: dict[str, dict[int, float]]) -> dict[str, float]:
        """Seconds used between two snapshots (a process that exited in between is not counted)."""
        return {name: round(sum(v - a.get(name, {}).get(pid, 0.0) for pid, v in b[name].items()), 3) for name in b}


# -- generators -------------------------------------------------------------------------------------------


def body_for(tag: str, i: int) -> bytes:
    return json.dumps(
        {
            "model": "stub",
            "user": f"{tag}-user{i % 50}",
            "messages": [{"role": "user", "content": f"{tag} request {i}: what is {i} plus {i}?"}],
        }
    ).encode()


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; responses must carry Content-Length (the stub's and proxy's do)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, str | None]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        w = self.waiter
        if w is None:
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        length, mid, close = 0, None, False
        for line in head[1:]:
            k, _, v = line.partition(":")
            k = k.strip().lower()
            if k == "content-length":
                length = int(v)
            elif k == "x-afterword-message-id":
                mid = v.strip()
            elif k == "connection" and v.strip().lower() == "close":
                close = True
        if len(self.buf) < end + 4 + length:
            return
        del self.buf[: end + 4 + length]
        self.waiter = None
        if close:
            self.closed = True
            assert self.transport is not None
            self.transport.close()
        if not w.done():
            w.set_result((int(head[0].split(" ", 2)[1]), mid))


async def _open_loop(
    n: int,
    rate: float,
    t_start: float,
    launch: Callable[[int], Coroutine[Any, Any, None]],
    lag_ms: list[float],
    errors: dict[str, int],
) -> float:
    """Start ``launch(i)`` for i = 0..n-1 at its own tick (``i / rate`` s after ``t_start``), whatever the
    earlier requests are doing; wait up to 60 s for them, count the unfinished; returns the wall time."""
    tasks = []
    for i in range(n):
        delay = t_start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            lag_ms.append(-delay * 1000)  # the generator itself fell behind its schedule
        tasks.append(asyncio.create_task(launch(i)))
    _, pending = await asyncio.wait(tasks, timeout=60)
    for task in pending:
        task.cancel()
    if pending:
        errors["unfinished"] = len(pending)
    return time.perf_counter() - t_start


async def load_raw(host: str, port: int, rate: float, seconds: float, tag: str, conns: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    lat: list[float] = []
    errors: dict[str, int] = {}
    ids: list[str] = []
    n = int(rate * seconds)
    lag_ms: list[float] = []
    idle: list[_Conn] = []
    opened = 0
    slot = asyncio.Semaphore(conns)
    prefix = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        "Content-Length: "
    ).encode()

    async def one(i: int, payload: bytes) -> None:
        nonlocal opened
        t0 = time.perf_counter()
        starts[i] = t0 - t_start
        async with slot:
            conn = None
            try:
                while idle:
                    c = idle.pop()
                    if not c.closed:
                        conn = c
                        break
                if conn is None:
                    _, conn = await loop.create_connection(_Conn, host, port)
                    opened += 1
                conn.waiter = loop.create_future()
                assert conn.transport is not None
                conn.transport.write(b"%s%d\r\n\r\n%s" % (prefix, len(payload), payload))
                status, mid = await conn.waiter
            except (OSError, ConnectionError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                if conn is not None and conn.transport is not None:
                    conn.transport.close()
                return
            if not conn.closed:
                idle.append(conn)
        dt = (time.perf_counter() - t0) * 1000
        trace.append((starts[i], dt))
        if status == 200:
            lat.append(dt)
            if mid:
                ids.append(mid)
        else:
            errors[str(status)] = errors.get(str(status), 0) + 1

    payloads = [body_for(tag, i) for i in range(n)]
    starts = [0.0] * n
    trace: list[tuple[float, float]] = []
    t_start = time.perf_counter()
    wall = await _open_loop(n, rate, t_start, lambda i: one(i, payloads[i]), lag_ms, errors)
    for c in idle:
        if c.transport is not None:
            c.transport.close()
    worst = sorted(trace, key=lambda x: -x[1])[: max(1, n // 100)]
    return _summary(n, rate, wall, lat, errors, lag_ms, ids) | {
        "connections_opened": opened,
        # When the slowest 1% were sent (s into the run): spread out = machine noise, bunched = a stall.
        "slowest_1pct_sent_at_s": sorted(round(t, 1) for t, _ in worst),
    }


async def load_httpx(host: str, port: int, rate: float, seconds: float, tag: str, conns: int) -> dict[str, Any]:
    """The old generator: one httpx.AsyncClient (several times the CPU of ``load_raw`` per request)."""
    lat: list[float] = []
    errors: dict[str, int] = {}
    ids: list[str] = []
    n = int(rate * seconds)
    lag_ms: list[float] = []
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}/v1", limits=limits, timeout=30) as client:

        async def one(i: int) -> None:
            t0 = time.perf_counter()
            try:
                r = await client.post("/chat/completions", content=body_for(tag, i), headers=headers)
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

        wall = await _open_loop(n, rate, time.perf_counter(), one, lag_ms, errors)
    return _summary(n, rate, wall, lat, errors, lag_ms, ids)


def _summary(
    n: int, rate: float, wall: float, lat: list[float], errors: dict[str, int], lag_ms: list[float], ids: list[str]
) -> dict[str, Any]:
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


def run_phase(
    client: str, port: int, rate: float, seconds: float, tag: str, conns: int, meter: CpuMeter | None
) -> dict[str, Any]:
    gen = load_raw if client == "raw" else load_httpx
    before = meter.snapshot() if meter else None
    t_cpu, t_wall = time.process_time(), time.perf_counter()
    load0 = os.getloadavg()[0]
    res = _run(gen("127.0.0.1", port, rate, seconds, tag, conns))
    gen_cpu = time.process_time() - t_cpu
    res["wall_s"] = round(time.perf_counter() - t_wall, 1)
    res["load_avg_1m"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    if meter and before:
        used = meter.diff(before, meter.snapshot())
        used["generator"] = round(gen_cpu, 3)
        n = max(res["sent"], 1)
        res["cpu_s"] = used
        res["cpu_ms_per_request"] = {k: round(v * 1000 / n, 3) for k, v in used.items()}
        res["cpu_ms_per_request"]["total"] = round(sum(used.values()) * 1000 / n, 3)
    return res


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().split()[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=300)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--delay-ms", type=float, default=20)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--client", choices=["raw", "httpx"], default="raw", help="load generator (default: raw asyncio)")
    ap.add_argument("--no-direct", action="store_true", help="skip the direct-to-stub baseline")
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
        meter = CpuMeter({"stub": procs[0].pid, "proxy": procs[1].pid, "postgres": postmaster_pid(tmp / "pg")})
        # Each target is warmed up right before its own phase (connections opened, code paths hot).
        if not args.no_direct:
            run_phase(args.client, up, 50, 2, "warmup", args.connections, None)
            direct = run_phase(args.client, up, args.rate, args.seconds, "direct", args.connections, meter)
            direct.pop("ids")
        run_phase(args.client, px, 50, 2, "warmup", args.connections, None)
        proxied = run_phase(args.client, px, args.rate, args.seconds, "proxy", args.connections, meter)
        ids = proxied.pop("ids")
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
        if not args.no_direct:
            res.update(
                direct=direct,
                overhead_p50_ms=round(proxied["p50_ms"] - direct["p50_ms"], 2),
                overhead_p95_ms=round(proxied["p95_ms"] - direct["p95_ms"], 2),
            )
        n_stored = stored()
        res.update(
            proxy=proxied,
            successful_requests=len(ids),
            stored_logs=n_stored,
            logged_requests=int(proxy_convs or 0),
            logged_without_client_success=int(proxy_convs or 0) - len(set(ids)),
            lost_logs=len(ids) - n_stored,
            duplicate_logs=int(duplicates or 0),
        )
        cpu = proxied.get("cpu_ms_per_request")
        if cpu and cpu.get("total"):
            # What 2 (or N) cores could hold if nothing else ran: the capacity the CPU cost implies.
            res["projected_capacity_rps"] = round((os.cpu_count() or 1) * 1000 / cpu["total"])
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
