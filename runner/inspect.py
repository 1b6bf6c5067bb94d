"""`python -m runner.inspect [overrides]`: build, initialize and place the model, print one row per tensor,
then the model's wiring as a markdown page with a Mermaid diagram (the run directory's model.md)."""

from __future__ import annotations

import sys

from runner.plan import check
from runner.errors import report_errors
from runner.config import compose
from runner.diagram import model_markdown
from runner.prepare import prepare
from runner.tensor_table import render_markdown, tensor_rows
from runner.tensors import count_parameters


def main(argv: list[str]) -> None:
    def show() -> None:
        prepared = prepare(*check(compose(argv)))
        print(render_markdown(tensor_rows(prepared), count_parameters(prepared.model)))
        print()
        print(model_markdown(prepared.spec.model), end="")

    report_errors(show)


if __name__ == "__main__":
    main(sys.argv[1:])
