"""A stream that breaks upstream must break for the client too, and be logged as incomplete.

Real parts throughout: a real HTTP upstream on loopback (a raw ``http.server`` that writes the
chunked SSE body by hand, so it can hang up mid-stream exactly where a test wants), the proxy
under a real uvicorn server, and the official ``openai`` SDK as the client (raw ``httpx`` where
a test looks at the bytes).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa
import uvicorn

from afterword.serve import create_app
from afterword.store import Store
from afterword.store import schema as t

# -- the proxy under a real server (as in test_proxy.py, kept here so the two files evolve apart) --


class Running:
    def __init__(self, app: Any, server: uvicorn.Server, port: int) -> None:
        self.app = app
        self.server = server
        self.url = f"http://127.0.0.1:{port}"

    def flush(self) -> None:
        self.app.state.afterword.logger.flush()


@contextmanager
def serve(app: Any) -> Iterator[Running]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    try:
        yield Running(app, server, sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def sdk(p: Running) -> openai.OpenAI:
    return openai.OpenAI(base_url=p.url + "/v1", api_key="sk-client-key", max_retries=0, timeout=30)


def assistant_rows(db: str) -> list[Any]:
    s = Store(db)
    try:
        with s.read() as conn:
            return list(conn.execute(sa.select(t.messages).where(t.messages.c.role == "assistant")))
    finally:
        s.close()


# -- a real upstream that can die mid-stream ------------------------------------------------


def _event(obj: Any) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def _chunk(content: str | None = None, finish: str | None = None, role: bool = False) -> dict[str, Any]:
    delta: dict[str, Any] = {"role": "assistant"} if role else {}
    if content is not None:
        delta["content"] = content
    return {
        "id": "chatcmpl-brk",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "brk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


# What the upstream writes for each ``model``, before it either finishes the HTTP body or hangs up.
_SCRIPTS: dict[str, list[bytes]] = {
    # two events, then the connection drops (no [DONE], no chunked terminator)
    "break": [_event(_chunk(role=True, content="")), _event(_chunk("partial ")), _event(_chunk("answer"))],
    # the last event loses its blank line, then the connection drops
    "break-unterminated": [_event(_chunk(role=True, content="")), _event(_chunk("partial "))[:-1]],
    # half a data line, then the connection drops
    "break-midline": [_event(_chunk(role=True, content="")), _event(_chunk("partial ")), b'data: {"id": "chat'],
    # two events, then nothing at all (the proxy's read timeout must fire)
    "stall": [_event(_chunk(role=True, content="")), _event(_chunk("partial "))],
    # a healthy stream, for contrast
    "ok": [
        _event(_chunk(role=True, content="")),
        _event(_chunk("all ")),
        _event(_chunk("good")),
        _event(_chunk(finish="stop")),
        b"data: [DONE]\n\n",
    ],
}


class BreakingUpstream:
    """An OpenAI-style streaming upstream over real HTTP that misbehaves on request."""

    def __init__(self) -> None:
        self.release = threading.Event()  # lets a stalled response go on shutdown

        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                model = str(body.get("model"))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                for data in _SCRIPTS[model]:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                    time.sleep(0.02)
                if model == "ok":
                    self.wfile.write(b"0\r\n\r\n")
                elif model == "stall":
                    upstream.release.wait(30)
                self.wfile.flush()
                self.close_connection = True  # and for the broken ones: hang up mid-body

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> BreakingUpstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[BreakingUpstream]:
    with BreakingUpstream() as up:
        yield up


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "proxy.db")


@pytest.fixture
def proxy(upstream: BreakingUpstream, db: str, tmp_path: Path) -> Iterator[Running]:
    app = create_app(
        db,
        upstream.url,
        require_key=False,
        memory=False,
        spool_path=tmp_path / "spool.jsonl",
        upstream_timeout_s=1.0,
    )
    with serve(app) as p:
        yield p


def _rows(proxy: Running, db: str, user: str) -> list[Any]:
    deadline = time.monotonic() + 10
    while True:
        proxy.flush()
        rows = [r for r in assistant_rows(db) if r.user_id == user]
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def _body(model: str) -> dict[str, Any]:
    return {"model": model, "stream": True, "messages": [{"role": "user", "content": "tell me"}]}


# -- the SDK sees the failure ----------------------------------------------------------------


@pytest.mark.parametrize("model", ["break", "break-unterminated", "break-midline"])
def test_sdk_raises_when_the_upstream_breaks_mid_stream(proxy: Running, db: str, model: str) -> None:
    client = sdk(proxy)
    got: list[str] = []
    with pytest.raises(openai.APIError) as info:
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "tell me"}],
            stream=True,
            extra_headers={"X-Afterword-User": f"u-{model}"},
        )
        for chunk in stream:
            got.extend(c.delta.content or "" for c in chunk.choices)
    # an error in the stream, not a connection error or a JSON decode error of spliced events
    assert type(info.value) is openai.APIError
    assert isinstance(info.value.body, dict) and info.value.body["type"] == "upstream_error"
    assert info.value.body["code"] == "upstream_failed"
    assert "upstream" in info.value.message.lower()
    assert "".join(got).startswith("partial")

    rows = _rows(proxy, db, f"u-{model}")
    assert len(rows) == 1
    assert rows[0].metadata_json["incomplete"] is True
    assert rows[0].metadata_json["upstream_error"] == "upstream_failed"
    assert rows[0].content.startswith("partial")


def test_async_sdk_raises_too(proxy: Running, db: str) -> None:
    async def run() -> str:
        client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-x", max_retries=0, timeout=30)
        text = ""
        try:
            stream = await client.chat.completions.create(
                model="break",
                messages=[{"role": "user", "content": "tell me"}],
                stream=True,
                extra_headers={"X-Afterword-User": "async-u"},
            )
            async for chunk in stream:
                text += "".join(c.delta.content or "" for c in chunk.choices)
        finally:
            await client.close()
        return text

    with pytest.raises(openai.APIError) as info:
        asyncio.run(run())
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "upstream_failed"
    rows = _rows(proxy, db, "async-u")
    assert len(rows) == 1 and rows[0].metadata_json["incomplete"] is True


def test_a_read_timeout_mid_stream_is_an_error_too(proxy: Running, db: str) -> None:
    client = sdk(proxy)
    with pytest.raises(openai.APIError) as info:
        for _ in client.chat.completions.create(
            model="stall",
            messages=[{"role": "user", "content": "tell me"}],
            stream=True,
            extra_headers={"X-Afterword-User": "slow-u"},
        ):
            pass
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "upstream_timeout"
    rows = _rows(proxy, db, "slow-u")
    assert len(rows) == 1
    assert rows[0].metadata_json == {"incomplete": True, "upstream_error": "upstream_timeout"}
    assert rows[0].content == "partial "


# -- the bytes on the wire -------------------------------------------------------------------


def test_the_wire_ends_with_an_error_event_and_no_done(proxy: Running, db: str) -> None:
    with httpx.stream(
        "POST", proxy.url + "/v1/chat/completions", json=_body("break"), headers={"X-Afterword-User": "raw-u"}
    ) as r:
        assert r.status_code == 200  # headers went out before the upstream broke
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e.strip()]
    assert not any(e.strip() == "data: [DONE]" for e in events)
    last = events[-1].strip()
    assert last.startswith("data: ")
    err = json.loads(last[len("data: ") :])
    assert set(err) == {"error"} and set(err["error"]) == {"message", "type", "code"}
    assert err["error"]["type"] == "upstream_error" and err["error"]["code"] == "upstream_failed"
    # the message id still comes out, as a comment, and names the incomplete row
    comments = [e.strip() for e in events if e.strip().startswith(": afterword_message_id=")]
    assert len(comments) == 1
    mid = comments[0].split("=", 1)[1]
    rows = _rows(proxy, db, "raw-u")
    assert [r.id for r in rows] == [mid]
    assert rows[0].metadata_json["incomplete"] is True


def test_a_healthy_stream_is_unchanged(proxy: Running, db: str) -> None:
    client = sdk(proxy)
    stream = client.chat.completions.create(
        model="ok",
        messages=[{"role": "user", "content": "tell me"}],
        stream=True,
        extra_headers={"X-Afterword-User": "ok-u"},
    )
    assert "".join(c.delta.content or "" for ch in stream for c in ch.choices) == "all good"
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", json=_body("ok")) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]" and lines[-2].startswith(": afterword_message_id=")
    assert not any('"error"' in ln for ln in lines)
    rows = _rows(proxy, db, "ok-u")
    assert len(rows) == 1 and not rows[0].metadata_json and rows[0].content == "all good"
