"""Shortcuts from a Capture to a view (the names in the README)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .widgets import AttentionView, LogitAttributionView, LogitLensView

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


def logit_attribution(
    cap: Capture, target: Any, baseline: Any = None, *, pos: int = -1, **kwargs: Any
) -> LogitAttributionView:
    """Direct logit attribution view: heads heatmap, per-layer bars, top neurons.

    ``target`` / ``baseline`` are one-token strings (``" Mary"``) or ids; see
    :func:`circuitboard.direct_logit_attribution` for the exact decomposition.

    Examples
    --------
    >>> cb.logit_attribution(cap, target=" Mary", baseline=" John")  # doctest: +SKIP
    """
    from .analysis import direct_logit_attribution

    attr = direct_logit_attribution(cap, target, baseline=baseline, pos=pos)
    return LogitAttributionView(attr, tokens=list(cap.tokens), **kwargs)


def logit_lens_view(
    cap: Capture, *, target: Any = None, k: int = 5, **kwargs: Any
) -> LogitLensView:
    """Logit lens view: every layer's top next-token prediction at every position.

    Examples
    --------
    >>> cb.logit_lens_view(cap)  # doctest: +SKIP
    """
    from .analysis import logit_lens

    return LogitLensView(logit_lens(cap, target=target, k=k), **kwargs)
