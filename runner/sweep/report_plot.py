"""report.png of a sweep report: drawn on a matplotlib Figure, leaving pyplot's backend alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _mean_curve(jobs: list) -> tuple[list[int], Any, Any]:
    """The mean validation loss over jobs at the steps every one of them evaluated, and its sample std (None for one job)."""
    import numpy as np

    if not jobs:
        return [], None, None
    steps = sorted(set.intersection(*({r["step"] for r in j.evals} for j in jobs)))
    table = np.array([[next(r["val_loss"] for r in j.evals if r["step"] == step) for step in steps] for j in jobs], dtype=float)
    return steps, table.mean(axis=0), table.std(axis=0, ddof=1) if len(jobs) > 1 else None


def plot_report(jobs: list, groups: list, path: Path) -> None:
    """report.png: each configuration's validation loss, and the gradient norms and activation stds at step 1
    (`jobs` and `groups` are runner.sweep.report's Job and Configuration)."""
    import logging

    import numpy as np
    from matplotlib.figure import Figure  # not pyplot: the caller's backend stays as it is

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    fig = Figure(figsize=(19, 4.5))
    curves, bars, acts = fig.subplots(1, 3)
    for group in groups:
        steps, mean, std = _mean_curve([j for j in group.finished if j.evals])
        if steps:
            evaluated = sum(bool(j.evals) for j in group.finished)
            line, = curves.plot(steps, mean, "o-", ms=3, label=group.label + (f" (n={evaluated})" if evaluated > 1 else ""))
            if std is not None:
                curves.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    seeded = any(len(g.jobs) > 1 for g in groups)
    curves.set(xlabel="step", ylabel="val loss", yscale="log", title="validation loss" + (" (mean ± std over seeds)" if seeded else ""))
    with_stats = [j for j in jobs if j.at_init()]
    names = list(dict.fromkeys(n for j in with_stats for n in j.at_init()))  # model order
    width = 0.8 / max(len(with_stats), 1)
    for index, job in enumerate(with_stats):
        norms = job.at_init()
        values = [norms.get(n, np.nan) for n in names]
        bars.bar(np.arange(len(names)) + index * width, values, width, label=job.label)
    bars.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=60, ha="right", fontsize=7)
    bars.set(yscale="log", ylabel="gradient L2 norm", title="per-tensor gradient norm at step 1 (initial weights)")
    layers = list(dict.fromkeys(n for j in jobs for n in j.at_init("act_std")))  # model order
    for job in jobs:
        stds = job.at_init("act_std")
        if stds:
            acts.plot([layers.index(n) for n in stds], list(stds.values()), "o-", ms=3, label=job.label)
    if layers:
        acts.set_xticks(range(len(layers)), layers, rotation=60, ha="right", fontsize=7)
    acts.set(yscale="log", ylabel="output std", title="per-layer activation std at step 1 (initial weights)")
    for axes in (curves, bars, acts):
        if axes.has_data():  # a sweep whose jobs all failed has nothing to label
            axes.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
