"""The shared selection: a non-visual widget that linked views all reference."""

from __future__ import annotations

from typing import Any

import traitlets

from ._bundle import Base

SELECTION_KEYS = ("layer", "head", "token", "neuron", "prompt", "dictionary", "feature")


def complete_selection(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the head / neuron it implicitly deselects (see :meth:`Link.select`).

    >>> complete_selection({"layer": 3})
    {'layer': 3, 'head': None, 'neuron': None}
    >>> complete_selection({"layer": 3, "head": 1})
    {'layer': 3, 'head': 1, 'neuron': None}
    >>> complete_selection({"token": 2})
    {'token': 2}
    """
    out = dict(values)
    head, neuron = values.get("head"), values.get("neuron")
    if head is not None and "neuron" not in values:
        out["neuron"] = None
    if neuron is not None and "head" not in values:
        out["head"] = None
    if "layer" in values and "head" not in values and "neuron" not in values:
        out["head"] = out["neuron"] = None
    return out


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
    dictionary = traitlets.Unicode(None, allow_none=True).tag(sync=True)
    """The hook the selected feature's dictionary reads (``blocks.12.hook_resid_post``)."""
    feature = traitlets.Int(None, allow_none=True).tag(sync=True)
    """Selected dictionary feature index within ``dictionary``, or None."""
    hover_token = traitlets.Int(None, allow_none=True).tag(sync=True)
    """Token under the pointer; set in the browser, reaches Python only with the next click."""

    @property
    def selection(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SELECTION_KEYS}

    def select(self, **values: Any) -> None:
        """Set several selection keys at once (one message to the browser).

        A layer belongs to what was chosen in it: selecting a head clears the neuron,
        selecting a neuron clears the head, and a layer alone clears both, so that no view
        shows a head or a neuron nobody chose (the browser's clicks follow the same rule).

        >>> link = Link()
        >>> link.select(layer=26, neuron=1262)
        >>> link.select(layer=22, head=4)
        >>> link.selection["neuron"], link.selection["head"]
        (None, 4)
        """
        unknown = set(values) - set(SELECTION_KEYS)
        if unknown:
            raise KeyError(
                f"unknown selection keys {sorted(unknown)}; "
                f"expected some of {list(SELECTION_KEYS)}."
            )
        for k, v in values.items():
            if k == "dictionary":
                if v is not None and not isinstance(v, str):
                    raise TypeError(
                        f"selection 'dictionary' is the hook a dictionary reads (a str); got "
                        f"{v!r}. Example: "
                        "select(dictionary='blocks.12.hook_resid_post', feature=3)."
                    )
                continue
            if v is not None and (isinstance(v, bool) or not hasattr(v, "__index__")):
                raise TypeError(
                    f"selection values are ints or None; got {k}={v!r}. "
                    f"Example: view.selection = {{'layer': 3, 'head': 0}}."
                )
        values = complete_selection(values)
        with self.hold_sync():
            for k, v in values.items():
                setattr(self, k, v if v is None or k == "dictionary" else int(v))
