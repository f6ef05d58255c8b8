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
from .widgets._view import image_state

if TYPE_CHECKING:
    from .capture import Capture


def _with_provenance(view: Any, cap: Any) -> Any:
    """Attach the provenance of ``cap`` (or of a list of captures) to ``view``."""
    from .capture._provenance import combined_provenance

    view.provenance = combined_provenance(cap if isinstance(cap, list) else [cap])
    return view


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
    cap: Capture,
    *,
    layer: int | None = None,
    head: int = 0,
    target: Any = None,
    baseline: Any = None,
    **kwargs: Any,
) -> AttentionView:
    """Attention view of every captured layer and head of a capture.

    Clicking a cell of the zoomed head opens a panel that explains its score: the query ×
    key component pairs that built it (:func:`circuitboard.explain_attention`), and, with a
    ``target`` (and ``baseline``) token, what the head moves into that logit from each source
    position (:func:`circuitboard.explain_head_output`). Clicking a component there (``L5H2``)
    selects it in linked views.

    Patterns are read from the capture in blocks (recomputed from its queries and keys), so
    every head is viewable at the model's full context; see :class:`AttentionView`.

    Examples
    --------
    >>> cap = cb.capture(model, tokenizer, "When Mary and John went to the store")  # doctest: +SKIP
    >>> cb.attention(cap, target=" Mary", baseline=" John")  # doctest: +SKIP
    """
    _one_capture(cap, "cb.attention", "cb.attention({})")
    layers = cap.layers("attn.hook_pattern")
    if not layers:
        raise ValueError(
            "this capture has no attention patterns; capture again with "
            "what=('pattern', ...) or the default what."
        )
    first = layers.index(layer) if layer is not None and layer in layers else 0
    kwargs.update(_explainers(cap, target, baseline))
    view = AttentionView(cap, cap.tokens, layers=layers, layer=first, head=head, **kwargs)
    view.image = image_state(getattr(cap, "image", None))
    return _with_provenance(view, cap)


def _explainers(cap: Capture, target: Any, baseline: Any) -> dict[str, Any]:
    """The attention view's explanation callbacks for a capture (soft-capped models: the
    pre-cap score and logit, as the panel states)."""
    if getattr(cap, "info", None) is None or not cap.info.causal:
        return {}
    from .analysis import explain_attention, explain_head_output
    from .analysis._attribution import prepare
    from .analysis._explain import prepare_head

    def explainer(layer: int, head: int, query: int, key: int) -> Any:
        return explain_attention(cap, layer=layer, head=head, query=query, key=key, softcap="pre")

    def warm(layer: int, head: int) -> None:
        prepare_head(cap, layer, head)

    out: dict[str, Any] = {"explainer": explainer, "prepare_head": warm}
    if target is not None:
        t, b, _ = prepare(cap, target, baseline, softcap="pre")  # checks the tokens now

        def head_output(layer: int, head: int, query: int) -> Any:
            return explain_head_output(
                cap, layer=layer, head=head, query=query, target=t, baseline=b, softcap="pre"
            )

        from .analysis._common import token_text

        name = repr(token_text(cap, t)) + (f" − {token_text(cap, b)!r}" if b is not None else "")
        out.update(head_output=head_output, explain_target=name)
    return out


def logit_attribution(
    cap: Capture,
    target: Any,
    baseline: Any = None,
    *,
    pos: int | None = None,
    follow_token: bool = True,
    saes: Any = None,
    **kwargs: Any,
) -> LogitAttributionView:
    """Direct logit attribution view: heads heatmap, per-layer bars, top neurons (and top
    dictionary features with ``saes=``).

    ``target`` / ``baseline`` are one-token strings (``" Mary"``) or ids; see
    :func:`circuitboard.direct_logit_attribution` for the exact decomposition. With
    ``follow_token`` the view re-attributes at the token selected in linked views
    (every position is computed up front; a report embeds them within its budget).
    ``saes``: dictionaries the capture ran (``True``: all of them); the view then lists the
    features with the largest direct contribution, with their labels (as text); a click
    selects the feature in linked views.

    Examples
    --------
    >>> cb.logit_attribution(cap, target=" Mary", baseline=" John")  # doctest: +SKIP
    >>> cb.logit_attribution(cap, " Mary", " John", saes=True)  # doctest: +SKIP
    """
    from .analysis._attribution import attribute_positions, prepare

    _one_capture(cap, "cb.logit_attribution", f"cb.logit_attribution({{}}, {target!r})")
    t, b, p = prepare(cap, target, baseline, pos)
    with_features = _feature_splitter(cap, t, b, saes)
    if not follow_token:
        attr = with_features(attribute_positions(cap, t, b, [p]))[0]
        return _with_provenance(LogitAttributionView(attr, tokens=list(cap.tokens), **kwargs), cap)
    # Chunks of positions bound the per-neuron arrays held at once; the chunk holding `pos`
    # goes first so that its attribution seeds the view.
    chunks = [range(s, min(s + 64, cap.n_tokens)) for s in range(0, cap.n_tokens, 64)]
    home = next(c for c in chunks if p in c)
    home_attrs = with_features(attribute_positions(cap, t, b, list(home)))

    def every_position():
        yield from home_attrs
        for c in chunks:
            if c is not home:
                yield from with_features(attribute_positions(cap, t, b, list(c)))

    attr = home_attrs[p - home.start]
    view = LogitAttributionView(attr, tokens=list(cap.tokens), positions=every_position(), **kwargs)
    return _with_provenance(view, cap)


