"""LogitAttributionView: heads heatmap of direct logit attribution, MLP bars, top neurons."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import traitlets

from ._codec import encode, to_numpy
from ._validate import displayable
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

    Notes
    -----
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
    dtype = traitlets.Unicode("float32").tag(sync=True)
    """The least precise dtype the model computed in or the capture stored."""
    tolerance = traitlets.Float(0.0).tag(sync=True)
    """How far ``total`` may sit from ``model_value`` at that precision (the report's check)."""
    _heads = traitlets.Dict().tag(sync=True)  # Encoded float32 [layers, heads]
    _layers = traitlets.Dict().tag(sync=True)  # Encoded float32 [2, layers]: attn, mlp
    _terms = traitlets.List().tag(sync=True)  # [[label, value]] for embed / pos_embed / bias
    _top_neurons = traitlets.List().tag(sync=True)  # [[layer, neuron, value]] over all layers
    _top_features = traitlets.List().tag(sync=True)  # [[hook, layer, feature, value, label]]
    pos = traitlets.Int(-1).tag(sync=True)
    """The position shown first (the attribution's own)."""
    positions = traitlets.List(traitlets.Int()).tag(sync=True)
    """Positions the view can switch to when a token is selected (empty: fixed position)."""

    _fetchers: ClassVar[dict[str, str]] = {
        "fetch-neurons": "_fetch_neurons",
        "fetch-position": "_fetch_position",
    }

    def __init__(
        self,
        attribution: Any,
        *,
        tokens: list[str] | None = None,
        positions: Iterable[Any] | None = None,
        **kwargs: Any,
    ) -> None:
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
        self._head_values = heads
        attn = heads.sum(1)
        terms = _terms(labels, values)
        super().__init__(
            description=str(getattr(attribution, "description", "")),
            n_layers=n_layers,
            n_heads=n_heads,
            model_value=float(attribution.model_value),
            total=float(values.astype(np.float64).sum()),
            tokens=list(tokens or []),
            dtype=str(getattr(attribution, "dtype", "float32")),
            tolerance=float(getattr(attribution, "tolerance", 0.0)),
            _heads=encode(heads, "float32"),
            _layers=encode(np.stack([attn, mlp]), "float32"),
            _terms=terms,
            _top_neurons=self._top(None, N_TOP),
            _top_features=_top_features(attribution, N_TOP),
            pos=int(getattr(attribution, "pos", -1)),
            **kwargs,
        )
        # Other positions, reduced at once to what the view shows (no per-neuron arrays kept).
        self._positions: dict[int, dict[str, Any]] = {}
        for other in positions or ():
            self._positions[int(other.pos)] = _summary(other, n_layers)
        self.positions = sorted(self._positions)

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

    def _fetch_position(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        pos = msg.get("pos")
        if pos not in self._positions:
            raise IndexError(
                f"no attribution at position {pos!r}; this view has positions "
                f"{self.positions[:8]}{' ...' if len(self.positions) > 8 else ''}. Build it with "
                "cb.logit_attribution(cap, ...) to follow the selected token."
            )
        return pack(**self._positions[pos])

    def export_requests(self, budget_bytes: int) -> list[dict[str, Any]]:
        reqs: list[dict[str, Any]] = [
            {"kind": "fetch-neurons", "layer": layer} for layer in range(self.n_layers)
        ]
        per = 4 * (self.n_layers * self.n_heads + 2 * self.n_layers) + 40 * self.n_layers * N_LAYER
        for n, pos in enumerate(self.positions):
            if (n + 1) * per > budget_bytes:
                break
            reqs.append({"kind": "fetch-position", "pos": pos})
        return reqs

    def export_pointers(self) -> list[dict[str, int]]:
        """The neurons and heads this view lists: its top neurons overall and per layer at
        its own position, the top neurons at every other position it can show, and its
        strongest heads. (Per-layer lists at other positions are reachable through the
        neuron view's whole layers, which the report keeps while they fit.)"""
        out: list[dict[str, int]] = []
        for lay, n, _ in self._top(None, N_TOP):
            out.append({"layer": lay, "neuron": n})
        for layer in range(self.n_layers):
            out += [{"layer": lay, "neuron": n} for lay, n, _ in self._top(layer, N_TOP)]
        for summary in self._positions.values():
            out += [{"layer": lay, "neuron": n} for lay, n, _ in summary["top_neurons"]]
        heads = self._head_values
        for i in np.argsort(-np.abs(heads), axis=None, kind="stable")[:N_TOP]:
            out.append({"layer": int(i // self.n_heads), "head": int(i % self.n_heads)})
        seen: set[tuple] = set()
        return [p for p in out if not ((k := tuple(sorted(p.items()))) in seen or seen.add(k))]

    def export_notes(self, budget_bytes: int) -> list[str]:
        shown = sum(r["kind"] == "fetch-position" for r in self.export_requests(budget_bytes))
        if shown < len(self.positions):
            return [
                f"Logit attribution: {shown} of {len(self.positions)} positions embedded "
                "(raise the report budget to follow every token)."
            ]
        return []


N_LAYER = 8  # top neurons per layer sent with each position


def _summary(attr: Any, n_layers: int) -> dict[str, Any]:
    """What the view shows of one position's attribution (the reply to fetch-position)."""
    heads = to_numpy(attr.heads)
    mlp = to_numpy(attr.mlp)
    values = to_numpy(attr.values)
    neurons = np.stack([to_numpy(attr.neurons(layer)) for layer in range(n_layers)])
    flat = neurons.reshape(-1)
    d = neurons.shape[1]
    top = [[int(i // d), int(i % d), float(flat[i])] for i in np.argsort(-np.abs(flat))[:N_TOP]]
    layer_top = []
    for layer in range(n_layers):
        order = np.argsort(-np.abs(neurons[layer]), kind="stable")[:N_LAYER]
        layer_top.append([[layer, int(i), float(neurons[layer, i])] for i in order])
    return {
        "pos": int(attr.pos),
        "description": str(getattr(attr, "description", "")),
        "model_value": float(attr.model_value),
        "total": float(values.astype(np.float64).sum()),
        "heads": encode(heads, "float32"),
        "layers": encode(np.stack([heads.sum(1), mlp]), "float32"),
        "terms": _terms(list(attr.labels), values),
        "top_neurons": top,
        "layer_top": layer_top,
        "top_features": _top_features(attr, N_TOP),
    }


def _top_features(attr: Any, k: int) -> list[list[Any]]:
    """The ``k`` features with the largest absolute direct contribution over every
    dictionary split into the attribution (``direct_logit_attribution(..., saes=...)``):
    ``[hook read, layer, feature, value, label]``; labels as text (no lone surrogates)."""
    found = getattr(attr, "_features", None) or {}
    rows = []
    for fa in found.values():
        layer = int(fa.hook.split(".")[1])
        names = fa.names or {}
        for i in np.argsort(-np.abs(fa.values), kind="stable")[:k]:
            v = float(fa.values[i])
            if v != 0.0:
                rows.append([fa.hook, layer, int(i), v, displayable(names.get(int(i), ""))])
    rows.sort(key=lambda r: -abs(r[3]))  # stable: dictionaries in order on ties
    return rows[:k]


def _terms(labels: list[str], values: np.ndarray) -> list[list[Any]]:
    return [
        [lab, float(v)]
        for lab, v in zip(labels, values, strict=True)
        if not (lab.startswith("L") and ("H" in lab or lab.endswith(".mlp")))
    ]
