"""MLP neurons over a dataset: running top-k examples, activation histograms, logit effects.

A neuron's activation is the input of its layer's MLP output projection (TransformerLens'
``blocks.{l}.mlp.hook_post``), read with a forward pre-hook. Torch is imported inside the
functions, so a saved :class:`TopActivations` can be viewed without it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._files import decoding, json_array, read_npz, stamp

# Module paths per architecture family: decoder blocks, the MLP output projection inside a
# block, the final norm and the unembedding. Tried in order; the first that resolves wins.
_BLOCKS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")
_OUT_PROJ = ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc2", "mlp.dense_out")
_FINAL_NORM = (
    "model.norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
    "model.final_layernorm",
)
_UNEMBED = ("lm_head", "embed_out")


class _Stop(Exception):
    """Raised by the last hook to skip the layers nobody asked for."""


def _attr(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _first(obj: Any, paths: Sequence[str]) -> tuple[str, Any] | None:
    for p in paths:
        try:
            return p, _attr(obj, p)
        except AttributeError:
            continue
    return None


def _blocks(model: Any) -> Any:
    found = _first(model, _BLOCKS)
    if found is None:
        raise TypeError(
            f"cannot find the decoder blocks of {type(model).__name__}; looked for "
            f"{', '.join(_BLOCKS)}. Pass a Hugging Face causal LM (Llama, GPT-2, NeoX, ... family)."
        )
    return found[1]


def mlp_out_proj(model: Any, layer: int) -> Any:
    """The module whose *input* holds layer ``layer``'s neuron activations.

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> model, _ = tiny_model("llama")
    >>> type(mlp_out_proj(model, 0)).__name__
    'Linear'
    """
    blocks = _blocks(model)
    n = len(blocks)
    if not isinstance(layer, (int, np.integer)) or isinstance(layer, bool) or not 0 <= layer < n:
        raise IndexError(f"layer={layer!r} is out of range: the model has {n} layers (0..{n - 1}).")
    found = _first(blocks[int(layer)], _OUT_PROJ)
    if found is None:
        raise TypeError(
            f"cannot find the MLP output projection of {type(blocks[0]).__name__}; looked for "
            f"{', '.join(_OUT_PROJ)}. Add the path to circuitboard.analysis._neurons._OUT_PROJ."
        )
    return found[1]


def _w_out(proj: Any) -> Any:
    """``[d_mlp, d_model]`` output weights (Linear stores the transpose, GPT-2's Conv1D not)."""
    w = proj.weight.detach()
    return w if type(proj).__name__ == "Conv1D" else w.T


def _d_mlp(model: Any, layer: int) -> int:
    return int(_w_out(mlp_out_proj(model, layer)).shape[0])


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
        from ._compare import RunningStats

        n = len(self.neurons)
        a = RunningStats(int(self.count[0]) if n else 0, self.mean, self.m2)
        b = RunningStats(int(o.count[0]) if n else 0, o.mean, o.m2)
        m = a.merge(b)
        positive = _positives(self) + _positives(o)
        below, above = (a + b for a, b in zip(_outside(self), _outside(o), strict=True))
        c = max(m.count, 1)
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


def _neuron_list(model: Any, neurons: Any, layers: Any) -> list[tuple[int, int]]:
    n_layers = len(_blocks(model))
    out: list[tuple[int, int]] = []
    if layers is not None:
        for layer in [layers] if isinstance(layers, int) else layers:
            out.extend((int(layer), i) for i in range(_d_mlp(model, int(layer))))
    if neurons is not None:
        if (
            isinstance(neurons, tuple)
            and len(neurons) == 2
            and all(isinstance(x, (int, np.integer)) for x in neurons)
        ):
            neurons = [neurons]
        for item in neurons:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise TypeError(
                    f"neurons must be a list of (layer, index) pairs; got the item {item!r}. "
                    "Example: neurons=[(3, 120), (5, 7)]; for whole layers use layers=[3, 5]."
                )
            out.append((int(item[0]), int(item[1])))
    if not out:
        raise ValueError(
            "top_activations needs neurons=[(layer, index), ...] or layers=[...]; got neither."
        )
    seen: dict[tuple[int, int], None] = {}
    for layer, i in out:
        if not 0 <= layer < n_layers:
            raise IndexError(f"neuron ({layer}, {i}): layer out of range 0..{n_layers - 1}.")
        d = _d_mlp(model, layer)
        if not 0 <= i < d:
            raise IndexError(
                f"neuron ({layer}, {i}): index out of range, layer {layer} has {d} neurons."
            )
        seen.setdefault((layer, i), None)
    return list(seen)


def _texts(texts: Any) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(
            "texts must be a list of strings; got a single string. Wrap it: texts=[text]."
        )
    out = list(texts)
    bad = [i for i, t in enumerate(out) if not isinstance(t, str) or not t]
    if bad:
        raise TypeError(
            f"texts must be non-empty strings; texts[{bad[0]}] is {out[bad[0]]!r}. "
            "cb.load_texts() gives a ready-made list."
        )
    if not out:
        raise ValueError("texts is empty; pass at least one string (e.g. cb.load_texts()).")
    return out


def _progress(total: int, enabled: bool, desc: str = "top activations") -> Any:
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc=desc, unit="text")
        except ImportError:
            pass
    return None


