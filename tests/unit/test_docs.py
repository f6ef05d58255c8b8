"""The API reference: every public name documented with an example, examples run, docs build."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

import circuitboard as cb

ROOT = Path(__file__).resolve().parents[2]


def _public(name: str):
    obj = getattr(cb, name)
    return getattr(obj, name) if isinstance(obj, types.ModuleType) else obj


@pytest.mark.parametrize("name", sorted(cb.__all__))
def test_every_public_name_has_a_docstring_with_an_example(name: str) -> None:
    doc = inspect.getdoc(_public(name)) or ""
    assert len(doc.splitlines()) >= 3, f"cb.{name} has no real docstring"
    assert ">>>" in doc, f"cb.{name}'s docstring has no example (an Examples section with >>>)"


def test_docstring_examples_run() -> None:
    """Every example not marked +SKIP runs (tiny models, numpy arrays) and prints what it says."""
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    failed, attempted, report = 0, 0, []
    for info in pkgutil.walk_packages(cb.__path__, "circuitboard."):
        module = importlib.import_module(info.name)
        finder = doctest.DocTestFinder()
        runner = doctest.DocTestRunner(optionflags=flags)
        for test in finder.find(module, globs={"cb": cb, **vars(module)}):
            result = runner.run(test, out=report.append)
            failed += result.failed
            attempted += result.attempted
    assert failed == 0, "".join(report)
    assert attempted >= 100, f"only {attempted} doctest examples ran; were docstrings lost?"


@pytest.mark.slow
def test_make_docs_builds_offline_with_every_public_name(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if mkdocs is None:
        pytest.fail("mkdocs is missing; `make setup-test` installs the docs extra.")
    subprocess.run([sys.executable, "docs/gen_api.py"], cwd=ROOT, check=True)
    out = tmp_path / "site"
    run = subprocess.run(
        [mkdocs, "build", "-q", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr
    html = (out / "reference" / "index.html").read_text(encoding="utf-8")
    missing = [n for n in cb.__all__ if f"cb.{n}</code>" not in html]
    assert not missing, f"names missing from the API reference: {missing}"
    assert "fonts.googleapis" not in html, "the docs must open offline (theme.font: false)"
