"""The built wheel ships the front-end bundle and works in a fresh venv without Node.js."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (whl,) = out.glob("circuitboard-*.whl")
    return whl


@pytest.mark.slow
def test_wheel_contains_bundle(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for f in ("index.js", "index.css", "host.js"):
        assert f"circuitboard/static/{f}" in names, f"{f} missing from the wheel"
    assert "circuitboard/cli.py" in names


@pytest.mark.slow
def test_wheel_imports_without_node(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    # Only the venv and the system's basic tools on PATH: no node, no npm.
    env = {**os.environ, "PATH": f"{env_dir / 'bin'}:/usr/bin:/bin"}
    if any((Path(p) / "node").exists() for p in env["PATH"].split(":")):
        env["PATH"] = f"{env_dir / 'bin'}"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True,
        env=env,
        capture_output=True,
    )
    code = (
        "import shutil, circuitboard as cb, numpy as np\n"
        "assert shutil.which('node') is None\n"
        "v = cb.AttentionView(np.full((1, 2, 2), 0.5), ['a', 'b'])\n"
        "import pathlib, sys; p = cb.report(v, path=pathlib.Path(sys.argv[1]))\n"
        "assert p.stat().st_size > 10_000\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [str(py), "-c", code, str(tmp_path / "r.html")],
        check=True,
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.stdout.strip() == "ok"
