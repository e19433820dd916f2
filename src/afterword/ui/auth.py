"""Who may use the review UI, and proof that a write came from its own page.

**Authentication** is required whenever the UI listens on a non-loopback
address. A reviewer signs in once with an API key of scope ``ui`` or ``all``
(checked by :func:`afterword.serve.keys.verify_key`; when that module is not
part of the build, by the same rule here: sha256 of the key against
``api_keys.key_hash``, not revoked). Sign-in sets an opaque, random session
cookie (``HttpOnly``, ``SameSite=Strict``); the key itself is never stored in
the browser. The server keeps, per session, only the sha256 of the key that
opened it, and every request that relies on the cookie checks that this key
is still active (:class:`KeyCheck`, cached for at most a couple of seconds),
so revoking a key ends its sessions at once. Scripts may instead send
``Authorization: Bearer <key>``.

**Host**: on loopback, where there is no sign-in, only requests whose
``Host`` names the loopback interface (``localhost``, ``127.0.0.1``,
``[::1]``, any port) are served (:func:`host_is_loopback`). Otherwise a page
on ``attacker.example`` whose DNS name is rebound to 127.0.0.1 would be
same-origin with the UI and could read and write through it.

**CSRF**: every state-changing request that relies on the cookie must carry
the ``X-CSRF-Token`` header equal to the ``aw_csrf`` cookie (a double-submit
token, set with ``SameSite=Strict``), and its ``Origin``, when sent, must be
the UI's own. Another site can make a browser send the cookies but can
neither read the token nor set the header. This holds on loopback too,
where there is no sign-in: a page on any site could otherwise post to
``localhost``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import threading
import time

import sqlalchemy as sa

from afterword.store import schema as t
from afterword.store.store import Store

__all__ = [
    "is_loopback",
    "host_is_loopback",
    "check_key",
    "key_digest",
    "digest_active",
    "KeyCheck",
    "Sessions",
    "SESSION_COOKIE",
    "CSRF_COOKIE",
    "CSRF_HEADER",
    "csrf_ok",
]

SESSION_COOKIE = "aw_session"
CSRF_COOKIE = "aw_csrf"
CSRF_HEADER = "x-csrf-token"


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_is_loopback(host_header: str | None) -> bool:
    """True when a ``Host`` header (name or address, optional port) names the loopback interface."""
    if not host_header:
        return False
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1] or [::1]:8765
        end = host.find("]")
        if end < 0 or (host[end + 1 :] and not _is_port(host[end + 1 :])):
            return False
        name = host[1:end]
    elif host.count(":") == 1:  # name:port or v4:port
        name, port = host.split(":")
        if not _is_port(":" + port):
            return False
    else:  # a bare name, a v4 address, or a bare v6 address
        name = host
    return bool(name) and is_loopback(name)


def _is_port(suffix: str) -> bool:
    return suffix.startswith(":") and suffix[1:].isdigit() and len(suffix) <= 6


def key_digest(key: str) -> str:
    """The sha256 a key is stored under (the same as :func:`afterword.serve.keys.hash_key`)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def digest_active(store: Store, digest: str) -> bool:
    """True when the key stored under ``digest`` is active and valid for the UI."""
    q = sa.select(t.api_keys.c.scope).where(t.api_keys.c.key_hash == digest, t.api_keys.c.revoked_utc.is_(None))
    with store.read() as conn:
        scope = conn.execute(q).scalar()
    return scope in ("ui", "all")


def check_key(store: Store, key: str) -> bool:
    """True when ``key`` is an active API key valid for the UI."""
    try:
        from afterword.serve.keys import verify_key
    except ImportError:
        verify_key = None
    if verify_key is not None:
        return bool(verify_key(store, key, "ui"))
    if not key or len(key) > 256:
        return False
    return digest_active(store, key_digest(key))


class KeyCheck:
    """Is the key behind a session still active? Asked of the store, a positive answer kept ``ttl_s``.

    ``ttl_s`` bounds how long a revoked key's sessions keep working (default 2 s;
    0 asks the store on every request). Negative answers are not cached: a
    revoked key never comes back. Blocking: call it off the event loop.
    """

    def __init__(self, store: Store, ttl_s: float = 2.0) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._ok_at: dict[str, float] = {}

    def active(self, digest: str | None) -> bool:
        if not digest:
            return False
        now = time.monotonic()
        with self._lock:
            at = self._ok_at.get(digest)
        if at is not None and now - at < self.ttl_s:
            return True
        ok = digest_active(self.store, digest)
        with self._lock:
            if ok:
                self._ok_at[digest] = now
                if len(self._ok_at) > 10_000:  # bounded: drop the stalest
                    for d, _ in sorted(self._ok_at.items(), key=lambda kv: kv[1])[:5_000]:
                        del self._ok_at[d]
            else:
                self._ok_at.pop(digest, None)
        return ok


class Sessions:
    """Signed-in browser sessions: random token -> (reviewer name, key digest, expiry), in memory."""

    def __init__(self, ttl_s: float = 12 * 3600) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._by_token: dict[str, tuple[str, str | None, float]] = {}

    def start(self, who: str, key_digest: str | None = None) -> str:
        """A new session for ``who``, opened with the key stored under ``key_digest``."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._by_token[token] = (who, key_digest, time.monotonic() + self.ttl_s)
        return token

    def lookup(self, token: str | None) -> tuple[str, str | None] | None:
        """(reviewer, key digest) of a live session, or None."""
        if not token:
            return None
        with self._lock:
            hit = self._by_token.get(token)
            if hit is None:
                return None
            if hit[2] < time.monotonic():
                del self._by_token[token]
                return None
            return hit[0], hit[1]

    def who(self, token: str | None) -> str | None:
        hit = self.lookup(token)
        return hit[0] if hit else None

    def end_key(self, key_digest: str) -> int:
        """End every session opened with the key stored under ``key_digest``; how many ended."""
        with self._lock:
            gone = [tok for tok, v in self._by_token.items() if v[1] == key_digest]
            for tok in gone:
                del self._by_token[tok]
        return len(gone)

    def end(self, token: str | None) -> None:
        with self._lock:
            self._by_token.pop(token or "", None)


def csrf_ok(cookie: str | None, header: str | None, origin: str | None, host: str | None) -> bool:
    """The double-submit check, plus same-origin when the browser says where it came from."""
    if not cookie or not header or not hmac.compare_digest(cookie, header):
        return False
    if origin and host:
        return origin.split("://", 1)[-1].rstrip("/") == host
    return True
