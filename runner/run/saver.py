"""Checkpoints written on a thread of their own, so the training thread only copies them."""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Callable

from runner.run import checkpoint


class BackgroundSaver:
    """Writes checkpoints on a thread of its own, one at a time.

    `submit` hands a snapshot over and returns; when the previous write is still in flight it first
    waits for it (a checkpoint is never skipped, and never more than one is being written). A
    write's error is raised on the training thread at the next `submit` or at `close`. `on_saved`
    is called (on the saver's thread) with the step and directory once a checkpoint is durable.
    """

    def __init__(self, directory: Path, keep_last: int, on_saved: Callable[[int, Path], None] | None = None):
        self.directory, self.keep_last, self.on_saved = directory, keep_last, on_saved
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, snap: checkpoint.Snapshot) -> None:
        self.wait()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="runner-checkpoint", daemon=True)
            self._thread.start()
        self._idle.clear()
        self._jobs.put(snap)

    def wait(self) -> None:
        """Returns once no write is in flight; raises the last write's error, if any."""
        self._idle.wait()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """Lets the write in flight finish, stops the thread, and raises the last write's error, if any.

        (It joins the thread rather than waiting for `_idle`, so it also returns after an interrupt
        that came between `_idle.clear()` and the hand-over in `submit`.)
        """
        if self._thread is not None:
            self._jobs.put(None)  # after any queued snapshot: first in, first out
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _work(self) -> None:
        while (snap := self._jobs.get()) is not None:
            try:
                final = checkpoint.write_snapshot(self.directory, snap, self.keep_last)
                if self.on_saved is not None:
                    self.on_saved(snap.step, final)
            except BaseException as error:  # noqa: BLE001 - handed to the training thread
                self._error = error
            finally:
                self._idle.set()
