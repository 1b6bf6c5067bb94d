"""Generated pages are current: docs/notes.md (tools/notes_page.py, from the examples) and the table of
docs/failures.md (tools/failures_page.py, from tests/integration/test_failures.py's TABLE)."""

from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO))
from tools import failures_page, notes_page  # noqa: E402


def test_the_notes_page_shows_every_note_example():
    assert notes_page.PAGE.read_text() == notes_page.page(), "docs/notes.md is out of date: run python tools/notes_page.py"


def test_the_failure_table_is_the_tested_table():
    text = failures_page.PAGE.read_text()
    assert failures_page.updated(text) == text, "docs/failures.md's table is out of date: run python tools/failures_page.py"


def test_every_docs_link_names_a_file_that_exists():
    import re

    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_the_readme_example_is_the_shipped_file_and_means_what_it_says():
    import torch

    import runner

    example = REPO / "examples" / "readme" / "experiment" / "tiny_ae.yaml"
    assert example.read_text().rstrip() in (REPO / "README.md").read_text()
    cfg = runner.compose([f"hydra.searchpath=[file://{example.parent.parent}]", "experiment=tiny_ae"])
    model = runner.build(cfg)
    enc, dec = model.enc.weight, model.dec.weight
    assert torch.equal(dec, enc.T) and model.dec.parametrizations.weight.original is enc  # one stored tensor
    bound = (6 / (64 + 16)) ** 0.5  # Glorot uniform, gain 1
    assert enc.abs().max() <= bound and enc.abs().max() > 0.9 * bound and not model.enc.bias.any()
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), torch.tanh(x @ enc.T) @ enc + x, atol=1e-6)
