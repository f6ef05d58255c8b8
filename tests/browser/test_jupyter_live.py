"""Live JupyterLab: two linked widgets in separate cells follow each other and Python.

Starts a private, offline JupyterLab on 127.0.0.1, opens a notebook in headless Chromium,
runs it, clicks in one widget, and checks the other widget (DOM) and the Python traits.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.hostile import HOSTILE_TOKENS, shown

pytestmark = [pytest.mark.jupyter, pytest.mark.slow]

CELLS = [
    "import numpy as np\n"
    "import circuitboard as cb\n"
    "rng = np.random.default_rng(0)\n"
    "att = np.tril(rng.random((2, 3, 8, 8)) + 1e-3)\n"
    "att /= att.sum(-1, keepdims=True)\n"
    "tokens = ['When', ' Mary', ' and', ' John', ' went', ' to', ' the', ' store']\n"
    "a = cb.AttentionView(att, tokens)\n"
    "b = cb.AttentionView(att[::-1].copy(), tokens)\n"
    "shared = cb.link(a, b)\n"
    "a",
    "b",
    "print('SEL', {k: v for k, v in sorted(b.selection.items())})",
    "b.selection = {'head': 1, 'layer': 1}",
    "board = cb.board(cb.AttentionView(att, tokens), cb.AttentionView(att, tokens), "
    "title='A board', columns=2)\n"
    "board",
    # Hostile token text in a live view (issue 8): shown as text, never run.
    "import json\n"
    f"hostile = json.loads({json.dumps(json.dumps(HOSTILE_TOKENS))})\n"
    "att_h = np.tril(np.ones((1, 2, len(hostile), len(hostile))))\n"
    "att_h /= att_h.sum(-1, keepdims=True)\n"
    "cb.AttentionView(att_h, hostile)",
    # Longer than a thumbnail (32 tokens): the view fetches every head ahead of clicks.
    "att40 = np.tril(rng.random((2, 3, 40, 40)) + 1e-3)\n"
    "att40 /= att40.sum(-1, keepdims=True)\n"
    "cb.AttentionView(att40, [f' w{i}' for i in range(40)])",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_notebook(path: Path, cells: list[str] = CELLS) -> None:
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": f"c{i}",
                "metadata": {},
                "outputs": [],
                "source": src,
            }
            for i, src in enumerate(cells)
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb), encoding="utf-8")


def start_lab(root: Path, port: int, token: str, app: str = "lab") -> subprocess.Popen:
    """Start JupyterLab (``app="lab"``) or Notebook 7 (``app="notebook"``) on 127.0.0.1."""
    home = root.parent / "jupyter-home"
    for d in ("config", "data", "runtime", "settings", "workspaces"):
        (home / d).mkdir(parents=True, exist_ok=True)
    notif = home / "settings" / "@jupyterlab" / "apputils-extension"
    notif.mkdir(parents=True, exist_ok=True)  # no "get notified about news?" toast
    (notif / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}', encoding="utf-8"
    )
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
    }
    if app == "lab":
        env["JUPYTERLAB_SETTINGS_DIR"] = str(home / "settings")
        env["JUPYTERLAB_WORKSPACES_DIR"] = str(home / "workspaces")
    cls = "LabApp" if app == "lab" else "JupyterNotebookApp"
    cmd = [
        sys.executable,
        "-m",
        "jupyter",
        app,
        "--no-browser",
        "--ServerApp.open_browser=False",
        "--allow-root",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--port-retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        f"--{cls}.expose_app_in_browser=True",
        "--ServerApp.terminals_enabled=False",
        "--LanguageServerManager.autodetect=False",
    ]
    if app == "lab":  # Notebook 7 fails to load its own settings schemas with these overrides
        cmd += [
            f"--LabApp.workspaces_dir={home / 'workspaces'}",
            f"--LabApp.user_settings_dir={home / 'settings'}",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
    log = open(root.parent / "lab.log", "w")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    proc.cb_log = log  # type: ignore[attr-defined]
    return wait_until_serving(proc, f"http://127.0.0.1:{port}/api/status?token={token}")


def wait_until_serving(proc: subprocess.Popen, url: str, timeout: float = 60) -> subprocess.Popen:
    """Return ``proc`` once ``url`` answers 200; else stop it and raise with its log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    stop_lab(proc)
    log = Path(proc.cb_log.name).read_text()[-3000:]  # type: ignore[attr-defined]
    raise RuntimeError(f"the server behind {url} did not start:\n{log}")


