"""A lean HTTP/1.1 client for the proxy's hot path: one non-streamed POST to the upstream.

httpx costs the proxy about 2 ms of CPU per forwarded request (its connection
pool checks every pooled connection's socket on each request, and every call
goes through several layers of async context managers): more than everything
else the proxy does per request together. This client does only what the
proxy needs for a chat completion that is not streamed: keep-alive
connections in a LIFO pool, a request written in one ``write()``, and the
response parsed by ``httptools`` (the C parser uvicorn uses), in a plain
``asyncio.Protocol``. It costs a tenth of httpx.

Semantics kept from the httpx client it stands in for:

- ``connect_timeout_s`` to open a connection, ``read_timeout_s`` of silence
  while waiting for the response (not a limit on the whole response);
- at most ``max_connections`` requests at once, further ones wait;
- at most ``max_idle`` idle connections are kept;
- a request that fails on a *reused* connection before a single response byte
  arrived (the upstream closed an idle connection just as we sent) is retried
  once on a fresh connection, as HTTP clients do;
- ``gzip``/``deflate`` bodies are decoded (we never ask for them).

Errors are :class:`UpstreamTimeout`, :class:`UpstreamUnreachable` (cannot
connect) and :class:`UpstreamFailed` (the connection broke or the response
was not HTTP). Streaming, ``/models`` and https upstreams stay on httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
import zlib
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "FastUpstream",
    "UpstreamResponse",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnreachable",
    "UpstreamFailed",
    "available",
]

try:
    import httptools
except ImportError:  # the `serve` extra is not installed: the proxy uses httpx for everything
    httptools = None


def available(base_url: str) -> bool:
    """True when this client can serve ``base_url``: plain http, no credentials in the URL, no HTTP
    proxy configured for it in the environment (httpx would honour one), and httptools installed."""
    if httptools is None:
        return False
    parts = urlsplit(base_url)
    if parts.scheme != "http" or not parts.hostname or parts.username or parts.password:
        return False
    return not (urllib.request.getproxies().get("http") and not urllib.request.proxy_bypass(parts.hostname))


class UpstreamError(Exception):
    """The upstream could not be used for this request."""


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamUnreachable(UpstreamError):
    pass


class UpstreamFailed(UpstreamError):
    pass


class UpstreamResponse:
    __slots__ = ("status_code", "headers", "content")

    def __init__(self, status_code: int, headers: dict[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers  # lower-case names; repeated headers joined with ", " (as httpx does)
        self.content = content


class _Conn(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout_s: float) -> None:
        self.loop = loop
        self.read_timeout_s = read_timeout_s
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.parser: Any = None
        self.waiter: asyncio.Future[UpstreamResponse] | None = None
        self.received = False  # any byte of the current response
        self.last_rx = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.headers_done = False
        self.complete = False
        self.framed = False  # Content-Length or chunked: the end of the body is known without EOF

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is None or self.waiter.done():
            return
        if self.headers_done and not self.framed:  # a body delimited by the end of the connection
            self._finish()
        else:
            self._fail(UpstreamFailed(f"the upstream closed the connection ({exc or 'EOF'})"))

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # bytes while idle: the connection is not usable any more
            self.close()
            return
        self.received = True
        self.last_rx = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamFailed("the upstream tried to upgrade the connection"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamFailed(f"invalid HTTP response from the upstream: {exc}"))

    # -- httptools callbacks -----------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        val = value.decode("latin-1")
        old = self.headers.get(key)
        self.headers[key] = val if old is None else f"{old}, {val}"

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200:  # an interim response (100 Continue): the real one follows
            self.headers = {}
            return
        self.headers_done = True
        self.framed = "content-length" in self.headers or "chunked" in self.headers.get("transfer-encoding", "")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.headers_done:
            self._finish()

    # -- request / response --------------------------------------------------------------------------

    def start(self, data: bytes) -> asyncio.Future[UpstreamResponse]:
        self._reset()
        self.parser = httptools.HttpResponseParser(self)
        self.received = False
        self.waiter = self.loop.create_future()
        self.last_rx = self.loop.time()
        self.timer = self.loop.call_later(self.read_timeout_s, self._check_timeout)
        assert self.transport is not None
        self.transport.write(data)
        return self.waiter

    def _check_timeout(self) -> None:
        self.timer = None
        if self.waiter is None or self.waiter.done():
            return
        idle = self.loop.time() - self.last_rx
        if idle >= self.read_timeout_s:
            self._fail(UpstreamTimeout(f"no bytes from the upstream for {self.read_timeout_s:g} s"))
            self.close()
        else:
            self.timer = self.loop.call_later(self.read_timeout_s - idle, self._check_timeout)

    def _finish(self) -> None:
        if self.complete:
            return
        self.complete = True
        content = b"".join(self.body)
        enc = self.headers.get("content-encoding", "").strip().lower()
        if enc in ("gzip", "x-gzip", "deflate"):
            try:
                content = zlib.decompress(content, 47 if enc != "deflate" else zlib.MAX_WBITS)
            except zlib.error:
                try:
                    content = zlib.decompress(content, -zlib.MAX_WBITS)  # raw deflate, as some servers send
                except zlib.error:
                    self._fail(UpstreamFailed(f"cannot decode the upstream's {enc} body"))
                    return
            self.headers.pop("content-encoding", None)
        if not self.parser.should_keep_alive():
            self.close()
        w, self.waiter = self.waiter, None
        self._cancel_timer()
        if w is not None and not w.done():
            w.set_result(UpstreamResponse(self.status, self.headers, content))

    def _fail(self, exc: UpstreamError) -> None:
        w, self.waiter = self.waiter, None
        self._cancel_timer()
        self.close()
        if w is not None and not w.done():
            w.set_exception(exc)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class FastUpstream:
    """Pooled keep-alive POSTs to one http:// upstream (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str],
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections: int,
        max_idle: int,
    ) -> None:
        if httptools is None:
            raise RuntimeError("httptools is not installed (pip install 'afterword[serve]')")
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"FastUpstream serves http:// URLs only, not {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        lines = [f"Host: {parts.netloc.rsplit('@', 1)[-1]}"]
        for k, v in headers.items():
            if any(c in f"{k}{v}" for c in "\r\n\0"):
                raise ValueError(f"invalid upstream header {k!r}")
            lines.append(f"{k}: {v}")
        self._head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_idle = max_idle
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Conn] = []
        self._open: set[_Conn] = set()

    async def post(self, path: str, content: bytes) -> UpstreamResponse:
        data = b"POST %s HTTP/1.1\r\n%s%d\r\n\r\n%s" % (
            (self.prefix + path).encode("latin-1"),
            self._head,
            len(content),
            content,
        )
        async with self._slots:
            conn = self._take_idle()
            if conn is not None:
                try:
                    return await self._send(conn, data)
                except UpstreamFailed:
                    if conn.received:  # the upstream had begun to answer: not safe to send again
                        raise
                # closed under us before any answer (an idle connection the upstream had just dropped)
            return await self._send(await self._connect(), data)

    def _take_idle(self) -> _Conn | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
            self._open.discard(conn)
        return None

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Conn(loop, self.read_timeout_s), self.host, self.port),
                self.connect_timeout_s,
            )
        except TimeoutError:
            raise UpstreamTimeout(f"connecting to the upstream took over {self.connect_timeout_s:g} s") from None
        except OSError as exc:
            raise UpstreamUnreachable(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        self._open.add(conn)
        return conn

    async def _send(self, conn: _Conn, data: bytes) -> UpstreamResponse:
        fut = conn.start(data)
        try:
            resp = await fut
        except BaseException:  # failed, timed out, or the client went away (cancelled): drop the connection
            conn._cancel_timer()
            conn.waiter = None
            conn.close()
            self._open.discard(conn)
            raise
        if conn.closed:
            self._open.discard(conn)
        elif len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            conn.close()
            self._open.discard(conn)
        return resp

    async def aclose(self) -> None:
        for conn in list(self._open):
            with contextlib.suppress(Exception):
                conn.close()
        self._open.clear()
        self._idle.clear()
