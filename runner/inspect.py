"""`python -m runner.inspect [overrides]`: build, initialize and place the model, print one row per tensor,
then the model's wiring as a markdown page with a Mermaid diagram (the run directory's model.md)."""

from __future__ import annotations

import sys

from runner.config.compose import compose, parse_command_line
from runner.errors import report_errors
from runner.model.diagram import model_markdown
from runner.model.tensors import count_parameters
from runner.prepare.plan import check
from runner.prepare.prepare import prepare
from runner.prepare.tensor_table import render_markdown, tensor_rows

USAGE = """usage: python -m runner.inspect [--config-dir DIR] [--config-path DIR] [--config-name NAME] [overrides ...]

Builds, initializes and places the model of the config that `python -m runner` with the same arguments
would train, without training: one row per tensor (shape, kind, init rule, ties, std), then the model's
wiring. Takes the same options and overrides as `python -m runner` (see python -m runner --help).

examples:
  python -m runner.inspect experiment=autoencoder init=orthogonal
  python -m runner.inspect --config-dir my_configs model=my_model"""


def main(argv: list[str]) -> None:
    command = report_errors(lambda: parse_command_line(argv, "runner.inspect"))
    if command.help:
        print(USAGE)
        return

    def show() -> None:
        prepared = prepare(*check(compose(command.all_overrides, command.config_dir, command.config_name)))
        print(render_markdown(tensor_rows(prepared), count_parameters(prepared.model)))
        print()
        print(model_markdown(prepared.spec.model), end="")

    report_errors(show)


if __name__ == "__main__":
    main(sys.argv[1:])
