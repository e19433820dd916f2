"""Ray Data pipelines over sharded logs: import into a store, embed into Parquet.

Input is a set of *shards*: JSONL files in any importer format, or Parquet
files with one conversation per row in a string column ``record`` holding an
OpenAI-format JSON record (``{"messages": [...], "user": ..., ...}``). Shards
are the unit of parallelism: a shard is read by one worker, streaming, so
memory stays flat however large the shard is, and bad records are reported
exactly as ``afterword import`` reports them rather than failing a whole block
the way a columnar JSON reader would.

- :func:`import_sharded` writes through :meth:`Store.import_conversations`,
  whole conversations per transaction. Ids are content hashes, so re-running
  after a crash (or on overlapping shards) skips what is already stored.
- :func:`embed_sharded` assigns each message the id the store would give it
  and writes ``(message_id, conversation_id, user_id, role, embedding)``
  Parquet files, so the vectors join back to the store by id. Each actor
  loads the ONNX embedder once. :func:`embed_local` writes the same files
  without Ray (one process, one shard after another).

The command line: ``afterword import --engine ray`` and ``afterword embed``.
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from afterword.errors import ConfigError, ImportRecordError, require
from afterword.records import Conversation

__all__ = ["expand_shards", "iter_shard", "import_sharded", "embed_sharded", "embed_local"]

_SUFFIXES = (".jsonl", ".json", ".parquet", ".jsonl.gz")


def expand_shards(paths_or_glob: str | Path | Sequence[str | Path]) -> list[str]:
    """Shard files from paths, directories and glob patterns, sorted and de-duplicated."""
    items = [paths_or_glob] if isinstance(paths_or_glob, str | Path) else list(paths_or_glob)
    found: set[str] = set()
    for item in items:
        p = str(item)
        if os.path.isdir(p):
            found.update(str(f) for f in Path(p).iterdir() if f.is_file() and f.name.endswith(_SUFFIXES))
        elif any(ch in p for ch in "*?["):
            found.update(glob.glob(p, recursive=True))
        elif os.path.exists(p):
            found.add(p)
        else:
            raise ConfigError(f"no such shard: {p}")
    if not found:
        raise ConfigError(f"no shards match {paths_or_glob!r}")
    return sorted(os.path.abspath(f) for f in found)


def iter_shard(path: str, fmt: str = "auto") -> Iterator[Conversation | ImportRecordError]:
    """Conversations of one shard (bad records come back as ImportRecordError, in place)."""
    if path.endswith(".parquet"):
        yield from _iter_parquet(path)
        return
    from afterword.importers import detect_format, get_parser

    yield from get_parser(detect_format(path) if fmt == "auto" else fmt)(path)


def _iter_parquet(path: str) -> Iterator[Conversation | ImportRecordError]:
    import pyarrow.parquet as pq

    from afterword.importers.base import RecordError
    from afterword.importers.openai_chat import parse_record

    pf = pq.ParquetFile(path)
    if "record" not in pf.schema_arrow.names:
        yield ImportRecordError(path, 0, "record", "a Parquet shard needs a string column 'record'")
        return
    row = 0
    for batch in pf.iter_batches(columns=["record"], batch_size=4096):
        for text in batch.column(0).to_pylist():
            row += 1
            try:
                yield parse_record(json.loads(text or ""), source="import:parquet")
            except RecordError as exc:
                yield ImportRecordError(path, row, exc.field, exc.message)
            except (ValueError, TypeError, RecursionError) as exc:
                yield ImportRecordError(path, row, "record", f"invalid JSON: {str(exc)[:80]}")


def _ray(address: str | None, num_cpus: int | None) -> tuple[Any, bool]:
    from afterword.judge.distributed import ray_session

    started = ray_session(address, num_cpus)
    return require("ray", "scale"), started


class _ImportActor:
    """Imports whole shards into one store (one connection per actor)."""

    def __init__(self, store_url: str, fmt: str, batch_size: int) -> None:
        from afterword.judge.distributed import open_worker_store

        self.store = open_worker_store(store_url)
        self.fmt = fmt
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from afterword.store.store import ImportCounts

        out: dict[str, list[Any]] = {"shard": [], "counts_json": []}
        for path in batch["path"]:
            path = str(path)
            if path.endswith(".parquet"):
                counts = ImportCounts()
                convs: list[Conversation] = []
                n_msgs = 0
                for item in iter_shard(path, self.fmt):
                    if isinstance(item, ImportRecordError):
                        counts.skipped += 1
                        if len(counts.errors) < 100:
                            counts.errors.append(item.to_dict())
                        continue
                    convs.append(item)
                    n_msgs += len(item.messages)
                    if n_msgs >= self.batch_size:
                        counts.add(self.store.import_conversations(convs, default_source="import:parquet"))
                        convs, n_msgs = [], 0
                counts.add(self.store.import_conversations(convs, default_source="import:parquet"))
            else:
                from afterword.importers import run_import

                counts = run_import(self.store, path, self.fmt, batch_size=self.batch_size, max_errors_kept=100)
            out["shard"].append(path)
            out["counts_json"].append(json.dumps(counts.as_dict()))
        return {k: np.array(v) for k, v in out.items()}


def import_sharded(
    store_url: str,
    paths_or_glob: str | Path | Sequence[str | Path],
    *,
    fmt: str = "auto",
    num_workers: int | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    batch_size: int = 10000,
    progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Import every shard into the store at ``store_url`` with ``num_workers`` Ray actors.

    ``batch_size`` counts messages per transaction (whole conversations).
    The store is migrated once here, before any worker opens it.
    ``progress(shard, counts)`` is called in the driver as each shard finishes.
    """
    from afterword.store.store import ImportCounts, Store

    shards = expand_shards(paths_or_glob)
    Store(store_url).close()  # migrate once, here, not racing in every worker
    ray, started = _ray(address, num_cpus)
    t0 = time.perf_counter()
    total = ImportCounts()
    per_shard: dict[str, dict[str, Any]] = {}
    try:
        workers = max(1, min(num_workers or int(ray.cluster_resources().get("CPU", 1)), len(shards)))
        ds = ray.data.from_items([{"path": p} for p in shards], override_num_blocks=len(shards))
        done = ds.map_batches(
            _ImportActor,
            fn_constructor_kwargs={"store_url": store_url, "fmt": fmt, "batch_size": batch_size},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
        )
        for row in done.iter_rows():
            d = json.loads(str(row["counts_json"]))
            per_shard[str(row["shard"])] = {k: v for k, v in d.items() if k != "errors"}
            part = ImportCounts(
                conversations=d["imported_conversations"],
                conversations_present=d["present_conversations"],
                messages=d["imported_messages"],
                messages_present=d["present_messages"],
                feedback=d["imported_feedback"],
                skipped=d["skipped"],
                errors=d["errors"][: max(0, 1000 - len(total.errors))],
            )
            total.add(part)
            if progress is not None:
                progress(str(row["shard"]), per_shard[str(row["shard"])])
    finally:
        if started:
            ray.shutdown()
    dt = time.perf_counter() - t0
    seen = total.conversations + total.conversations_present
    return {
        **total.as_dict(),
        "shards": len(shards),
        "workers": workers,
        "seconds": round(dt, 2),
        "conversations_per_s": round(seen / dt, 1) if dt > 0 else None,
        "messages_per_s": round((total.messages + total.messages_present) / dt, 1) if dt > 0 else None,
        "per_shard": per_shard,
    }


