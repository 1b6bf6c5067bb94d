"""The two kinds of failure a user sees: a bad config (exit 2) and a run that went wrong (exit 1)."""

from __future__ import annotations

import difflib
import io
import os
import signal
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, TextIO, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: the dotted key path and what was expected there."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class ConfigError(Exception):
    """Every problem found in a config, reported together. Exit status 2."""

    exit_code = 2

    def __init__(self, problems: Iterable[Problem]):
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.problems)
        head = "config error" if count == 1 else f"config errors ({count})"
        return head + ":\n" + "\n".join(f"  {p}" for p in self.problems)


class RunError(Exception):
    """A run that could not go on (non-finite loss, unwritable directory, damaged file). Exit status 1."""

    exit_code = 1


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM, after the checkpoint its message names. A KeyboardInterrupt, so not an
    Exception: code that catches errors to carry on (a sweep going to its next job) lets it through, and a
    script's or notebook's `except KeyboardInterrupt` still sees Ctrl-C. Exit status 128 + the signal's number."""

    def __init__(self, signal_number: int, headline: str, run_dir: str | None = None, hint: str | None = None):
        """`headline` follows the signal's name: `Interrupted(2, "stopped after step 7")` reads `SIGINT: stopped after step 7`."""
        self.signal_number, self.exit_code, self.detail = signal_number, 128 + signal_number, headline
        self.headline = f"{signal.Signals(signal_number).name}: {headline}"
        self.hint = hint or (f"resume with: python -m runner resume={run_dir}" if run_dir else None)
        super().__init__(self.headline + (f"; {self.hint}" if self.hint else ""))


class Problems:
    """Collects problems while validating, so that one run reports all of them at once."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, key: str, message: str) -> None:
        self.items.append(Problem(key, message))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)


def suggest(name: str, options: Iterable[str], limit: int = 3) -> str:
    """Returns a ' did you mean ...?' hint for a misspelt name, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(options), n=limit, cutoff=0.6)
    if not close:
        return ""
    return " did you mean " + " or ".join(repr(c) for c in close) + "?"


class HeldStream(io.StringIO):
    """sys.stderr while Hydra reads a command line: what is written is kept, to be shown or dropped (runner.cli)."""

    def __init__(self, real: TextIO):
        super().__init__()
        self.real = real


def hold_stderr() -> None:
    """Keeps what is written to stderr from now until `release_stderr`."""
    if not isinstance(sys.stderr, HeldStream):
        sys.stderr = HeldStream(sys.stderr)


def release_stderr(show: bool = True) -> str:
    """Gives stderr back (a no-op when it is not held) and returns what was held, writing it out when `show`.
    Called when a run's task starts and on exit."""
    held = sys.stderr
    if not isinstance(held, HeldStream):
        return ""
    sys.stderr = held.real
    if show:
        sys.stderr.write(held.getvalue())
    return held.getvalue()


def report_errors(work: Callable[[], T]) -> T:
    """Runs `work`; a ConfigError exits 2, a RunError 1 and an interrupted run 130 or 143, each with its
    message and no traceback (`HYDRA_FULL_ERROR=1` shows it): what every command line of runner does with them."""
    try:
        return work()
    except (ConfigError, RunError, Interrupted) as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"runner: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:  # outside a run's training (composing, building): nothing to save
        print("runner: interrupted (SIGINT) outside training steps; a run's checkpoints written before it are kept", file=sys.stderr)
        sys.exit(130)