# -- the plan: tokenize once, batch longest first ----------------------------------------------
@dataclass(frozen=True)
class TextPlan:
    """Texts tokenized once and grouped into the batches every engine runs (longest first).

    ``batches[b]`` lists global text indices; ties in length keep text order, so the plan is a
    pure function of the texts, the tokenizer and ``batch_size``.
    """

    encoded: Any  # token ids by text index: a list, or a dict holding only some texts
    batches: list[list[int]]
    special: tuple[int, ...]
    pad_id: int

    def batch_inputs(self, b: int) -> tuple[list[int], list[list[int]]]:
        """``(text indices, token ids)`` of batch ``b``: what a worker needs to run it."""
        idx = self.batches[b]
        return idx, [self.encoded[j] for j in idx]


def plan_texts(
    tokenizer: Any, texts: list[str], *, max_length: int, batch_size: int, skip_special: bool
) -> TextPlan:
    """Tokenize ``texts`` (truncated to ``max_length``) and cut them into batches."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")
    special = set(getattr(tokenizer, "all_special_ids", []) or []) if skip_special else set()
    encoded = []
    for t in texts:
        ids = tokenizer(t, truncation=True, max_length=max_length)["input_ids"]
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        encoded.append([int(x) for x in ids])
    order = sorted(range(len(texts)), key=lambda j: -len(encoded[j]))  # stable: ties by index
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    pad_id = getattr(tokenizer, "pad_token_id", None)
    return TextPlan(encoded, batches, tuple(sorted(special)), 0 if pad_id is None else int(pad_id))


class _NeuronReader:
    """Forward pre-hooks that read the selected neurons; the pass stops after the last layer."""

    def __init__(self, model: Any, sel: list[tuple[int, int]]) -> None:
        import torch

        self.model = model
        self.layers = sorted({layer for layer, _ in sel})
        self.cols = {layer: [i for l2, i in sel if l2 == layer] for layer in self.layers}
        concat = [(layer, i) for layer in self.layers for i in self.cols[layer]]
        self.to_sel = torch.tensor([concat.index(s) for s in sel])
        self.got: dict[int, Any] = {}
        self.handles: list[Any] = []

    def __enter__(self) -> _NeuronReader:
        import torch

        last = self.layers[-1]

        def make_hook(layer: int) -> Any:
            idx = torch.tensor(self.cols[layer])

            def hook(_mod: Any, args: tuple[Any, ...]) -> None:
                x = args[0]
                self.got[layer] = x[..., idx.to(x.device)].detach().to("cpu", torch.float32)
                if layer == last:
                    raise _Stop

            return hook

        try:
            for layer in self.layers:
                proj = mlp_out_proj(self.model, layer)
                self.handles.append(proj.register_forward_pre_hook(make_hook(layer)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def run(self, rows: list[list[int]], pad_id: int) -> tuple[Any, Any, Any]:
        """``(acts [B, T, n] float32, ids [B, T], lens [B])`` of right-padded ``rows``."""
        import torch

        lens = torch.tensor([len(r) for r in rows])
        T = int(lens.max())
        ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, : lens[b]] = torch.tensor(r)
            mask[b, : lens[b]] = 1
        device = next(self.model.parameters()).device
        self.got.clear()
        with torch.no_grad():
            try:
                self.model(input_ids=ids.to(device), attention_mask=mask.to(device))
            except _Stop:
                pass
        acts = torch.cat([self.got[layer] for layer in self.layers], dim=-1)[..., self.to_sel]
        return acts, ids, lens


def _valid(ids: Any, lens: Any, special: Sequence[int]) -> Any:
    import torch

    valid = torch.arange(ids.shape[1])[None, :] < lens[:, None]
    if special:
        valid &= ~torch.isin(ids, torch.tensor(list(special)))
    return valid


def _parse_hist_range(hist_range: Any) -> tuple[float, float] | None:
    if hist_range is None:
        return None
    try:
        lo, hi = (float(v) for v in hist_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"hist_range must be (low, high) or None; got {hist_range!r}. None lets each "
            "neuron's bins follow its data."
        ) from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"hist_range needs finite low < high; got {hist_range!r}.")
    return lo, hi


def histogram_edges(
    n: int, *, bins: int, hist_range: tuple[float, float] | None = None
) -> np.ndarray | None:
    """``[n, bins + 1]`` edges shared by every shard when ``hist_range`` fixes them (values
    beyond them are counted in ``hist_below`` / ``hist_above``); ``None`` otherwise: each
    histogram then follows its data on a power-of-two lattice (:func:`lattice_width`)."""
    if hist_range is None:
        return None
    lo, hi = hist_range
    return np.repeat((lo + (hi - lo) * np.linspace(0.0, 1.0, bins + 1))[None], n, axis=0)


LATTICE_MIN_EXP = -40  # narrowest bin, 2**-40: a constant neuron still gets a finite width


def lattice_width(lo: np.ndarray, hi: np.ndarray, bins: int) -> np.ndarray:
    """Per neuron, the narrowest power-of-two bin width ``w`` whose lattice cells
    ``[j w, (j + 1) w)`` from ``floor(lo / w)`` to ``floor(hi / w)`` number at most ``bins``.

    Why a lattice: a histogram of cells of width ``2^e`` becomes one of width ``2^(e+d)`` by
    adding neighbouring cells, exactly; and ``x / w`` is exact in floating point. So a
    histogram can widen as values arrive and parts over different data merge exactly, into
    what one pass over all of it gives (the width depends only on the minimum and maximum).

    >>> lattice_width(np.array([-0.3]), np.array([2.9]), 8)
    array([0.5])
    """
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    need = np.maximum(hi - lo, 0.0) / bins
    e = np.floor(np.log2(np.maximum(need, 2.0**LATTICE_MIN_EXP)))  # a lower bound
    e = np.maximum(e - 1, LATTICE_MIN_EXP)
    while True:
        w = np.exp2(e)
        wide = np.floor(hi / w) - np.floor(lo / w) + 1 > bins  # fits at w: fits at 2w too
        if not wide.any():
            return w
        e = np.where(wide, e + 1, e)


def lattice(lo: np.ndarray, hi: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(bin width, index of the first cell) per neuron of the lattice holding ``[lo, hi]``."""
    w = lattice_width(lo, hi, bins)
    return w, np.floor(np.asarray(lo, np.float64) / w).astype(np.int64)


