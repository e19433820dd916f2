"""``afterword serve``: an OpenAI-compatible proxy that logs and remembers.

Apps point their OpenAI SDK at the proxy instead of the model server and get
capture and memory with no code change. Per request the proxy

1. authenticates the caller's afterword API key (hashed in the store, cached
   in process; see :mod:`afterword.serve.keys`),
2. reads the body defensively (size limit, strict UTF-8, JSON depth limit),
3. injects the user's memories into the messages (best effort, time-boxed),
4. forwards to the upstream with a pooled async httpx client and its own key,
5. streams or returns the reply, passing the upstream's status, errors and
   rate-limit headers through unchanged,
6. hands the exchange, with the messages *as the app sent them*, to a
   :class:`~afterword.capture.CaptureLogger`, which writes in the background.

The store is never on the request path: if it is down at startup the proxy
keeps retrying to open it, logs go to a durable spool meanwhile, and the
spool is replayed once the store answers (ids are content hashes, so replay
never duplicates). Only key verification needs the store, and it falls back
to recently verified keys while the store is down.

The assistant message's id (what feedback and credit attach to) comes back
in the ``X-Afterword-Message-Id`` header and the ``afterword_message_id`` body
field. A streamed reply's id depends on text not yet generated when headers
go out, so streams carry it in a final SSE comment line instead
(``: afterword_message_id=<id>``), which SSE clients ignore.

A stream the upstream breaks (or stops feeding) mid-way ends with an OpenAI-style
error event, ``data: {"error": {...}}``, instead of ``data: [DONE]``, so the SDKs
raise ``APIError`` rather than hand back a cut-off answer as a whole one; the log
keeps the partial reply, marked ``incomplete`` with the ``upstream_error`` code.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from fastapi import FastAPI, Request
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse

from afterword.capture.logger import CaptureLogger, assign_ids
from afterword.capture.wrap import to_message
from afterword.errors import StoreError
from afterword.records import Conversation, Message, utcnow
from afterword.serve.errors import ProxyError, error_body, error_response
from afterword.serve.journal import Journal, recover_journals
from afterword.serve.keys import KeyCache
from afterword.serve.proxy_config import CONFIG_ENV, ProxyConfig
from afterword.serve.spool import SharedSpool
from afterword.serve.upstream import (
    FastUpstream,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from afterword.serve.upstream import available as fast_upstream_available
from afterword.store.store import Store

__all__ = ["create_app", "app_from_env", "ProxyState", "USER_HEADER", "SESSION_HEADER", "MESSAGE_ID_HEADER"]

log = logging.getLogger("afterword.serve")

USER_HEADER = "x-afterword-user"
SESSION_HEADER = "x-afterword-session"
MESSAGE_ID_HEADER = "X-Afterword-Message-Id"

# Not forwarded from the upstream's response: hop-by-hop, recomputed, or not the client's business.
_DROP_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
        "server",
        "date",
        "set-cookie",
    }
)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _too_deep(obj: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if d > limit:
            return True
        children = o.values() if isinstance(o, dict) else o
        stack.extend((c, d + 1) for c in children if isinstance(c, dict | list))
    return False


def _clean_text(s: Any) -> Any:
    """Lone surrogates (legal in JSON escapes) cannot be stored as UTF-8: replace them."""
    if isinstance(s, str) and not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            return s.encode("utf-8", "replace").decode("utf-8")
    return s


def _response_headers(upstream: httpx.Response | UpstreamResponse) -> dict[str, str]:
    return {k: v for k, v in upstream.headers.items() if k.lower() not in _DROP_RESPONSE_HEADERS}


class _StreamAccumulator:
    """Rebuilds the assistant message from SSE ``data:`` payloads (content, tool calls, usage)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.model: str | None = None
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None

    def add(self, data: bytes) -> None:
        try:
            chunk = json.loads(data)
        except ValueError:
            return
        if not isinstance(chunk, dict):
            return
        self.model = chunk.get("model") or self.model
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for ch in chunk.get("choices") or []:
            if not isinstance(ch, dict):
                continue
            self.finish_reason = ch.get("finish_reason") or self.finish_reason
            delta = ch.get("delta") or {}
            if not isinstance(delta, dict):
                continue
            if isinstance(delta.get("content"), str):
                self.parts.append(delta["content"])
            for tc in delta.get("tool_calls") or []:
                if isinstance(tc, dict):
                    self._merge_tool_call(tc)

    def _merge_tool_call(self, tc: dict[str, Any]) -> None:
        idx = tc.get("index", len(self.tool_calls))
        cur = self.tool_calls.setdefault(idx, {"type": "function", "function": {"name": "", "arguments": ""}})
        if tc.get("id"):
            cur["id"] = tc["id"]
        fn = tc.get("function") or {}
        if isinstance(fn, dict):
            cur["function"]["name"] += fn.get("name") or ""
            cur["function"]["arguments"] += fn.get("arguments") or ""

    def message(self, latency_ms: float, complete: bool, error: str | None = None) -> Message:
        """The reply so far. Not ``complete``: the client left or the upstream broke (``error``,
        its code), and the metadata says so, so the store never holds it as a whole answer."""
        usage = self.usage or {}
        metadata: dict[str, Any] = {} if complete else {"incomplete": True}
        if error is not None:
            metadata["upstream_error"] = error
        return Message(
            role="assistant",
            content=_clean_text("".join(self.parts)),
            tool_calls=[self.tool_calls[i] for i in sorted(self.tool_calls)] or None,
            model=self.model,
            latency_ms=latency_ms,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            metadata=metadata,
        )


