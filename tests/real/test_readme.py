"""Every code block of the README runs as written (issue 24, item 3).

A fenced block runs unless an HTML comment right above it says ``<!-- not run: reason -->``.
A ``<!-- setup: ... -->`` comment right above a Python block holds hidden lines run before it
(each block runs in a fresh namespace, in an empty folder). Python blocks are executed; bash
blocks run in bash with this environment's ``circuitboard`` on the path. The default model is
loaded once for the session: ``cb.load_default_model()`` returns the session's copy.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import circuitboard as cb

pytestmark = pytest.mark.real

README = Path(__file__).resolve().parents[2] / "README.md"
FENCE = re.compile(
    r"(?:<!--(?P<comment>(?:(?!-->).)*)-->\s*\n)?^```(?P<lang>[\w-]*)\n(?P<code>.*?)^```\s*$",
    re.M | re.S,
)


@dataclass
class Block:
    line: int
    lang: str
    code: str
    setup: str = ""
    not_run: str | None = None

    @property
    def id(self) -> str:
        return f"README.md:{self.line}-{self.lang}"


def blocks(text: str) -> list[Block]:
    out = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start("code"))  # the fence's line number (1-based)
        comment = (m.group("comment") or "").strip()
        b = Block(line, m.group("lang"), m.group("code"))
        if comment.startswith("not run:"):
            b.not_run = comment.removeprefix("not run:").strip()
        elif comment.startswith("setup:"):
            b.setup = comment.removeprefix("setup:").strip("\n") + "\n"
        out.append(b)
    return out


ALL = blocks(README.read_text(encoding="utf-8"))


def test_every_block_is_run_or_says_why_not() -> None:
    assert len(ALL) >= 8, "the README's code blocks were not found"
    for b in ALL:
        if b.not_run is not None:
            assert len(b.not_run) > 10, f"{b.id}: say why it is not run"
        else:
            assert b.lang in ("python", "bash"), f"{b.id}: mark ```{b.lang} blocks not run"
    assert "\nmake test\n" in next(b.code for b in ALL if "make demo" in b.code)
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert ci.strip().endswith("make test"), "CI runs the README's test command"


@pytest.mark.parametrize("block", [b for b in ALL if b.not_run is None], ids=lambda b: b.id)
def test_readme_block_runs_as_written(block: Block, default_model, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    if block.lang == "python":
        monkeypatch.setattr(cb, "load_default_model", lambda *a, **k: default_model)
        source = block.setup + block.code
        code = compile("\n" * (block.line - block.setup.count("\n")) + source, README.name, "exec")
        exec(code, {"__name__": "__readme__"})
        return
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, f"{block.id} failed:\n{run.stdout}\n{run.stderr}"
