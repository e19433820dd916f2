"""Ray Data pipelines on a real local Ray (``ray.init(num_cpus=2)``), kept small: Ray starts slowly.

One Ray session serves the module. Checks: sharded import (JSONL and Parquet,
idempotent on re-run), sharded embedding to Parquet keyed by the store's
message ids, and ``judge_store_ray`` judging every assistant message exactly
once, with a re-run finding nothing pending. Then the same through the command
line (``afterword import --engine ray``, ``afterword embed``, ``afterword judge
--engine ray``), in process so the module's Ray session serves it too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from afterword.cli import app
from afterword.judge.judge_config import JudgeConfig
from afterword.store import Store
from afterword.store import schema as t

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


def write_records(path: Path, start: int, n: int) -> list[dict]:
    recs = []
    for i in range(start, start + n):
        recs.append(
            {
                "user": f"u{i % 7}",
                "session_id": f"s{i}",
                "timestamp": f"2026-03-{1 + i % 27:02d}T10:00:00Z",
                "messages": [
                    {"role": "user", "content": f"How do I convert {i} miles to kilometres?"},
                    {"role": "assistant", "content": f"{i} miles is about {i * 1.609:.1f} km."},
                    {"role": "user", "content": "thanks, perfect" if i % 3 else "no, that is wrong"},
                    {"role": "assistant", "content": "Glad to help." if i % 3 else "Sorry, let me redo it."},
                ],
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return recs


def judge_config(tmp: Path) -> JudgeConfig:
    """The shipped head when it is there, else a small random head of the right shape."""
    from afterword.judge.features import feature_names
    from afterword.judge.model import HeadModel, default_model_path

    if default_model_path().exists():
        return JudgeConfig()
    d = len(feature_names())
    rng = np.random.default_rng(0)
    head = HeadModel(
        mean=np.zeros(d, np.float32),
        scale=np.ones(d, np.float32),
        layers=[(rng.normal(0, 0.05, (d, 3)).astype(np.float32), np.zeros(3, np.float32))],
        metadata={"version": "test-random"},
    )
    head.save(tmp / "head.npz")
    return JudgeConfig(model_path=str(tmp / "head.npz"))


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def test_import_embed_judge_on_ray(ray_local, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from afterword.judge.distributed import judge_store_ray
    from afterword.scale import embed_sharded, import_sharded

    shards = tmp_path / "shards"
    shards.mkdir()
    recs = write_records(shards / "part-000.jsonl", 0, 40)
    recs += write_records(shards / "part-001.jsonl", 40, 40)
    more = []
    write_records(tmp_path / "tmp.jsonl", 80, 40)
    more = [line for line in (tmp_path / "tmp.jsonl").read_text().splitlines()]
    pq.write_table(pa.table({"record": more + ["{not json"]}), shards / "part-002.parquet")
    url = f"sqlite:///{tmp_path / 'scale.db'}"

    res = import_sharded(url, str(shards / "part-*"), num_workers=2)
    assert res["shards"] == 3 and res["workers"] == 2
    assert res["imported_conversations"] == 120 and res["imported_messages"] == 480
    assert res["skipped"] == 1 and res["errors"][0]["line"] == 41
    again = import_sharded(url, shards, num_workers=2)
    assert again["imported_conversations"] == 0 and again["present_conversations"] == 120

    emb = embed_sharded(shards, tmp_path / "emb", num_workers=2, roles=("user",))
    assert emb["messages"] == 240
    table = pq.read_table(tmp_path / "emb")
    vecs = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    assert vecs.shape == (240, 384) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-3)
    store = Store(url)
    with store.read() as conn:
        ids = set(conn.execute(sa.select(t.messages.c.id).where(t.messages.c.role == "user")).scalars())
    assert set(table.column("message_id").to_pylist()) == ids  # the store's own ids

    cfg = judge_config(tmp_path)
    out = judge_store_ray(store, config=cfg, num_workers=2, batch_size=16)
    assert out["engine"] == "ray" and out["conversations"] == 120 and out["judged"] == 240
    with store.read() as conn:
        per = conn.execute(
            sa.select(t.judgments.c.message_id, sa.func.count())
            .where(t.judgments.c.source == "hindsight-model")
            .group_by(t.judgments.c.message_id)
        ).all()
    assert len(per) == 240 and {n for _, n in per} == {1}
    assert judge_store_ray(store, config=cfg)["conversations"] == 0
    store.close()


# --- the command line: `afterword import --engine ray`, `afterword embed`, `afterword judge --engine ray` ---

runner = CliRunner()


def cli(db: Path, *args: object, code: int = 0) -> dict:
    """Runs in this process, so the module's Ray session serves it; returns the --json document."""
    res = runner.invoke(app, ["--db", str(db), *[str(a) for a in args], "--json"], catch_exceptions=False)
    assert res.exit_code == code, res.stdout + res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def make_shards(tmp: Path) -> Path:
    """Two JSONL shards (60 conversations, one bad line) and a Parquet shard (20): 80 good conversations."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp / "logs"
    d.mkdir()
    write_records(d / "part-000.jsonl", 0, 30)
    write_records(d / "part-001.jsonl", 30, 30)
    with open(d / "part-001.jsonl", "a") as fh:
        fh.write('{"messages": "not a list"}\n')
    write_records(tmp / "p.jsonl", 60, 20)
    pq.write_table(pa.table({"record": (tmp / "p.jsonl").read_text().splitlines()}), d / "part-002.parquet")
    return d


def counts(db: Path) -> tuple[int, int]:
    store = Store(f"sqlite:///{db}")
    try:
        s = store.stats()
        return s["conversations"], s["messages"]
    finally:
        store.close()


def test_cli_import_ray_idempotent(ray_local, tmp_path):
    logs = make_shards(tmp_path)
    db = tmp_path / "cli.db"
    res = cli(db, "import", "--engine", "ray", "--workers", "2", logs)
    assert res["engine"] == "ray" and res["shards"] == 3 and res["workers"] == 2
    assert res["imported_conversations"] == 80 and res["imported_messages"] == 320
    assert res["skipped"] == 1 and res["errors"][0]["file"].endswith("part-001.jsonl")
    assert res["errors"][0]["line"] == 31
    assert len(res["per_shard"]) == 3
    assert counts(db) == (80, 320)
    # The same shards again, named by a glob and a plain file: nothing new.
    again = cli(db, "import", "--engine", "ray", f"{logs}/part-00[01].jsonl", logs / "part-002.parquet")
    assert again["imported_conversations"] == 0 and again["present_conversations"] == 80
    assert again["imported_messages"] == 0 and counts(db) == (80, 320)
    # The local engine agrees on the same JSONL: everything already there.
    local = cli(db, "import", logs / "part-000.jsonl")
    assert local["imported_conversations"] == 0 and local["present_conversations"] == 30


def test_cli_embed_ray_matches_local(ray_local, tmp_path):
    import pyarrow.parquet as pq

    logs = make_shards(tmp_path)
    db = tmp_path / "cli.db"
    cli(db, "import", "--engine", "ray", logs)
    on_ray = cli(db, "embed", "--engine", "ray", "--workers", "2", "--roles", "user", logs, "--out", tmp_path / "r")
    assert on_ray["engine"] == "ray" and on_ray["messages"] == 160 and on_ray["workers"] == 2
    local = cli(db, "embed", f"{logs}/part-*", "--out", tmp_path / "l", "--roles", "user")
    assert local["engine"] == "local" and local["messages"] == 160 and local["files"] == 3
    r = pq.read_table(tmp_path / "r").to_pydict()
    loc = pq.read_table(tmp_path / "l").to_pydict()
    vec_r = dict(zip(r["message_id"], np.asarray(r["embedding"], np.float32), strict=True))
    vec_l = dict(zip(loc["message_id"], np.asarray(loc["embedding"], np.float32), strict=True))
    store = Store(f"sqlite:///{db}")
    with store.read() as conn:
        ids = set(conn.execute(sa.select(t.messages.c.id).where(t.messages.c.role == "user")).scalars())
    store.close()
    assert set(vec_r) == set(vec_l) == ids  # keyed by the store's own message ids
    cos = [float(vec_r[k] @ vec_l[k]) for k in ids]
    assert min(cos) > 0.999  # the same model either way
    # An output directory that already holds vectors is not overwritten unless asked.
    err = cli(db, "embed", logs, "--out", tmp_path / "l", code=1)
    assert "overwrite" in err["error"]
    assert cli(db, "embed", logs, "--out", tmp_path / "l", "--overwrite", "--roles", "assistant")["messages"] == 160


def test_cli_judge_ray(ray_local, tmp_path):
    from afterword.judge.model import default_model_path

    if not default_model_path().exists():
        pytest.skip("the CLI judges with the shipped hindsight head")
    db = tmp_path / "cli.db"
    write_records(tmp_path / "a.jsonl", 0, 30)
    cli(db, "import", tmp_path / "a.jsonl")
    res = cli(db, "judge", "--engine", "ray", "--workers", "2", "--batch-size", "10")
    assert res["engine"] == "ray" and res["workers"] == 2 and res["conversations"] == 30 and res["judged"] == 60
    assert cli(db, "judge", "--engine", "ray")["conversations"] == 0  # resumable: nothing left pending
    # An LLM endpoint set for every command in the environment does not stop a Ray run (it is skipped, and
    # the output says so); the same endpoint asked for on the command line is refused.
    os.environ["AFTERWORD_LLM_URL"] = "http://127.0.0.1:9"
    try:
        res = cli(db, "judge", "--engine", "ray")
        assert res["conversations"] == 0 and "AFTERWORD_LLM_URL ignored" in res["llm_judge_skipped"]
        err = cli(db, "judge", "--engine", "ray", "--endpoint", "http://127.0.0.1:9", code=1)
        assert "local engine only" in err["error"]
    finally:
        del os.environ["AFTERWORD_LLM_URL"]


def test_cli_scale_errors(tmp_path):
    """Option mistakes fail clearly with one JSON document, before any Ray starts."""
    db = tmp_path / "cli.db"
    logs = make_shards(tmp_path)
    f = logs / "part-000.jsonl"
    assert "need --engine ray" in cli(db, "import", "--workers", "2", f, code=1)["error"]
    assert "need --engine ray" in cli(db, "embed", "--address", "auto", f, "--out", tmp_path / "e", code=1)["error"]
    assert "need --engine ray" in cli(db, "judge", "--workers", "2", code=1)["error"]
    assert "--strict" in cli(db, "import", "--engine", "ray", "--strict", f, code=1)["error"]
    assert "local or ray" in cli(db, "import", "--engine", "spark", f, code=1)["error"]
    assert "no shards match" in cli(db, "import", "--engine", "ray", f"{tmp_path}/nothing-*.jsonl", code=1)["error"]
    assert "no such shard" in cli(db, "embed", tmp_path / "missing.jsonl", "--out", tmp_path / "e", code=1)["error"]
    assert "Parquet" in cli(db, "import", logs, code=1)["error"]  # the local engine reads JSONL only
    # A directory of JSONL shards imports locally too.
    (logs / "part-002.parquet").unlink()
    res = cli(db, "import", logs)
    assert [r["imported_conversations"] for r in res] == [30, 30] and counts(db) == (60, 240)
