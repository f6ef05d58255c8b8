"""Headless figures: a view rendered in Chromium (Playwright) and saved through its ⤓ buttons."""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from ._html import report

_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _no_browser(reason: str) -> RuntimeError:
    return RuntimeError(
        f"save_png/save_svg render the view in a headless browser, and {reason}. Either install "
        "one (`pip install playwright` and `playwright install chromium`, or a system chromium), "
        "or display the view in a notebook and click its ⤓ PNG / ⤓ SVG button, or call "
        "view.save_png(path, via='browser') while it is displayed."
    )


def _render(
    html_path: Path, out_dir: Path, fmt: str, scale: float, theme: str | None, width: int
) -> bytes:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise _no_browser("Playwright is not installed") from None
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=exe, args=_ARGS)
        except Exception as err:
            raise _no_browser(
                f"no Chromium could be started ({str(err).splitlines()[0]})"
            ) from None
        try:
            context = browser.new_context(
                viewport={"width": width, "height": 900},
                accept_downloads=True,
                color_scheme="dark" if theme == "dark" else "light",
            )
            context.route(
                "**/*",
                lambda r: (
                    r.continue_()
                    if r.request.url.startswith(("file:", "blob:", "data:", "about:"))
                    else r.abort()
                ),
            )
            page = context.new_page()
            page.goto(html_path.resolve().as_uri())
            page.wait_for_selector("html[data-cb-ready=true]", timeout=30_000)
            page.eval_on_selector(
                ".cb-slot .cb-root", f"el => {{ el.dataset.cbFigureScale = '{float(scale)}'; }}"
            )
            page.wait_for_timeout(100)
            with page.expect_download(timeout=30_000) as info:
                page.click(f".cb-slot .cb-figure-button[data-format={fmt}]")
            target = out_dir / f"figure.{fmt}"
            info.value.save_as(str(target))
            return target.read_bytes()
        finally:
            browser.close()


def render_figure(
    view: Any, fmt: str, *, scale: float = 2.0, theme: str | None = None, width: int = 1000
) -> bytes:
    """PNG or SVG bytes of ``view`` drawn by the real bundle in headless Chromium.

    Runs Playwright in a worker thread, so it also works inside a notebook's event loop.
    """
    if fmt not in ("png", "svg"):
        raise ValueError(f"figure format must be 'png' or 'svg'; got {fmt!r}.")
    if not 0.25 <= float(scale) <= 8:
        raise ValueError(f"scale must be between 0.25 and 8; got {scale!r}.")
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="circuitboard-figure-") as tmp:
        tmp_dir = Path(tmp)
        old_theme = view.theme
        try:
            if theme is not None:
                view.theme = theme
            path = report(view, path=tmp_dir / "view.html", title="figure")
        finally:
            view.theme = old_theme

        def work() -> None:
            try:
                result["data"] = _render(path, tmp_dir, fmt, scale, theme, width)
            except BaseException as err:  # re-raised in the caller's thread
                result["error"] = err

        t = threading.Thread(target=work, name="circuitboard-figure")
        t.start()
        t.join()
    if "error" in result:
        raise result["error"]
    return result["data"]
