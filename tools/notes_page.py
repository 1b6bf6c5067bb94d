"""docs/notes.md, "The source notes, in YAML", generated from examples/notes/experiment/*.yaml.

Each example's header comment is the source of truth:

    # @package _global_
    # Notes <file> <section>: <description>      (the description may go on over more `# ` lines)
    #   <a line of the notes' PyTorch code>      (hash + 3 spaces; one or more)
    # python -m runner --config-dir examples/notes experiment=<name> ...
    # python -c ...                              (optional: more command lines)
    # <prose>                                    (optional; `PARTLY:` says what cannot be expressed)
    <the YAML body>

`python tools/notes_page.py` writes docs/notes.md anew; tests/unit/test_docs_current.py fails when it is
out of date.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "notes" / "experiment"
PAGE = REPO / "docs" / "notes.md"
PACKAGE = "# @package _global_"
CODE = "#   "          # a line of the notes' code (or, in the prose, an indented example)
GIST_LIMIT = 200       # characters of a partly example's gist in the summary table


@dataclass
class Example:
    name: str
    path: str                                  # relative to the repository root
    source: str                                # the notes' file(s) and section(s)
    description: str
    code: list[str]
    commands: list[str]
    prose: list[str] = field(default_factory=list)   # `# ` stripped; indented lines keep their spaces
    body: str = ""

    @property
    def partly(self) -> bool:
        return "PARTLY:" in " ".join(self.prose)


def split_notes_line(text: str) -> tuple[str, str]:
    """'Notes 002 section 4.1: one conv ...' -> ('002 section 4.1', 'one conv ...').

    Splits at the first colon (outside double quotes) that ends the text or is followed by a space;
    with no such colon the whole line is the source and the description is empty.
    """
    text = text[len("Notes"):].strip()
    quoted = False
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif ch == ":" and not quoted and (i + 1 == len(text) or text[i + 1] == " "):
            return text[:i].strip(), text[i + 1:].strip()
    return text.rstrip(".").strip(), ""


def parse(path: Path) -> Example:
    """Reads one example; raises ValueError naming the file where it breaks the header convention."""
    rel = path.relative_to(REPO).as_posix()

    def bad(why: str) -> ValueError:
        return ValueError(f"{rel}: {why}")

    lines = path.read_text().splitlines()
    n = 0
    while n < len(lines) and lines[n].startswith("#"):
        n += 1
    header, body = lines[:n], lines[n:]
    if not header or header[0].strip() != PACKAGE:
        raise bad(f"line 1 must be '{PACKAGE}'")
    if len(header) < 2 or not header[1].startswith("# Notes "):
        raise bad("line 2 must be '# Notes <file> <section>: <description>'")
    source, description = split_notes_line(header[1][2:].strip())

    i = 2
    while i < len(header) and not header[i].startswith(CODE) and not header[i].startswith("# python "):
        description = f"{description} {header[i][1:].strip()}".strip()   # the description goes on
        i += 1
    code: list[str] = []
    while i < len(header) and not header[i].startswith("# python "):
        line = header[i]
        if line.startswith(CODE):
            code.append(line[len(CODE):].rstrip())
        elif line.strip() == "#":
            code.append("")
        else:
            raise bad(f"line {i + 1}: expected a code line ('{CODE}...') or the command, got {line!r}")
        i += 1
    if not code:
        raise bad(f"no code lines ('{CODE}...') after the '# Notes' line")
    commands: list[str] = []
    while i < len(header) and header[i].startswith("# python "):
        commands.append(header[i][2:].rstrip())
        i += 1
    if not commands:
        raise bad("no command line ('# python -m runner --config-dir examples/notes experiment=...')")
    run = f"--config-dir examples/notes experiment={path.stem}"
    if not re.search(re.escape(run) + r"(\s|$)", commands[0]):
        raise bad(f"the first command must contain '{run}', got {commands[0]!r}")
    prose = []
    for line in header[i:]:
        if line.startswith("# python "):
            raise bad(f"a command line after the prose: {line!r}")
        prose.append(line[2:].rstrip() if line.startswith("# ") else line[1:].rstrip())
    while body and not body[0].strip():
        body.pop(0)
    while body and not body[-1].strip():
        body.pop()
    if not body:
        raise bad("no YAML after the header comment")
    return Example(path.stem, rel, source, description, code, commands, prose, "\n".join(body))


def examples() -> list[Example]:
    found = [parse(p) for p in sorted(EXAMPLES.glob("*.yaml"))]
    if not found:
        raise ValueError(f"no examples under {EXAMPLES.relative_to(REPO)}")
    return found


# --------------------------------------------------------------------------------------------- rendering


def cell(text: str) -> str:
    """Text for a markdown table cell."""
    return text.replace("|", "\\|")


def summary_text(text: str) -> str:
    """Text inside <summary>: HTML, so escaped, with `code` as <code>."""
    parts = text.split("`")
    if len(parts) % 2 == 0:        # an unpaired backtick: keep it as a character
        return html.escape(text, quote=False)
    return "".join(f"<code>{html.escape(p, quote=False)}</code>" if k % 2 else html.escape(p, quote=False)
                   for k, p in enumerate(parts))


def first_sentence(text: str) -> str:
    """Up to the first '. ' (or the end) outside backticks and parentheses."""
    tick, depth = False, 0
    for i, ch in enumerate(text):
        if ch == "`":
            tick = not tick
        elif not tick and ch == "(":
            depth += 1
        elif not tick and ch == ")":
            depth = max(0, depth - 1)
        elif ch == "." and not tick and depth == 0 and (i + 1 == len(text) or text[i + 1] == " "):
            return text[:i + 1]
    return text


def trim(text: str, limit: int = GIST_LIMIT) -> str:
    """text cut at the last space (outside backticks) before limit, with an ellipsis."""
    if len(text) <= limit:
        return text
    tick, cut = False, 0
    for i, ch in enumerate(text[:limit]):
        if ch == "`":
            tick = not tick
        elif ch == " " and not tick:
            cut = i
    return text[:cut].rstrip(" ,;:(") + " …"


def paragraphs(prose: list[str]) -> list[tuple[str, str]]:
    """The prose as ('text', paragraph) and ('code', lines); a line starting 'PARTLY:' starts a paragraph."""
    out: list[tuple[str, str]] = []
    for line in prose:
        kind = "code" if line.startswith("  ") else "text"
        if not line.strip():
            out.append(("gap", ""))
            continue
        text = line[2:] if kind == "code" else line.strip()
        if out and out[-1][0] == kind and not (kind == "text" and text.startswith("PARTLY:")):
            out[-1] = (kind, f"{out[-1][1]}{chr(10) if kind == 'code' else ' '}{text}")
        else:
            out.append((kind, text))
    return [p for p in out if p[0] != "gap"]


def gist(ex: Example) -> str:
    for kind, text in paragraphs(ex.prose):
        if kind == "text" and "PARTLY:" in text:
            return trim(first_sentence(text.split("PARTLY:", 1)[1].strip()))
    return ""


def fence(lang: str, text: str) -> list[str]:
    return ["", f"```{lang}", text, "```", ""]


def details(ex: Example) -> list[str]:
    title = ex.description or f"Notes {ex.source}"
    out = [f"<details><summary><b>{ex.name}</b>: {summary_text(title)}</summary>", ""]
    out.append(f"From the notes, {ex.source}:")
    out += fence("python", "\n".join(ex.code))
    out.append(f"In YAML, [{ex.path}](../{ex.path}):")
    out += fence("yaml", ex.body)
    out += fence("bash", "\n".join(ex.commands))
    for kind, text in paragraphs(ex.prose):
        if kind == "code":
            out += fence("", text)
        else:
            out += [text.replace("PARTLY:", "**Partly:**", 1), ""]
    out += ["</details>", ""]
    return [line for k, line in enumerate(out) if line or (k and out[k - 1])]   # no double blank lines


def page() -> str:
    """docs/notes.md, from the examples' files; ends with a newline."""
    found = examples()
    out = [
        "# The source notes, in YAML",
        "",
        "Every pattern of the source notes, written in our YAML. Back to the [README](../README.md).",
        "",
        "<!-- Generated from the header comments of examples/notes/experiment/*.yaml: edit those, then run",
        "     `python tools/notes_page.py`, which writes this page (tests/unit/test_docs_current.py checks it). -->",
        "",
        "The runner was written from five sets of notes on PyTorch parameter management (numbered 000 to",
        f"004). Each of the {len(found)} examples below takes a piece of PyTorch code from them and writes it as an",
        "experiment config under examples/notes/experiment/. Run one with",
        "",
        "```bash",
        "python -m runner --config-dir examples/notes experiment=<name>",
        "```",
        "",
        "(add `trainer.max_steps=3` for a quick look). Each example has a test in tests/integration/test_notes.py that",
        "compares it with plain PyTorch written from the notes. **full**: the notes' code is expressed as",
        "written; **partly**: some of it cannot be, and the example says what and what it does instead.",
        "",
        "| example | notes | expressed | what differs |",
        "|---|---|---|---|",
    ]
    for ex in found:
        out.append(f"| [`{ex.name}`](../{ex.path}) | {cell(ex.source)} | {'partly' if ex.partly else 'full'} | {cell(gist(ex))} |")
    out.append("")
    for ex in found:
        out += details(ex)
    return "\n".join(out).rstrip("\n") + "\n"


if __name__ == "__main__":
    old = PAGE.read_text() if PAGE.is_file() else ""
    new = page()
    PAGE.write_text(new)
    print(f"docs/notes.md {'written' if new != old else 'already up to date'} ({len(examples())} examples)")
