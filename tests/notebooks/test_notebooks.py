"""Every notebook in notebooks/ runs top to bottom (with the default model)."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert errors == []
    if path.stem == "tour":
        report = tmp_path / "ioi-report.html"
        assert report.is_file() and report.stat().st_size > 100_000
        assert (tmp_path / "attention.png").read_bytes()[:4] == b"\x89PNG"
        assert (tmp_path / "attention.svg").read_text().startswith("<svg")
    if path.stem == "features":
        assert (tmp_path / "features-report.html").stat().st_size > 100_000
    for cell in nb.cells:  # widgets rendered as widget views, not as tracebacks
        for out in cell.get("outputs", []):
            assert "Traceback" not in str(out.get("text", ""))


@pytest.mark.real
@pytest.mark.slow
def test_marimo_quickstart_runs_as_a_script(tmp_path: Path) -> None:
    """notebooks/quickstart_marimo.py executes every cell (its asserts check the findings)."""
    import subprocess
    import sys

    pytest.importorskip("marimo")
    script = NOTEBOOKS[0].parent / "quickstart_marimo.py"
    run = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "all passed" in run.stdout
    assert (tmp_path / "quickstart-marimo.html").stat().st_size > 100_000
