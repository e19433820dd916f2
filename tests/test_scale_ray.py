"""Ray Data pipelines on a real local Ray (``ray.init(num_cpus=2)``), kept small: Ray starts slowly.

One Ray session serves the module. Checks: sharded import (JSONL and Parquet,
idempotent on re-run), sharded embedding to Parquet keyed by the store's
message ids, and ``judge_store_ray`` judging every assistant message exactly
once, with a re-run finding nothing pending.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

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
