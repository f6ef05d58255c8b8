"""Live marimo: two linked views in separate cells follow each other (anywidget's host API)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser.test_jupyter_live import (
    free_port,
    offline_context,
    stop_lab,
    wait_until_serving,
)

pytestmark = pytest.mark.slow

APP = """
import marimo

app = marimo.App()


@app.cell
def _():
    import numpy as np
    import marimo as mo
    import circuitboard as cb

    rng = np.random.default_rng(0)
    att = np.tril(rng.random((2, 3, 8, 8)) + 1e-3)
    att /= att.sum(-1, keepdims=True)
    tokens = ["When", " Mary", " and", " John", " went", " to", " the", " store"]
    a = cb.AttentionView(att, tokens)
    b = cb.AttentionView(att[::-1].copy(), tokens)
    cb.link(a, b)
    return a, b, mo


@app.cell
def _(a, mo):
    mo.ui.anywidget(a)
    return


@app.cell
def _(b, mo):
    mo.ui.anywidget(b)
    return
"""


def start_marimo(app: Path, port: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "marimo",
        "run",
        str(app),
        "--headless",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-token",
    ]
    log = open(app.parent / "marimo.log", "w")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(
        cmd, cwd=app.parent, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    proc.cb_log = log  # type: ignore[attr-defined]
    return wait_until_serving(proc, f"http://127.0.0.1:{port}/")


def test_linked_views_in_marimo(browser, tmp_path, artifacts):
    pytest.importorskip("marimo")  # a test extra; reason: marimo missing
    app = tmp_path / "app.py"
    app.write_text(APP, encoding="utf-8")
    port = free_port()
    server = start_marimo(app, port)
    context = None
    errors: list[str] = []
    try:
        base = f"http://127.0.0.1:{port}"
        context = offline_context(browser, base, {"width": 1200, "height": 1600})
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/", timeout=60_000)
        page.wait_for_selector(".cb-attention >> nth=1", timeout=60_000)
        first, second = page.locator(".cb-attention").nth(0), page.locator(".cb-attention").nth(1)
        first.locator('select[aria-label="head"]').select_option("2")
        page.wait_for_function(
            "() => [...document.querySelectorAll('.cb-attention')]"
            ".every(e => e.dataset.head === '2')",
            timeout=15_000,
        )
        first.locator('.cb-token[data-i="5"]').hover()
        second.locator('.cb-token[data-i="5"].cb-token-active').wait_for(timeout=5_000)
        page.screenshot(path=str(artifacts / "marimo-live-linked.png"), full_page=True)
        assert errors == []
    finally:
        if context is not None:
            context.close()
        stop_lab(server)
