"""SIGINT (Ctrl-C) and SIGTERM (SLURM's pre-emption signal) while a run trains.

The first signal asks the loop to stop after the step in progress: it saves a checkpoint there
through the background saver (durable, as every checkpoint), closes the run's files and raises
`Interrupted`, which the command line turns into one line with the resume command and the shell's
exit status (130 for SIGINT, 143 for SIGTERM). A second signal stops at once, without that checkpoint.

Handlers are installed only in the main thread (Python delivers signals there), and not under
torchrun: there each rank would stop at its own step and leave the others waiting in a collective,
so torchrun's own handling (it signals every rank) applies.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

from runner.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupts:
    """A context: while inside, SIGINT and SIGTERM are recorded instead of raising."""

    @classmethod
    def for_run(cls, trainer: Any) -> Interrupts:
        """Listening, except under torchrun (trainer.strategy=ddp), where torchrun's handling applies."""
        return cls(enabled=trainer.strategy != "ddp")

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.received: int | None = None  # the first signal's number
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        if self.enabled and threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle) for number in SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _handle(self, number: int, frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        if self.received is not None:
            raise Interrupted(number, "received again, stopped at once, without a checkpoint of the step in progress")
        self.received = number
        try:  # os.write, not print: a handler may run while the main thread is inside a print
            os.write(2, f"runner: {name}: stopping after this step and saving a checkpoint ({name} again stops at once)\n".encode())
        except OSError:  # stderr is a pipe whose reader Ctrl-C also stopped (`| tee`): the checkpoint matters more
            pass
