"""report.png of a sweep report: drawn on a matplotlib Figure, leaving pyplot's backend alone.

Every panel is per configuration (the jobs that differ only in `seed`): one colour and line style each,
the configuration's mean as a thick line (or a bar with its spread), and each seed as a thin line in
the same style around it. tab10's ten colours with four line styles keep up to 40 configurations
apart; one legend for the whole figure sits to the right of the panels, off the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

LINE_STYLES = ("-", "--", ":", "-.")


def styles(count: int) -> list[tuple[Any, str]]:
    """(colour, line style) for each of `count` configurations: tab10's colours, then the next line style."""
    from matplotlib import colormaps

    colours = colormaps["tab10"].colors
    return [(colours[i % len(colours)], LINE_STYLES[i // len(colours) % len(LINE_STYLES)]) for i in range(count)]


def _curves(jobs: list) -> tuple[list[int], Any]:
    """The validation loss of each job (rows) at the steps every one of them evaluated (columns)."""
    import numpy as np

    steps = sorted(set.intersection(*({r["step"] for r in j.evals} for j in jobs)))
    return steps, np.array([[next(r["val_loss"] for r in j.evals if r["step"] == step) for step in steps] for j in jobs], dtype=float)


def _at_init(jobs: list, stat: str, names: list[str]) -> Any:
    """`stat` at the initial weights for each job (rows) and name (columns; NaN where a job lacks it)."""
    import numpy as np

    return np.array([[j.at_init(stat).get(n, np.nan) for n in names] for j in jobs], dtype=float)


def _over_jobs(reduce: Any, table: Any, **kwargs: Any) -> Any:
    """`reduce` (np.nanmean, np.nanstd) down the jobs; NaN, quietly, where no job of the configuration has the name
    (a sweep over models: another configuration's tensor or layer)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return reduce(table, axis=0, **kwargs)


def plot_report(jobs: list, groups: list, path: Path) -> Any:
    """report.png: each configuration's validation loss, and its gradient norms and activation stds at step 1
    (`jobs` and `groups` are runner.sweep.report's Job and Configuration). Returns the matplotlib Figure."""
    import logging

    import numpy as np
    from matplotlib.figure import Figure  # not pyplot: the caller's backend stays as it is
    from matplotlib.lines import Line2D

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    fig = Figure(figsize=(21, 5))
    curves, bars, acts = fig.subplots(1, 3)
    tensors = list(dict.fromkeys(n for j in jobs for n in j.at_init()))  # model order
    layers = list(dict.fromkeys(n for j in jobs for n in j.at_init("act_std")))
    drawn = [g for g in groups if g.finished]
    width = 0.8 / max(len(drawn), 1)
    handles = []
    for index, (group, (colour, style)) in enumerate(zip(drawn, styles(len(drawn)))):
        finished, seeded = group.finished, len(group.finished) > 1
        label = group.label + (f" (n={len(finished)})" if seeded else "")
        handles.append(Line2D([], [], color=colour, linestyle=style, linewidth=2, label=label))
        evaluated = [j for j in finished if j.evals]
        if evaluated:
            steps, table = _curves(evaluated)
            if seeded:
                for row in table:
                    curves.plot(steps, row, color=colour, linestyle=style, linewidth=0.7, alpha=0.35)
            curves.plot(steps, table.mean(axis=0), color=colour, linestyle=style, linewidth=2)
        with_stats = [j for j in finished if j.at_init()]
        if with_stats and tensors:
            norms = _at_init(with_stats, "grad_norm", tensors)
            spread = _over_jobs(np.nanstd, norms, ddof=1) if len(with_stats) > 1 else None
            bars.bar(np.arange(len(tensors)) + index * width, _over_jobs(np.nanmean, norms), width, yerr=spread, color=colour,
                     hatch=None if style == "-" else "//", edgecolor="white", error_kw={"elinewidth": 0.8})
        with_acts = [j for j in finished if j.at_init("act_std")]
        if with_acts and layers:
            table = _at_init(with_acts, "act_std", layers)
            if len(with_acts) > 1:
                for row in table:
                    acts.plot(range(len(layers)), row, color=colour, linestyle=style, linewidth=0.7, alpha=0.35)
            acts.plot(range(len(layers)), _over_jobs(np.nanmean, table), "o", color=colour, linestyle=style, linewidth=2, ms=3)
    seeded = any(len(g.finished) > 1 for g in drawn)
    over = " (mean, thin: each seed)" if seeded else ""
    curves.set(xlabel="step", ylabel="val loss", yscale="log", title="validation loss" + over)
    if tensors:
        bars.set_xticks(np.arange(len(tensors)) + width * (len(drawn) - 1) / 2, tensors, rotation=60, ha="right", fontsize=7)
    bars.set(yscale="log", ylabel="gradient L2 norm",
             title="per-tensor gradient norm at step 1" + (" (mean ± std over seeds)" if seeded else ""))
    if layers:
        acts.set_xticks(range(len(layers)), layers, rotation=60, ha="right", fontsize=7)
    acts.set(yscale="log", ylabel="output std", title="per-layer activation std at step 1" + over)
    if handles:  # a sweep whose jobs all failed has nothing to label
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(0.86, 0.5), fontsize=8, frameon=False,
                   title="configuration", title_fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    fig.savefig(path, dpi=100)
    return fig
