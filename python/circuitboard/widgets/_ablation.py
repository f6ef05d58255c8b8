"""AblationView: the effect of each ablation on each prompt, linked to the other views."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import traitlets

from ._codec import encode
from ._view import View

_COMPONENT = re.compile(r"^L(\d+)(?:H(\d+)|N(\d+))?")
_FEATURE = re.compile(r"^blocks\.(\d+)\.[\w.]+#")  # a dictionary feature: its hook's layer


def _selection(label: str) -> dict[str, int]:
    """What a click on an ablation selects: its first component's layer and head / neuron
    (a dictionary feature: the layer of the hook it reads)."""
    m = _COMPONENT.match(label)
    if m is None:
        f = _FEATURE.match(label)
        return {"layer": int(f.group(1))} if f else {}
    out = {"layer": int(m.group(1))}
    if m.group(2) is not None:
        out["head"] = int(m.group(2))
    if m.group(3) is not None:
        out["neuron"] = int(m.group(3))
    return out


class AblationView(View):
    """Ablations × prompts: each cell the metric's change when that ablation runs on that
    prompt (diverging colours, 0 = unchanged), rows ordered by their mean effect.

    Hover shows the ablation, the prompt, the metric with and without the ablation. Clicking
    a row selects its first component (layer, head or neuron) on the link, so a linked
    attention or neuron view opens it.

    Parameters
    ----------
    result : Ablation
        From :func:`circuitboard.ablate` (or :func:`circuitboard.load_ablation`).

    Examples
    --------
    >>> import numpy as np
    >>> from circuitboard.intervene import Ablation
    >>> res = Ablation(np.array([[2.0, 3.0], [1.0, 1.0]]), np.array([1.0, 1.0]), ["L0H1", "L1"],
    ...                "zero", "loss", ["a b", "c d"])
    >>> view = AblationView(res)
    >>> view.labels, view.selections[0]
    (['L0H1', 'L1'], {'layer': 0, 'head': 1})
    """

    _view = traitlets.Unicode("ablation").tag(sync=True)
    labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """One label per ablation (row)."""
    prompts = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """The prompts (columns)."""
    how = traitlets.Unicode().tag(sync=True)
    """``zero``, ``mean`` or ``resample``."""
    metric = traitlets.Unicode().tag(sync=True)
    """The metric's description."""
    notes = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """The result's conventions."""
    selections = traitlets.List(traitlets.Dict()).tag(sync=True)
    """Per row, what a click selects on the link (``{}``: nothing)."""
    _values = traitlets.Dict().tag(sync=True)  # Encoded float32 [ablations, prompts]
    _baseline = traitlets.Dict().tag(sync=True)  # Encoded float32 [prompts]

    def __init__(self, result: Any, **kwargs: Any) -> None:
        try:
            values = np.asarray(result.values, dtype=np.float32)
            baseline = np.asarray(result.baseline, dtype=np.float32)
            labels = [str(x) for x in result.labels]
        except AttributeError as err:
            raise TypeError(
                "AblationView needs an Ablation result (from cb.ablate or cb.load_ablation); got "
                f"{type(result).__name__}, which lacks {err.name!r}."
            ) from None
        super().__init__(
            labels=labels,
            prompts=[str(p) for p in result.prompts],
            how=str(result.how),
            metric=str(result.metric),
            notes=[str(n) for n in getattr(result, "notes", [])],
            selections=[_selection(x) for x in labels],
            _values=encode(values, "float32"),
            _baseline=encode(baseline, "float32"),
            **kwargs,
        )
        self._result = result

    @property
    def result(self) -> Any:
        """The :class:`~circuitboard.intervene.Ablation` shown."""
        return self._result


def ablation_view(result: Any, **kwargs: Any) -> AblationView:
    """The :class:`AblationView` of an :class:`~circuitboard.intervene.Ablation` result.

    Examples
    --------
    >>> res = cb.ablate(model, tok, texts, ["L0", "L14", "L29"])  # doctest: +SKIP
    >>> cb.board(cb.ablation_view(res), cb.attention(cap))  # doctest: +SKIP
    """
    return AblationView(result, **kwargs)


__all__ = ["AblationView", "ablation_view"]
