"""Headless figures: views rendered in Chromium (Playwright) and saved through their ⤓ buttons."""

from __future__ import annotations

import base64
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from ._html import report

# Offline headless Chromium: without the background-networking flags it keeps dialling out.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
LOCAL_SCHEMES = ("file:", "blob:", "data:", "about:")
_STACK_PNGS = """async ([parts, gap, bg]) => {
    const images = await Promise.all(parts.map(async (b64) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        return createImageBitmap(new Blob([bytes], { type: "image/png" }));
    }));
    const c = document.createElement("canvas");
    c.width = Math.max(...images.map((i) => i.width));
    c.height = images.reduce((h, i) => h + i.height, 0) + gap * (images.length - 1);
    const ctx = c.getContext("2d");
    ctx.fillStyle = bg;
    ctx.fillRect(0, 0, c.width, c.height);
    let y = 0;
    for (const i of images) { ctx.drawImage(i, 0, y); y += i.height + gap; }
    const blob = await new Promise((r) => c.toBlob(r, "image/png"));
    const buf = new Uint8Array(await blob.arrayBuffer());
    let s = "";
    for (let k = 0; k < buf.length; k += 0x8000) {
        s += String.fromCharCode(...buf.subarray(k, k + 0x8000));
    }
    return btoa(s);
}"""


def _no_browser(reason: str) -> RuntimeError:
    return RuntimeError(
        f"save_png/save_svg render the view in a headless browser, and {reason}. Either install "
        "one (`pip install playwright` and `playwright install chromium`, or a system chromium), "
        "or display the view in a notebook and click its ⤓ PNG / ⤓ SVG button, or call "
        "view.save_png(path, via='browser') while it is displayed."
    )


def _download(page: Any, slot: Any, fmt: str, target: Path) -> bytes:
    with page.expect_download(timeout=30_000) as info:
        slot.locator(f".cb-figure-button[data-format={fmt}]").first.click()
    info.value.save_as(str(target))
    return target.read_bytes()


def _stack_svgs(parts: list[bytes], gap: int = 12) -> bytes:
    """Several view SVGs one under the other in one SVG document."""
    out, y, width = [], 0, 0
    for data in parts:
        text = data.decode("utf-8")
        m = re.match(r'<svg xmlns="http://www.w3.org/2000/svg" width="(\d+)" height="(\d+)"', text)
        if not m:
            raise RuntimeError("unexpected SVG from the view's figure button")
        w, h = int(m.group(1)), int(m.group(2))
        out.append(text.replace("<svg ", f'<svg x="0" y="{y}" ', 1))
        y += h + gap
        width = max(width, w)
    height = max(y - gap, 1)
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">'
    )
    return ("\n".join([head, *out, "</svg>"]) + "\n").encode("utf-8")


def _render(
    html_path: Path,
    out_dir: Path,
    fmt: str,
    scale: float,
    theme: str | None,
    width: int,
    board: bool,
) -> bytes:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise _no_browser("Playwright is not installed") from None
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        except Exception as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise _no_browser(f"no Chromium could be started ({first})") from None
        try:
            context = browser.new_context(
                viewport={"width": width, "height": 900},
                device_scale_factor=1,
                accept_downloads=True,
                color_scheme="dark" if theme == "dark" else "light",
            )
            context.route(
                "**/*",
                lambda r: r.continue_() if r.request.url.startswith(LOCAL_SCHEMES) else r.abort(),
            )
            page = context.new_page()
            page.goto(html_path.resolve().as_uri())
            page.wait_for_selector("html[data-cb-ready=true]", timeout=30_000)
            page.eval_on_selector_all(
                ".cb-slot .cb-root", f"els => els.forEach(e => e.dataset.cbFigureScale = '{scale}')"
            )
            page.wait_for_timeout(100)
            slots = page.locator(".cb-slot").all()
            if not board:
                return _download(page, slots[0], fmt, out_dir / f"figure.{fmt}")
            parts = [_download(page, s, fmt, out_dir / f"f{i}.{fmt}") for i, s in enumerate(slots)]
            if fmt == "svg":
                return _stack_svgs(parts)
            # Each view's own figure (content only, at `scale`), one under the other.
            bg = "#0d1117" if theme == "dark" else "#ffffff"
            gap = int(round(12 * float(scale)))
            encoded = [base64.b64encode(p).decode("ascii") for p in parts]
            return base64.b64decode(page.evaluate(_STACK_PNGS, [encoded, gap, bg]))
        finally:
            browser.close()


def render_figure(
    item: Any, fmt: str, *, scale: float = 2.0, theme: str | None = None, width: int = 1000
) -> bytes:
    """PNG or SVG bytes of a view (or a board: its views stacked) drawn in headless Chromium.

    Runs Playwright in a worker thread, so it also works inside a notebook's event loop.
    """
    if fmt not in ("png", "svg"):
        raise ValueError(f"figure format must be 'png' or 'svg'; got {fmt!r}.")
    if not 0.25 <= float(scale) <= 8:
        raise ValueError(f"scale must be between 0.25 and 8; got {scale!r}.")
    if theme not in (None, "light", "dark"):
        raise ValueError(f"theme must be None, 'light' or 'dark'; got {theme!r}.")
    board = hasattr(item, "report_items")
    views = list(item.views) if board else [item]
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="circuitboard-figure-") as tmp:
        tmp_dir = Path(tmp)
        old = [v.theme for v in views]
        try:
            if theme is not None:
                for v in views:
                    v.theme = theme
            path = report(item, path=tmp_dir / "figure.html", title="figure")
        finally:
            for v, t in zip(views, old, strict=True):
                v.theme = t

        def work() -> None:
            try:
                result["data"] = _render(path, tmp_dir, fmt, scale, theme, width, board)
            except BaseException as err:  # re-raised in the caller's thread
                result["error"] = err

        t = threading.Thread(target=work, name="circuitboard-figure")
        t.start()
        t.join()
    if "error" in result:
        raise result["error"]
    return result["data"]
