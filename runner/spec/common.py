"""Small checks the groups share: a choice among names, a list of globs, a list of mappings, a schema's field names."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

from runner.errors import Problems, suggest


def field_names(schema: type) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)]


def parse_globs(declared: list, key: str, problems: Problems) -> tuple[str, ...]:
    globs = []
    for index, pattern in enumerate(declared):
        if not isinstance(pattern, str) or not pattern:
            problems.add(f"{key}[{index}]", f"expected a glob such as 'encoder.*', got {pattern!r}")
            continue
        globs.append(pattern)
    return tuple(globs)


def mappings(declared: list, key: str, example: str, problems: Problems) -> Iterator[tuple[int, str, dict]]:
    """Yields (index, key path, entry) for each mapping of a declared list; adds a problem for the rest."""
    for index, body in enumerate(declared):
        if isinstance(body, dict):
            yield index, f"{key}[{index}]", body
        else:
            problems.add(f"{key}[{index}]", f"expected a mapping like {example}, got {body!r}")


def check_choice(value: Any, options: Any, key: str, problems: Problems) -> None:
    if value not in options:
        problems.add(key, f"expected one of {', '.join(options)}, got {value!r};{suggest(str(value), options)}".rstrip(";"))
