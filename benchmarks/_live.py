"""A one-cell notebook run in a live JupyterLab, offline, for benchmarks that time a kernel."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def live_notebook(
    browser: Any,
    root: Path,
    source: str,
    *,
    viewport: dict[str, int],
    ready: str,
    timeout_ms: int = 180_000,
) -> Iterator[Any]:
    """Write ``source`` as the only cell of ``root/live.ipynb``, open it in JupyterLab (every
    request off the lab's own address aborted), run it and wait for ``ready`` (a CSS selector);
    yields the page. The lab and the browser context are closed on exit."""
    from tests.browser.test_jupyter_live import free_port, start_lab, stop_lab

    cell = {"cell_type": "code", "execution_count": None, "id": "c0", "metadata": {},
            "outputs": [], "source": source}  # fmt: skip
    kernel = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb = {"cells": [cell], "metadata": {"kernelspec": kernel}, "nbformat": 4, "nbformat_minor": 5}
    (root / "live.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    port, token = free_port(), secrets.token_hex(16)
    lab = start_lab(root, port, token)
    ctx = browser.new_context(viewport=viewport)
    try:
        base = f"http://127.0.0.1:{port}"
        local = (base, "data:", "blob:")
        ctx.route("**/*", lambda r: r.continue_() if r.request.url.startswith(local) else r.abort())
        page = ctx.new_page()
        page.goto(f"{base}/lab/tree/live.ipynb?token={token}", timeout=60_000)
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        try:  # a kernel-select dialog, when this JupyterLab shows one
            page.locator(".jp-Dialog .jp-mod-accept").first.click(timeout=3_000)
        except Exception:
            pass
        page.wait_for_function(
            "() => window.jupyterapp?.shell.currentWidget?.sessionContext?.session"
            "?.kernel?.status === 'idle'",
            timeout=60_000,
        )
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        page.wait_for_selector(ready, timeout=timeout_ms)
        yield page
    finally:
        ctx.close()
        stop_lab(lab)
