"""LogitAttributionView: heads heatmap of direct logit attribution, MLP bars, top neurons."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import traitlets

from ._codec import encode, to_numpy
from ._view import View, pack

N_TOP = 12


class LogitAttributionView(View):
    """Which heads, MLP layers and neurons push a logit (difference) up or down.

    Parameters
    ----------
    attribution : Attribution
        From :func:`circuitboard.direct_logit_attribution` (anything with ``heads``
        ``[layers, heads]``, ``mlp`` ``[layers]``, ``neurons(layer)``, ``labels``, ``values``,
        ``model_value`` and ``description`` works).
    tokens : list of str, optional
        The prompt, shown as context.

    Clicking a head selects ``{layer, head}`` in the link (a linked attention view opens
    it); clicking an MLP bar selects the layer and lists its top neurons.

    Examples
    --------
    >>> import numpy as np
    >>> class Attr:  # any object with these fields works; usually cb.direct_logit_attribution
    ...     heads = np.array([[0.5, -0.2], [1.0, 0.1]]); mlp = np.array([0.3, -0.4])
    ...     labels = ["embed", "L0H0", "L0H1", "L0.mlp", "L1H0", "L1H1", "L1.mlp", "bias"]
    ...     values = np.array([0.1, 0.5, -0.2, 0.3, 1.0, 0.1, -0.4, 0.0])
    ...     model_value = 1.4; description = "logit 'a' at position 3"
    ...     def neurons(self, layer):
    ...         return np.array([0.2, 0.1]) if layer == 0 else np.array([-0.4, 0.0])
    >>> view = LogitAttributionView(Attr())
    >>> view.n_layers, view.n_heads
    (2, 2)
    """

    _view = traitlets.Unicode("attribution").tag(sync=True)
    description = traitlets.Unicode().tag(sync=True)
    """What is attributed, e.g. ``logit ' Mary' − ' John' at position 13``."""
    n_layers = traitlets.Int().tag(sync=True)
    """Layers of the model."""
    n_heads = traitlets.Int().tag(sync=True)
    """Heads per layer."""
    model_value = traitlets.Float().tag(sync=True)
    """The logit (difference) as the model computed it."""
    total = traitlets.Float().tag(sync=True)
    """The sum of every contribution (equals ``model_value`` up to float error)."""
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """The prompt's tokens (context only)."""
    _heads = traitlets.Dict().tag(sync=True)  # Encoded float32 [layers, heads]
    _layers = traitlets.Dict().tag(sync=True)  # Encoded float32 [2, layers]: attn, mlp
    _terms = traitlets.List().tag(sync=True)  # [[label, value]] for embed / pos_embed / bias
    _top_neurons = traitlets.List().tag(sync=True)  # [[layer, neuron, value]] over all layers

    _fetchers: ClassVar[dict[str, str]] = {"fetch-neurons": "_fetch_neurons"}

    def __init__(self, attribution: Any, *, tokens: list[str] | None = None, **kwargs: Any) -> None:
        try:
            heads = to_numpy(attribution.heads)
            mlp = to_numpy(attribution.mlp)
            labels = list(attribution.labels)
            values = to_numpy(attribution.values)
        except AttributeError as err:
            raise TypeError(
                "LogitAttributionView needs an Attribution (from cb.direct_logit_attribution); "
                f"got {type(attribution).__name__}, which lacks {err.name!r}."
            ) from None
        if heads.ndim != 2 or mlp.shape != (heads.shape[0],):
            raise ValueError(
                f"attribution.heads must be [layers, heads] and .mlp [layers]; got shapes "
                f"{tuple(heads.shape)} and {tuple(mlp.shape)}."
            )
        n_layers, n_heads = heads.shape
        neurons = [to_numpy(attribution.neurons(layer)) for layer in range(n_layers)]
        self._neurons = neurons
        attn = heads.sum(1)
        terms = [
            [lab, float(v)]
            for lab, v in zip(labels, values, strict=True)
            if not (lab.startswith("L") and ("H" in lab or lab.endswith(".mlp")))
        ]
        super().__init__(
            description=str(getattr(attribution, "description", "")),
            n_layers=n_layers,
            n_heads=n_heads,
            model_value=float(attribution.model_value),
            total=float(values.astype(np.float64).sum()),
            tokens=list(tokens or []),
            _heads=encode(heads, "float32"),
            _layers=encode(np.stack([attn, mlp]), "float32"),
            _terms=terms,
            _top_neurons=self._top(None, N_TOP),
            **kwargs,
        )

    def _top(self, layer: int | None, k: int) -> list[list[Any]]:
        if layer is None:
            allv = np.stack(self._neurons) if self._neurons else np.zeros((0, 0))
            flat = allv.reshape(-1)
            order = np.argsort(-np.abs(flat), kind="stable")[:k]
            d = allv.shape[1] if allv.ndim == 2 else 1
            return [[int(i // d), int(i % d), float(flat[i])] for i in order]
        v = self._neurons[layer]
        order = np.argsort(-np.abs(v), kind="stable")[:k]
        return [[int(layer), int(i), float(v[i])] for i in order]

    def neurons(self, layer: int) -> np.ndarray:
        """``[d_mlp]`` contributions of the neurons of ``layer``."""
        if not isinstance(layer, (int, np.integer)) or not 0 <= int(layer) < self.n_layers:
            raise IndexError(f"layer={layer!r} is out of range: there are {self.n_layers} layers.")
        return self._neurons[int(layer)]

    def _fetch_neurons(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        layer = msg.get("layer")
        self.neurons(layer)  # validates
        return pack(layer=int(layer), top=self._top(int(layer), N_TOP))

    def export_requests(self, budget_bytes: int) -> list[dict[str, Any]]:
        return [{"kind": "fetch-neurons", "layer": layer} for layer in range(self.n_layers)]
