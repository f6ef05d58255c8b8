"""`circuitboard report`: the full linked board from a prompt (tiny random models, no download)."""

from __future__ import annotations

import json
import re

import pytest

import circuitboard.cli as cli

from .tiny_models import tiny_gpt2, tiny_llama


@pytest.fixture(params=[tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def tiny(request, monkeypatch):
    model, tok = request.param()
    monkeypatch.setattr(cli, "_load", lambda name: (model, tok))
    return model, tok


def views_in(path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    data = json.loads(
        re.search(r'id="cb-state" type="application/json">(.*?)</script>', text).group(1)
    )
    return [
        data["models"][it["model"]]["state"]["_view"]
        for it in data["items"]
        if it["type"] == "view"
    ]


def test_report_builds_the_full_linked_board(tiny, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert cli.main(["report", "--prompt", "the cat sat on the mat", "-o", str(out)]) == 0
    assert views_in(out) == ["attribution", "attention", "lens", "neurons"]
    text = out.read_text(encoding="utf-8")
    assert "top prediction" in text and "runner-up" in text
    # One link model for every view.
    links = set(re.findall(r'"link":"IPY_MODEL_(m\d+)"', text))
    assert len(links) == 1
    err = capsys.readouterr().err
    assert f"wrote {out}" in err and "attribution" in err


def test_target_and_baseline(tiny, tmp_path):
    _model, tok = tiny
    a, b = (tok.decode([i]) for i in tok("the cat")["input_ids"][-2:])
    out = tmp_path / "r.html"
    assert (
        cli.main(
            ["report", "--prompt", "the cat sat", "--target", a, "--baseline", b, "-o", str(out)]
        )
        == 0
    )
    assert "against" in out.read_text(encoding="utf-8")


def test_too_small_budget_fails_cleanly(tiny, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert cli.main(["report", "--prompt", "the cat", "--budget-mb", "0.01", "-o", str(out)]) == 2
    assert "need at least" in capsys.readouterr().err
    assert not out.exists()


def test_same_prompt_same_bytes(tiny, tmp_path):
    for name in ("a.html", "b.html"):
        assert cli.main(["report", "--prompt", "one two three", "-o", str(tmp_path / name)]) == 0
    assert (tmp_path / "a.html").read_bytes() == (tmp_path / "b.html").read_bytes()


def test_same_bytes_across_processes(tmp_path):
    """Nothing depends on hash seeds, dict order of a process, clocks or object ids."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    script = (
        "import sys; import circuitboard.cli as cli; from tests.unit.tiny_models import tiny_llama;"
        "m = tiny_llama(); cli._load = lambda name: m;"
        "sys.exit(cli.main(['report', '--prompt', 'one two three', '-o', sys.argv[1]]))"
    )
    # both processes at once: each spends most of its time importing torch and transformers
    procs = {
        seed: subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / f"{seed}.html")],
            cwd=root,
            env={**os.environ, "PYTHONHASHSEED": seed},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for seed in ("1", "2")
    }
    for seed, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (seed, err[-2000:])
    assert (tmp_path / "1.html").read_bytes() == (tmp_path / "2.html").read_bytes()
