"""PNG plots in the run directory, drawn from metrics.jsonl: loss curves, per-tensor gradient norms
and per-layer activation statistics.

Figures are drawn on matplotlib's `Figure` objects, never pyplot: the caller's backend and open
figures are left alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from runner.run.directory import RunDir, on_initial_weights, read_metrics, writing

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def write_plots(run_dir: Path) -> list[Path]:
    """Writes loss.png, grad_norms.png and activations.png (the last two when their statistics were
    logged); returns their paths."""
    path = RunDir(run_dir).metrics
    if not path.is_file() or not any(r.get("kind") in ("train", "eval") for r in read_metrics(path)):
        return []  # nothing to draw (e.g. trainer.max_steps=0): skip matplotlib's import
    import logging

    from matplotlib.figure import Figure

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    records = read_metrics(path)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss (logged steps)", alpha=0.7)
    ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(run_dir.name)
    written = [_save(fig, run_dir, RunDir.LOSS_PLOT)]
    names = sorted({k.split("/", 1)[1] for r in train for k in r if k.startswith("grad_norm/")})
    if names:
        fig = Figure(figsize=(7, 4))
        ax = fig.subplots()
        for name in names:
            key = f"grad_norm/{name}"
            points = [(r["step"], r[key]) for r in train if key in r]  # a float16 step skipped for overflow has none
            ax.plot([p[0] for p in points], [p[1] for p in points], label=name)
        ax.set_xlabel("step")
        ax.set_ylabel("gradient L2 norm")
        ax.set_yscale("log")
        ax.legend(fontsize=7, ncol=2)
        ax.set_title("per-tensor gradient norm")
        written.append(_save(fig, run_dir, RunDir.GRAD_NORMS_PLOT))
    layers = list(dict.fromkeys(k.split("/", 1)[1] for r in train for k in r if k.startswith("act_std/")))  # model order
    if layers:
        written.append(_activations(train, layers, run_dir))
    return written


def _activations(train: list[dict], layers: list[str], run_dir: Path) -> Path:
    """activations.png: each layer's output std at the first logged step (step 1, on the initial weights,
    in a run that logged from its start) with depth on x, and over time."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 4.5))
    depth, time = fig.subplots(1, 2)
    first = next(r for r in train if any(k.startswith("act_std/") for k in r))
    shown = [name for name in layers if f"act_std/{name}" in first]
    depth.plot(range(len(shown)), [first[f"act_std/{name}"] for name in shown], "o-")
    depth.set_xticks(range(len(shown)), shown, rotation=60, ha="right", fontsize=7)
    initial = " (initial weights)" if on_initial_weights(first) else ""
    depth.set(yscale="log", ylabel="output std", title=f"activation std per layer at step {first['step']}{initial}")
    for name in layers:
        key = f"act_std/{name}"
        points = [(r["step"], r[key]) for r in train if key in r]
        time.plot([p[0] for p in points], [p[1] for p in points], label=name)
    time.set(xlabel="step", yscale="log", ylabel="output std", title="activation std over training")
    time.legend(fontsize=7, ncol=1 + len(layers) // 12, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the lines, not over them
    return _save(fig, run_dir, RunDir.ACTIVATIONS_PLOT)


def _save(fig: Figure, run_dir: Path, name: str) -> Path:
    """Returns the path of the PNG written (a Figure needs no close: it is freed with its last reference)."""
    fig.tight_layout()
    with writing(run_dir):
        fig.savefig(run_dir / name, dpi=100)
    return run_dir / name
