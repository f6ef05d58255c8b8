"""Users only ever need public names: tab completion lists them, examples import only them."""

from __future__ import annotations

import doctest
import importlib
import json
import pkgutil
import re
from pathlib import Path

import circuitboard as cb

ROOT = Path(__file__).resolve().parents[2]
# An import of a private module (a path component starting with "_") or of the test suite.
PRIVATE = re.compile(r"\b(?:from|import)\s+(circuitboard(?:\.\w+)*\._\w+|tests\.[\w.]+)")


def test_dir_lists_every_public_name_including_the_lazy_ones() -> None:
    listed = dir(cb)
    missing = [n for n in cb.__all__ if n not in listed]
    assert not missing, f"dir(circuitboard) lacks {missing}: tab completion would not offer them"
    assert "verify_report" in listed and "load_default_model" in listed  # lazy names


def test_docstring_examples_import_public_names_only() -> None:
    found = []
    for info in pkgutil.walk_packages(cb.__path__, "circuitboard."):
        module = importlib.import_module(info.name)
        for test in doctest.DocTestFinder().find(module):
            for ex in test.examples:
                found += [f"{test.name}: {m}" for m in PRIVATE.findall(ex.source)]
    assert not found, f"docstring examples import private modules or the test suite: {found}"


def test_notebooks_import_public_names_only() -> None:
    found = []
    for path in sorted((ROOT / "notebooks").iterdir()):
        if path.suffix == ".ipynb":
            cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
            text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        elif path.suffix == ".py":
            text = path.read_text(encoding="utf-8")
        else:
            continue
        found += [f"{path.name}: {m}" for m in PRIVATE.findall(text)]
    assert not found, f"notebooks import private modules or the test suite: {found}"


def test_the_public_verify_report_is_the_one_the_cli_uses(tmp_path: Path) -> None:
    import numpy as np

    from circuitboard.export import verify_report

    assert cb.verify_report is verify_report
    path = cb.report(
        cb.AttentionView(np.full((1, 2, 2), 0.5), ["a", "b"]), path=tmp_path / "r.html"
    )
    assert cb.verify_report(path).ok
    page = path.read_text(encoding="utf-8")
    path.write_text(page.replace('"tokens":["a","b"]', '"tokens":["a","c"]'), encoding="utf-8")
    assert not cb.verify_report(path).ok
