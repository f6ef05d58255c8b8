"""PatchingView: a heatmap of activation / attribution patching, linked to the other views."""

from __future__ import annotations

from typing import Any

import numpy as np
import traitlets

from ._codec import encode, to_numpy
from ._view import View, image_state

N_TOP = 12
_AXES = {
    ("layer", "position"),
    ("layer", "head"),
    ("layer", "position", "head"),
    ("layer", "neuron"),
}


def _finite(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


class PatchingView(View):
    """What patching each site recovers, as a heatmap linked to the other views.

    Per-position sites (``resid_pre``, ``attn_out``, ...) show positions × layers with the
    prompt's tokens on the axis (clean → corrupted where they differ); per-head sites show
    layers × heads; ``heads_pos`` adds a head picker; neurons show layers × neurons. The
    diverging colour map is centred on 0 (= corrupted) with 1 (= clean) marked on its bar.
    A result between two images (a ViT) shows both images as their patch grids, and its
    per-position sites as one patch grid per layer (CLS beside it) over the image the patched
    activations came from, each patch coloured by what patching it at that layer recovers.
    Hover shows the normalized and the raw metric; clicking a cell selects its layer, head,
    token or neuron on the link, so linked attention, attribution and neuron views follow.

    Parameters
    ----------
    result : Patching
        From :func:`circuitboard.patch` (or :func:`circuitboard.load_patching`).

    Examples
    --------
    >>> import numpy as np
    >>> from circuitboard.intervene import Patching
    >>> res = Patching(np.array([[0.1, 0.9], [0.0, 1.0]]), np.array([[1.0, 2.0], [0.9, 2.1]]),
    ...                "heads", "exact", "denoise", "logit diff", ("layer", "head"), [0, 1],
    ...                None, [0, 1], {"clean": ["a"], "corrupted": ["b"]}, 2.1, 0.9, 0)
    >>> view = PatchingView(res)
    >>> view.site, view.axes
    ('heads', ['layer', 'head'])
    """

    _view = traitlets.Unicode("patching").tag(sync=True)
    site = traitlets.Unicode().tag(sync=True)
    """What was patched: ``resid_pre``, ``heads``, ``heads_pos``, ``k``, ``neurons``, ..."""
    method = traitlets.Unicode().tag(sync=True)
    """``exact``, ``attribution`` or ``ig``."""
    direction = traitlets.Unicode().tag(sync=True)
    """``denoise`` (clean into corrupted) or ``noise`` (corrupted into clean)."""
    metric = traitlets.Unicode().tag(sync=True)
    """The metric's description."""
    axes = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """Axes of the values, e.g. ``["layer", "position"]``."""
    layers = traitlets.List(traitlets.Int()).tag(sync=True)
    """Layer index of each row of the values."""
    positions = traitlets.List(traitlets.Int()).tag(sync=True)
    """Token position of each position entry (empty for per-head / neuron sites)."""
    heads = traitlets.List(traitlets.Int()).tag(sync=True)
    """Head index of each head entry (KV heads for ``k`` / ``v``)."""
    clean_tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """The clean prompt's tokens."""
    corrupted_tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """The corrupted prompt's tokens."""
    clean_value = traitlets.Float().tag(sync=True)
    """The metric on the clean run (normalized 1)."""
    corrupted_value = traitlets.Float().tag(sync=True)
    """The metric on the corrupted run (normalized 0)."""
    first_diff = traitlets.Int().tag(sync=True)
    """First position where the prompts differ."""
    notes = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """The result's conventions and what was skipped."""
    correlation = traitlets.Float(None, allow_none=True).tag(sync=True)
    """Correlation with exact patching, when it was computed."""
    completeness_error = traitlets.Float(None, allow_none=True).tag(sync=True)
    """IG completeness error (normalized units), when computed."""
    kv_groups = traitlets.Dict().tag(sync=True)
    """KV head → the query heads it serves (``k`` / ``v`` sites)."""
    image = traitlets.Dict().tag(sync=True)
    """Image pairs: the clean image's patch grid (grid, patch, pixels); ``{}`` for text."""
    corrupted_image = traitlets.Dict().tag(sync=True)
    """Image pairs: the corrupted image's patch grid; ``{}`` for text."""
    n_pairs = traitlets.Int(1).tag(sync=True)
    """Pairs the values average over (the images shown are the first pair's)."""
    _values = traitlets.Dict().tag(sync=True)  # Encoded float32, the result's shape
    _raw = traitlets.Dict().tag(sync=True)  # Encoded float32, same shape

    def __init__(self, result: Any, **kwargs: Any) -> None:
        if callable(getattr(result, "heatmap", None)):  # PathPatching (cb.path_patch)
            result = result.heatmap()
        try:
            values = to_numpy(result.values)
            raw = to_numpy(result.raw)
            axes = tuple(result.axes)
            tokens = dict(result.tokens)
        except AttributeError as err:
            raise TypeError(
                "PatchingView needs a Patching result (from cb.patch or cb.load_patching); got "
                f"{type(result).__name__}, which lacks {err.name!r}."
            ) from None
        if axes not in _AXES or values.ndim != len(axes) or raw.shape != values.shape:
            raise ValueError(
                f"Patching values must match their axes {axes} (one of {sorted(_AXES)}) and raw "
                f"the same shape; got values {values.shape}, raw {raw.shape}."
            )
        kv = getattr(result, "kv_groups", None) or {}
        grid, pixels = getattr(result, "image", None), getattr(result, "images", None)
        pair = (
            [{}, {}]
            if not grid or pixels is None
            else [image_state({**grid, "pixels": to_numpy(pixels)[i]}) for i in (0, 1)]
        )
        super().__init__(
            site=str(result.site),
            method=str(result.method),
            direction=str(result.direction),
            metric=str(result.metric),
            axes=list(axes),
            layers=[int(x) for x in result.layers],
            positions=[int(p) for p in (result.positions or [])],
            heads=[int(h) for h in (result.heads or [])],
            clean_tokens=[str(t) for t in tokens.get("clean", [])],
            corrupted_tokens=[str(t) for t in tokens.get("corrupted", [])],
            clean_value=float(result.clean_value),
            corrupted_value=float(result.corrupted_value),
            first_diff=int(result.first_diff),
            notes=[str(n) for n in getattr(result, "notes", [])],
            correlation=_finite(getattr(result, "correlation", None)),
            completeness_error=_finite(getattr(result, "completeness_error", None)),
            kv_groups={str(k): [int(h) for h in v] for k, v in kv.items()},
            image=pair[0],
            n_pairs=int(len(pv)) if (pv := getattr(result, "pair_values", None)) is not None else 1,
            corrupted_image=pair[1],
            _values=encode(values, "float32"),
            _raw=encode(raw, "float32"),
            **kwargs,
        )
        self._result = result

    @property
    def result(self) -> Any:
        """The :class:`~circuitboard.intervene.Patching` shown."""
        return self._result


def patching_view(result: Any, **kwargs: Any) -> PatchingView:
    """The :class:`PatchingView` of a :class:`~circuitboard.intervene.Patching` result.

    Keywords go to the view (``link=`` to share a selection, ``theme=``).

    Examples
    --------
    >>> import circuitboard as cb
    >>> res = cb.patch(model, tok, clean, corrupted, answer=" Mary", wrong=" John",
    ...                site="heads")  # doctest: +SKIP
    >>> cb.board(cb.patching_view(res), cb.attention(cap))  # doctest: +SKIP
    """
    return PatchingView(result, **kwargs)


__all__ = ["PatchingView", "patching_view"]
