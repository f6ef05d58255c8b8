"""Wherever a finding on the default model is stated, so is which weights it holds for: the
4-bit Q4_1 GGUF of SmolLM2-135M-Instruct, de-quantized (issue 24, item 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import circuitboard as cb
from circuitboard.models import _default

ROOT = Path(__file__).resolve().parents[2]
USES_DEFAULT = ("load_default_model", 'ModelSpec("default"', "ModelSpec('default'")


def test_the_loader_docstring_and_the_model_name_say_q4_1() -> None:
    doc = cb.load_default_model.__doc__ or ""
    assert "Q4_1" in doc and "de-quantized" in doc
    assert "Q4_1" in _default.MODEL_NAME  # what captures and report headers show


def notebooks() -> list[Path]:
    return sorted(p for p in (ROOT / "notebooks").iterdir() if p.suffix in (".ipynb", ".py"))


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.name)
def test_every_notebook_on_the_default_model_states_its_weights(path: Path) -> None:
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        prose = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    else:
        code = prose = path.read_text(encoding="utf-8")
    if any(s in code for s in USES_DEFAULT):
        assert "Q4_1" in prose, f"{path.name} states findings on the default model: say Q4_1"


def test_the_readme_states_the_weights() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "Q4_1" in text and "de-quantized" in text
