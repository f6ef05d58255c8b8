"""The shared selection: a non-visual widget that linked views all reference."""

from __future__ import annotations

from typing import Any

import traitlets

from ._bundle import Base

SELECTION_KEYS = ("layer", "head", "token", "neuron", "prompt")


class Link(Base):
    """One selection (layer, head, token, neuron, prompt) shared by every view that holds it.

    Views write hovers into it in the browser only (no kernel round trip) and clicks both in
    the browser and back to these traits, so Python can read and set the selection.

    Examples
    --------
    >>> link = Link()
    >>> link.select(layer=3, head=5)
    >>> link.selection["layer"], link.selection["head"]
    (3, 5)
    """

    _view = traitlets.Unicode("link").tag(sync=True)
    layer = traitlets.Int(None, allow_none=True).tag(sync=True)
    """Selected layer, or None."""
    head = traitlets.Int(None, allow_none=True).tag(sync=True)
    """Selected attention head, or None."""
    token = traitlets.Int(None, allow_none=True).tag(sync=True)
    """Locked token position (a click), or None."""
    neuron = traitlets.Int(None, allow_none=True).tag(sync=True)
    """Selected MLP neuron index within ``layer``, or None."""
    prompt = traitlets.Int(0).tag(sync=True)
    """Index of the prompt shown, for views over several prompts."""
    hover_token = traitlets.Int(None, allow_none=True).tag(sync=True)
    """Token under the pointer; set in the browser, reaches Python only with the next click."""

    @property
    def selection(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SELECTION_KEYS}

    def select(self, **values: Any) -> None:
        """Set several selection keys at once (one message to the browser)."""
        unknown = set(values) - set(SELECTION_KEYS)
        if unknown:
            raise KeyError(
                f"unknown selection keys {sorted(unknown)}; "
                f"expected some of {list(SELECTION_KEYS)}."
            )
        for k, v in values.items():
            if v is not None and (isinstance(v, bool) or not hasattr(v, "__index__")):
                raise TypeError(
                    f"selection values are ints or None; got {k}={v!r}. "
                    f"Example: view.selection = {{'layer': 3, 'head': 0}}."
                )
        with self.hold_sync():
            for k, v in values.items():
                setattr(self, k, None if v is None else int(v))
