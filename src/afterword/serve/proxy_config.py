"""Settings of the OpenAI-compatible proxy (:func:`afterword.serve.create_app`)."""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from afterword.memory.memory_config import MemoryConfig

__all__ = ["ProxyConfig", "is_loopback", "CONFIG_ENV"]

#: How ``afterword serve --workers N`` hands the settings to each worker process.
CONFIG_ENV = "AFTERWORD_SERVE_CONFIG"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: only this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ProxyConfig(BaseModel):
    """Every knob of the proxy, documented once. Unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid")

    upstream: str = Field(
        description="The upstream's OpenAI base URL, e.g. http://127.0.0.1:8080/v1 (``/v1`` is added to a bare host)."
    )
    store_url: str | None = Field(None, description="Store: SQLite path or database URL (default: $AFTERWORD_DB).")
    upstream_key: str | None = Field(
        default_factory=lambda: os.environ.get("AFTERWORD_UPSTREAM_KEY") or None,
        description="Bearer key sent to the upstream. Server-side only: clients' Authorization headers never pass.",
    )
    require_key: bool = Field(True, description="Require an afterword API key (Authorization: Bearer aw-...).")
    memory: bool = Field(True, description="Inject the user's memories into the request before forwarding.")
    memory_config: MemoryConfig = Field(
        default_factory=MemoryConfig, description="The memory layer's settings for injection (budget, gates, recall)."
    )
    memory_timeout_s: float = Field(
        1.0, gt=0, description="Injection that takes longer is abandoned; the request goes on without memory."
    )
    memory_concurrency: int = Field(
        4, ge=1, description="Retrievals at once per worker; past that, requests go on without memory (shedding)."
    )
    spool_path: str | None = Field(
        None, description="Durable spool for logs while the store is down (default: $AFTERWORD_SPOOL)."
    )
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Larger request bodies get 413.")
    max_json_depth: int = Field(64, ge=4, description="Deeper-nested request JSON gets 400.")
    max_id_chars: int = Field(256, ge=1, description="Longer user or session ids get 400.")
    body_timeout_s: float = Field(30.0, gt=0, description="A request body not received in this time gets 408.")
    connect_timeout_s: float = Field(10.0, gt=0, description="Connecting to the upstream; then 502.")
    upstream_timeout_s: float = Field(600.0, gt=0, description="Waiting for upstream bytes (read timeout); then 504.")
    max_connections: int = Field(256, ge=1, description="Connections to the upstream at once, per worker.")
    max_keepalive: int = Field(16, ge=0, description="Idle upstream connections kept open, per worker.")
    log_linger_s: float = Field(
        0.1,
        ge=0,
        description="The background writer waits this long after a write, so calls share transactions "
        "(the journal keeps the calls queued meanwhile durable).",
    )
    key_cache_ttl_s: float = Field(30.0, ge=0, description="A verified key is trusted this long (revocation delay).")
    store_retry_s: float = Field(2.0, gt=0, description="While the store cannot be opened, retry this often.")
    replay_interval_s: float = Field(5.0, gt=0, description="How often the spool is replayed when the store is up.")

    @field_validator("upstream")
    @classmethod
    def _normalise_upstream(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"upstream must be an http(s) URL, not {v!r}")
        v = v.rstrip("/")
        return v + "/v1" if parts.path in ("", "/") else v
