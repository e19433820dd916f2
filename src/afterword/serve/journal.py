"""A write-ahead journal, so a killed proxy worker loses no log.

The capture logger writes in the background, so when a worker dies by
SIGKILL (or the OOM killer) the calls still in its queue would be lost,
although their replies had reached the clients. To close that gap each call
is also appended to a per-process journal before its reply is sent: one
``write()`` to the page cache, which survives the death of the process
(not of the machine; the spool's fsync covers the store being down).

The journal is split into segments. Once the writer has taken every call of
a segment to the store (or the spool), the segment is deleted. Each worker
holds an exclusive ``flock`` on its open segments for its whole life; the
kernel drops it when the process dies, so any segment another worker can
lock belongs to a dead one and is replayed (idempotently: ids are content
hashes, so a call already in the store is not duplicated).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from pathlib import Path

from afterword.capture.spool import import_jsonl
from afterword.records import Conversation
from afterword.store.store import Store

__all__ = ["Journal", "recover_journals"]

log = logging.getLogger("afterword.serve")


class Journal:
    def __init__(self, directory: str | Path, segment_entries: int = 5000, segment_s: float = 5.0) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment_entries = segment_entries
        self.segment_s = segment_s
        self._lock = threading.Lock()
        self._seq = 0  # calls journaled so far (counted even when a write fails)
        self._closed: list[tuple[Path, int, int]] = []  # (path, fd, seq after its last entry)
        self._open_segment()

    def _open_segment(self) -> None:
        path = self.dir / f"journal-{os.getpid()}-{time.time_ns()}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours until we die
        self._path, self._fd, self._start, self._opened = path, fd, self._seq, time.monotonic()

    def append(self, conv: Conversation) -> None:
        """Journal one call. Must be called in the order the calls go to the logger."""
        try:
            data = (conv.model_dump_json() + "\n").encode("utf-8")
        except Exception as exc:
            data = b""
            log.warning("afterword: cannot journal a call: %s", exc)
        with self._lock:
            try:
                if data:
                    os.write(self._fd, data)
            except OSError as exc:
                log.warning("afterword: cannot journal a call: %s", exc)
            self._seq += 1
            if self._seq - self._start >= self.segment_entries or time.monotonic() - self._opened > self.segment_s:
                self._closed.append((self._path, self._fd, self._seq))
                self._open_segment()

    def done(self, processed: int) -> None:
        """The writer has taken the first ``processed`` calls to the store or spool: drop their segments."""
        with self._lock:
            keep = []
            for path, fd, end in self._closed:
                if end <= processed:
                    path.unlink(missing_ok=True)  # unlink before unlocking: no one replays it needlessly
                    os.close(fd)
                else:
                    keep.append((path, fd, end))
            self._closed = keep

    def close(self, processed: int) -> None:
        """On a clean shutdown, after the logger drained: remove what is fully written."""
        with self._lock:
            self._closed.append((self._path, self._fd, self._seq))
            self._path, self._fd = self.dir / "closed", -1
        self.done(processed)
        with self._lock:
            for _path, fd, _end in self._closed:  # not written (store and spool both failed): leave for replay
                os.close(fd)
            self._closed = []


def recover_journals(directory: str | Path, store: Store) -> int:
    """Replay every journal segment whose owner is dead into ``store``; returns the calls replayed.

    Raises what the store raises; a segment is only deleted once it is imported.
    """
    d = Path(directory)
    if not d.is_dir():
        return 0
    n = 0
    for path in sorted(d.glob("journal-*.jsonl")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live worker owns it
            if not path.exists():  # deleted by its owner just before it died, or by another recoverer
                continue
            n += import_jsonl(path, store, source="proxy")  # a torn last line: that reply was never sent
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    if n:
        log.warning("afterword: replayed %d call(s) from the journal of a worker that died", n)
    return n
