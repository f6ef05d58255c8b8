"""A one-cell notebook run in a live JupyterLab, offline, for benchmarks that time a kernel.

Built on the live tests' helpers (``tests/browser/test_jupyter_live.py``), so the benchmarks
open, route and run notebooks exactly as the tests do.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def live_notebook(
    browser: Any,
    root: Path,
    source: str | list[str],
    *,
    viewport: dict[str, int],
    ready: str,
    timeout_ms: int = 180_000,
    init_script: str | None = None,
) -> Iterator[Any]:
    """Write ``source`` (one cell or a list of cells) as ``root/live.ipynb``, open and run it in
    JupyterLab (requests off the lab's own address aborted) and wait for ``ready`` (a CSS
    selector); yields the page. ``init_script`` runs in the page before JupyterLab's own.
    The lab and the browser context are closed on exit."""
    from tests.browser.test_jupyter_live import (
        free_port,
        offline_context,
        open_and_run,
        start_lab,
        stop_lab,
        write_notebook,
    )

    write_notebook(root / "live.ipynb", [source] if isinstance(source, str) else source)
    port, token = free_port(), secrets.token_hex(16)
    lab = start_lab(root, port, token)
    base = f"http://127.0.0.1:{port}"
    ctx = offline_context(browser, base, viewport)
    if init_script:
        ctx.add_init_script(init_script)
    try:
        page = ctx.new_page()
        open_and_run(page, f"{base}/lab/tree/live.ipynb?token={token}")
        page.wait_for_selector(ready, timeout=timeout_ms)
        yield page
    finally:
        ctx.close()
        stop_lab(lab)
