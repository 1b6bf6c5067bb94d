"""The per-tensor table: name, aliases, shape, kind, what initialized it, observed and predicted std, placement.

`python -m runner.inspect` prints it; every run directory keeps it as tensors.md and tensors.json,
beside model.md, the picture of the model's wiring (diagram.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.model.diagram import model_markdown
from runner.model.tensors import count_parameters, tensor_index
from runner.prepare.prepare import Prepared
from runner.run.directory import RunDir, write_json

COLUMNS = ("name", "aliases", "shape", "numel", "kind", "init", "mean", "std", "predicted_std", "device", "dtype")


def tensor_rows(prepared: Prepared) -> list[dict[str, Any]]:
    """Returns one row per unique tensor: names, shape, kind, what set it, observed and predicted stats, placement."""
    rows = []
    for entry in tensor_index(prepared.model):
        tensor = entry.tensor.detach()
        values = tensor.double() if tensor.is_floating_point() else None
        origin = prepared.provenance.get(entry.name)
        rows.append({
            "name": entry.name,
            "aliases": list(entry.aliases),
            "shape": list(tensor.shape),
            "numel": tensor.numel(),
            "kind": entry.kind,
            "init": origin.source if origin else "module buffer",
            "mean": values.mean().item() if values is not None and values.numel() else None,
            "std": values.std().item() if values is not None and values.numel() > 1 else None,
            "predicted_std": origin.predicted_std if origin else None,
            "device": str(tensor.device),
            "dtype": str(tensor.dtype).replace("torch.", ""),
        })
    return rows


def render_markdown(rows: list[dict[str, Any]], counts: dict[str, int]) -> str:
    """Returns the rows as a markdown table followed by the parameter counts."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |")
    lines.append("")
    lines.append(
        f"parameters: {counts['unique']:,} unique ({counts['naive']:,} counting each tied use), "
        f"{counts['trainable']:,} trainable, {counts['frozen']:,} frozen; buffers: {counts['buffers']:,} values"
    )
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "x".join(map(str, value)) if all(isinstance(v, int) for v in value) else ", ".join(map(str, value)) or "-"
    return str(value)


def write_tensor_table(prepared: Prepared, run_dir: Path) -> None:
    """Writes tensors.md, tensors.json and model.md (the wiring diagram) into the run directory."""
    rows, counts = tensor_rows(prepared), count_parameters(prepared.model)
    (run_dir / RunDir.TENSORS_MD).write_text(render_markdown(rows, counts) + "\n", encoding="utf-8")
    write_json(run_dir / RunDir.TENSORS_JSON, {"tensors": rows, "parameters": counts})
    (run_dir / RunDir.MODEL_MD).write_text(model_markdown(prepared.spec.model), encoding="utf-8")
