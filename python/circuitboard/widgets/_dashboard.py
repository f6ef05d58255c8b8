"""NeuronDashboard: one neuron's top-activating examples, activation histogram and logit effects."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import traitlets

from ._codec import encode
from ._validate import displayable
from ._view import View, pack

if TYPE_CHECKING:
    from ..analysis._neurons import TopActivations

N_COFIRING = 8  # co-firing features listed per feature
MAX_EXPORT = 256  # dashboards in a report: more is rarely browsed and costs ~10 kB each
REQUIRED = (
    "neurons",
    "values",
    "text_index",
    "window_ids",
    "window_acts",
    "hist_edges",
    "hist_counts",
)


class NeuronDashboard(View):
    """A dashboard for the neurons recorded by :func:`~circuitboard.analysis.top_activations`.

    Shows the selected neuron's top examples (context tokens coloured by its activation, the
    maximum outlined), a histogram of its activation over every token of the dataset, and the
    tokens it directly promotes and suppresses through the unembedding. Follows the link's
    ``layer`` / ``neuron`` when they name a recorded neuron; picking one selects it.

    Parameters
    ----------
    top : TopActivations
        The records (from ``top_activations`` or ``TopActivations.load``).
    neuron : (layer, index), optional
        Shown first (default: the link's selection if recorded, else the first neuron).

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> from circuitboard.analysis import top_activations
    >>> model, tok = tiny_model("llama")
    >>> top = top_activations(model, tok, ["a b c", "the dog"], [(0, 1), (1, 2)], k=2,
    ...                       progress=False)
    >>> card = NeuronDashboard(top, neuron=(1, 2)).card(1, 2)
    >>> bool(card["examples"][0]["value"] == top.values[1, 0])
    True
    """

    _view = traitlets.Unicode("dashboard").tag(sync=True)
    neurons = traitlets.List(traitlets.List(traitlets.Int())).tag(sync=True)
    """The recorded ``[layer, index]`` pairs."""
    n_texts = traitlets.Int().tag(sync=True)
    """Texts the records were computed over."""
    model_name = traitlets.Unicode("").tag(sync=True)
    """Name of the model, shown in the header."""
    dictionary = traitlets.Dict().tag(sync=True)
    """Dictionary features: ``{"hook", "labels": {"index": name}}`` (labels shown as text);
    ``{}`` for neurons."""
    _initial = traitlets.Dict().tag(sync=True)  # first paint: {layer, neuron, card}

    _fetchers: ClassVar[dict[str, str]] = {"fetch-neuron-card": "_fetch_card"}

    def __init__(
        self, top: TopActivations, *, neuron: Any = None, labels: Any = None, **kwargs: Any
    ) -> None:
        missing = [a for a in REQUIRED if not hasattr(top, a)]
        if missing:
            raise TypeError(
                f"NeuronDashboard needs the result of top_activations(...); got "
                f"{type(top).__name__} without {missing}. Run "
                "cb.top_activations(model, tokenizer, texts, neurons=[(layer, index)])."
            )
        if not len(top.neurons):
            raise ValueError(
                "these records hold no neurons; run top_activations with neurons=[...]."
            )
        self._top = top
        info = dict(getattr(top, "dictionary", None) or {})
        if labels is not None:
            info["labels"] = {**info.get("labels", {}), **_labels_of(labels)}
        # no page can show a lone surrogate, and Jupyter cannot send one
        self._labels: dict[str, str] = {
            k: displayable(v) for k, v in info.get("labels", {}).items()
        }
        link = kwargs.get("link")
        if neuron is None and link is not None and (link.layer, link.neuron) in top.neurons:
            neuron = (link.layer, link.neuron)
        if neuron is None:
            neuron = top.neurons[0]
        if not (isinstance(neuron, (tuple, list)) and len(neuron) == 2):
            raise TypeError(f"neuron must be a (layer, index) pair; got {neuron!r}.")
        layer, idx = int(neuron[0]), int(neuron[1])
        top.index(layer, idx)  # IndexError naming the recorded neurons
        super().__init__(
            neurons=[[int(a), int(b)] for a, b in top.neurons],
            n_texts=len(top.texts),
            model_name=str(getattr(top, "model_name", "") or ""),
            dictionary=(
                {"hook": str(info.get("hook", "")), "labels": self._labels} if info else {}
            ),
            _initial={"layer": layer, "neuron": idx, "card": self._card_fields(layer, idx)},
            **kwargs,
        )
        if (self.link.layer, self.link.neuron) not in top.neurons:
            self.link.select(layer=layer, neuron=idx)

    def card(self, layer: int, neuron: int) -> dict[str, Any]:
        """Everything the dashboard shows for one neuron, as plain Python values."""
        top = self._top
        i = top.index(layer, neuron)
        examples = top.examples(layer, neuron)
        extra: dict[str, Any] = {}
        if getattr(top, "dictionary", None) is not None:
            extra["label"] = self._labels.get(str(int(neuron)), "")
        if getattr(top, "cofire", None) is not None:
            extra["fires"] = int(top.cofire[i, int(neuron)])
            extra["cofiring"] = [
                [c["feature"], c["count"], c["fraction"], self._labels.get(str(c["feature"]), "")]
                for c in top.cofiring(layer, neuron, k=N_COFIRING)
            ]
        return {
            **extra,
            "layer": int(layer),
            "neuron": int(neuron),
            "examples": examples,
            "hist_edges": top.hist_edges[i].tolist(),
            "hist_counts": top.hist_counts[i].tolist(),
            "hist_outside": [  # tokens below / above the edges (old files: in the end bins)
                0 if v is None else int(v[i])
                for v in (getattr(top, "hist_below", None), getattr(top, "hist_above", None))
            ],
            "stats": {
                "count": int(top.count[i]),
                "mean": float(top.mean[i]),
                "std": float(top.std[i]),
                "min": float(top.minimum[i]),
                "max": float(top.maximum[i]),
                "frac_positive": float(top.frac_positive[i]),
            },
            "promoted": [
                [top.vocab.get(int(t), "?"), float(v)]
                for t, v in zip(top.promoted_ids[i], top.promoted[i], strict=True)
            ],
            "suppressed": [
                [top.vocab.get(int(t), "?"), float(v)]
                for t, v in zip(top.suppressed_ids[i], top.suppressed[i], strict=True)
            ],
        }

    def label(self, feature: int) -> str:
        """The name shown for a feature (``""`` when it has none)."""
        return self._labels.get(str(int(feature)), "")

    def _card_fields(self, layer: int, neuron: int) -> dict[str, Any]:
        c = self.card(layer, neuron)
        ex = c.pop("examples")
        width = max((len(e["tokens"]) for e in ex), default=0)
        acts = np.zeros((len(ex), width), np.float32)
        for r, e in enumerate(ex):
            acts[r, : len(e["activations"])] = e["activations"]
        c["examples"] = [
            {
                "text_index": e["text_index"],
                "value": e["value"],
                "tokens": e["tokens"],
                "max_at": e["max_at"],
            }
            for e in ex
        ]
        c["acts"] = encode(acts, "float32")
        return c

    def _fetch_card(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        return pack(**self._card_fields(msg["layer"], msg["neuron"]))

    def _card_bytes(self) -> int:
        top = self._top
        k, w = top.window_acts.shape[1], top.window_acts.shape[2]
        return 600 + k * w * (4 + 12) + 40 * (top.promoted.shape[1] * 2 + top.hist_counts.shape[1])

    def export_requests(self, budget_bytes: int) -> list[dict[str, Any]]:
        sel = (self.link.layer, self.link.neuron)
        top = self._top
        # selected first, then the strongest neurons; at most MAX_EXPORT within the budget
        order = [top.neurons[i] for i in np.argsort(-np.nan_to_num(top.maximum), kind="stable")]
        if sel in order:
            order.remove(sel)
            order.insert(0, sel)
        n = max(1, min(len(order), MAX_EXPORT, budget_bytes // self._card_bytes()))
        return [{"kind": "fetch-neuron-card", "layer": a, "neuron": b} for a, b in order[:n]]

    def export_notes(self, budget_bytes: int) -> list[str]:
        n, total = len(self.export_requests(budget_bytes)), len(self._top.neurons)
        if n < total:
            return [
                f"Neuron dashboard: {n} of {total} neurons are included (the selected one, then "
                "those with the largest activations)."
            ]
        return []


def _labels_of(labels: Any) -> dict[str, str]:
    """``labels=`` as ``{"index": name}``: a dictionary (its ``labels``), a dict or a list."""
    from ..analysis._features import feature_labels

    if isinstance(labels, dict):
        return {str(int(k)): str(v) for k, v in labels.items()}
    if isinstance(labels, list | tuple):
        return {str(i): str(v) for i, v in enumerate(labels) if str(v) != f"f{i}"}
    if hasattr(labels, "labels") or hasattr(labels, "metadata"):
        return {str(k): v for k, v in feature_labels(labels).items()}
    raise TypeError(
        f"labels= takes a dictionary (cb.SAE, whose .labels are used), a dict {{index: name}} "
        f"or a list of names; got {type(labels).__name__}."
    )
