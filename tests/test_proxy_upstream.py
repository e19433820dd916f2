"""The proxy's lean upstream client (``afterword.serve.upstream.FastUpstream``) against a raw socket server
that misbehaves on purpose: chunked and EOF-delimited bodies, gzip, an idle connection dropped by the
server (retried once), a server that goes silent (timeout), one that cannot be reached, and garbage."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

pytest.importorskip("httptools")

from afterword.serve.upstream import (  # noqa: E402
    FastUpstream,
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamUnreachable,
    available,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


async def _with_server(handler: Handler, body: Callable[[str, dict[str, Any]], Awaitable[None]]) -> dict[str, Any]:
    """Run ``handler`` (one call per request; return False to close the connection) and then ``body``."""
    stats: dict[str, Any] = {"connections": 0, "requests": []}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats["connections"] += 1
        n = 0
        while True:
            req = await _read_request(reader)
            if req is None:
                break
            stats["requests"].append(req)
            n += 1
            if not await handler(reader, writer, n):
                break
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        await body(f"http://127.0.0.1:{port}/v1", stats)
    return stats


def _client(url: str, **kw: Any) -> FastUpstream:
    kw.setdefault("read_timeout_s", 5.0)
    return FastUpstream(
        url,
        headers={"Content-Type": "application/json", "Authorization": "Bearer up"},
        connect_timeout_s=2.0,
        max_connections=8,
        max_idle=4,
        **kw,
    )


def _response(status: int, body: bytes, *headers: str) -> bytes:
    extra = "".join(h + "\r\n" for h in headers)
    return f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode() + body


def test_keep_alive_chunked_gzip_and_headers() -> None:
    async def handler(_r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            w.write(_response(200, b'{"a": 1}', "X-Thing: one", "x-thing: two"))
        elif n == 2:
            w.write(b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{"b\r\n5\r\n": 2}\r\n0\r\n\r\n')
        else:
            w.write(_response(429, gzip.compress(b'{"error": "slow down"}'), "content-encoding: gzip"))
        await w.drain()
        return True

    async def body(url: str, stats: dict[str, Any]) -> None:
        up = _client(url)
        r1 = await up.post("/chat/completions", b"{}")
        r2 = await up.post("/chat/completions", b'{"x": 1}')
        r3 = await up.post("/chat/completions", b"{}")
        await up.aclose()
        assert (r1.status_code, json.loads(r1.content), r1.headers["x-thing"]) == (200, {"a": 1}, "one, two")
        assert json.loads(r2.content) == {"b": 2}
        assert r3.status_code == 429 and r3.content == b'{"error": "slow down"}'
        assert "content-encoding" not in r3.headers

    stats = asyncio.run(_with_server(handler, body))
    assert stats["connections"] == 1  # one keep-alive connection for all three
    first = stats["requests"][0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"Authorization: Bearer up\r\n" in first and first.endswith(b"\r\n\r\n{}")


def test_eof_delimited_body_and_connection_close() -> None:
    async def handler(_r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + b'{"n": %d}' % n)
        await w.drain()
        return False

    async def body(url: str, stats: dict[str, Any]) -> None:
        up = _client(url)
        assert json.loads((await up.post("/chat/completions", b"{}")).content) == {"n": 1}
        assert json.loads((await up.post("/chat/completions", b"{}")).content) == {"n": 1}
        await up.aclose()

    assert asyncio.run(_with_server(handler, body))["connections"] == 2


def test_idle_connection_dropped_by_the_server_is_retried_once() -> None:
    async def handler(_r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> bool:
        w.write(_response(200, b"{}"))
        await w.drain()
        return False  # closes without "connection: close": the client finds out when it reuses it

    async def body(url: str, stats: dict[str, Any]) -> None:
        up = _client(url)
        for _ in range(3):
            assert (await up.post("/chat/completions", b"{}")).status_code == 200
            await asyncio.sleep(0)  # sometimes the close arrives before the next request, sometimes not
        await up.aclose()

    stats = asyncio.run(_with_server(handler, body))
    assert len(stats["requests"]) == 3  # each request reached the server exactly once


def test_silent_upstream_times_out_and_garbage_fails() -> None:
    conns = 0

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> bool:
        nonlocal conns
        conns += 1
        if conns == 1:
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{")  # then silence, until the client gives up
            await w.drain()
            await r.read()
            return False
        w.write(b"NOT HTTP AT ALL\r\n\r\n")
        await w.drain()
        return False

    async def body(url: str, stats: dict[str, Any]) -> None:
        up = _client(url, read_timeout_s=0.3)
        with pytest.raises(UpstreamTimeout):
            await up.post("/chat/completions", b"{}")
        with pytest.raises(UpstreamFailed):
            await up.post("/chat/completions", b"{}")
        await up.aclose()

    asyncio.run(_with_server(handler, body))


def test_unreachable_and_scheme() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]

    async def go() -> None:
        up = _client(f"http://127.0.0.1:{dead}/v1")
        with pytest.raises(UpstreamUnreachable):
            await up.post("/chat/completions", b"{}")

    asyncio.run(go())
    assert available("http://127.0.0.1:1/v1") and not available("https://api.example.com/v1")
    with pytest.raises(ValueError):
        FastUpstream("http://h/v1", headers={"X": "a\r\nb"}, connect_timeout_s=1, read_timeout_s=1,
                     max_connections=1, max_idle=1)  # fmt: skip


def test_bare_stub_answers_like_the_asgi_stub() -> None:
    """``python -m afterword.serve.stub`` (what the load bench and the fault tests run) is a bare asyncio
    server; it must answer as the Starlette stub does: JSON, errors with their headers, SSE, /models, 404."""
    import httpx

    from afterword.serve.stub import _RawStub

    async def go() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _RawStub(1.0), "127.0.0.1", 0)
        base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        async with server, httpx.AsyncClient(base_url=base) as c:
            msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
            r = await c.post("/chat/completions", json={"model": "m", "messages": msgs})
            assert r.status_code == 200 and r.headers["x-stub"] == "json"
            assert r.json()["choices"][0]["message"] == {"role": "assistant", "content": "echo: hi there"}
            r = await c.post("/chat/completions", json={"model": "echo-system", "messages": msgs})
            assert r.json()["choices"][0]["message"]["content"] == "be brief"
            r = await c.post("/chat/completions", json={"model": "status-429", "messages": msgs})
            assert r.status_code == 429 and r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "stub_429"
            r = await c.post("/chat/completions", json={"model": "drip-5", "messages": msgs, "stream": True})
            lines = [ln for ln in r.text.split("\n\n") if ln]
            assert lines[-1] == "data: [DONE]" and r.headers["content-type"].startswith("text/event-stream")
            deltas = [json.loads(ln[6:])["choices"][0]["delta"] for ln in lines[:-1] if ln.startswith("data:")]
            text = "".join(d.get("content", "") for d in deltas)
            assert text == "echo: hi there"
            assert (await c.get("/models")).json()["data"][0]["id"] == "stub"
            assert (await c.get("/nope")).status_code == 404
            r = await c.post("/chat/completions", json={"model": "m", "messages": msgs})  # still keep-alive after all
            assert r.status_code == 200

    asyncio.run(go())
