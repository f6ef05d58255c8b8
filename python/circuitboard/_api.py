"""Shortcuts from a Capture to a view (the names in the README)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .widgets import AttentionView

if TYPE_CHECKING:
    from .capture import Capture


def attention(cap: Capture, *, layer: int | None = None, head: int = 0, **kwargs: Any) -> AttentionView:
    """Attention view of every captured layer and head of a capture.

    Examples
    --------
    >>> cap = cb.capture(model, tokenizer, "When Mary and John went to the store")  # doctest: +SKIP
    >>> cb.attention(cap)  # doctest: +SKIP
    """
    layers = cap.layers("attn.hook_pattern")
    if not layers:
        raise ValueError(
            "this capture has no attention patterns; capture again with "
            "what=('pattern', ...) or the default what."
        )
    att = cap.stack("attn.hook_pattern")
    first = layers.index(layer) if layer is not None and layer in layers else 0
    return AttentionView(att, cap.tokens, layers=layers, layer=first, head=head, **kwargs)
