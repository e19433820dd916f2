"""Serving: the OpenAI-compatible proxy and its API keys.

``create_app`` builds the proxy as an ASGI app (see :mod:`afterword.serve.proxy`
for what it does per request); ``run`` serves it with uvicorn, in one or more
worker processes. Keys are created, listed, verified and revoked with the
functions from :mod:`afterword.serve.keys`; only their hashes are stored.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from afterword.serve.errors import ProxyError, error_body
from afterword.serve.keys import ApiKey, KeyCache, create_key, list_keys, revoke_key, verify_key
from afterword.serve.proxy import MESSAGE_ID_HEADER, SESSION_HEADER, USER_HEADER, create_app
from afterword.serve.proxy_config import CONFIG_ENV, ProxyConfig, is_loopback

__all__ = [
    "create_app",
    "run",
    "ProxyConfig",
    "ProxyError",
    "error_body",
    "is_loopback",
    "ApiKey",
    "KeyCache",
    "create_key",
    "verify_key",
    "revoke_key",
    "list_keys",
    "USER_HEADER",
    "SESSION_HEADER",
    "MESSAGE_ID_HEADER",
]


def run(config: ProxyConfig, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, **uvicorn_kw: Any) -> None:
    """Serve the proxy until interrupted. Workers are separate processes built by
    ``afterword.serve.proxy:app_from_env`` from the config, passed in the environment."""
    import uvicorn

    from afterword.store.store import Store

    # Migrate once here, so N workers do not race to upgrade a fresh database.
    # A store that is down now is retried by each worker, which spools meanwhile.
    with contextlib.suppress(Exception):
        Store(config.store_url).close()
    os.environ[CONFIG_ENV] = config.model_dump_json()
    uvicorn_kw.setdefault("log_level", "info")
    # One log line per request costs more CPU than forwarding it, and every call is captured in the store anyway.
    uvicorn_kw.setdefault("access_log", False)
    uvicorn_kw.setdefault("timeout_graceful_shutdown", 30)
    uvicorn.run("afterword.serve.proxy:app_from_env", factory=True, host=host, port=port, workers=workers, **uvicorn_kw)