def _message_rows(path: str, fmt: str, roles: tuple[str, ...], rows_per_batch: int) -> Iterator[dict[str, list[Any]]]:
    from afterword.capture.logger import assign_ids

    cols: dict[str, list[Any]] = {k: [] for k in ("message_id", "conversation_id", "user_id", "role", "content")}
    for item in iter_shard(path, fmt):
        if isinstance(item, ImportRecordError):
            continue
        conv = assign_ids(item)
        for m in conv.messages:
            if m.role in roles and m.content:
                cols["message_id"].append(m.id)
                cols["conversation_id"].append(conv.id)
                cols["user_id"].append(conv.user_id)
                cols["role"].append(m.role)
                cols["content"].append(m.content)
        if len(cols["message_id"]) >= rows_per_batch:
            yield cols
            cols = {k: [] for k in cols}
    if cols["message_id"]:
        yield cols


def _prepare_output(output_dir: str | Path, overwrite: bool) -> Path:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    old = list(out.glob("*.parquet"))
    if old and not overwrite:
        raise ConfigError(f"{out} already holds Parquet files; pass overwrite=True to replace them")
    for f in old:
        f.unlink()
    return out


def _vector_column(vecs: Any) -> Any:
    """(n, d) vectors as the ``embedding`` column: a fixed-size list of d float32."""
    import numpy as np
    import pyarrow as pa

    vecs = np.asarray(vecs, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), vecs.shape[1])


