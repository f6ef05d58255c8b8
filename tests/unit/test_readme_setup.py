"""The README's set-up lines are backed by the Makefile and pyproject (issue 24, items 11, 16):
a notebook environment in one line, and `make bench` recording numbers with date and load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from benchmarks.__main__ import record

ROOT = Path(__file__).resolve().parents[2]


def target(name: str) -> str:
    """The recipe of a Makefile target (its lines up to the next blank line)."""
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    m = re.search(rf"^{name}:.*?\n((?:\t.*\n)+)", text, re.M)
    assert m, f"the Makefile has no {name!r} target"
    return m.group(1)


def test_make_lab_installs_jupyter_and_opens_the_notebooks() -> None:
    toml = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    extra = re.search(r"^jupyter = \[(.*?)\]", toml, re.M | re.S)
    assert extra, "pyproject.toml has no `jupyter` extra"
    names = set(re.findall(r'"([\w-]+)', extra.group(1)))
    assert {"jupyterlab", "ipykernel"} <= names
    recipe = target("lab")
    assert "jupyter" in re.search(r"\.\[([\w,]+)\]", recipe).group(1).split(",")
    assert "jupyter lab notebooks/" in recipe
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "`make lab`" in readme and 'pip install ".[capture,jupyter]"' in readme


def test_make_bench_records_into_docs_benchmarks() -> None:
    assert "-m benchmarks --write docs/benchmarks.md" in target("bench")
    assert "## Latest run" in (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")


PAGE = (
    "# Benchmarks\n\n## Latest run\n\n"
    "Nothing recorded yet on this checkout: run `make bench`.\n\n## Measurement log\n\nold\n"
)


def test_record_adds_then_replaces_a_modules_section() -> None:
    once = record(PAGE, "bench_patch", "| a | 1 |\n", "_Measured today; load 3.0_")
    assert "Nothing recorded yet" not in once
    assert once.index("### bench_patch") < once.index("## Measurement log")
    assert "_Measured today; load 3.0_\n\n| a | 1 |" in once and once.endswith("old\n")
    twice = record(once, "bench_patch", "| a | 2 |\n", "_Measured tomorrow; load 0.5_")
    assert "| a | 1 |" not in twice and "| a | 2 |" in twice and twice.count("### bench_patch") == 1
    other = record(twice, "bench_capture", "x", "_h_")
    assert (
        other.index("### bench_patch")
        < other.index("### bench_capture")
        < other.index("## Measurement log")
    )


def test_record_refuses_a_page_without_the_heading() -> None:
    with pytest.raises(ValueError, match="no '## Latest run' heading"):
        record("# Benchmarks\n", "bench_patch", "x", "h")
