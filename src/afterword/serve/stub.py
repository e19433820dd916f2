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

    python -m afterword.serve.stub --port 9000 --delay-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["create_stub_app"]


def _reply_text(body: dict[str, Any]) -> str:
    msgs = body.get("messages") or []
    if body.get("model") == "echo-system":
        return "\n".join(str(m.get("content", "")) for m in msgs if m.get("role") == "system")
    last = next((m for m in reversed(msgs) if m.get("role") == "user"), {})
    return f"echo: {last.get('content', '')}"


def create_stub_app(delay_ms: float = 0.0) -> Starlette:
    requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)

    async def chat(request: Request) -> Response:
        body = json.loads(await request.body())
        requests.append({"body": body, "headers": dict(request.headers)})
        model = str(body.get("model", ""))
        if model.startswith("status-"):
            code = int(model.split("-", 1)[1])
            err = {
                "error": {"message": f"stub says {code}", "type": "stub_error", "param": None, "code": f"stub_{code}"}
            }
            return JSONResponse(err, status_code=code, headers={"retry-after": "1", "x-stub-error": str(code)})
        delay = float(model.split("-", 1)[1]) if model.startswith("delay-") else delay_ms
        if delay:
            await asyncio.sleep(delay / 1000)
        text = _reply_text(body)
        created = int(time.time())
        usage = {"prompt_tokens": 7, "completion_tokens": len(text.split()), "total_tokens": 7 + len(text.split())}
        if body.get("stream"):

            async def events() -> AsyncIterator[bytes]:
                base = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": created, "model": model}
                first = {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
                yield f"data: {json.dumps(first)}\n\n".encode()
                words = text.split(" ")
                drip = float(model.split("-", 1)[1]) / 1000 if model.startswith("drip-") else 0.0
                for i, w in enumerate(words):
                    if drip:
                        await asyncio.sleep(drip)
                    piece = w if i == 0 else " " + w
                    ev = {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                    yield f"data: {json.dumps(ev)}\n\n".encode()
                last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}
                yield f"data: {json.dumps(last)}\n\n".encode()
                yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream", headers={"x-stub": "stream"})
        return JSONResponse(
            {
                "id": "chatcmpl-stub",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": usage,
            },
            headers={"x-stub": "json", "x-ratelimit-remaining-requests": "99"},
        )

    async def models(request: Request) -> Response:
        requests.append({"body": None, "headers": dict(request.headers)})
        return JSONResponse({"object": "list", "data": [{"id": "stub", "object": "model", "owned_by": "afterword"}]})

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)])
    app.state.requests = requests
    return app


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    args = ap.parse_args()
    uvicorn.run(create_stub_app(args.delay_ms), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