def lattice_edges(w: np.ndarray, k0: np.ndarray, bins: int) -> np.ndarray:
    """``[n, bins + 1]`` edges of the lattice cells ``k0 .. k0 + bins - 1`` of width ``w``."""
    return (k0[:, None] + np.arange(bins + 1)) * w[:, None]


def _lattice_of(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(width, index of the first cell) per neuron if ``edges`` are lattice cells, else None."""
    w = edges[:, 1] - edges[:, 0]
    k0 = edges[:, 0] / np.where(w > 0, w, 1.0)
    if not (
        (w > 0).all()
        and (np.frexp(w)[0] == 0.5).all()
        and (k0 == np.round(k0)).all()
        and np.array_equal(edges, lattice_edges(w, k0, edges.shape[1] - 1))
    ):
        return None
    return w, k0.astype(np.int64)


def rebin_lattice(
    counts: np.ndarray, w: np.ndarray, k0: np.ndarray, w_new: np.ndarray, k0_new: np.ndarray
) -> np.ndarray:
    """Counts over cells ``k0 + j`` of width ``w`` moved onto the wider (or equal) lattice
    ``w_new`` (a power-of-two multiple) from cell ``k0_new``: each cell adds into the wider
    cell that contains it."""
    n, bins = counts.shape
    ratio = np.round(w_new / w).astype(np.int64)
    cell = (k0[:, None] + np.arange(bins)) // ratio[:, None] - k0_new[:, None]  # floor division
    keep = counts > 0
    if keep.any() and ((cell[keep] < 0) | (cell[keep] >= bins)).any():
        raise AssertionError("a lattice cell fell outside the wider histogram")  # a bug
    out = np.zeros_like(counts)
    rows = np.repeat(np.arange(n), bins).reshape(n, bins)
    np.add.at(out, (rows[keep], cell[keep]), counts[keep])
    return out


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


def scan_texts(
    model: Any,
    sel: list[tuple[int, int]],
    batches: Sequence[tuple[list[int], list[list[int]]]],
    *,
    edges: np.ndarray | None,
    bins: int,
    k: int,
    context: tuple[int, int],
    special: Sequence[int],
    pad_id: int,
    bar: Any = None,
) -> TopActivations:
    """A partial :class:`TopActivations` of some batches (texts indexed globally).

    ``batches`` are ``(text indices, token ids)`` pairs from :meth:`TextPlan.batch_inputs`. The
    partial has no texts, vocabulary or logit effects yet; :meth:`TopActivations.merge` combines
    partials and :func:`finish_top_activations` completes the merged one. ``edges`` fixes the
    histogram's bins (:func:`histogram_edges`); with ``None`` they follow the data on a
    power-of-two lattice of ``bins`` cells (:func:`lattice_width`).
    """
    import torch

    from ._compare import RunningStats

    n = len(sel)
    fixed = edges is not None
    before, after = int(context[0]), int(context[1])
    width = before + 1 + after
    top_v = np.full((n, k), -np.inf, dtype=np.float32)
    top_t = np.full((n, k), -1, dtype=np.int64)
    top_p = np.zeros((n, k), dtype=np.int64)
    top_s = np.zeros((n, k), dtype=np.int64)
    top_ids = np.full((n, k, width), -1, dtype=np.int64)
    top_acts = np.zeros((n, k, width), dtype=np.float32)
    counts = torch.zeros((n, bins), dtype=torch.long)
    below = torch.zeros(n, dtype=torch.long)
    above = torch.zeros(n, dtype=torch.long)
    moments = RunningStats.empty((n,))
    positive = torch.zeros(n, dtype=torch.long)
    vmin = torch.full((n,), torch.inf, dtype=torch.float64)
    vmax = torch.full((n,), -torch.inf, dtype=torch.float64)
    if fixed:
        edges_t = torch.from_numpy(np.array(edges, dtype=np.float64))  # a writable copy
        lo_e, w_e = edges_t[:, 0], (edges_t[:, -1] - edges_t[:, 0]) / bins
    else:  # lattice: width w and first cell k0 per neuron, set by the first values
        w_l = np.ones(n)
        k0_l = np.zeros(n, dtype=np.int64)
    offs = torch.arange(-before, after + 1)
    with _NeuronReader(model, sel) as reader:
        for batch, rows in batches:
            acts, ids, lens = reader.run(rows, pad_id)  # [B, T, n]
            T = ids.shape[1]
            valid = _valid(ids, lens, special)
            flat = acts[valid].double()  # [N, n]
            if flat.shape[0]:
                if fixed:
                    low, high = flat < lo_e, flat > edges_t[:, -1]
                    below += low.sum(0)
                    above += high.sum(0)
                    b_idx = ((flat - lo_e) / w_e).floor().clamp(0, bins - 1).long()  # [N, n]
                    outside = low | high
                else:  # widen the lattice to the values seen so far, then count exactly
                    lo_all = torch.minimum(vmin, flat.min(0).values).numpy()
                    hi_all = torch.maximum(vmax, flat.max(0).values).numpy()
                    w_new, k0_new = lattice(lo_all, hi_all, bins)
                    moved = not (np.array_equal(w_new, w_l) and np.array_equal(k0_new, k0_l))
                    if moved and moments.count:  # the first values only place the lattice
                        counts = torch.from_numpy(
                            rebin_lattice(counts.numpy(), w_l, k0_l, w_new, k0_new)
                        )
                    w_l, k0_l = w_new, k0_new
                    cell = (flat / torch.from_numpy(w_l)).floor().long()  # exact: w = 2^e
                    b_idx = cell - torch.from_numpy(k0_l)
                    outside = torch.zeros_like(b_idx, dtype=torch.bool)
                flat_bin = (b_idx + torch.arange(n) * bins).masked_fill(outside, n * bins)
                counts += torch.bincount(flat_bin.reshape(-1), minlength=n * bins + 1)[:-1].view(
                    n, bins
                )
                moments = moments.merge(RunningStats.of(flat.numpy()))
                positive += (flat > 0).sum(0)
                vmin = torch.minimum(vmin, flat.min(0).values)
                vmax = torch.maximum(vmax, flat.max(0).values)
            masked = acts.masked_fill(~valid[..., None], -torch.inf)
            bv, bp = masked.max(dim=1)  # [B, n]: each text's maximum (first position on ties)
            # context windows around each text's maximum, for every (text, neuron)
            wpos = bp[:, :, None] + offs  # [B, n, W]
            inside = (wpos >= 0) & (wpos < lens[:, None, None])
            wc = wpos.clamp(0, T - 1)
            wacts = torch.gather(acts.transpose(1, 2), 2, wc).masked_fill(~inside, 0.0)
            wids = torch.gather(ids[:, None, :].expand(-1, n, -1), 2, wc).masked_fill(~inside, -1)
            bt = torch.tensor(batch)[:, None].expand(-1, n).masked_fill(~torch.isfinite(bv), -1)
            top_v, top_t, top_p, top_s, top_ids, top_acts = _select_top(
                k,
                np.concatenate([top_v, bv.T.numpy()], 1),
                np.concatenate([top_t, bt.T.numpy()], 1),
                np.concatenate([top_p, bp.T.numpy()], 1),
                np.concatenate([top_s, (bp - before).T.numpy()], 1),
                np.concatenate([top_ids, wids.transpose(0, 1).numpy()], 1),
                np.concatenate([top_acts, wacts.transpose(0, 1).numpy()], 1),
            )
            if bar is not None:
                bar.update(len(batch))
    c = np.maximum(moments.count, 1)
    none = np.zeros((n, 0), dtype=np.int64)
    return TopActivations(
        neurons=list(sel),
        texts=[],
        values=np.where(top_t >= 0, top_v, np.nan).astype(np.float32),
        text_index=top_t,
        position=top_p,
        window_ids=top_ids,
        window_acts=top_acts,
        window_start=top_s,
        hist_edges=(
            np.asarray(edges, dtype=np.float64) if fixed else lattice_edges(w_l, k0_l, bins)
        ),
        hist_counts=counts.numpy(),
        count=np.full(n, moments.count, dtype=np.int64),
        mean=moments.mean.copy(),
        std=np.sqrt(np.maximum(moments.m2 / c, 0.0)),
        minimum=vmin.numpy(),
        maximum=vmax.numpy(),
        frac_positive=positive.numpy() / c,
        promoted_ids=none,
        promoted=none.astype(np.float32),
        suppressed_ids=none,
        suppressed=none.astype(np.float32),
        m2=moments.m2.copy(),
        positive=positive.numpy(),
        hist_below=below.numpy(),
        hist_above=above.numpy(),
    )


def finish_top_activations(
    part: TopActivations,
    texts: list[str],
    tokenizer: Any,
    effects: dict[str, np.ndarray],
    model_name: str,
) -> TopActivations:
    """The merged partial with its texts, logit effects and the vocabulary of every id shown."""
    used = set(part.window_ids[part.window_ids >= 0].tolist())
    used |= set(effects["promoted_ids"].ravel().tolist())
    used |= set(effects["suppressed_ids"].ravel().tolist())
    values = part.values.astype(np.float32)
    values[~np.isfinite(values)] = np.nan
    return dataclasses.replace(
        part,
        texts=list(texts),
        values=values,
        vocab={int(i): tokenizer.decode([int(i)]) for i in sorted(used)},
        model_name=str(model_name),
        **effects,
    )


def model_name(model: Any) -> str:
    """The name a result records for ``model``."""
    return getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__


def top_activations(
    model: Any,
    tokenizer: Any,
    texts: Iterable[str],
    neurons: Any = None,
    *,
    layers: Any = None,
    k: int = 20,
    context: tuple[int, int] = (24, 8),
    batch_size: int = 16,
    max_length: int = 128,
    bins: int = 50,
    hist_range: tuple[float, float] | None = None,
    n_logits: int = 12,
    through_norm: bool = True,
    skip_special: bool = True,
    progress: bool = True,
    engine: str = "serial",
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    shards: int | None = None,
    checkpoint: Any = None,
    ray_address: str | None = None,
) -> TopActivations:
    """Run ``model`` over ``texts`` and keep, per neuron, its top-``k`` texts and a histogram.

    Texts are tokenized one by one (truncated to ``max_length``), sorted by length and run in
    padded batches; only the running top-``k`` (with a context window), fixed-bin histogram
    counts and running moments are kept, so memory does not grow with the number of texts.
    The forward pass stops after the deepest requested layer. Every statistic is mergeable
    (:meth:`TopActivations.merge`), so the same plan runs sharded on several workers and gives
    the same examples, values and histograms as one pass.

    Parameters
    ----------
    model, tokenizer : a Hugging Face causal LM and its tokenizer; or a
        :class:`circuitboard.ModelSpec` and ``None``, so that workers load their own.
    texts : list of str (e.g. :func:`circuitboard.load_texts`).
    neurons : list of ``(layer, index)`` pairs; or ``layers=[...]`` for every neuron of them.
    k : examples kept per neuron (one per text: the text's maximum; equal maxima rank by text
        index).
    context : tokens kept before and after each example's maximum.
    bins : histogram bins.
    hist_range : ``(low, high)`` edges for every neuron (values beyond them are counted in
        ``hist_below`` / ``hist_above``); default ``None``: each neuron's bins follow its data,
        from its minimum to its maximum in at most ``bins`` bins of a power-of-two width, so
        shards merge exactly into what one pass gives.
    n_logits : promoted / suppressed tokens kept per neuron (direct logit effect).
    through_norm : multiply by the final norm's weight before the unembedding.
    skip_special : ignore special tokens (BOS, pad, ...) as examples and in the histogram.
    engine, workers, gpus_per_worker, shards, checkpoint, ray_address
        Where the batches run: ``"serial"`` (this process), ``"processes"`` (a local process
        pool) or ``"ray"``; see :func:`circuitboard.compare` for the shared options.

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> top = top_activations(model, tok, ["a b c", "the lazy dog"], [(0, 3), (1, 5)], k=2,
    ...                       progress=False)
    >>> top.values.shape, bool(top.examples(1, 5)[0]["value"] == top.values[1, 0])
    ((2, 2), True)
    """
    texts = _texts(texts)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int; got {k!r}.")
    if not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be an int of at least 2; got {bins!r}.")
    rng = _parse_hist_range(hist_range)
    options = dict(
        neurons=neurons,
        layers=layers,
        k=k,
        context=(int(context[0]), int(context[1])),
        batch_size=batch_size,
        max_length=max_length,
        bins=bins,
        hist_range=rng,
        n_logits=n_logits,
        through_norm=through_norm,
        skip_special=skip_special,
    )
    if engine != "serial" or shards is not None or checkpoint is not None or tokenizer is None:
        from ..scale._jobs import top_activations_sharded

        return top_activations_sharded(
            model,
            tokenizer,
            texts,
            options,
            engine=engine,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            shards=shards,
            checkpoint=checkpoint,
            ray_address=ray_address,
            progress=progress,
        )
    plan = plan_texts(
        tokenizer, texts, max_length=max_length, batch_size=batch_size, skip_special=skip_special
    )
    sel, edges, effects, name = neuron_setup(model, options)
    bar = _progress(len(texts), progress)
    try:
        part = scan_texts(
            model,
            sel,
            [plan.batch_inputs(b) for b in range(len(plan.batches))],
            edges=edges,
            bins=options["bins"],
            k=k,
            context=options["context"],
            special=plan.special,
            pad_id=plan.pad_id,
            bar=bar,
        )
    finally:
        if bar is not None:
            bar.close()
    return finish_top_activations(part, texts, tokenizer, effects, name)


def neuron_setup(
    model: Any, options: dict[str, Any]
) -> tuple[list[tuple[int, int]], np.ndarray | None, dict[str, np.ndarray], str]:
    """What every shard shares, computed once: neurons, histogram edges, logit effects, name."""
    sel = _neuron_list(model, options["neurons"], options["layers"])
    edges = histogram_edges(len(sel), bins=options["bins"], hist_range=options["hist_range"])
    effects = logit_effects(model, sel, k=options["n_logits"], through_norm=options["through_norm"])
    return sel, edges, effects, model_name(model)


def _final_norm(model: Any) -> tuple[Any, str] | None:
    found = _first(model, _FINAL_NORM)
    if found is None:
        return None
    mod = found[1]
    name = type(mod).__name__.lower()
    kind = "layernorm" if "layernorm" in name and "rms" not in name else "rmsnorm"
    if "gemma" in name:
        kind = "gemma_rmsnorm"
    return mod, kind


def neuron_directions(
    model: Any, neurons: Sequence[tuple[int, int]], *, through_norm: bool = True
) -> Any:
    """``[n, d_model]`` float64 output directions ``W_out[neuron]``, as the unembedding sees them.

    With ``through_norm`` they are multiplied by the final norm's weight (``1 + w`` for Gemma)
    and, for LayerNorm, centred (the norm removes the mean). The norm's input-dependent scale
    is not applied: these are direct effects per unit of activation up to that scale.
    """
    import torch

    rows = []
    for layer, i in neurons:
        rows.append(_w_out(mlp_out_proj(model, layer))[int(i)].to("cpu", torch.float64))
    d = torch.stack(rows)
    if through_norm:
        found = _final_norm(model)
        if found is not None:
            mod, kind = found
            if kind == "layernorm":
                d = d - d.mean(-1, keepdim=True)
            w = getattr(mod, "weight", None)
            if w is not None:
                w = w.detach().to("cpu", torch.float64)
                d = d * (1.0 + w if kind == "gemma_rmsnorm" else w)
    return d


def _unembed(model: Any) -> Any:
    import torch

    get = getattr(model, "get_output_embeddings", None)
    mod = get() if callable(get) else None
    if mod is None:
        found = _first(model, _UNEMBED)
        if found is None:
            raise TypeError(
                f"cannot find the unembedding of {type(model).__name__}; looked for "
                f"get_output_embeddings(), {', '.join(_UNEMBED)}."
            )
        mod = found[1]
    return mod.weight.detach().to("cpu", torch.float32)  # [vocab, d_model]


def logit_effects(
    model: Any,
    neurons: Sequence[tuple[int, int]],
    *,
    k: int = 12,
    through_norm: bool = True,
) -> dict[str, np.ndarray]:
    """Tokens each neuron directly promotes and suppresses: ``W_out[neuron] @ W_U``.

    Returns ``promoted_ids`` / ``promoted`` (largest first) and ``suppressed_ids`` /
    ``suppressed`` (most negative first), each ``[n, k]``; ``through_norm`` as in
    :func:`neuron_directions`.

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> model, _ = tiny_model("llama")
    >>> eff = logit_effects(model, [(0, 1)], k=3)
    >>> eff["promoted"].shape, bool(eff["promoted"][0, 0] >= eff["promoted"][0, 1])
    ((1, 3), True)
    """
    import torch

    neurons = [(int(a), int(b)) for a, b in neurons]
    W_U = _unembed(model)
    k = min(int(k), W_U.shape[0])
    out = {key: [] for key in ("promoted_ids", "promoted", "suppressed_ids", "suppressed")}
    for s in range(0, len(neurons), 256):
        dirs = neuron_directions(model, neurons[s : s + 256], through_norm=through_norm)
        eff = dirs.float() @ W_U.T  # float32: ranking only; float64 costs 2x on CPU
        pv, pi = eff.topk(k, dim=1)
        sv, si = (-eff).topk(k, dim=1)
        out["promoted_ids"].append(pi)
        out["promoted"].append(pv)
        out["suppressed_ids"].append(si)
        out["suppressed"].append(-sv)
    return {
        key: torch.cat(v).numpy().astype(np.int64 if key.endswith("ids") else np.float32)
        for key, v in out.items()
    }


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