def stop_lab(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    proc.cb_log.close()  # type: ignore[attr-defined]


@contextmanager
def live_lab(browser, tmp_path: Path, name: str, cells: list[str], viewport: dict[str, int]):
    """A JupyterLab serving a fresh folder that holds the notebook ``name`` made of ``cells``,
    and a page of an offline browser context: yields ``(page, url)``. Set the page's listeners,
    then ``open_and_run(page, url)``. The browser context and the server stop on exit, after
    errors too."""
    root = tmp_path / "root"
    root.mkdir()
    write_notebook(root / name, cells)
    port, token = free_port(), secrets.token_hex(16)
    lab = start_lab(root, port, token)
    context = None
    try:
        base = f"http://127.0.0.1:{port}"
        context = offline_context(browser, base, viewport)
        yield context.new_page(), f"{base}/lab/tree/{name}?token={token}"
    finally:
        if context is not None:
            context.close()
        stop_lab(lab)


def kernel_output(page, code: str) -> str:
    """Run ``code`` in the notebook's kernel and return what it printed."""
    return page.evaluate(
        """async (code) => {
            const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
            const future = kernel.requestExecute({ code });
            let out = "";
            future.onIOPub = (m) => {
                if (m.header.msg_type === "stream") out += m.content.text;
                if (m.header.msg_type === "error") out += m.content.ename + ": " + m.content.evalue;
            };
            await future.done;
            return out;
        }""",
        code,
    )


def offline_context(browser, base: str, viewport: dict[str, int]):
    """A browser context that reaches the local server only; everything else is aborted."""
    context = browser.new_context(viewport=viewport)
    local = (base, "data:", "blob:", "about:")
    context.route("**/*", lambda r: r.continue_() if r.request.url.startswith(local) else r.abort())
    return context


def open_and_run(page, url: str) -> None:
    """Open a notebook, accept a kernel-select dialog if shown, wait for the kernel, run all."""
    page.goto(url, timeout=60_000)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    page.wait_for_function(
        "() => window.jupyterapp && window.jupyterapp.shell.currentWidget", timeout=60_000
    )
    try:
        page.locator(".jp-Dialog .jp-mod-accept").first.click(timeout=3_000)
    except Exception:
        pass  # no dialog: the notebook's kernelspec was accepted as is
    page.wait_for_function(
        """() => {
            const s = window.jupyterapp.shell.currentWidget?.sessionContext;
            return s && s.session && s.session.kernel && s.session.kernel.status === 'idle';
        }""",
        timeout=60_000,
    )
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")


def output_text(page, index: int) -> str:
    return page.eval_on_selector_all(
        ".jp-Notebook .jp-Cell",
        "(cells, i) => cells[i].querySelector('.jp-OutputArea')?.innerText ?? ''",
        index,
    )


def test_linked_widgets_in_live_jupyterlab(browser, tmp_path, artifacts):
    t0 = time.monotonic()
    root = tmp_path / "root"
    root.mkdir()
    write_notebook(root / "linked.ipynb")
    port, token = free_port(), secrets.token_hex(16)
    lab = start_lab(root, port, token)
    context = page = None
    errors: list[str] = []
    try:
        base = f"http://127.0.0.1:{port}"
        context = offline_context(browser, base, {"width": 1400, "height": 1600})
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
        page.on(
            "console",
            lambda m: (
                errors.append(m.text) if m.type == "error" or "circuitboard" in m.text else None
            ),
        )
        open_and_run(page, f"{base}/lab/tree/linked.ipynb?token={token}")
        page.wait_for_selector(".jp-Cell:nth-child(1) .cb-attention[data-head]", timeout=60_000)
        page.wait_for_selector(".jp-Cell:nth-child(2) .cb-attention[data-head]", timeout=60_000)
        first = ".jp-Notebook .jp-Cell:nth-child(1)"
        second = ".jp-Notebook .jp-Cell:nth-child(2)"
        # The Python cell 4 already moved both views to layer 1, head 1.
        page.wait_for_selector(
            f'{first} .cb-attention[data-layer="1"][data-head="1"]', timeout=30_000
        )
        page.wait_for_selector(
            f'{second} .cb-attention[data-layer="1"][data-head="1"]', timeout=30_000
        )

        # A board renders its title and both views side by side.
        page.wait_for_selector(".jp-Cell:nth-child(5) .cb-attention[data-head]", timeout=30_000)
        assert page.locator(".jp-Cell:nth-child(5) .cb-attention").count() == 2
        assert "A board" in output_text(page, 4)

        # Hostile tokens in a live view: exact text, no script ran, no element injected.
        hostile = ".jp-Notebook .jp-Cell:nth-child(6)"
        page.wait_for_selector(f"{hostile} .cb-attention[data-head]", timeout=30_000)
        page.hover(f'{hostile} .cb-token[data-i="3"]')
        page.click(f'{hostile} .cb-token[data-i="5"]')
        texts = page.eval_on_selector_all(
            f"{hostile} .cb-token", "els => els.map(e => e.textContent)"
        )
        assert texts[: len(HOSTILE_TOKENS)] == [shown(t) for t in HOSTILE_TOKENS]
        assert page.evaluate("() => window.__pwned === undefined")
        injected = f"{hostile} .jp-OutputArea img, {hostile} .jp-OutputArea iframe"
        assert page.locator(injected).count() == 0
        page.keyboard.press("Escape")
        page.mouse.move(0, 0)

        # Past 32 tokens, every head arrives ahead of clicks (a layer per message), so a click
        # draws without asking the kernel.
        ahead = ".jp-Notebook .jp-Cell:nth-child(7) .cb-attention"
        page.wait_for_selector(f"{ahead}[data-warm-ms]", timeout=30_000)
        page.click('.jp-Notebook .jp-Cell:nth-child(7) .cb-thumb[data-layer="1"][data-head="2"]')
        page.wait_for_selector(f'{ahead}[data-layer="1"][data-head="2"]', timeout=5_000)
        assert page.get_attribute(ahead, "data-last-fetch-ms") is None
        assert page.get_attribute(ahead, "data-reduced") == "false"

        # A click in widget A: B follows in the browser ...
        page.select_option(f'{first} select[aria-label="head"]', "2")
        page.wait_for_selector(f'{second} .cb-attention[data-head="2"]', timeout=15_000)
        # ... a hover in A highlights in B without a kernel round trip ...
        page.hover(f'{first} .cb-token[data-i="6"]')
        page.wait_for_selector(f'{second} .cb-token[data-i="6"].cb-token-active', timeout=5_000)
        page.mouse.move(0, 0)
        # ... a click on a token locks it in both ...
        page.click(f'{first} .cb-token[data-i="4"]')
        page.wait_for_selector(f'{second} .cb-token[data-i="4"].cb-token-active', timeout=15_000)
        # ... and Python saw the click (read back through the kernel).
        text = kernel_output(page, "print('SEL', {k: v for k, v in sorted(b.selection.items())})")
        assert re.search(r"SEL .*'head': 2.*'layer': 1.*'token': 4", text), text
        # Python moves both views again.
        kernel_output(page, "a.selection = {'head': 0, 'token': None}")
        page.wait_for_selector(f'{first} .cb-attention[data-head="0"]', timeout=15_000)
        page.wait_for_selector(f'{second} .cb-attention[data-head="0"]', timeout=15_000)
        # A figure drawn by the displayed widget, asked from Python (written on the reply).
        kernel_output(page, "fut = b.save_svg('fig.svg', via='browser')")
        text = ""
        for _ in range(50):
            text = kernel_output(page, "print('FIG', fut.done() and fut.result().stat().st_size)")
            if re.search(r"FIG [1-9]", text):
                break
            page.wait_for_timeout(200)
        assert re.search(r"FIG [1-9]", text), text
        assert (root / "fig.svg").read_text(encoding="utf-8").startswith("<svg")
        page.screenshot(path=str(artifacts / "jupyter-live-linked.png"), full_page=False)
        assert errors == []
    except Exception as err:
        if page is not None:
            page.screenshot(path=str(artifacts / "jupyter-live-failure.png"))
            if page.locator("text=Click to show javascript error").count():
                page.locator("text=Click to show javascript error").first.click()
                page.wait_for_timeout(500)
            outs = [output_text(page, i) for i in range(len(CELLS))]
            raise AssertionError(f"{err}\noutputs: {outs}\nerrors: {errors}") from None
        raise
    finally:
        if context is not None:
            context.close()
        stop_lab(lab)
    assert time.monotonic() - t0 < 120


def test_linked_widgets_in_live_notebook7(browser, tmp_path, artifacts):
    """The same link in Notebook 7: a click in one cell's widget moves the other and Python."""
    pytest.importorskip("notebook", minversion="7")  # a test extra; reason: Notebook 7 missing
    root = tmp_path / "root"
    root.mkdir()
    write_notebook(root / "linked.ipynb", CELLS[:2])
    port, token = free_port(), secrets.token_hex(16)
    lab = start_lab(root, port, token, app="notebook")
    context = None
    errors: list[str] = []
    try:
        base = f"http://127.0.0.1:{port}"
        context = offline_context(browser, base, {"width": 1200, "height": 1400})
        page = context.new_page()
        # Notebook 7.6 throws one error of its own while loading settings ("reading 'schema'"),
        # also in a notebook without any widget; errors from its bundle are not ours to assert.
        page.on(
            "pageerror",
            lambda e: None if "/static/notebook/" in (e.stack or "") else errors.append(str(e)),
        )
        open_and_run(page, f"{base}/notebooks/linked.ipynb?token={token}")
        first = ".jp-Notebook .jp-Cell:nth-child(1)"
        second = ".jp-Notebook .jp-Cell:nth-child(2)"
        page.wait_for_selector(f"{second} .cb-attention[data-head]", timeout=60_000)
        page.select_option(f'{first} select[aria-label="head"]', "2")
        page.wait_for_selector(f'{second} .cb-attention[data-head="2"]', timeout=15_000)
        page.hover(f'{first} .cb-token[data-i="5"]')
        page.wait_for_selector(f'{second} .cb-token[data-i="5"].cb-token-active', timeout=5_000)
        text = kernel_output(page, "print('SEL', b.selection['head'])")
        assert "SEL 2" in text, text
        page.screenshot(path=str(artifacts / "notebook7-live-linked.png"))
        assert errors == []
    finally:
        if context is not None:
            context.close()
        stop_lab(lab)