def _feature_splitter(cap: Capture, t: Any, b: Any, saes: Any) -> Any:
    """A function adding each dictionary's feature terms to attributions (one position each);
    the identity when ``saes`` is None or False."""
    if saes is None or saes is False:
        return lambda attrs: attrs
    import torch

    from .analysis._attribution import WHAT, logit_direction, require_info
    from .analysis._features import resolve_saes, split_by_features

    dictionaries = resolve_saes(cap, saes, WHAT)
    info = require_info(cap, WHAT)
    decoders: dict[str, Any] = {}

    def add(attrs: list[Any]) -> list[Any]:
        P = torch.tensor([a.pos for a in attrs], dtype=torch.long)
        direction = logit_direction(cap, info, t, b, P)[0]
        for a, d in zip(attrs, direction, strict=True):
            a._features.update(split_by_features(cap, a, dictionaries, d, decoders))
        return attrs

    return add


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
    return _with_provenance(LogitLensView(logit_lens(cap, target=target, k=k), **kwargs), cap)


def neurons(
    cap: Capture | Sequence[Capture],
    *,
    layer: int | None = None,
    neuron: int | None = None,
    expert: int | None = None,
    **kwargs: Any,
) -> NeuronsView:
    """Tokens coloured by an MLP neuron (``blocks.{l}.mlp.hook_post``); several captures are paged.

    ``layer`` is a model layer index (default: the middle captured layer); ``neuron`` defaults
    to the one firing most on the first prompt. Hover a token to list its top neurons.
    Mixture-of-experts captures page by expert (``blocks.{l}.mlp.experts.{e}.hook_post``, zero
    at tokens not routed to ``e``): one page per expert (per prompt), or ``expert=e`` alone.

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
    if not layers and caps[0].layers("mlp.experts.0.hook_post"):
        return _expert_neurons(caps, expert, layer=layer, neuron=neuron, **kwargs)
    if expert is not None:
        raise ValueError(
            f"expert={expert} is for mixture-of-experts captures; this one has dense MLP neurons "
            "(blocks.{l}.mlp.hook_post). Leave expert out."
        )
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
    view = NeuronsView(
        acts if len(caps) > 1 else acts[0],
        [c.tokens for c in caps] if len(caps) > 1 else caps[0].tokens,
        layers=layers,
        layer=layer,
        neuron=neuron,
        labels=labels,
        **kwargs,
    )
    if any(getattr(c, "image", None) for c in caps):
        view.images = [image_state(getattr(c, "image", None)) or None for c in caps]
    return _with_provenance(view, caps)


def _expert_neurons(caps: list[Capture], expert: int | None, **kwargs: Any) -> NeuronsView:
    """Neurons of a mixture-of-experts capture, one page per (prompt, expert)."""
    layers = caps[0].layers("mlp.experts.0.hook_post")
    n_experts = sum(
        1 for n in caps[0].tensors if n.startswith(f"blocks.{layers[0]}.mlp.experts.")
        and n.endswith(".hook_post")
    )  # fmt: skip
    chosen = range(n_experts) if expert is None else [expert]
    if expert is not None and not 0 <= expert < n_experts:
        raise ValueError(f"expert={expert} is out of range: the model has {n_experts} experts.")
    acts, tokens, labels = [], [], []
    for c in caps:
        name = (c.prompt[:30] + "…" if len(c.prompt) > 30 else c.prompt) if c.prompt else ""
        for e in chosen:
            stack = c.stack(f"mlp.experts.{e}.hook_post")  # [layers, pos, d_expert]
            routed = int((stack.abs().sum(-1) > 0).any(0).sum())
            acts.append(stack)
            tokens.append(c.tokens)
            who = f"{name} · " if len(caps) > 1 and name else ""
            labels.append(f"{who}expert {e} · routed at {routed}/{c.n_tokens} tokens (any layer)")
    layer = kwargs.pop("layer", None)
    if layer is not None and layer < 0:
        layer += max(layers) + 1
    return NeuronsView(
        acts if len(acts) > 1 else acts[0],
        tokens if len(acts) > 1 else tokens[0],
        layers=layers,
        layer=layer,
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