def _embedding_table(cols: dict[str, list[Any]], vecs: Any) -> Any:
    import pyarrow as pa

    data = {k: pa.array(v, pa.string()) for k, v in cols.items() if k != "content"}
    return pa.table({**data, "embedding": _vector_column(vecs)})


def embed_local(
    paths_or_glob: str | Path | Sequence[str | Path],
    output_dir: str | Path,
    *,
    fmt: str = "auto",
    roles: Sequence[str] = ("user", "assistant"),
    batch_size: int = 256,
    overwrite: bool = False,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, Any]:
    """:func:`embed_sharded` without Ray: the same Parquet files, written by this process.

    One output file per input shard (``part-00000.parquet``, ...);
    ``progress(shard, messages)`` is called as each shard finishes.
    """
    import pyarrow.parquet as pq

    from afterword.embed import get_embedder

    shards = expand_shards(paths_or_glob)
    out = _prepare_output(output_dir, overwrite)
    embedder = get_embedder()
    t0 = time.perf_counter()
    n = files = 0
    for k, path in enumerate(shards):
        writer = None
        done = 0
        try:
            for cols in _message_rows(path, fmt, tuple(roles), batch_size * 8):
                table = _embedding_table(cols, embedder.encode([str(x) for x in cols["content"]]))
                if writer is None:
                    writer = pq.ParquetWriter(str(out / f"part-{k:05d}.parquet"), table.schema)
                    files += 1
                writer.write_table(table)
                done += table.num_rows
        finally:
            if writer is not None:
                writer.close()
        n += done
        if progress is not None:
            progress(path, done)
    dt = time.perf_counter() - t0
    return {
        "shards": len(shards),
        "workers": 1,
        "messages": n,
        "files": files,
        "output_dir": str(out),
        "seconds": round(dt, 2),
        "messages_per_s": round(n / dt, 1) if dt > 0 else None,
    }


def _explode(fmt: str, roles: tuple[str, ...], rows_per_batch: int) -> Any:
    def explode(batch: dict[str, Any]) -> Iterator[dict[str, Any]]:
        import numpy as np

        for path in batch["path"]:
            for cols in _message_rows(str(path), fmt, roles, rows_per_batch):
                yield {k: np.array(v, dtype=object) for k, v in cols.items()}

    return explode


class _EmbedActor:
    """Adds a 384-d float32 ``embedding`` column; the ONNX model is loaded once per actor."""

    def __init__(self, threads: int | None = None) -> None:
        from afterword.embed import Embedder

        self.embedder = Embedder(threads=threads or 1)

    def __call__(self, batch: Any) -> Any:
        texts = [str(x) for x in batch.column("content").to_pylist()]
        return batch.drop_columns(["content"]).append_column("embedding", _vector_column(self.embedder.encode(texts)))


def embed_sharded(
    paths_or_glob: str | Path | Sequence[str | Path],
    output_dir: str | Path,
    *,
    fmt: str = "auto",
    roles: Sequence[str] = ("user", "assistant"),
    num_workers: int | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    batch_size: int = 256,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Embed every message of the shards with MiniLM and write Parquet files to ``output_dir``.

    Columns: ``message_id`` (the store's id), ``conversation_id``, ``user_id``,
    ``role`` and ``embedding`` (fixed-size list of 384 float32, unit length).
    """
    shards = expand_shards(paths_or_glob)
    out = _prepare_output(output_dir, overwrite)
    ray, started = _ray(address, num_cpus)
    t0 = time.perf_counter()
    try:
        workers = max(1, num_workers or int(ray.cluster_resources().get("CPU", 1)))
        ds = ray.data.from_items([{"path": p} for p in shards], override_num_blocks=len(shards))
        msgs = ds.map_batches(
            _explode(fmt, tuple(roles), batch_size * 8), batch_size=1, batch_format="numpy", num_cpus=0
        )
        emb = msgs.map_batches(
            _EmbedActor,
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
        )
        emb.write_parquet(str(out))
    finally:
        if started:
            ray.shutdown()
    dt = time.perf_counter() - t0
    import pyarrow.parquet as pq

    files = sorted(out.glob("*.parquet"))
    n = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return {
        "shards": len(shards),
        "workers": workers,
        "messages": n,
        "files": len(files),
        "output_dir": str(out),
        "seconds": round(dt, 2),
        "messages_per_s": round(n / dt, 1) if dt > 0 else None,
    }
