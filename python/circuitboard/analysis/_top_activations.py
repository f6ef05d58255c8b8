"""`TopActivations`: per-neuron running top-k examples, moments and histograms over a dataset;
merged, saved and loaded exactly."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._files import decoding, json_array, read_npz, stamp
from ._histograms import (
    _lattice_of,
    lattice,
    lattice_edges,
    rebin_lattice,
)
from ._running_stats import RunningStats


@dataclass
class TopActivations:
    """Per neuron: the top-``k`` texts by maximum activation, with context, and a histogram.

    Arrays are indexed ``[neuron, rank, ...]`` in the order of :attr:`neurons`. Missing ranks
    (fewer texts than ``k``) have ``text_index == -1`` and ``values == nan``.

    Attributes
    ----------
    neurons : list of (layer, index)
    texts : list of str
    values : ``[n, k]`` maximum activation of the neuron in each example text, descending.
    text_index, position : ``[n, k]`` which text, and the token position of the maximum.
    window_ids, window_acts : ``[n, k, W]`` token ids (``-1`` = outside the text) and the
        neuron's activation on each token of the context window around ``position``.
    window_start : ``[n, k]`` text position of the window's first entry (may be negative).
    hist_edges : ``[n, bins + 1]``; hist_counts ``[n, bins]`` counts of the tokens inside the
        edges (by default they span each neuron's minimum to maximum on a power-of-two
        lattice, so parts merge exactly); hist_below / hist_above ``[n]`` the tokens below the
        first / above the last of fixed ``hist_range`` edges; ``minimum`` / ``maximum`` are
        exact.
    count, mean, std, minimum, maximum, frac_positive : ``[n]`` statistics over every token
        (``std`` with ``ddof=0``).
    m2, positive : ``[n]`` sum of squared deviations from the mean and the count of positive
        activations: what :meth:`merge` needs to pool moments exactly (Chan et al.).
    promoted_ids, promoted, suppressed_ids, suppressed : ``[n, m]`` the neuron's direct logit
        effect (``W_out[neuron] @ W_U``, through the final norm's weight), largest first.
    vocab : dict id → token text, for every id above.
    cofire : ``[n, d_sae]`` int64, dictionary features only (``top_activations(...,
        features=(sae, ids))``): ``cofire[i, j]`` counts the tokens on which row ``i``'s feature
        and feature ``j`` both fire (``cofire[i, f_i]``: the tokens ``f_i`` fires on). Parts
        add up exactly; :meth:`cofiring` ranks a row.
    dictionary : dictionary features only: ``{"hook", "d_sae", "labels": {"index": name}}``.
    """

    neurons: list[tuple[int, int]]
    texts: list[str]
    values: np.ndarray
    text_index: np.ndarray
    position: np.ndarray
    window_ids: np.ndarray
    window_acts: np.ndarray
    window_start: np.ndarray
    hist_edges: np.ndarray
    hist_counts: np.ndarray
    count: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    frac_positive: np.ndarray
    promoted_ids: np.ndarray
    promoted: np.ndarray
    suppressed_ids: np.ndarray
    suppressed: np.ndarray
    vocab: dict[int, str] = field(default_factory=dict)
    model_name: str = ""
    m2: np.ndarray | None = None
    positive: np.ndarray | None = None
    hist_below: np.ndarray | None = None
    hist_above: np.ndarray | None = None
    cofire: np.ndarray | None = None
    dictionary: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.neurons)

    def __repr__(self) -> str:
        return (
            f"TopActivations({len(self.neurons)} neurons, {len(self.texts)} texts, "
            f"k={self.values.shape[1]})"
        )

    def index(self, layer: int, neuron: int) -> int:
        """Row of ``(layer, neuron)`` in the arrays; IndexError names the recorded neurons."""
        try:
            return self.neurons.index((int(layer), int(neuron)))
        except ValueError:
            shown = ", ".join(f"({a}, {b})" for a, b in self.neurons[:6])
            more = " ..." if len(self.neurons) > 6 else ""
            raise IndexError(
                f"neuron ({layer}, {neuron}) was not recorded; recorded: {shown}{more}. Run "
                "top_activations(..., neurons=[(layer, neuron), ...]) with it."
            ) from None

    def examples(self, layer: int, neuron: int) -> list[dict[str, Any]]:
        """The top examples of one neuron as dicts (text index, value, tokens, activations).

        >>> top.examples(3, 120)[0]["value"]  # doctest: +SKIP
        4.21
        """
        i = self.index(layer, neuron)
        out = []
        for r in range(self.values.shape[1]):
            if self.text_index[i, r] < 0:
                break
            ids = self.window_ids[i, r]
            keep = ids >= 0
            out.append(
                {
                    "text_index": int(self.text_index[i, r]),
                    "position": int(self.position[i, r]),
                    "value": float(self.values[i, r]),
                    "tokens": [self.vocab.get(int(t), "?") for t in ids[keep]],
                    "activations": self.window_acts[i, r][keep].astype(float).tolist(),
                    "max_at": int(self.position[i, r] - max(self.window_start[i, r], 0)),
                }
            )
        return out

    def cofiring(self, layer: int, feature: int, k: int = 8) -> list[dict[str, Any]]:
        """The ``k`` features that fire most often on the tokens where ``feature`` fires.

        Each: ``feature``, ``count`` (tokens on which both fire), ``fraction`` (of the tokens
        ``feature`` fires on) and ``label`` (the dictionary's name for it, ``""`` if none).

        >>> top.cofiring(9, 120, k=2)  # doctest: +SKIP
        [{'feature': 77, 'count': 412, 'fraction': 0.61, 'label': ''}, ...]
        """
        from ._feature_scan import cofiring_top

        if self.cofire is None:
            raise ValueError(
                "these records hold no co-firing counts: they are of neurons, or were made "
                "with cofiring=False. Run cb.top_activations(model, tok, texts, "
                "features=(sae, ids)) (co-firing is counted by default)."
            )
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive int; got {k!r}.")
        i = self.index(layer, feature)
        own = int(self.cofire[i, int(feature)])
        labels = (self.dictionary or {}).get("labels", {})
        return [
            {
                "feature": j,
                "count": c,
                "fraction": c / own if own else 0.0,
                "label": labels.get(str(j), ""),
            }
            for j, c in cofiring_top(self.cofire, i, feature, k)
        ]

    def save(self, path: Any) -> None:
        """Write to one ``.npz`` file (no pickle); read back with :meth:`load`."""
        import json

        arrays = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), np.ndarray)
        }
        meta = {
            "neurons": [list(n) for n in self.neurons],
            "texts": self.texts,
            "vocab": {str(k): v for k, v in self.vocab.items()},
            "model_name": self.model_name,
            "dictionary": self.dictionary,
        }
        from .._npz import save_npz  # byte-reproducible: the same results, the same file

        if isinstance(path, (str, os.PathLike)) and not str(path).endswith(".npz"):
            path = f"{os.fspath(path)}.npz"  # as numpy's savez does
        meta_array = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        save_npz(path, {**stamp("top activations"), "_meta": meta_array, **arrays})

    @classmethod
    def load(cls, path: Any) -> TopActivations:
        """Read a file written by :meth:`save`."""
        writer = "TopActivations.save(path)"
        arrays = read_npz(path, "top activations", writer, required=("_meta",))
        meta = json_array(arrays, "_meta", path, "top activations", writer)
        del arrays["_meta"]
        with decoding(path, "top activations", writer):
            return cls(
                neurons=[(int(a), int(b)) for a, b in meta["neurons"]],
                texts=list(meta["texts"]),
                vocab={int(k): v for k, v in meta["vocab"].items()},
                model_name=meta.get("model_name", ""),
                dictionary=meta.get("dictionary"),
                **arrays,
            )

    def merge(self, *others: TopActivations) -> TopActivations:
        """Combine results of the same neurons over more texts (shards of one run, or datasets).

        Parts whose texts are the same list (or that carry none: the partials of a sharded
        run) index texts globally and keep them; a part over *other* texts is appended, its text
        indices shifted past the texts before it. The top-``k`` of the union is kept with the
        same total order as one pass (larger value first, ties to the smaller text index),
        histogram counts add up (the edges must be equal: fix them with ``hist_range=`` or
        take them from one first pass), moments pool exactly.

        Examples
        --------
        >>> a = top_activations(model, tok, texts[:100], [(3, 120)])  # doctest: +SKIP
        >>> b = top_activations(model, tok, texts[100:], [(3, 120)])  # doctest: +SKIP
        >>> both = a.merge(b)  # texts[:100] + texts[100:]  # doctest: +SKIP
        """
        res = self
        for o in others:
            res = res._merge_one(o)
        return res

    def _merge_one(self, o: TopActivations) -> TopActivations:
        if not isinstance(o, TopActivations):
            raise TypeError(f"merge takes TopActivations; got {type(o).__name__}.")
        mine = (self.neurons, self.values.shape[1], self.window_ids.shape[2])
        theirs = (o.neurons, o.values.shape[1], o.window_ids.shape[2])
        if mine != theirs:
            raise ValueError(
                "cannot merge top activations made differently: (neurons, k, window) are "
                f"{_short(mine)} and {_short(theirs)}. Run every part with the same neurons=, "
                "k= and context=."
            )
        hist_edges, hist_counts = _merge_histograms(self, o)
        if self.m2 is None or o.m2 is None:
            raise ValueError(
                "one part has no running moments (saved by an older circuitboard); compute it "
                "again to merge it."
            )
        shift = 0
        texts = self.texts or o.texts
        if self.texts and o.texts and self.texts != o.texts:
            shift, texts = len(self.texts), self.texts + o.texts
        t_other = np.where(o.text_index >= 0, o.text_index + shift, -1)
        val = lambda a: np.where(np.isnan(a), -np.inf, a).astype(np.float32)  # noqa: E731
        k = self.values.shape[1]
        cat = lambda a, b: np.concatenate([a, b], 1)  # noqa: E731
        vals, tidx, pos, start, wids, wacts = _select_top(
            k,
            cat(val(self.values), val(o.values)),
            cat(self.text_index, t_other),
            cat(self.position, o.position),
            cat(self.window_start, o.window_start),
            cat(self.window_ids, o.window_ids),
            cat(self.window_acts, o.window_acts),
        )
        vals = np.where(tidx >= 0, vals, np.nan).astype(np.float32)  # missing ranks: NaN

        n = len(self.neurons)
        a = RunningStats(int(self.count[0]) if n else 0, self.mean, self.m2)
        b = RunningStats(int(o.count[0]) if n else 0, o.mean, o.m2)
        m = a.merge(b)
        positive = _positives(self) + _positives(o)
        below, above = (a + b for a, b in zip(_outside(self), _outside(o), strict=True))
        c = max(m.count, 1)
        if (self.cofire is None) != (o.cofire is None):
            raise ValueError(
                "cannot merge records with and without co-firing counts; run every part with "
                "the same cofiring=."
            )
        cofire = None if self.cofire is None else self.cofire + o.cofire
        logits = self if self.promoted_ids.shape[1] or not o.promoted_ids.shape[1] else o
        return dataclasses.replace(
            self,
            texts=list(texts),
            values=vals,
            text_index=tidx,
            position=pos,
            window_ids=wids,
            window_acts=wacts,
            window_start=start,
            hist_edges=hist_edges,
            hist_counts=hist_counts,
            count=self.count + o.count,
            mean=m.mean,
            std=np.sqrt(np.maximum(m.m2 / c, 0.0)),
            minimum=np.minimum(self.minimum, o.minimum),
            maximum=np.maximum(self.maximum, o.maximum),
            frac_positive=positive / c,
            promoted_ids=logits.promoted_ids,
            promoted=logits.promoted,
            suppressed_ids=logits.suppressed_ids,
            suppressed=logits.suppressed,
            vocab={**o.vocab, **self.vocab},
            model_name=self.model_name or o.model_name,
            m2=m.m2,
            positive=positive,
            hist_below=below,
            hist_above=above,
            cofire=cofire,
            dictionary=self.dictionary or o.dictionary,
        )

    def dashboard(self, neuron: tuple[int, int] | None = None, **kwargs: Any) -> Any:
        """A :class:`~circuitboard.widgets.NeuronDashboard` of these records."""
        from ..widgets._dashboard import NeuronDashboard

        return NeuronDashboard(self, neuron=neuron, **kwargs)


def _short(key: tuple[Any, ...]) -> str:
    neurons, *rest = key
    shown = f"[{len(neurons)} neurons from {neurons[0] if neurons else None}]"
    return str((shown, *rest))


def _positives(top: TopActivations) -> np.ndarray:
    if top.positive is not None:
        return np.asarray(top.positive, dtype=np.int64)
    return np.rint(top.frac_positive * np.maximum(top.count, 1)).astype(np.int64)


def _merge_histograms(a: TopActivations, b: TopActivations) -> tuple[np.ndarray, np.ndarray]:
    """Edges and counts of two parts' histograms combined: equal edges add; lattice
    histograms (the default) move onto the lattice of the union's range, exactly."""
    if a.hist_edges.shape == b.hist_edges.shape and np.array_equal(a.hist_edges, b.hist_edges):
        return a.hist_edges, a.hist_counts + b.hist_counts
    empty_a, empty_b = not (a.count > 0).all(), not (b.count > 0).all()
    if empty_a or empty_b:  # a part with no tokens counted has no histogram to add
        return (b.hist_edges, b.hist_counts) if empty_a else (a.hist_edges, a.hist_counts)
    la, lb = _lattice_of(a.hist_edges), _lattice_of(b.hist_edges)
    clean = not any(x.any() for x in (*_outside(a), *_outside(b)))
    if la is None or lb is None or not clean or a.hist_counts.shape != b.hist_counts.shape:
        raise ValueError(
            "cannot merge histograms with different fixed bin edges; run every part with the "
            "same hist_range=(low, high), or with hist_range=None (edges that follow the data "
            "and merge exactly)."
        )
    bins = a.hist_counts.shape[1]
    w, k0 = lattice(np.minimum(a.minimum, b.minimum), np.maximum(a.maximum, b.maximum), bins)
    counts = rebin_lattice(a.hist_counts, *la, w, k0) + rebin_lattice(b.hist_counts, *lb, w, k0)
    return lattice_edges(w, k0, bins), counts


def _outside(top: TopActivations) -> tuple[np.ndarray, np.ndarray]:
    """(below, above) the histogram's edges; zeros for files whose end bins held them."""
    zero = np.zeros(len(top.neurons), dtype=np.int64)
    below = zero if top.hist_below is None else top.hist_below
    return below, zero if top.hist_above is None else top.hist_above


def _select_top(k: int, values: np.ndarray, text_index: np.ndarray, *others: np.ndarray) -> list:
    """Per row, the ``k`` best candidates: largest value first, ties to the smaller text index.

    A total order, so one pass and any merge of shards keep the same examples. Missing
    candidates (``text_index < 0``, value ``-inf``) sort last.
    """
    t_key = np.where(text_index < 0, np.iinfo(np.int64).max, text_index)
    order = np.lexsort((t_key, -values.astype(np.float64)), axis=-1)[:, :k]
    out = [np.take_along_axis(values, order, 1), np.take_along_axis(text_index, order, 1)]
    for a in others:
        pick = order if a.ndim == 2 else order[:, :, None]
        out.append(np.take_along_axis(a, pick, 1))
    return out


def load_top_activations(path: str | os.PathLike[str]) -> TopActivations:
    """Read a :class:`TopActivations` written by :meth:`TopActivations.save`, without
    unpickling; any other file is refused with :class:`circuitboard.CircuitboardFileError`.

    Examples
    --------
    >>> top = cb.top_activations(model, tok, texts, neurons=[(0, 1)])  # doctest: +SKIP
    >>> top.save(tmp_path / "t.npz")  # doctest: +SKIP
    >>> cb.load_top_activations(tmp_path / "t.npz").neurons  # doctest: +SKIP
    [(0, 1)]
    """
    return TopActivations.load(path)
