"""Engines and URLs: one place decides how afterword talks to a database.

``AFTERWORD_DB`` (or an explicit argument) is either a SQLAlchemy URL
(``sqlite:///path.db``, ``postgresql+psycopg://...``) or a plain file path,
which means SQLite. SQLite runs in WAL mode with a busy timeout, through
``pysqlite3`` when it is installed, because the standard library's sqlite3
is often built without extension loading and sqlite-vec needs it.
"""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa

__all__ = ["resolve_url", "make_engine", "is_sqlite", "DEFAULT_DB"]

DEFAULT_DB = "afterword.db"


def resolve_url(url: str | None = None) -> str:
    """The SQLAlchemy URL for ``url``, ``$AFTERWORD_DB``, or ``./afterword.db``."""
    url = url or os.environ.get("AFTERWORD_DB") or DEFAULT_DB
    if "://" not in url:
        return f"sqlite:///{os.path.abspath(url)}"
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def is_sqlite(engine_or_url: sa.Engine | str) -> bool:
    name = engine_or_url.dialect.name if isinstance(engine_or_url, sa.Engine) else engine_or_url
    return str(name).startswith("sqlite")


def _sqlite_module() -> Any | None:
    try:
        import pysqlite3.dbapi2 as mod  # type: ignore[import-not-found]
    except ImportError:
        return None
    return mod


def make_engine(url: str | None = None, **kwargs: Any) -> sa.Engine:
    url = resolve_url(url)
    if is_sqlite(url):
        mod = _sqlite_module()
        if mod is not None:
            kwargs.setdefault("module", mod)
        kwargs.setdefault("connect_args", {"timeout": 30, "check_same_thread": False})
        engine = sa.create_engine(url, **kwargs)

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _rec: Any) -> None:
            # Let SQLAlchemy manage transactions explicitly (BEGIN on first statement).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA cache_size=-65536")  # 64 MiB: random-hash primary keys touch many pages
            cur.execute("PRAGMA temp_store=MEMORY")
            # Checkpoint (and fsync) every ~64 MiB of WAL rather than every 4 MiB: bulk imports write a lot.
            cur.execute("PRAGMA wal_autocheckpoint=16384")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            # Writers take the lock up front so two writers never deadlock on upgrade.
            immediate = conn.get_execution_options().get("immediate", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    return sa.create_engine(url, **kwargs)
