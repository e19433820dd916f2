"""Background logging of captured calls, shared by the SDK wrapper and the proxy.

The application's call must never wait on, or fail because of, the store.
``CaptureLogger.log`` computes the message ids at once (they are content
hashes), hands the conversation to a writer thread, and returns. The writer
batches what has queued up into one transaction. If the store fails, the
batch goes to the durable :class:`Spool` and is replayed on a later success.
"""

from __future__ import annotations

import atexit
import logging
import threading
from queue import Empty, Queue

from afterword.capture.spool import Spool
from afterword.records import Conversation
from afterword.store.store import Store, conversation_id_for, message_id_for

__all__ = ["CaptureLogger", "assign_ids"]

log = logging.getLogger("afterword.capture")


def assign_ids(conv: Conversation) -> Conversation:
    """Fill in the conversation and message ids exactly as the store will."""
    conv.id = conversation_id_for(conv)
    parent = None
    for m in conv.messages:
        m.id = m.id or message_id_for(conv.id, parent, m)
        parent = m.id
    return conv


class CaptureLogger:
    def __init__(self, store: Store | None, spool: Spool | None = None, max_batch: int = 256) -> None:
        self.store = store
        self.spool = spool or Spool()
        self.max_batch = max_batch
        self._queue: Queue[Conversation | None] = Queue()
        self.written = 0
        self.spooled = 0
        self._thread = threading.Thread(target=self._run, name="afterword-capture", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def log(self, conv: Conversation) -> Conversation:
        assign_ids(conv)
        self._queue.put(conv)
        return conv

    def flush(self) -> None:
        """Wait until everything queued so far is written or spooled."""
        self._queue.join()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            got = 1
            stop = item is None
            batch = [] if item is None else [item]
            while not stop and len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except Empty:
                    break
                got += 1
                if nxt is None:
                    stop = True
                else:
                    batch.append(nxt)
            if batch:
                self._write(batch)
            for _ in range(got):
                self._queue.task_done()
            if stop:
                return
            if batch:
                self._pause()

    def _pause(self) -> None:
        """Called after each write, once its calls count as done (``flush`` returns): a subclass
        may wait here so that the calls arriving meanwhile share the next transaction."""

    def _write(self, batch: list[Conversation]) -> None:
        try:
            if self.store is None:
                raise RuntimeError("no store configured")
            self.store.import_conversations(batch, default_source=batch[0].source)
            self.written += len(batch)
            if self.spool.path.exists() or self.spool.path.with_suffix(".replaying").exists():
                self.spool.replay(self.store)
        except Exception as exc:  # the store is down: keep the logs durably
            log.warning("afterword: store unavailable (%s); spooling %d conversation(s)", exc, len(batch))
            for conv in batch:
                try:
                    self.spool.append(conv)
                    self.spooled += 1
                except Exception:  # the writer thread must survive anything
                    log.exception("afterword: could not spool a conversation")
