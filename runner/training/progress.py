"""How a run shows its progress: a tqdm bar on a terminal, log lines elsewhere (`trainer.progress`)."""

from __future__ import annotations

import sys


def progress_mode(mode: str) -> str:
    """`trainer.progress` resolved: auto is a bar on a terminal, log lines otherwise."""
    if mode == "auto":
        return "bar" if sys.stderr.isatty() else "log"
    return mode


def progress_bar(mode: str, total: int, done: int):
    """A tqdm bar from step `done` of `total` in bar mode, else None."""
    if mode != "bar":
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="step", dynamic_ncols=True)
