"""docs/failures.md's table of bad inputs, generated from tests/integration/test_failures.py's TABLE.

Each row of TABLE is a bad input, the exit status the CLI gives it and the words its one message
must contain; tests/integration/test_failures.py checks each, so the page shows what is tested. `{bad}` (a
folder of the test's files) reads `<dir>`, and `*FILE` the data=file overrides it stands for.

`python tools/failures_page.py` writes the table anew (between the markers <!-- failures:begin -->
and <!-- failures:end -->); tests/unit/test_docs_current.py fails when it is out of date.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "tests" / "integration" / "test_failures.py"
PAGE = REPO / "docs" / "failures.md"
BEGIN = "<!-- failures:begin -->"
END = "<!-- failures:end -->"
# Refused while Hydra composes, reported by runner's own composition (tests/integration/test_failures.py
# test_cli_compose_errors_exit_2; the exact messages: tests/cli/test_cli.py).
HYDRA_ROWS = [
    ("`trainer.watch=fc1`", 2, "trainer.watch: Invalid value assigned: str is not a ListConfig, list or tuple (write `trainer.watch=[fc1]`)"),
    ("`trainer.epochs=many`", 2, "trainer.epochs: Value 'many' of type 'str' could not be converted to Integer"),
    ("`trainer.compile=maybe`", 2, "trainer.compile: expected true or false, got 'maybe'"),
    ("`trainer.epoch=3` (a misspelt key)", 2, "trainer.epoch: unknown key; did you mean 'epochs'?"),
    ("`modell=cnn`", 2, "modell: unknown key; did you mean 'model'?"),
    ("`model=cnnn`", 2, "model: no option 'cnnn' in model; did you mean 'cnn'?"),
]


def rows() -> list[tuple[str, int, str]]:
    """Returns (overrides as typed, exit status, words) for each row of TABLE, read without importing the test."""
    module = ast.parse(SOURCE.read_text(encoding="utf-8"))
    names = {target.id: node.value for node in module.body if isinstance(node, ast.Assign)
             for target in node.targets if isinstance(target, ast.Name)}

    def strings(node: ast.expr) -> list[str]:
        out: list[str] = []
        for element in node.elts:  # type: ignore[attr-defined]
            out += strings(names[element.value.id]) if isinstance(element, ast.Starred) else [ast.literal_eval(element)]
        return out

    found = []
    for row in names["TABLE"].elts:  # type: ignore[attr-defined]
        overrides, status, words = row.elts
        shown = " ".join(strings(overrides)).replace("{bad}", "<dir>")
        found.append((f"`{shown}`", ast.literal_eval(status), ast.literal_eval(words).replace("{bad}", "<dir>")))
    return found


def table() -> str:
    """The markdown table, between blank lines (an HTML comment right above a table would swallow it)."""
    lines = ["", "| bad input (CLI overrides) | exit | the message says |", "|---|---|---|"]
    for shown, status, words in [*rows(), *HYDRA_ROWS]:
        lines.append(f"| {shown.replace('|', chr(92) + '|')} | {status} | {words.replace('|', chr(92) + '|')} |")
    return "\n".join(lines) + "\n\n"


def updated(text: str) -> str:
    """The page with the table between the markers written anew."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"docs/failures.md has no {BEGIN} ... {END} around the table")
    start = text.index(BEGIN) + len(BEGIN)
    return f"{text[:start]}\n{table()}{text[text.index(END, start):]}"


if __name__ == "__main__":
    old = PAGE.read_text(encoding="utf-8")
    new = updated(old)
    PAGE.write_text(new, encoding="utf-8")
    print(f"docs/failures.md: table {'written' if new != old else 'already up to date'} ({len(rows())} rows)")
