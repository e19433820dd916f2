"""A durable spool for logs that could not reach the store.

When the store is down, the SDK wrapper and the proxy append each
conversation to a JSONL spool file (flushed and fsynced) instead of losing
it, and replay the spool once the store answers again. Replay imports each
spooled conversation idempotently (ids are content hashes), so a crash in
the middle of a replay duplicates nothing: the file is only removed after
every record in it is in the store.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from afterword.records import Conversation
from afterword.store.store import Store

__all__ = ["Spool", "default_spool_path", "import_jsonl"]


def default_spool_path() -> Path:
    return Path(os.environ.get("AFTERWORD_SPOOL", Path.home() / ".afterword" / "spool.jsonl"))


class Spool:
    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else default_spool_path()
        self._lock = threading.Lock()

    def append(self, conv: Conversation) -> None:
        line = conv.model_dump_json() + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())

    def pending(self) -> int:
        if not self.path.exists():
            return 0
        with open(self.path, "rb") as fh:
            return sum(1 for line in fh if line.strip())

    def replay(self, store: Store, batch_size: int = 500) -> int:
        """Import every spooled conversation; returns how many were replayed.

        A ``.replaying`` file left by a crash in the middle of an earlier replay
        goes first, then whatever was spooled since.
        """
        with self._lock:
            work = self.path.with_suffix(".replaying")
            n = 0
            for _ in range(2):
                if not work.exists():
                    if not self.path.exists():
                        break
                    os.replace(self.path, work)  # new appends go to a fresh file meanwhile
                n += self._replay_file(work, store, batch_size)
            return n

    @staticmethod
    def _replay_file(work: Path, store: Store, batch_size: int) -> int:
        n = import_jsonl(work, store, source="spool", batch_size=batch_size)
        work.unlink()  # only once every record is in the store: a crash before this re-imports, idempotently
        return n


def import_jsonl(path: Path, store: Store, *, source: str, batch_size: int = 500) -> int:
    """Import every conversation in a spool or journal file; returns how many. Torn lines are skipped."""
    n = 0
    batch: list[Conversation] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                batch.append(Conversation.model_validate_json(line))
            except ValueError:
                continue  # a torn last line from a crash mid-append
            if len(batch) >= batch_size:
                store.import_conversations(batch, default_source=source)
                n += len(batch)
                batch = []
    if batch:
        store.import_conversations(batch, default_source=source)
        n += len(batch)
    return n
