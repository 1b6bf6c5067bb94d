"""`python -m runner.inspect [overrides]`: build, initialize and place the model, print one row per tensor,
then the model's wiring as a markdown page with a Mermaid diagram (the run directory's model.md)."""

from __future__ import annotations

import sys

from runner.config.compose import compose
from runner.errors import report_errors
from runner.model.diagram import model_markdown
from runner.model.tensors import count_parameters
from runner.prepare.plan import check
from runner.prepare.prepare import prepare
from runner.prepare.tensor_table import render_markdown, tensor_rows


def main(argv: list[str]) -> None:
    def show() -> None:
        prepared = prepare(*check(compose(argv)))
        print(render_markdown(tensor_rows(prepared), count_parameters(prepared.model)))
        print()
        print(model_markdown(prepared.spec.model), end="")

    report_errors(show)


if __name__ == "__main__":
    main(sys.argv[1:])
