"""The one front-end bundle and the widget base class that loads it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anywidget
import traitlets

STATIC = Path(__file__).resolve().parent.parent / "static"
BUNDLE = STATIC / "index.js"
STYLES = STATIC / "index.css"


def _bundle() -> Path:
    if not BUNDLE.is_file():
        raise FileNotFoundError(
            f"circuitboard's front-end bundle is missing ({BUNDLE}). In a source checkout build it "
            "with `npm --prefix js ci && npm --prefix js run build` (or `make build`); installed "
            "wheels ship it."
        )
    return BUNDLE


def request_key(msg: dict[str, Any]) -> str:
    """Canonical key of a fetch request (no ``id``); ``js/src/fetch.ts`` builds the same."""
    fields = {k: v for k, v in msg.items() if k != "id"}
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


class Base(anywidget.AnyWidget):
    """Loads the one bundle; ``_view`` tells ``index.ts`` which view module renders it."""

    # Paths in the class body: anywidget sends the files' contents (and reloads them when
    # ANYWIDGET_HMR=1). An unbuilt checkout gets a placeholder; __init__ raises the real error.
    _esm = BUNDLE if BUNDLE.is_file() else "export default {};"
    _css = STYLES if STYLES.is_file() else ""
    _view = traitlets.Unicode("").tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        _bundle()
        super().__init__(**kwargs)
