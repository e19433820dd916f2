"""A stub OpenAI-compatible upstream, for the proxy's tests and benchmarks.

It answers ``/v1/chat/completions`` after a fixed delay with an echo of the
last user message, streamed or not, and ``/v1/models``. The request's
``model`` field steers it, because that is what a proxy forwards untouched:

- ``status-429`` (any code): answer with that status and an OpenAI error body;
- ``echo-system``: the reply is the system prompt the stub received;
- ``delay-50``: wait 50 ms instead of the configured delay;
- ``drip-50``: stream with 50 ms between chunks.

Every request (body and headers) is kept in ``app.state.requests`` (the last
1,000), so a test can check what really reached the upstream.

``python -m afterword.serve.stub`` serves the same answers from a bare asyncio
server (``--asgi`` for the Starlette app on uvicorn), so that in a load test
on a small machine the stub leaves the CPU to the proxy under test:

    python -m afterword.serve.stub --port 9000 --delay-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

try:
    import httptools
except ImportError:  # without the `serve` extra, main() serves the Starlette app with uvicorn
    httptools = None

__all__ = ["create_stub_app"]


def _reply_text(body: dict[str, Any]) -> str:
    msgs = body.get("messages") or []
    if body.get("model") == "echo-system":
        return "\n".join(str(m.get("content", "")) for m in msgs if m.get("role") == "system")
    last = next((m for m in reversed(msgs) if m.get("role") == "user"), {})
    return f"echo: {last.get('content', '')}"


def _answer(body: dict[str, Any], delay_ms: float) -> tuple[int, dict[str, str], float, Any]:
    """What the stub answers to a chat completion: (status, headers, delay in s, payload).

    The payload is a JSON-able dict, or for ``stream`` a list of (pause in s, SSE event bytes).
    """
    model = str(body.get("model", ""))
    if model.startswith("status-"):
        code = int(model.split("-", 1)[1])
        err = {"error": {"message": f"stub says {code}", "type": "stub_error", "param": None, "code": f"stub_{code}"}}
        return code, {"retry-after": "1", "x-stub-error": str(code)}, 0.0, err
    delay = float(model.split("-", 1)[1]) if model.startswith("delay-") else delay_ms
    text = _reply_text(body)
    created = int(time.time())
    usage = {"prompt_tokens": 7, "completion_tokens": len(text.split()), "total_tokens": 7 + len(text.split())}
    if body.get("stream"):
        base = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": created, "model": model}
        first = {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
        events = [(0.0, f"data: {json.dumps(first)}\n\n".encode())]
        drip = float(model.split("-", 1)[1]) / 1000 if model.startswith("drip-") else 0.0
        for i, w in enumerate(text.split(" ")):
            piece = w if i == 0 else " " + w
            ev = {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            events.append((drip, f"data: {json.dumps(ev)}\n\n".encode()))
        last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}
        events.append((0.0, f"data: {json.dumps(last)}\n\n".encode()))
        events.append((0.0, b"data: [DONE]\n\n"))
        return 200, {"x-stub": "stream"}, delay / 1000, events
    reply = {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": usage,
    }
    return 200, {"x-stub": "json", "x-ratelimit-remaining-requests": "99"}, delay / 1000, reply


_MODELS = {"object": "list", "data": [{"id": "stub", "object": "model", "owned_by": "afterword"}]}


def create_stub_app(delay_ms: float = 0.0) -> Starlette:
    requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)

    async def chat(request: Request) -> Response:
        body = json.loads(await request.body())
        requests.append({"body": body, "headers": dict(request.headers)})
        status, headers, delay, payload = _answer(body, delay_ms)
        if delay:
            await asyncio.sleep(delay)
        if isinstance(payload, list):

            async def events() -> AsyncIterator[bytes]:
                for pause, data in payload:
                    if pause:
                        await asyncio.sleep(pause)
                    yield data

            return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
        return JSONResponse(payload, status_code=status, headers=headers)

    async def models(request: Request) -> Response:
        requests.append({"body": None, "headers": dict(request.headers)})
        return JSONResponse(_MODELS)

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)])
    app.state.requests = requests
    return app


class _RawStub(asyncio.Protocol):
    """The same stub as a bare asyncio server (httptools parser, no ASGI): on a small machine the
    upstream must not eat the CPU the proxy under test needs (about 0.1 ms per request, against
    0.5 ms for Starlette on uvicorn). One request at a time per connection."""

    def __init__(self, delay_ms: float) -> None:
        self.delay_ms = delay_ms
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(400, {}, b"bad request", close=True)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        url, raw = self.url.split(b"?", 1)[0], b"".join(self.body)
        method = self.parser.get_method()
        self.url, self.body = b"", []
        keep = self.parser.should_keep_alive()
        assert self.transport is not None
        self.transport.pause_reading()  # one at a time: the next request waits for this answer
        if url == b"/v1/models" and method == b"GET":
            self._send(200, {}, json.dumps(_MODELS).encode(), close=not keep)
            return
        if url != b"/v1/chat/completions" or method != b"POST":
            self._send(404, {}, b'{"detail":"Not Found"}', close=not keep)
            return
        try:
            body = json.loads(raw)
            status, headers, delay, payload = _answer(body if isinstance(body, dict) else {}, self.delay_ms)
        except ValueError:
            self._send(400, {}, b'{"detail":"invalid JSON"}', close=not keep)
            return
        loop = asyncio.get_running_loop()
        if isinstance(payload, list):
            loop.create_task(self._stream(delay, headers, payload, keep))
        elif delay:
            loop.call_later(delay, self._send, status, headers, json.dumps(payload).encode(), not keep)
        else:
            self._send(status, headers, json.dumps(payload).encode(), not keep)

    def _send(self, status: int, headers: dict[str, str], body: bytes, close: bool) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        conn = "close" if close else "keep-alive"
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n{extra}connection: {conn}\r\n\r\n"
        )
        t.write(head.encode("latin-1") + body)
        if close:
            t.close()
        else:
            t.resume_reading()

    async def _stream(
        self, delay: float, headers: dict[str, str], events: list[tuple[float, bytes]], keep: bool
    ) -> None:
        t = self.transport
        assert t is not None
        if delay:
            await asyncio.sleep(delay)
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        t.write(
            f"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n"
            f"{extra}\r\n".encode("latin-1")
        )
        for pause, data in events:
            if pause:
                await asyncio.sleep(pause)
            if t.is_closing():
                return
            t.write(b"%x\r\n%s\r\n" % (len(data), data))
        t.write(b"0\r\n\r\n")
        if keep:
            t.resume_reading()
        else:
            t.close()


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests"}


def serve_raw(host: str, port: int, delay_ms: float) -> None:
    """Serve the stub as a bare asyncio server (uvloop when installed) until interrupted."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _RawStub(delay_ms), host, port, backlog=1024)
        async with server:
            await server.serve_forever()

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--asgi", action="store_true", help="serve the Starlette app with uvicorn (default: bare asyncio)")
    args = ap.parse_args()
    if httptools is not None and not args.asgi:
        with contextlib.suppress(KeyboardInterrupt):
            serve_raw(args.host, args.port, args.delay_ms)
        return
    uvicorn.run(create_stub_app(args.delay_ms), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
