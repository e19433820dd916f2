"""Background logging of captured calls, shared by the SDK wrapper and the proxy.

The application's call must never wait on, or fail because of, the store.
``CaptureLogger.log`` computes the message ids at once (they are content
hashes), hands the conversation to a writer thread, and returns. The writer
batches what has queued up into one transaction. If the store fails, the
batch goes to the durable :class:`Spool` and is replayed on a later success.

Work that must follow a call's write (recording a memory injection against
the logged reply) is handed over with it (``log(conv, after=...)``) and runs
on the same thread once the conversation is in the store, never in the
application's call. A logger given an ``opener`` but no store (the store was
down when it was made) retries opening it at most every ``store_retry_s``
seconds, also while idle, and replays the spool as soon as it opens.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable
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
    store_retry_s = 5.0  # how often a missing store is retried (with an ``opener``)

    def __init__(
        self,
        store: Store | None,
        spool: Spool | None = None,
        max_batch: int = 256,
        opener: Callable[[], Store] | None = None,
    ) -> None:
        self.store = store
        self.spool = spool or Spool()
        self.max_batch = max_batch
        self.opener = opener
        self._next_open = 0.0
        self._queue: Queue[Conversation | None] = Queue()
        self._after: dict[int, Callable[[], None]] = {}
        self._last_ok = False
        self.written = 0
        self.spooled = 0
        self._thread = threading.Thread(target=self._run, name="afterword-capture", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def log(self, conv: Conversation, after: Callable[[], None] | None = None) -> Conversation:
        """Queue ``conv`` (its ids are filled in now); ``after`` runs on the writer thread once
        ``conv`` is in the store. It is dropped, with a warning, if ``conv`` had to be spooled."""
        assign_ids(conv)
        if after is not None:
            self._after[id(conv)] = after
        self._queue.put(conv)
        return conv

    def flush(self) -> None:
        """Wait until everything queued so far is written or spooled."""
        self._queue.join()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=30)

    def _waiting_for_store(self) -> bool:
        return self.store is None and self.opener is not None

    def _try_open(self) -> bool:
        """Open the store through ``opener``, at most once per ``store_retry_s``; replay the spool on success."""
        if self.store is not None:
            return True
        if self.opener is None or time.monotonic() < self._next_open:
            return False
        self._next_open = time.monotonic() + self.store_retry_s
        try:
            store = self.opener()
        except Exception as exc:
            log.debug("afterword: store still unavailable (%s)", exc)
            return False
        self.store = store
        log.info("afterword: the store is reachable again; replaying the spool")
        self._replay()
        return True

    def _replay(self) -> None:
        if self.store is None:
            return
        try:
            if self.spool.path.exists() or self.spool.path.with_suffix(".replaying").exists():
                self.spool.replay(self.store)
        except Exception as exc:
            log.warning("afterword: spool replay failed (%s); will retry", exc)

    def _run(self) -> None:
        while True:
            if self._waiting_for_store():
                try:
                    item = self._queue.get(timeout=max(0.01, self._next_open - time.monotonic()))
                except Empty:
                    try:
                        self._try_open()
                    except Exception:  # the writer thread must survive anything
                        log.exception("afterword: reopening the store failed")
                    continue
            else:
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
                self._last_ok = False
                try:
                    self._write(batch)
                except Exception:  # the writer thread must survive anything
                    log.exception("afterword: writing a batch failed")
                self._run_after(batch, self._last_ok)
            for _ in range(got):
                self._queue.task_done()
            if stop:
                return
            if batch:
                self._pause()

    def _pause(self) -> None:
        """Called after each write, once its calls count as done (``flush`` returns): a subclass
        may wait here so that the calls arriving meanwhile share the next transaction."""

    def _run_after(self, batch: list[Conversation], ok: bool) -> None:
        for conv in batch:
            fn = self._after.pop(id(conv), None)
            if fn is None:
                continue
            if not ok:
                log.warning("afterword: the store is unavailable; a memory injection record is dropped")
                continue
            try:
                fn()
            except Exception as exc:
                log.warning("afterword: could not record a memory injection: %s", exc)

    def _write(self, batch: list[Conversation]) -> None:
        try:
            if self.store is None:
                self._try_open()
            if self.store is None:
                raise RuntimeError("no store configured")
            self.store.import_conversations(batch, default_source=batch[0].source)
            self.written += len(batch)
            self._last_ok = True
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
