"""The one front-end bundle and the widget base class that loads it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anywidget
import traitlets
from anywidget._file_contents import FileContents
from anywidget._util import try_file_contents

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

    _view = traitlets.Unicode("").tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        # anywidget turns a Path into file contents only for class-body `_esm`; set after the
        # class exists, a Path would be sent as its own text (the path), so coerce it here.
        if not isinstance(Base.__dict__.get("_esm"), FileContents):
            Base._esm = try_file_contents(_bundle())
            Base._css = try_file_contents(STYLES)
        super().__init__(**kwargs)
