"""API keys for the proxy and the UI: created once, stored only as a hash.

A key is ``aw-`` followed by 43 URL-safe random characters (256 bits). The
plaintext is returned exactly once, by :func:`create_key`; the ``api_keys``
table keeps its sha256, so a leaked database leaks no usable key. Because the
keys are long and random, a plain (unsalted) sha256 is enough: there is no
dictionary to attack, and an indexed lookup by hash keeps verification cheap.

``scope`` is ``proxy``, ``ui`` or ``all``; a key verifies for its own scope
and an ``all`` key for every scope. Revocation sets ``revoked_utc`` (the row
stays, so the list keeps its history).

:class:`KeyCache` is the proxy's in-process cache: a verified key is trusted
for ``ttl_s`` seconds (so a revocation takes effect within that time), and
while the store is unreachable a key verified within ``stale_s`` is still
accepted, so an outage of the store does not lock every client out.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from afterword.errors import NotFoundError, StoreError
from afterword.records import stable_id, utcnow
from afterword.store import schema as t
from afterword.store.store import Store, aware

__all__ = [
    "KEY_PREFIX",
    "SCOPES",
    "ApiKey",
    "KeyCache",
    "create_key",
    "verify_key",
    "revoke_key",
    "list_keys",
    "hash_key",
    "key_id",
    "get_key",
]

KEY_PREFIX = "aw-"
SCOPES = ("proxy", "ui", "all")


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret."""

    id: str
    name: str
    scope: str
    created_utc: datetime
    revoked_utc: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_utc is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "scope": self.scope,
            "created_utc": self.created_utc.isoformat(),
            "revoked_utc": self.revoked_utc.isoformat() if self.revoked_utc else None,
            "active": self.active,
        }


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def key_id(key: str) -> str:
    """The id a key is listed and revoked by (derived from its hash, so not secret)."""
    return stable_id("apikey", hash_key(key), n=12)


def _check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")


def create_key(store: Store, name: str, scope: str = "proxy") -> str:
    """Create a key and return its plaintext: the only time it is ever visible."""
    _check_scope(scope)
    if not name.strip():
        raise ValueError("a key needs a name")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    digest = hash_key(key)
    row = {
        "id": key_id(key),
        "name": name,
        "key_hash": digest,
        "scope": scope,
        "created_utc": utcnow(),
        "revoked_utc": None,
    }
    with store.write() as conn:
        conn.execute(t.api_keys.insert(), [row])
    return key


def _key_from_row(r: Any) -> ApiKey:
    created = aware(r.created_utc)
    assert created is not None
    return ApiKey(id=r.id, name=r.name, scope=r.scope, created_utc=created, revoked_utc=aware(r.revoked_utc))


def verify_key(store: Store, key: str, scope: str = "proxy") -> bool:
    """True when ``key`` is an active key valid for ``scope``. Raises StoreError if the store is down."""
    if not key or not key.startswith(KEY_PREFIX) or len(key) > 256:
        return False
    q = sa.select(t.api_keys.c.scope).where(t.api_keys.c.key_hash == hash_key(key), t.api_keys.c.revoked_utc.is_(None))
    with store.read() as conn:
        found = conn.execute(q).scalar()
    return found is not None and (found == scope or found == "all")


def revoke_key(store: Store, key_id: str) -> ApiKey:
    """Revoke a key by its id (see :func:`list_keys`); revoking twice is harmless."""
    with store.write() as conn:
        r = conn.execute(sa.select(t.api_keys).where(t.api_keys.c.id == key_id)).first()
        if r is None:
            raise NotFoundError("api key", key_id)
        if r.revoked_utc is None:
            conn.execute(t.api_keys.update().where(t.api_keys.c.id == key_id).values(revoked_utc=utcnow()))
        r = conn.execute(sa.select(t.api_keys).where(t.api_keys.c.id == key_id)).one()
    return _key_from_row(r)


def get_key(store: Store, key_id: str) -> ApiKey:
    with store.read() as conn:
        r = conn.execute(sa.select(t.api_keys).where(t.api_keys.c.id == key_id)).first()
    if r is None:
        raise NotFoundError("api key", key_id)
    return _key_from_row(r)


def list_keys(store: Store, *, include_revoked: bool = True) -> list[ApiKey]:
    q = sa.select(t.api_keys).order_by(t.api_keys.c.created_utc, t.api_keys.c.id)
    if not include_revoked:
        q = q.where(t.api_keys.c.revoked_utc.is_(None))
    with store.read() as conn:
        return [_key_from_row(r) for r in conn.execute(q)]


class KeyCache:
    """Verification results kept in memory (bounded, LRU), keyed by the key's hash.

    Positive results live ``ttl_s``; negative ones ``negative_ttl_s`` (short, so a
    new key works at once, but a flood of bad keys does not hammer the store).
    ``check`` raises StoreError only when the store is down and nothing usable is cached.
    """

    def __init__(
        self,
        store: Store | None,
        scope: str = "proxy",
        *,
        ttl_s: float = 30.0,
        negative_ttl_s: float = 2.0,
        stale_s: float = 3600.0,
        max_entries: int = 10_000,
    ) -> None:
        self.store = store
        self.scope = scope
        self.ttl_s = ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.stale_s = stale_s
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[bool, float]] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, key: str) -> bool | None:
        """The fresh cached answer for ``key``, or None when the store must be asked."""
        digest = hash_key(key)
        with self._lock:
            hit = self._entries.get(digest)
        if hit is None:
            return None
        ok, at = hit
        age = time.monotonic() - at
        return ok if age < (self.ttl_s if ok else self.negative_ttl_s) else None

    def check(self, key: str) -> bool:
        """Verify ``key`` (cache first, then the store). Blocking: call it off the event loop."""
        fresh = self.cached(key)
        if fresh is not None:
            return fresh
        digest = hash_key(key)
        try:
            if self.store is None:
                raise StoreError("no store")
            ok = verify_key(self.store, key, self.scope)
        except StoreError:
            with self._lock:
                hit = self._entries.get(digest)
            if hit is not None and hit[0] and time.monotonic() - hit[1] < self.stale_s:
                return True
            raise
        with self._lock:
            self._entries[digest] = (ok, time.monotonic())
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return ok

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
