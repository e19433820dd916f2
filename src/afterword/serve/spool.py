"""A spool that several proxy worker processes can share.

:class:`afterword.capture.Spool` serialises appends and replays with a thread
lock, which is enough inside one process. ``afterword serve --workers N``
runs N processes on one spool file, and there a replay in one worker could
rename the file while another is appending to it, losing that line. Here an
exclusive ``flock`` on a sibling ``.lock`` file guards both, across processes.

A spool must also never take its writer thread down: an append that fails
for any reason surfaces as ``OSError``, which the capture logger reports and
survives.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from afterword.capture.spool import Spool
from afterword.records import Conversation
from afterword.store.store import Store

__all__ = ["SharedSpool"]


class SharedSpool(Spool):
    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    @contextmanager
    def _flock(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def append(self, conv: Conversation) -> None:
        try:
            line = conv.model_dump_json() + "\n"
            data = line.encode("utf-8")
            # Same order as replay: thread lock, then file lock.
            with self._lock, self._flock(), open(self.path, "ab") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError:
            raise
        except Exception as exc:  # e.g. text that cannot be encoded: report, never kill the writer
            raise OSError(f"cannot spool conversation: {exc}") from exc

    def replay(self, store: Store, batch_size: int = 500) -> int:
        """Import everything spooled; returns how many conversations were replayed.

        Also finishes a replay that a crash interrupted (its ``.replaying`` file),
        which the base class only picks up once a new record is spooled.
        """
        if not self.has_pending():
            return 0
        with self._lock, self._flock():
            work = self.path.with_suffix(".replaying")
            n = self._replay_file(work, store, batch_size) if work.exists() else 0
            if self.path.exists():
                os.replace(self.path, work)  # appends (blocked on the lock now) go to a fresh file later
                n += self._replay_file(work, store, batch_size)
            return n

    def has_pending(self) -> bool:
        return self.path.exists() or self.path.with_suffix(".replaying").exists()
