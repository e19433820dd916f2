"""Capture from code: wrap an OpenAI-compatible client, and record feedback.

``wrap(client)`` returns an object that behaves like the client; its
``chat.completions.create`` (sync or async, streaming or not) is forwarded
unchanged and the exchange is logged in the background. The response gets
an ``afterword_message_id`` attribute (streams too, once consumed) for
:func:`feedback`. With ``memory=True`` the relevant memories are injected
into the system prompt first (see ``afterword.memory``); the log keeps the
messages as the application sent them, so resent histories still dedupe.

Nothing here may break the application's call: logging failures are spooled
(``capture.spool``) and memory failures fall back to the plain request.
"""

from __future__ import annotations

import contextlib
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
    def __init__(self, logger: CaptureLogger, user_id: str | None, session_id: str | None, memory: Any) -> None:
        self.logger = logger
        self.user_id = user_id
        self.session_id = session_id
        self.memory = memory

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
            self.logger.log(conv)
            mid = conv.messages[-1].id
            if injection is not None and self.memory is not None:
                self.memory.record_injection(injection, message_id=mid, user_id=user)
            return mid
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
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.model: str | None = None
        self.usage: Any = None

    def add(self, chunk: Any) -> None:
        self.model = getattr(chunk, "model", None) or self.model
        if getattr(chunk, "usage", None):
            self.usage = chunk.usage
        for ch in getattr(chunk, "choices", None) or []:
            delta = getattr(ch, "delta", None)
            if delta is not None and getattr(delta, "content", None):
                self.parts.append(delta.content)

    def message(self, latency_ms: float) -> Message:
        return Message(
            role="assistant",
            content="".join(self.parts),
            model=self.model,
            latency_ms=latency_ms,
            prompt_tokens=getattr(self.usage, "prompt_tokens", None),
            completion_tokens=getattr(self.usage, "completion_tokens", None),
        )


class _Stream:
    """Forwards a sync stream chunk by chunk; logs once it is exhausted or closed."""

    def __init__(self, inner: Any, done: Callable[[Message], str | None], t0: float) -> None:
        self._inner = inner
        self._done = done
        self._t0 = t0
        self._acc = _StreamAccumulator()
        self._logged = False
        self.afterword_message_id: str | None = None

    def __iter__(self) -> Iterator[Any]:
        try:
            for chunk in self._inner:
                self._acc.add(chunk)
                yield chunk
        finally:
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
    def __aiter__(self) -> AsyncIterator[Any]:
        return self._agen()

    async def _agen(self) -> AsyncIterator[Any]:
        try:
            async for chunk in self._inner:
                self._acc.add(chunk)
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
        if self._async:
            return self._acreate(**kwargs)
        kwargs, original, user, session, inj = self._ctx.prepare(kwargs)
        t0 = time.perf_counter()
        resp = self._inner.create(**kwargs)
        if kwargs.get("stream"):
            return _Stream(resp, lambda msg: self._ctx.record(original, msg, user, session, inj), t0)
        mid = self._ctx.record(
            original, _reply_from_response(resp, (time.perf_counter() - t0) * 1000), user, session, inj
        )
        _tag(resp, mid)
        return resp

    async def _acreate(self, **kwargs: Any) -> Any:
        kwargs, original, user, session, inj = self._ctx.prepare(kwargs)
        t0 = time.perf_counter()
        resp = await self._inner.create(**kwargs)
        if kwargs.get("stream"):
            return _AsyncStream(resp, lambda msg: self._ctx.record(original, msg, user, session, inj), t0)
        mid = self._ctx.record(
            original, _reply_from_response(resp, (time.perf_counter() - t0) * 1000), user, session, inj
        )
        _tag(resp, mid)
        return resp

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
        import inspect

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
    """
    st = _store_or_none(store)
    logger = CaptureLogger(st, spool)
    _loggers.append(logger)
    injector = None
    if memory is True and st is not None:
        from afterword.memory import MemoryInjector  # late: memory pulls in the embedder

        injector = MemoryInjector(st)
    elif memory not in (False, None, True):
        injector = memory
    return Wrapped(client, _Ctx(logger, user_id, session_id, injector))


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
