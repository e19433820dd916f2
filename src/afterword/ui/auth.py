"""Who may use the review UI, and proof that a write came from its own page.

**Authentication** is required whenever the UI listens on a non-loopback
address. A reviewer signs in once with an API key of scope ``ui`` or ``all``
(checked by :func:`afterword.serve.keys.verify_key`; when that module is not
part of the build, by the same rule here: sha256 of the key against
``api_keys.key_hash``, not revoked). Sign-in sets an opaque, random session
cookie (``HttpOnly``, ``SameSite=Strict``); the key itself is never stored in
the browser. Scripts may instead send ``Authorization: Bearer <key>``.

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

__all__ = ["is_loopback", "check_key", "Sessions", "SESSION_COOKIE", "CSRF_COOKIE", "CSRF_HEADER", "csrf_ok"]

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
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    q = sa.select(t.api_keys.c.scope).where(t.api_keys.c.key_hash == digest, t.api_keys.c.revoked_utc.is_(None))
    with store.read() as conn:
        scope = conn.execute(q).scalar()
    return scope in ("ui", "all")


class Sessions:
    """Signed-in browser sessions: random token -> (reviewer name, expiry), in memory."""

    def __init__(self, ttl_s: float = 12 * 3600) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._by_token: dict[str, tuple[str, float]] = {}

    def start(self, who: str) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._by_token[token] = (who, time.monotonic() + self.ttl_s)
        return token

    def who(self, token: str | None) -> str | None:
        if not token:
            return None
        with self._lock:
            hit = self._by_token.get(token)
            if hit is None:
                return None
            if hit[1] < time.monotonic():
                del self._by_token[token]
                return None
            return hit[0]

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