def _reply_from_json(data: dict[str, Any], latency_ms: float) -> Message:
    choices = data.get("choices") or []
    msg = choices[0].get("message") if choices and isinstance(choices[0], dict) else None
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    out = to_message(msg) if isinstance(msg, dict) else Message(role="assistant", content="")
    out.content = _clean_text(out.content)
    out.model = data.get("model") if isinstance(data.get("model"), str) else None
    out.latency_ms = latency_ms
    out.prompt_tokens = usage.get("prompt_tokens")
    out.completion_tokens = usage.get("completion_tokens")
    return out


class _Call:
    """One chat completion on its way through: what is logged once the reply is known."""

    def __init__(self, state: ProxyState, records: list[Message] | None, user: str | None, session: str | None):
        self.state = state
        self.records = records
        self.user = user
        self.session = session
        self.injection: Any = None
        self.t0 = time.perf_counter()

    def finish(self, reply: Message) -> str | None:
        """Queue the exchange for the store; returns the assistant message id. Never raises."""
        if self.records is None:
            return None
        try:
            now = utcnow()
            msgs = [m.model_copy() for m in self.records]
            for m in msgs:
                m.created_utc = now
            reply.created_utc = now
            conv = Conversation(messages=[*msgs, reply], user_id=self.user, external_id=self.session, source="proxy")
            assign_ids(conv)
            if self.state.journal is not None:  # durable before the reply goes out
                self.state.journal.append(conv)
            self.state.logger.log(conv)
            mid = conv.messages[-1].id
        except Exception as exc:
            log.warning("afterword: could not log a call: %s", exc)
            return None
        self.state.credit(self.injection, mid, self.user)
        return mid


class _ProxyLogger(CaptureLogger):
    """The capture logger, plus: it writes at most once per ``linger_s`` (under load many calls
    share one transaction, whose fixed cost is most of a small one's), and tells the journal how
    far it got."""

    def __init__(self, store: Store | None, spool: SharedSpool, linger_s: float) -> None:
        self.linger_s = linger_s
        self.processed = 0  # calls taken to the store or the spool, in queue order
        self.journal: Journal | None = None
        super().__init__(store, spool)

    def _write(self, batch: list[Conversation]) -> None:
        super()._write(batch)
        self.processed += len(batch)
        if self.journal is not None:
            try:
                self.journal.done(self.processed)
            except Exception as exc:
                log.warning("afterword: journal clean-up failed: %s", exc)

    def _pause(self) -> None:
        if self.linger_s:
            time.sleep(self.linger_s)  # calls queue up meanwhile (journaled); the next write takes them all


