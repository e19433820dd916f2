"""Capture from code: wrap an OpenAI-compatible client, and record feedback.

``wrap(client)`` returns an object that behaves like the client; its
``chat.completions.create`` (sync or async, streaming or not) is forwarded
unchanged and the exchange is logged in the background. The response gets
an ``afterword_message_id`` attribute (streams too, once consumed) for
:func:`feedback`. With ``memory=True`` the relevant memories are injected
into the system prompt first (see ``afterword.memory``); the log keeps the
messages as the application sent them, so resent histories still dedupe.

Nothing here may break the application's call: logging failures are spooled
(``capture.spool``) and memory failures fall back to the plain request. The
call never waits on the store: the log and the memory-injection record are
written by a background thread.

Captured: ``chat.completions.create`` and ``chat.completions.parse``, on the
wrapped client and on ``with_options(...)``/``copy(...)`` of it, and
``chat.completions.with_raw_response.create`` when not streaming. A streamed
reply is reassembled (text and tool calls); with ``n > 1`` only choice 0 is
stored, as for a plain reply. Not captured: ``with_streaming_response``, a
streamed ``with_raw_response`` call, ``chat.completions.stream(...)``, and
``client.beta.*``; they pass through unlogged.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from afterword.capture.logger import CaptureLogger
from afterword.records import Conversation, Feedback, Message, feedback_kind, utcnow
from afterword.store.store import Store

__all__ = ["wrap", "feedback", "Wrapped", "to_message"]

log = logging.getLogger("afterword.capture")
_loggers: list[CaptureLogger] = []
_default_store: Store | None = None


def _open_default_store() -> Store:
    """The default store, opened on demand (a store that was down is retried by the logger)."""
    global _default_store
    if _default_store is None:
        _default_store = Store()
    return _default_store


def _store_or_none(store: Store | None) -> Store | None:
    global _default_store
    if store is not None:
        return store
    if _default_store is None:
        try:
            _default_store = Store()
        except Exception as exc:  # the app must still run; logs go to the spool
            log.warning("afterword: cannot open the store (%s); calls will be spooled", exc)
            return None
    return _default_store


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def to_message(m: Any) -> Message:
    """An OpenAI message (dict or SDK object) as a record."""
    role = _get(m, "role", "user")
    role = {"developer": "system", "function": "tool"}.get(role, role)
    calls = _get(m, "tool_calls")
    if calls:
        calls = [c if isinstance(c, dict) else c.model_dump() for c in calls]
    return Message(role=role, content=_get(m, "content") or "", tool_calls=calls or None)


class _Ctx:
    def __init__(
        self,
        logger: CaptureLogger,
        user_id: str | None,
        session_id: str | None,
        memory: Any,
        memory_wanted: bool = False,
    ) -> None:
        self.logger = logger
        self.user_id = user_id
        self.session_id = session_id
        self._memory = memory
        # memory=True while the store was down: build the injector once the logger reopens it.
        self._memory_wanted = memory_wanted and memory is None

    @property
    def memory(self) -> Any:
        if self._memory is None and self._memory_wanted and self.logger.store is not None:
            self._memory_wanted = False
            try:
                from afterword.memory import MemoryInjector  # late: memory pulls in the embedder

                self._memory = MemoryInjector(self.logger.store)
            except Exception as exc:  # memory is best-effort
                log.warning("afterword: memory injection disabled (%s)", exc)
        return self._memory

    def prepare(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[Any], str | None, str | None, Any]:
        meta = kwargs.pop("afterword", None) or {}
        user = meta.get("user_id") or kwargs.get("user") or self.user_id
        session = meta.get("session_id") or self.session_id
        original = list(kwargs.get("messages") or [])
        injection = None
        if self.memory is not None and original:
            try:
                injection = self.memory.inject(original, user_id=user)
                kwargs = {**kwargs, "messages": injection.messages}
            except Exception as exc:  # memory is best-effort
                log.warning("afterword: memory injection failed: %s", exc)
                injection = None
        return kwargs, original, user, session, injection

    def record(
        self, original: list[Any], reply: Message, user: str | None, session: str | None, injection: Any
    ) -> str | None:
        try:
            now = utcnow()
            msgs = [to_message(m) for m in original]
            for m in msgs:
                m.created_utc = now
            reply.created_utc = now
            conv = Conversation(messages=[*msgs, reply], user_id=user, external_id=session, source="sdk")
            memory = self._memory
            if injection is not None and memory is not None and getattr(injection, "items", True):

                def after() -> None:  # on the writer thread, once the reply is in the store (ids set by log)
                    memory.record_injection(injection, message_id=conv.messages[-1].id, user_id=user)

                self.logger.log(conv, after=after)
            else:
                self.logger.log(conv)
            return conv.messages[-1].id
        except Exception as exc:
            log.warning("afterword: could not log a call: %s", exc)
            return None


def _reply_from_response(resp: Any, latency_ms: float) -> Message:
    choice = resp.choices[0] if getattr(resp, "choices", None) else None
    msg = choice.message if choice is not None else None
    usage = getattr(resp, "usage", None)
    out = to_message(msg) if msg is not None else Message(role="assistant", content="")
    out.model = getattr(resp, "model", None)
    out.latency_ms = latency_ms
    out.prompt_tokens = getattr(usage, "prompt_tokens", None)
    out.completion_tokens = getattr(usage, "completion_tokens", None)
    return out


def _tag(obj: Any, mid: str | None) -> None:
    with contextlib.suppress(Exception):  # some response types forbid new attributes
        object.__setattr__(obj, "afterword_message_id", mid)


class _StreamAccumulator:
    """Rebuilds the assistant message from SDK stream chunks: text, tool calls, usage.

    Only choice 0 is kept (with ``n > 1`` the choices arrive interleaved), as a plain
    reply stores ``choices[0]``. Tool-call deltas are merged by their ``index`` the
    way the proxy does it (``afterword.serve.proxy``, which imports this package).
    """

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.model: str | None = None
        self.usage: Any = None

    def add(self, chunk: Any) -> None:
        self.model = _get(chunk, "model") or self.model
        if _get(chunk, "usage"):
            self.usage = _get(chunk, "usage")
        for ch in _get(chunk, "choices") or []:
            if (_get(ch, "index") or 0) != 0:
                continue
            delta = _get(ch, "delta")
            if delta is None:
                continue
            content = _get(delta, "content")
            if isinstance(content, str):
                self.parts.append(content)
            for tc in _get(delta, "tool_calls") or []:
                self._merge_tool_call(tc)

    def _merge_tool_call(self, tc: Any) -> None:
        idx = _get(tc, "index")
        if not isinstance(idx, int):
            idx = len(self.tool_calls)
        cur = self.tool_calls.setdefault(idx, {"type": "function", "function": {"name": "", "arguments": ""}})
        if _get(tc, "id"):
            cur["id"] = _get(tc, "id")
        if _get(tc, "type"):
            cur["type"] = _get(tc, "type")
        fn = _get(tc, "function")
        if fn is not None:
            cur["function"]["name"] += _get(fn, "name") or ""
            cur["function"]["arguments"] += _get(fn, "arguments") or ""

    def message(self, latency_ms: float) -> Message:
        return Message(
            role="assistant",
            content="".join(self.parts),
            tool_calls=[self.tool_calls[i] for i in sorted(self.tool_calls)] or None,
            model=self.model,
            latency_ms=latency_ms,
            prompt_tokens=_get(self.usage, "prompt_tokens"),
            completion_tokens=_get(self.usage, "completion_tokens"),
        )


class _Stream:
    """Forwards a sync stream chunk by chunk (``for`` or ``next()``); logs once, when it is
    exhausted, fails or is closed."""

    def __init__(self, inner: Any, done: Callable[[Message], str | None], t0: float) -> None:
        self._inner = inner
        self._done = done
        self._t0 = t0
        self._acc = _StreamAccumulator()
        self._logged = False
        self._it: Any = None
        self.afterword_message_id: str | None = None

    def __next__(self) -> Any:
        if self._logged:
            raise StopIteration
        try:
            if self._it is None:
                self._it = iter(self._inner)
            chunk = next(self._it)
        except BaseException:  # StopIteration included: the stream is over
            self._finish()
            raise
        self._acc.add(chunk)
        return chunk

    def __iter__(self) -> Iterator[Any]:
        try:
            while True:
                try:
                    chunk = self.__next__()
                except StopIteration:
                    return
                yield chunk
        finally:  # a ``break`` out of the loop logs too, once the loop lets go of the iterator
            self._finish()

    def _finish(self) -> None:
        if not self._logged:
            self._logged = True
            self.afterword_message_id = self._done(self._acc.message((time.perf_counter() - self._t0) * 1000))

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._finish()

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _AsyncStream(_Stream):
    def __next__(self) -> Any:
        raise TypeError("an async stream: use `async for` or `await anext(...)`")

    def __iter__(self) -> Iterator[Any]:
        raise TypeError("an async stream: use `async for` or `await anext(...)`")

    async def __anext__(self) -> Any:
        if self._logged:
            raise StopAsyncIteration
        try:
            if self._it is None:
                self._it = self._inner.__aiter__()
            chunk = await self._it.__anext__()
        except BaseException:  # StopAsyncIteration included
            self._finish()
            raise
        self._acc.add(chunk)
        return chunk

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._agen()

    async def _agen(self) -> AsyncIterator[Any]:
        try:
            while True:
                try:
                    chunk = await self.__anext__()
                except StopAsyncIteration:
                    return
                yield chunk
        finally:
            self._finish()

    async def close(self) -> None:  # type: ignore[override]
        try:
            await self._inner.close()
        finally:
            self._finish()

    async def __aenter__(self) -> _AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _Completions:
    def __init__(self, inner: Any, ctx: _Ctx, is_async: bool) -> None:
        self._inner = inner
        self._ctx = ctx
        self._async = is_async

    def create(self, **kwargs: Any) -> Any:
        return self._call(self._inner.create, kwargs)

    def parse(self, **kwargs: Any) -> Any:
        """``chat.completions.parse`` (structured outputs), logged like ``create``."""
        return self._call(self._inner.parse, kwargs)

    @property
    def with_raw_response(self) -> _RawCompletions:
        return _RawCompletions(self._inner.with_raw_response, self._ctx, self._async)

    def _call(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        if self._async:
            return self._acall(fn, kwargs)
        kwargs, original, user, session, inj = self._ctx.prepare(kwargs)
        t0 = time.perf_counter()
        resp = fn(**kwargs)
        if kwargs.get("stream"):
            return _Stream(resp, lambda msg: self._ctx.record(original, msg, user, session, inj), t0)
        mid = self._ctx.record(
            original, _reply_from_response(resp, (time.perf_counter() - t0) * 1000), user, session, inj
        )
        _tag(resp, mid)
        return resp

    async def _acall(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        kwargs, original, user, session, inj = self._ctx.prepare(kwargs)
        t0 = time.perf_counter()
        resp = await fn(**kwargs)
        if kwargs.get("stream"):
            return _AsyncStream(resp, lambda msg: self._ctx.record(original, msg, user, session, inj), t0)
        mid = self._ctx.record(
            original, _reply_from_response(resp, (time.perf_counter() - t0) * 1000), user, session, inj
        )
        _tag(resp, mid)
        return resp

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _RawCompletions:
    """``chat.completions.with_raw_response``: the raw response is returned unchanged; a
    non-streaming reply is parsed (the SDK caches it, so the app's ``.parse()`` gets the same,
    tagged object) and logged. Streaming raw calls pass through unlogged."""

    def __init__(self, inner: Any, ctx: _Ctx, is_async: bool) -> None:
        self._inner = inner
        self._ctx = ctx
        self._async = is_async

    def create(self, **kwargs: Any) -> Any:
        if self._async:
            return self._acreate(**kwargs)
        kwargs, original, user, session, inj = self._ctx.prepare(kwargs)
        t0 = time.perf_counter()
        raw = self._inner.create(**kwargs)
        if not kwargs.get("stream"):
            self._log(raw, raw.parse(), original, user, session, inj, t0)
        return raw

    async def _acreate(self, **kwargs: Any) -> Any:
        kwargs, original, user, session, inj = self._ctx.prepare(kwargs)
        t0 = time.perf_counter()
        raw = await self._inner.create(**kwargs)
        if not kwargs.get("stream"):
            parsed = raw.parse()
            if inspect.isawaitable(parsed):  # some SDK versions make it a coroutine
                parsed = await parsed
            self._log(raw, parsed, original, user, session, inj, t0)
        return raw

    def _log(self, raw: Any, parsed: Any, original: list[Any], user: Any, session: Any, inj: Any, t0: float) -> None:
        try:
            reply = _reply_from_response(parsed, (time.perf_counter() - t0) * 1000)
        except Exception as exc:
            log.warning("afterword: could not read a raw response: %s", exc)
            return
        mid = self._ctx.record(original, reply, user, session, inj)
        _tag(parsed, mid)
        _tag(raw, mid)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Chat:
    def __init__(self, inner: Any, ctx: _Ctx, is_async: bool) -> None:
        self._inner = inner
        self.completions = _Completions(inner.completions, ctx, is_async)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class Wrapped:
    """The wrapped client: ``chat.completions.create`` is captured, all else passes through."""

    def __init__(self, client: Any, ctx: _Ctx) -> None:
        self._client = client
        self._ctx = ctx
        # The SDK wraps ``create`` in a plain decorator: look through it, or AsyncOpenAI goes undetected.
        is_async = inspect.iscoroutinefunction(inspect.unwrap(client.chat.completions.create))
        self.chat = _Chat(client.chat, ctx, is_async)

    @property
    def afterword_logger(self) -> CaptureLogger:
        return self._ctx.logger

    def flush(self) -> None:
        """Block until every captured call so far is in the store (or the spool)."""
        self._ctx.logger.flush()

    def with_options(self, **kwargs: Any) -> Wrapped:
        """``client.with_options(...)``, still captured (same logger, ids and memory)."""
        return Wrapped(self._client.with_options(**kwargs), self._ctx)

    def copy(self, **kwargs: Any) -> Wrapped:
        """``client.copy(...)``, still captured."""
        return Wrapped(self._client.copy(**kwargs), self._ctx)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def wrap(
    client: Any,
    *,
    store: Store | None = None,
    user_id: str | None = None,
    session_id: str | None = None,
    memory: bool | Any = False,
    spool: Any = None,
) -> Wrapped:
    """Wrap an ``openai.OpenAI`` or ``openai.AsyncOpenAI`` client (or any look-alike).

    Per call, ``user=`` (the OpenAI field) or ``afterword={"user_id":..., "session_id":...}``
    override the defaults given here. ``memory=True`` injects memories from the store;
    pass a ``afterword.memory.MemoryInjector`` to configure it.

    Captured: ``chat.completions.create``/``parse`` (also on ``with_options()``/``copy()`` of the
    wrapped client) and non-streaming ``chat.completions.with_raw_response.create``. Streams log
    once consumed or closed, keeping choice 0 only (text and tool calls). Not captured (passed
    through unlogged): ``with_streaming_response``, streaming ``with_raw_response``,
    ``chat.completions.stream(...)`` and ``client.beta.*``. If the default store cannot be opened
    now, calls are spooled and the store is retried in the background (every
    ``CaptureLogger.store_retry_s`` seconds); the spool is replayed once it opens.
    """
    st = _store_or_none(store)
    # The default store was down: the logger retries it in the background and replays the spool.
    logger = CaptureLogger(st, spool, opener=_open_default_store if st is None and store is None else None)
    _loggers.append(logger)
    injector = None
    if memory is True and st is not None:
        from afterword.memory import MemoryInjector  # late: memory pulls in the embedder

        injector = MemoryInjector(st)
    elif memory not in (False, None, True):
        injector = memory
    return Wrapped(client, _Ctx(logger, user_id, session_id, injector, memory_wanted=memory is True))


def feedback(
    message_id: str,
    *,
    thumbs: int | None = None,
    rating: float | None = None,
    comment: str | None = None,
    correction: str | None = None,
    store: Store | None = None,
    source: str = "user",
) -> str:
    """Record explicit feedback on a logged assistant message; returns the feedback id."""
    for lg in _loggers:  # the message may still be on its way to the store
        lg.flush()
    st = store or _store_or_none(None)
    if st is None:
        from afterword.errors import StoreError

        raise StoreError("no store available for feedback")
    kind = feedback_kind(thumbs=thumbs, rating=rating, comment=comment, correction=correction)
    if kind is None:
        raise ValueError("feedback needs thumbs, rating, comment or correction")
    return st.add_feedback(
        Feedback(
            kind=kind,
            message_id=message_id,
            thumbs=thumbs,
            rating=rating,
            comment=comment,
            correction=correction,
            source=source,
        )
    )
