"""Shortcuts from a Capture to a view (the names in the README)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .widgets import (
    AttentionView,
    LogitAttributionView,
    LogitLensView,
    NeuronDashboard,
    NeuronsView,
)

if TYPE_CHECKING:
    from .capture import Capture


def _one_capture(cap: Any, what: str, example: str) -> None:
    """Refuse a list of captures where a view shows one prompt, saying exactly what to pass."""
    if isinstance(cap, (list, tuple)):
        raise TypeError(
            f"{what} shows one prompt; got a {type(cap).__name__} of {len(cap)} captures. Pass "
            f"one capture, e.g. {example.format('caps[0]')}, or one view per prompt in a board: "
            f"cb.board(*({example.format('c')} for c in caps)). cb.neurons(caps) pages through "
            "several prompts."
        )


def attention(
    cap: Capture, *, layer: int | None = None, head: int = 0, **kwargs: Any
) -> AttentionView:
    """Attention view of every captured layer and head of a capture.

    Examples
    --------
    >>> cap = cb.capture(model, tokenizer, "When Mary and John went to the store")  # doctest: +SKIP
    >>> cb.attention(cap)  # doctest: +SKIP
    """
    _one_capture(cap, "cb.attention", "cb.attention({})")
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
    cap: Capture,
    target: Any,
    baseline: Any = None,
    *,
    pos: int = -1,
    follow_token: bool = True,
    **kwargs: Any,
) -> LogitAttributionView:
    """Direct logit attribution view: heads heatmap, per-layer bars, top neurons.

    ``target`` / ``baseline`` are one-token strings (``" Mary"``) or ids; see
    :func:`circuitboard.direct_logit_attribution` for the exact decomposition. With
    ``follow_token`` the view re-attributes at the token selected in linked views
    (every position is computed up front; a report embeds them within its budget).

    Examples
    --------
    >>> cb.logit_attribution(cap, target=" Mary", baseline=" John")  # doctest: +SKIP
    """
    from .analysis._attribution import attribute_positions, prepare

    _one_capture(cap, "cb.logit_attribution", f"cb.logit_attribution({{}}, {target!r})")
    t, b, p = prepare(cap, target, baseline, pos)
    if not follow_token:
        attr = attribute_positions(cap, t, b, [p])[0]
        return LogitAttributionView(attr, tokens=list(cap.tokens), **kwargs)
    # Chunks of positions bound the per-neuron arrays held at once; the chunk holding `pos`
    # goes first so that its attribution seeds the view.
    chunks = [range(s, min(s + 64, cap.n_tokens)) for s in range(0, cap.n_tokens, 64)]
    home = next(c for c in chunks if p in c)
    home_attrs = attribute_positions(cap, t, b, list(home))

    def every_position():
        yield from home_attrs
        for c in chunks:
            if c is not home:
                yield from attribute_positions(cap, t, b, list(c))

    attr = home_attrs[p - home.start]
    return LogitAttributionView(attr, tokens=list(cap.tokens), positions=every_position(), **kwargs)


def logit_lens_view(
    cap: Capture, *, target: Any = None, k: int = 5, **kwargs: Any
) -> LogitLensView:
    """Logit lens view: every layer's top next-token prediction at every position.

    Examples
    --------
    >>> cb.logit_lens_view(cap)  # doctest: +SKIP
    """
    from .analysis import logit_lens

    _one_capture(cap, "cb.logit_lens_view", "cb.logit_lens_view({})")
    return LogitLensView(logit_lens(cap, target=target, k=k), **kwargs)


def neurons(
    cap: Capture | Sequence[Capture],
    *,
    layer: int | None = None,
    neuron: int | None = None,
    **kwargs: Any,
) -> NeuronsView:
    """Tokens coloured by an MLP neuron (``blocks.{l}.mlp.hook_post``); several captures are paged.

    ``layer`` is a model layer index (default: the middle captured layer); ``neuron`` defaults
    to the one firing most on the first prompt. Hover a token to list its top neurons.

    Examples
    --------
    >>> cap = cb.capture(model, tokenizer, "When Mary and John went to the store")  # doctest: +SKIP
    >>> cb.neurons(cap, layer=12)  # doctest: +SKIP
    >>> cb.neurons(cb.capture(model, tokenizer, ["one prompt", "another"]))  # doctest: +SKIP
    """
    caps = [cap] if not isinstance(cap, (list, tuple)) else list(cap)
    if not caps:
        raise ValueError("cb.neurons needs at least one capture; got an empty list.")
    layers = caps[0].layers("mlp.hook_post")
    if not layers:
        raise ValueError(
            "this capture has no neuron activations (blocks.{l}.mlp.hook_post); capture again "
            "with the default what= or what=('mlp_post', ...)."
        )
    for i, c in enumerate(caps[1:], 1):
        if c.layers("mlp.hook_post") != layers:
            raise ValueError(
                f"captures[{i}] recorded mlp.hook_post for layers {c.layers('mlp.hook_post')}, "
                f"captures[0] for {layers}; capture every prompt with the same layers=."
            )
    acts = [c.stack("mlp.hook_post") for c in caps]
    labels = [
        (c.prompt[:40] + "…" if len(c.prompt) > 40 else c.prompt) if c.prompt else f"prompt {i + 1}"
        for i, c in enumerate(caps)
    ]
    if layer is not None and layer < 0:
        layer += max(layers) + 1
    return NeuronsView(
        acts if len(caps) > 1 else acts[0],
        [c.tokens for c in caps] if len(caps) > 1 else caps[0].tokens,
        layers=layers,
        layer=layer,
        neuron=neuron,
        labels=labels,
        **kwargs,
    )


def neuron_dashboard(
    top: Any,
    tokenizer: Any = None,
    texts: Sequence[str] | None = None,
    *,
    neurons: Any = None,
    neuron: tuple[int, int] | None = None,
    k: int = 20,
    link: Any = None,
    **kwargs: Any,
) -> NeuronDashboard:
    """Dashboard of neurons: top-activating examples, activation histogram, logit effects.

    Pass the result of :func:`circuitboard.top_activations`, or a model, its tokenizer and
    texts (then ``neurons=`` / ``k=`` and other keywords go to ``top_activations``).

    Examples
    --------
    >>> top = cb.top_activations(model, tok, cb.load_texts(), neurons=[(12, 42)])  # doctest: +SKIP
    >>> cb.neuron_dashboard(top)  # doctest: +SKIP
    >>> texts = cb.load_texts()
    >>> cb.neuron_dashboard(model, tok, texts, neurons=[(12, 42), (20, 7)])  # doctest: +SKIP
    """
    if not hasattr(top, "hist_counts"):
        if tokenizer is None or texts is None:
            raise TypeError(
                f"neuron_dashboard needs top_activations(...) records, or a model with its "
                f"tokenizer and texts; got {type(top).__name__} without tokenizer/texts. "
                "Example: cb.neuron_dashboard(model, tok, cb.load_texts(), neurons=[(3, 120)])."
            )
        from .analysis._neurons import top_activations

        top = top_activations(top, tokenizer, texts, neurons, k=k, **kwargs)
        kwargs = {}
    return NeuronDashboard(top, neuron=neuron, link=link, **kwargs)
