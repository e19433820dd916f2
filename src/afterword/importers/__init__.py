"""Importers: bulk load existing logs into the store.

Each format is a module with ``parse(path) -> Iterator[Conversation]`` that
streams (constant memory for JSONL) and yields an ``ImportRecordError`` in
place of a bad record, so one bad line never stops the rest. ``run_import``
batches conversations into transactions: a batch is written whole or not at
all, so an import killed part-way leaves no partial conversation, and a
re-run skips what is already there (ids are content hashes).

Formats are registered by name; third-party formats can be added through the
``afterword.importers`` entry-point group, which the built-ins also use.
"""

from __future__ import annotations

import gc
import importlib
import threading
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from queue import Queue

from afterword.errors import ConfigError, ImportRecordError
from afterword.records import Conversation
from afterword.store.store import ImportCounts, PreparedImport, Store

__all__ = ["FORMATS", "get_parser", "detect_format", "run_import"]

#: Built-in formats: name -> module that defines ``parse``.
FORMATS: dict[str, str] = {
    "openai": "afterword.importers.openai_chat",
    "sharegpt": "afterword.importers.sharegpt",
    "uss": "afterword.importers.uss",
    "asap": "afterword.importers.asap",
    "locomo": "afterword.importers.locomo",
}

Parser = Callable[[str | Path], Iterator[Conversation]]


def get_parser(fmt: str) -> Parser:
    if fmt in FORMATS:
        return importlib.import_module(FORMATS[fmt]).parse  # type: ignore[no-any-return]
    for ep in entry_points(group="afterword.importers"):
        if ep.name == fmt:
            return ep.load()  # type: ignore[no-any-return]
    raise ConfigError(f"unknown import format {fmt!r}; known: {', '.join(sorted(FORMATS))}")


def detect_format(path: str | Path) -> str:
    """Guess the format from the file name and its first bytes."""
    name = Path(path).name.lower()
    if "locomo" in name:
        return "locomo"
    with open(path, "rb") as fh:
        head = fh.read(4096)
    text = head.decode("utf-8", "replace").lstrip()
    if text.startswith("[") and "|||" in text.split("\n", 1)[0]:
        return "asap"
    if text.startswith(("USER\t", "SYSTEM\t")):
        return "uss"
    if '"conversations"' in text or '"from"' in text:
        return "sharegpt"
    if '"qa"' in text and '"session_1"' in text:
        return "locomo"
    return "openai"


def run_import(
    store: Store,
    path: str | Path,
    fmt: str = "auto",
    *,
    strict: bool = False,
    batch_size: int = 25000,
    progress: Callable[[int], None] | None = None,
    max_errors_kept: int = 1000,
) -> ImportCounts:
    """Import ``path`` into ``store``.

    ``progress`` is called with the number of conversations written in each
    batch. ``batch_size`` counts messages: whole conversations are grouped until a
    batch holds about that many. With ``strict``, the first bad record raises
    ImportRecordError and nothing from its batch is written.
    """
    fmt = detect_format(path) if fmt == "auto" else fmt
    parse = get_parser(fmt)
    total = ImportCounts()
    source = f"import:{fmt}"
    # Parsing runs here while a writer thread commits the previous batch: the
    # SQLite driver releases the GIL while it writes, so the two overlap.
    # The rows are prepared here too (ids, tuples), so the writer thread only writes.
    queue: Queue[PreparedImport | None] = Queue(maxsize=2)
    failure: list[BaseException] = []

    def writer() -> None:
        while (item := queue.get()) is not None:
            if failure:
                continue
            try:
                total.add(store.write_prepared(item))
                if progress:
                    progress(item.n_conversations)
            except BaseException as exc:  # re-raised in the caller's thread
                failure.append(exc)

    thread = threading.Thread(target=writer, name="afterword-import-writer", daemon=True)
    # The cyclic GC would rescan every live record over and over (most of the parse time on a
    # large file); imported records hold no reference cycles, so reference counting frees them.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    thread.start()
    batch: list[Conversation] = []
    n_msgs = 0
    try:
        for item in parse(path):
            if failure:
                break
            if isinstance(item, ImportRecordError):
                if strict:
                    raise item
                total.skipped += 1
                if len(total.errors) < max_errors_kept:
                    total.errors.append(item.to_dict())
                continue
            batch.append(item)
            n_msgs += len(item.messages)
            if n_msgs >= batch_size:
                queue.put(store.prepare_import(batch, source))
                batch, n_msgs = [], 0
        if batch and not failure:
            queue.put(store.prepare_import(batch, source))
    finally:
        queue.put(None)
        thread.join()
        if gc_was_enabled:
            gc.enable()
    if failure:
        raise failure[0]
    return total