class ProxyState:
    """Everything one worker holds: settings, upstream client, store, logger, keys, memory."""

    def __init__(self, config: ProxyConfig, injector: Any = None) -> None:
        self.config = config
        self._injector_override = injector
        self.store: Store | None = None
        self.spool = SharedSpool(config.spool_path)
        self.logger = _ProxyLogger(None, self.spool, config.log_linger_s)
        self.journal: Journal | None = None  # opened in start(), in the serving process
        self.journal_dir = self.spool.path.with_name(self.spool.path.name + ".journal")
        self.keys = KeyCache(None, "proxy", ttl_s=config.key_cache_ttl_s)
        self.injector: Any = None
        self.http: httpx.AsyncClient | None = None
        self.fast: FastUpstream | None = None  # non-streamed chat completions, when the upstream is http://
        self._credit_pool = ThreadPoolExecutor(1, thread_name_prefix="afterword-credit")
        self._tasks: list[asyncio.Task[None]] = []
        self._store_lock = threading.Lock()
        self._memory_slots = asyncio.Semaphore(config.memory_concurrency)
        self._warned: dict[str, float] = {}
        self.memory_skipped = 0  # requests forwarded without memory (busy, slow or failing)
        headers = {"Authorization": f"Bearer {config.upstream_key}"} if config.upstream_key else {}
        self._upstream_headers = {"Content-Type": "application/json", **headers}

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        try:
            self.journal = Journal(self.journal_dir)
            self.logger.journal = self.journal
        except OSError as exc:  # the proxy still works; only a SIGKILL could lose queued logs
            log.warning("afterword: no write-ahead journal (%s)", exc)
        self.http = httpx.AsyncClient(
            base_url=cfg.upstream,
            timeout=httpx.Timeout(cfg.upstream_timeout_s, connect=cfg.connect_timeout_s),
            # Few idle connections: httpcore checks every pooled connection on each request.
            limits=httpx.Limits(max_connections=cfg.max_connections, max_keepalive_connections=cfg.max_keepalive),
        )
        if fast_upstream_available(cfg.upstream):
            self.fast = FastUpstream(
                cfg.upstream,
                headers=self._upstream_headers,
                connect_timeout_s=cfg.connect_timeout_s,
                read_timeout_s=cfg.upstream_timeout_s,
                max_connections=cfg.max_connections,
                max_idle=cfg.max_keepalive,
            )
        await run_in_threadpool(self.try_open_store)
        self._tasks.append(asyncio.create_task(self._maintain()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.http is not None:
            await self.http.aclose()
        if self.fast is not None:
            await self.fast.aclose()
        await run_in_threadpool(self.logger.close)
        if self.journal is not None:
            self.journal.close(self.logger.processed)
        self._credit_pool.shutdown(wait=True)

    def try_open_store(self) -> bool:
        """Open the store if it is not open yet. Blocking; never raises."""
        with self._store_lock:
            if self.store is not None:
                return True
            try:
                store = Store(self.config.store_url)
            except Exception as exc:
                log.warning("afterword: store unavailable (%s); logs are spooled until it answers", exc)
                return False
            self.store = store
            self.keys.store = store
            self.logger.store = store
            if self.config.memory:
                self.injector = self._injector_override or self._make_injector(store, self.config.memory_config)
                self._warm_up(self.injector)
        self.replay()
        return True

    @staticmethod
    def _make_injector(store: Store, config: Any) -> Any:
        try:
            from afterword.memory import MemoryInjector  # late: memory pulls in the embedder
        except Exception as exc:  # memory is optional: the proxy still logs
            log.warning("afterword: memory injection disabled (%s)", exc)
            return None
        try:
            return MemoryInjector(store, config)
        except Exception as exc:
            log.warning("afterword: memory injection disabled (%s)", exc)
            return None

    @staticmethod
    def _warm_up(injector: Any) -> None:
        """Load the embedder and index now, not on the first request (it would time out)."""
        if injector is None:
            return
        try:
            injector.inject([{"role": "user", "content": "warm up"}], user_id=None)
        except Exception as exc:
            log.warning("afterword: memory warm-up failed: %s", exc)

    def replay(self) -> int:
        """Replay the spool, and the journals of dead workers. Blocking; never raises."""
        if self.store is None:
            return 0
        n = 0
        try:
            n += recover_journals(self.journal_dir, self.store)
            if self.spool.has_pending():
                n += self.spool.replay(self.store)
        except Exception as exc:
            log.warning("afterword: replay failed (%s); will retry", exc)
        return n

    async def _maintain(self) -> None:
        """Reopen a store that was down at startup; replay the spool when idle."""
        while True:
            if self.store is None:
                await asyncio.sleep(self.config.store_retry_s)
                await run_in_threadpool(self.try_open_store)
            else:
                await asyncio.sleep(self.config.replay_interval_s)
                await run_in_threadpool(self.replay)

    # -- per request ---------------------------------------------------------------

    async def authorize(self, request: Request) -> None:
        if not self.config.require_key:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ProxyError(
                401,
                "Missing API key: send 'Authorization: Bearer aw-...' (create one with 'afterword keys create').",
                "authentication_error",
                "missing_api_key",
                {"WWW-Authenticate": "Bearer"},
            )
        ok = self.keys.cached(token)
        if ok is None:
            try:
                ok = await run_in_threadpool(self.keys.check, token)
            except StoreError:
                raise ProxyError(
                    503, "Cannot verify the API key: the store is unavailable.", "server_error", "store_unavailable"
                ) from None
        if not ok:
            raise ProxyError(
                401,
                "Invalid or revoked API key.",
                "authentication_error",
                "invalid_api_key",
                {"WWW-Authenticate": "Bearer"},
            )

    async def read_json(self, request: Request) -> dict[str, Any]:
        cfg = self.config
        limit = cfg.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ProxyError.bad_request("Invalid Content-Length header.", "invalid_content_length")
            if int(declared) > limit:
                raise ProxyError(413, f"Request body over {limit} bytes.", "invalid_request_error", "body_too_large")
        buf = bytearray()

        async def receive() -> None:
            async for chunk in request.stream():
                buf.extend(chunk)
                if len(buf) > limit:
                    raise ProxyError(
                        413, f"Request body over {limit} bytes.", "invalid_request_error", "body_too_large"
                    )

        try:
            async with asyncio.timeout(cfg.body_timeout_s):  # no extra task per request, unlike wait_for
                await receive()
        except TimeoutError:
            raise ProxyError(
                408, "Request body not received in time.", "invalid_request_error", "body_timeout"
            ) from None
        try:
            text = buf.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProxyError.bad_request(
                f"Request body is not valid UTF-8 (byte {exc.start}).", "invalid_utf8"
            ) from None
        try:
            body = json.loads(text, parse_constant=_reject_constant)
        except RecursionError:
            raise ProxyError.bad_request("Request JSON is nested too deeply.", "json_too_deep") from None
        except ValueError as exc:
            raise ProxyError.bad_request(f"Request body is not valid JSON: {exc}", "invalid_json") from None
        if not isinstance(body, dict):
            raise ProxyError.bad_request("Request body must be a JSON object.", "invalid_request")
        if _too_deep(body, cfg.max_json_depth):
            raise ProxyError.bad_request(
                f"Request JSON is nested deeper than {cfg.max_json_depth} levels.", "json_too_deep"
            )
        return body

    def identity(self, request: Request, body: dict[str, Any]) -> tuple[str | None, str | None]:
        user = request.headers.get(USER_HEADER) or body.get("user")
        session = request.headers.get(SESSION_HEADER)
        user = user if isinstance(user, str) and user else None
        for name, value in (("user", user), ("session", session)):
            if value is not None and len(value) > self.config.max_id_chars:
                raise ProxyError.bad_request(
                    f"The {name} id is over {self.config.max_id_chars} characters.", f"{name}_too_long"
                )
        return user, session or None

    async def inject(self, call: _Call, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The messages with the user's memories, or as sent when memory is off, slow, busy or failing.

        At most ``memory_concurrency`` retrievals run at once; a request that finds them all
        busy goes on without memory rather than queueing behind them (load shedding), and
        one that waits past ``memory_timeout_s`` is forwarded as sent.
        """
        injector = self.injector
        if injector is None:
            return messages
        if self._memory_slots.locked():
            self.memory_skipped += 1
            self._warn("memory-busy", "afterword: memory retrieval saturated; some requests go without memory")
            return messages
        await self._memory_slots.acquire()
        job = asyncio.ensure_future(run_in_threadpool(injector.inject, messages, user_id=call.user))
        job.add_done_callback(lambda _: self._memory_slots.release())  # when the thread is really done
        try:
            injection = await asyncio.wait_for(asyncio.shield(job), self.config.memory_timeout_s)
        except Exception as exc:  # memory is best effort: forward the request as sent
            self.memory_skipped += 1
            self._warn("memory-failed", f"afterword: memory injection failed or timed out: {exc!r}")
            return messages
        new = getattr(injection, "messages", None)
        if not isinstance(new, list):
            return messages
        call.injection = injection
        return new

    def _warn(self, key: str, message: str, every_s: float = 60.0) -> None:
        """A warning at most once a minute per kind: under load the same one would flood the log."""
        now = time.monotonic()
        if now - self._warned.get(key, -every_s) >= every_s:
            self._warned[key] = now
            log.warning(message)

    def credit(self, injection: Any, message_id: str | None, user: str | None) -> None:
        """Record which memories shaped ``message_id``, off the request path."""
        if injection is None or message_id is None or self.injector is None or not getattr(injection, "items", None):
            return
        injector = self.injector

        def run() -> None:
            try:
                injector.record_injection(injection, message_id=message_id, user_id=user)
            except Exception as exc:
                log.warning("afterword: could not record a memory injection: %s", exc)

        with contextlib.suppress(RuntimeError):  # shutting down
            self._credit_pool.submit(run)

    def upstream_error(self, exc: httpx.HTTPError | UpstreamError) -> ProxyError:
        if isinstance(exc, httpx.TimeoutException | UpstreamTimeout):
            return ProxyError(
                504,
                f"The upstream did not answer in time ({type(exc).__name__}).",
                "upstream_error",
                "upstream_timeout",
            )
        if isinstance(exc, httpx.ConnectError | UpstreamUnreachable):
            return ProxyError(502, f"Cannot reach the upstream: {exc}", "upstream_error", "upstream_unreachable")
        return ProxyError(
            502, f"The upstream connection failed: {type(exc).__name__}: {exc}", "upstream_error", "upstream_failed"
        )

    async def chat_completions(self, request: Request) -> Response:
        await self.authorize(request)
        body = await self.read_json(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise ProxyError.bad_request("'messages' must be a non-empty array of message objects.", "invalid_messages")
        user, session = self.identity(request, body)
        try:
            records: list[Message] | None = [to_message(m) for m in messages]
        except Exception:  # an odd message the upstream may still accept: forward it, skip the log
            records = None
        call = _Call(self, records, user, session)
        forwarded = await self.inject(call, messages)
        if forwarded is not messages:
            body = {**body, "messages": forwarded}
        try:
            payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        except (UnicodeEncodeError, ValueError):
            raise ProxyError.bad_request(
                "Request JSON holds text that is not valid Unicode.", "invalid_unicode"
            ) from None
        if body.get("stream") is True:
            return await self._stream(call, payload)
        return await self._complete(call, payload)

    async def _complete(self, call: _Call, payload: bytes) -> Response:
        try:
            if self.fast is not None:
                up: httpx.Response | UpstreamResponse = await self.fast.post("/chat/completions", payload)
            else:
                assert self.http is not None
                up = await self.http.post("/chat/completions", content=payload, headers=self._upstream_headers)
        except (httpx.HTTPError, UpstreamError) as exc:
            raise self.upstream_error(exc) from None
        latency_ms = (time.perf_counter() - call.t0) * 1000
        headers = _response_headers(up)
        data: Any = None
        if up.status_code < 300:
            with contextlib.suppress(ValueError):
                data = json.loads(up.content)
        if not isinstance(data, dict):  # an error, or a body we cannot read: pass it through untouched
            return Response(up.content, status_code=up.status_code, headers=headers)
        try:
            reply = _reply_from_json(data, latency_ms)
        except Exception:
            return Response(up.content, status_code=up.status_code, headers=headers)
        mid = call.finish(reply)
        if mid is None:
            return Response(up.content, status_code=up.status_code, headers=headers)
        data["afterword_message_id"] = mid
        headers[MESSAGE_ID_HEADER] = mid
        body = json.dumps(data, ensure_ascii=False).encode("utf-8")
        return Response(body, status_code=up.status_code, headers=headers)

    async def _stream(self, call: _Call, payload: bytes) -> Response:
        assert self.http is not None
        req = self.http.build_request(
            "POST",
            "/chat/completions",
            content=payload,
            headers={**self._upstream_headers, "Accept": "text/event-stream"},
        )
        try:
            up = await self.http.send(req, stream=True)
        except httpx.HTTPError as exc:
            raise self.upstream_error(exc) from None
        if up.status_code >= 300:
            try:
                content = await up.aread()
            except httpx.HTTPError as exc:
                raise self.upstream_error(exc) from None
            finally:
                await up.aclose()
            return Response(content, status_code=up.status_code, headers=_response_headers(up))
        return StreamingResponse(
            self._relay(call, up),
            status_code=up.status_code,
            headers=_response_headers(up),
            background=BackgroundTask(up.aclose),  # also when the relay never started
        )

    async def _relay(self, call: _Call, up: httpx.Response) -> AsyncIterator[bytes]:
        """Forward the SSE bytes as they come; note the reply; log it when the stream ends.

        If the upstream breaks mid-stream (the status line is long gone), the client gets an
        OpenAI-style error event, ``data: {"error": {...}}``, and no ``data: [DONE]``: the SDKs
        raise on it (``openai.APIError``), so a cut-off answer never passes for a whole one. The
        reply is logged as far as it got, marked ``incomplete``.
        """
        acc = _StreamAccumulator()
        logged = False
        buf = b""
        at_event_start = True  # the last line forwarded ended an event (or nothing went out yet)

        def finish(complete: bool, error: str | None = None) -> bytes:
            nonlocal logged
            logged = True
            mid = call.finish(acc.message((time.perf_counter() - call.t0) * 1000, complete, error))
            return f": afterword_message_id={mid}\n\n".encode() if mid else b""

        try:
            async for chunk in up.aiter_bytes():
                buf += chunk
                out = bytearray()
                while (nl := buf.find(b"\n")) >= 0:
                    line, buf = buf[: nl + 1], buf[nl + 1 :]
                    stripped = line.strip()
                    if stripped.startswith(b"data:"):
                        data = stripped[5:].strip()
                        if data == b"[DONE]":
                            out += finish(True)
                        else:
                            acc.add(data)
                    out += line
                    at_event_start = not stripped
                if out:
                    yield bytes(out)
            if buf:
                yield buf
            if not logged:  # an upstream that ends without [DONE]
                yield finish(True)
        except httpx.HTTPError as exc:  # headers are gone: tell the client in the stream itself
            log.warning("afterword: upstream stream broke: %s", exc)
            if not logged:  # past [DONE] the client has its whole answer: nothing to add
                err = self.upstream_error(exc)
                # A half-received line is dropped, and an event left open is closed first, so the
                # error is an event of its own rather than spliced into the upstream's last one.
                out = bytearray(b"" if at_event_start else b"\n")
                out += finish(False, err.code)
                event = error_body(err.message, err.type, err.code)
                out += b"data: " + json.dumps(event, ensure_ascii=False).encode("utf-8") + b"\n\n"
                yield bytes(out)  # and end the stream here, without [DONE]
        finally:
            if not logged:  # the client went away: keep what was said, marked
                finish(False)
            await up.aclose()  # last: when the client left, this await may itself be cancelled

    async def models(self, request: Request) -> Response:
        await self.authorize(request)
        assert self.http is not None
        try:
            up = await self.http.get("/models", headers=self._upstream_headers)
        except httpx.HTTPError as exc:
            raise self.upstream_error(exc) from None
        return Response(up.content, status_code=up.status_code, headers=_response_headers(up))

    def health(self) -> dict[str, Any]:
        return {
            "ok": True,
            "store": "up" if self.store is not None else "down",
            "spool_pending": self.spool.has_pending(),
            "memory": self.injector is not None,
            "memory_skipped": self.memory_skipped,
            "auth": self.config.require_key,
            "logged": self.logger.written,
            "spooled": self.logger.spooled,
        }


def _internal_error(exc: Exception) -> Response:
    log.exception("afterword: unexpected proxy error")
    return error_response(500, f"Internal proxy error: {type(exc).__name__}", "server_error", "internal_error")


class _ProxyApp(FastAPI):
    """FastAPI, except that ``POST /v1/chat/completions`` goes straight to its handler.

    The hot route skips FastAPI's and Starlette's middleware and routing layers (error
    telemetry, body limit, exit stack, exception middleware, router: a tenth of the proxy's
    CPU per request) and handles its errors itself, exactly as the exception handlers
    installed by ``_install`` would. Every other request takes the usual way.
    """

    hot: Any = None  # the ProxyState, set by _app_for

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        state = self.hot
        if (
            state is not None
            and scope["type"] == "http"
            and scope["path"] == "/v1/chat/completions"
            and scope["method"] == "POST"
            and not self.root_path
        ):
            try:
                response = await state.chat_completions(Request(scope, receive))
            except ProxyError as exc:
                response = exc.response()
            except Exception as exc:
                response = _internal_error(exc)
            await response(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _install(app: FastAPI, state: ProxyState) -> None:
    @app.exception_handler(ProxyError)
    async def _proxy_error(_: Request, exc: ProxyError) -> Response:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, str(exc.detail), "invalid_request_error", kind, exc.headers)

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> Response:
        return _internal_error(exc)

    # Plain Starlette routes: FastAPI's parameter solving and response validation would only add latency.
    async def chat_completions(request: Request) -> Response:
        return await state.chat_completions(request)

    async def models(request: Request) -> Response:
        return await state.models(request)

    async def health(_: Request) -> JSONResponse:
        return JSONResponse(state.health())

    app.add_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_route("/v1/models", models, methods=["GET"])
    app.add_route("/healthz", health, methods=["GET"])


def create_app(
    store_url: str | None,
    upstream: str,
    *,
    require_key: bool = True,
    memory: bool | Any = True,
    spool_path: str | os.PathLike[str] | None = None,
    **settings: Any,
) -> FastAPI:
    """The proxy as an ASGI app. ``settings`` are further :class:`ProxyConfig` fields.

    ``memory`` is True (inject with ``afterword.memory.MemoryInjector``), False, or
    an injector object of your own (``inject`` and ``record_injection``).

    Keys are required by default; ``afterword serve`` turns that off only on a
    loopback host. The store is opened (and migrated) when the app starts.
    """
    config = ProxyConfig(
        store_url=store_url,
        upstream=upstream,
        require_key=require_key,
        memory=memory is not False and memory is not None,
        spool_path=os.fspath(spool_path) if spool_path is not None else None,
        **settings,
    )
    return _app_for(config, None if isinstance(memory, bool) else memory)


def _app_for(config: ProxyConfig, injector: Any = None, freeze_gc: bool = False) -> FastAPI:
    state = ProxyState(config, injector)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.start()
        if freeze_gc:
            # Everything loaded so far (SQLAlchemy, pydantic, the app) lives as long as the worker: keep it
            # out of the collector's full passes, each of which would otherwise stall every request for
            # tens of milliseconds to walk some 100,000 objects that never die.
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            await state.stop()

    app = _ProxyApp(title="afterword proxy", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.afterword = state
    _install(app, state)
    app.hot = state
    return app


def app_from_env() -> FastAPI:
    """The app factory uvicorn workers call (``afterword.serve.proxy:app_from_env``), configured by
    ``$AFTERWORD_SERVE_CONFIG`` (a ProxyConfig as JSON)."""
    raw = os.environ.get(CONFIG_ENV)
    if not raw:
        raise RuntimeError(f"{CONFIG_ENV} is not set; start the proxy with 'afterword serve'")
    # A worker process is ours alone: hand the GIL between the event loop and the writer thread
    # every 1 ms instead of 5, so a batch being written never holds up a request for long.
    sys.setswitchinterval(0.001)
    return _app_for(ProxyConfig.model_validate_json(raw), freeze_gc=True)
