"""CausalTraceView: the three heatmaps of causal tracing (hidden states, MLP, attention)."""

from __future__ import annotations

from typing import Any

import numpy as np
import traitlets

from ._codec import encode, to_numpy
from ._view import View


class CausalTraceView(View):
    """Causal tracing as in Meng et al. (2022), figure 1: one heatmap per restored state (the
    residual stream, MLP outputs, attention outputs), tokens down (the subject's marked ``*``)
    and layers across; colour = the answer's probability gained by restoring that state. Hover
    shows the value; clicking a cell selects its layer and token in linked views.

    Parameters
    ----------
    result : CausalTrace
        From :func:`circuitboard.causal_trace` (or :func:`circuitboard.load_causal_trace`).

    Examples
    --------
    >>> import numpy as np
    >>> from circuitboard.intervene import CausalTrace
    >>> v = np.zeros((3, 2, 3))
    >>> t = CausalTrace(v, v, v[None], ("hidden", "mlp", "attn"), ["a", "b", "c"], [1], " x",
    ...                 5, 0.5, 0.1, np.array([0.1]), 3.0, 0.3, 1, 0, (1, 10))
    >>> view = CausalTraceView(t)
    >>> view.kinds, view.subject, view.n_layers
    (['hidden', 'mlp', 'attn'], [1], 2)
    """

    _view = traitlets.Unicode("causal_trace").tag(sync=True)
    kinds = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """What each panel restores: ``hidden``, ``mlp``, ``attn``."""
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """The prompt's tokens."""
    subject = traitlets.List(traitlets.Int()).tag(sync=True)
    """Positions of the corrupted subject tokens."""
    n_layers = traitlets.Int().tag(sync=True)
    """Layers (columns of each panel)."""
    answer = traitlets.Unicode().tag(sync=True)
    """The answer token whose probability is measured."""
    clean_value = traitlets.Float().tag(sync=True)
    """p(answer) in the clean run."""
    corrupted_value = traitlets.Float().tag(sync=True)
    """p(answer) in the corrupted run (mean over noise samples)."""
    windows = traitlets.List(traitlets.Int()).tag(sync=True)
    """Layers restored at once: ``[hidden, mlp_and_attn]``."""
    description = traitlets.Unicode().tag(sync=True)
    """Noise and samples, in words."""
    notes = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """The result's conventions."""
    _values = traitlets.Dict().tag(sync=True)  # Encoded float32 [kind, layer, position]

    def __init__(self, result: Any, **kwargs: Any) -> None:
        try:
            values = to_numpy(result.values).astype(np.float32)
            kinds, tokens = list(result.kinds), [str(t) for t in result.tokens]
        except AttributeError as err:
            raise TypeError(
                "CausalTraceView needs a CausalTrace (from cb.causal_trace or "
                f"cb.load_causal_trace); got {type(result).__name__}, which lacks {err.name!r}."
            ) from None
        if values.ndim != 3 or values.shape[0] != len(kinds) or values.shape[2] != len(tokens):
            raise ValueError(
                f"CausalTrace values must be [kind, layer, position] = [{len(kinds)}, layers, "
                f"{len(tokens)}]; got shape {values.shape}."
            )
        super().__init__(
            kinds=kinds,
            tokens=tokens,
            subject=[int(p) for p in result.subject],
            n_layers=int(values.shape[1]),
            answer=str(result.answer),
            clean_value=float(result.clean_value),
            corrupted_value=float(result.corrupted_value),
            windows=[int(w) for w in result.windows],
            description=f"noise {result.noise:g}× embedding std, {result.samples} samples",
            notes=[str(n) for n in getattr(result, "notes", [])],
            _values=encode(values, "float32"),
            **kwargs,
        )
        self._result = result

    @property
    def result(self) -> Any:
        """The :class:`~circuitboard.intervene.CausalTrace` shown."""
        return self._result


def causal_trace_view(result: Any, **kwargs: Any) -> CausalTraceView:
    """The :class:`CausalTraceView` of a :class:`~circuitboard.intervene.CausalTrace`.

    Keywords go to the view (``link=`` to share a selection, ``theme=``).

    Examples
    --------
    >>> import circuitboard as cb
    >>> tr = cb.causal_trace(model, tok, "The Eiffel Tower is located in the city of",
    ...                      subject="Eiffel Tower")  # doctest: +SKIP
    >>> cb.causal_trace_view(tr)  # doctest: +SKIP
    """
    return CausalTraceView(result, **kwargs)


__all__ = ["CausalTraceView", "causal_trace_view"]
