"""The training loop's callback interface: what a component (built in or a user's) is told, and the state it keeps.

The loop calls each callback's hooks in order at fixed points. A callback that keeps state across
a resume returns it from `state_dict()` as named tensors; every checkpoint stores it under the
callback's `name` (`<name>.<key>` in optimizer.safetensors), and a resumed run hands it back to
`load_state_dict()` before the first step, so a resumed run behaves as the uninterrupted one.

    class StopAtLoss(runner.Callback):
        def on_eval(self, loop, record):
            if record["val_loss"] < 0.1:
                loop.stop("val_loss below 0.1")

    runner.train(cfg, "runs/x", callbacks=[StopAtLoss()])
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from runner.training.evaluation import Evaluation
from runner.training.losses import Losses
from runner.training.precision import Precision

Batches = tuple[tuple[torch.Tensor, torch.Tensor], ...]

# Names a callback's state cannot take: the checkpoint's own entries in optimizer.safetensors.
RESERVED = frozenset({"state", "rng"})


class Loop(Protocol):
    """What a callback sees of the loop (runner.training.loop.Loop)."""

    model: nn.Module  # the model being trained
    writer: Any  # runner.run.writer.Writer: `write(record)` adds a record to metrics.jsonl (and TensorBoard)
    losses: Losses  # the epoch's step losses, not yet checked for NaN/Inf

    @property
    def optimizer(self) -> torch.optim.Optimizer: ...

    @property
    def precision(self) -> Precision: ...

    @property
    def stopped(self) -> str | None: ...

    def stop(self, reason: str) -> None: ...

    def request_checkpoint(self) -> None: ...

    def evaluate(self, model: nn.Module, eval_modules: tuple[str, ...] = ()) -> Evaluation: ...


class Callback:
    """Base class: every hook does nothing, and there is no state, unless a subclass says otherwise.

    `loop` gives read access to the run: `loop.model`, `loop.optimizer`, `loop.writer`, `loop.precision`,
    `loop.stopped`; `loop.stop(reason)` ends the run after the current evaluation, with a final checkpoint.
    """

    @property
    def name(self) -> str:
        """The key its state is saved under (letters, digits and `_`): its class name in lower case by default."""
        return type(self).__name__.lower()

    def on_train_start(self, loop: Loop) -> None:
        """Before the first step (of this process: after a resume, state is already loaded)."""

    def on_step_start(self, loop: Loop, step: int, batches: Batches) -> Batches:
        """Before optimizer step `step`; returns the (x, y) batches it will take (the ones given, unless replaced).

        Under DDP each batch is this rank's part of the global batch, a `runner.data.loader.Shard` that knows
        the global batch's rows (what its loss is scaled by); a replacement keeps that with `Shard(x, y, batch.rows)`,
        while a plain (x, y) weighs as one of `world` equal parts, as a rank's batch does in plain DDP."""
        return batches

    def on_step_end(self, loop: Loop, step: int) -> None:
        """After optimizer step `step` and its logging; `loop.precision.last_skipped` says whether float16 skipped it."""

    def on_eval(self, loop: Loop, record: dict[str, Any]) -> None:
        """After each evaluation (each epoch's end), before its record is written; may add keys to `record`."""

    def on_train_end(self, loop: Loop, step: int) -> None:
        """After the last step, before the final checkpoint."""

    def checkpoints_to_keep(self) -> tuple[str, ...]:
        """Checkpoint directory names that `trainer.keep_last` must not remove."""
        return ()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Takes what `state_dict` returned, from the checkpoint a run resumes from ({} when it saved none)."""
