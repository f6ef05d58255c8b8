"""NeuronsView: tokens coloured by one MLP neuron, and the neurons that fire most per token."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import traitlets

from ._codec import encode, to_numpy
from ._validate import index_in, token_list
from ._view import View, pack

REPLY_OVERHEAD = 160  # bytes a report spends per embedded reply besides its tensor data


def _layer_ranges(layers: list[int]) -> str:
    """``[0, 1, 2, 5]`` → ``"L0–L2, L5"``.

    >>> _layer_ranges([0, 1, 2, 5])
    'L0–L2, L5'
    """
    out: list[str] = []
    for lay in sorted(layers):
        if out and out[-1][1] == lay - 1:
            out[-1] = (out[-1][0], lay)
        else:
            out.append((lay, lay))  # type: ignore[arg-type]
    return ", ".join(f"L{a}" if a == b else f"L{a}–L{b}" for a, b in out)  # type: ignore[misc]


def quantize_columns(acts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[pos, d_mlp]`` activations as 8-bit codes per neuron: ``(codes [d_mlp, pos], lo, scale)``.

    ``value = lo[n] + code * scale[n]``, symmetric about zero: the step is the neuron's
    largest ``|activation|`` on this prompt over 127, so zero is exact and the error is at most
    1/254 of that largest value. Code 255 marks NaN / ±inf. (Zero-centred codes compress
    better than codes spanning each neuron's range: most activations sit near zero.)

    >>> codes, lo, scale = quantize_columns(np.array([[0.0, 1.0], [2.0, -1.0]], np.float32))
    >>> codes.shape, np.allclose(lo[:, None] + codes * scale[:, None], [[0, 2], [1, -1]], atol=0.01)
    ((2, 2), True)
    """
    a = np.asarray(acts, np.float32).T  # neuron-major: one neuron's positions are contiguous
    finite = np.isfinite(a)
    peak = np.where(finite, np.abs(a), 0.0).max(1)
    step = np.where(peak > 0, peak / 127, 1.0).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN / ±inf get code 255 below
        q = np.rint(np.where(finite, a, 0.0) / step[:, None])
    codes = np.where(finite, np.clip(q, -127, 127) + 127, 255).astype(np.uint8)
    return codes, (-127 * step).astype(np.float32), step


def _acts(x: Any, i: int) -> np.ndarray:
    try:
        arr = to_numpy(x)
    except TypeError as err:
        raise TypeError(f"activations[{i}] must be a numeric array or tensor; {err}") from None
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(
            f"activations[{i}] has {arr.ndim} dims (shape {tuple(arr.shape)}), expected "
            "[layers, pos, d_mlp] or [pos, d_mlp] (one layer). Stack the layers' "
            "blocks.{l}.mlp.hook_post along a new first dim."
        )
    if 0 in arr.shape:
        raise ValueError(f"activations[{i}] is empty (shape {tuple(arr.shape)}).")
    return arr


class NeuronsView(View):
    """Tokens coloured by the selected neuron's activation; per token, the top neurons.

    Several prompts are paged (``link.prompt``). Activations stay in the kernel: the browser
    asks for one neuron's column (``fetch-neuron``) or one token's top neurons
    (``fetch-top-neurons``) when it needs them.

    Parameters
    ----------
    activations : array ``[layers, pos, d_mlp]`` (or ``[pos, d_mlp]``), or a list of them,
        one per prompt (positions may differ; layers and ``d_mlp`` may not).
    tokens : list of str, or a list of such lists (one per prompt).
    layers : list of int, optional
        Model layer index of each entry of the first dim (default ``0..layers-1``).
    layer, neuron : int, optional
        Shown first (model layer index); default: the middle layer and its neuron with the
        largest activation on the first prompt.
    labels : list of str, optional
        A name per prompt.
    n_top : int
        Neurons listed per token.

    Examples
    --------
    >>> import numpy as np
    >>> acts = np.random.default_rng(0).normal(size=(2, 4, 16)).astype("float32")
    >>> view = NeuronsView(acts, ["a", "b", "c", "d"], layer=1, neuron=3)
    >>> view.column(1, 3).shape, view.top_neurons(1, token=2)[0][:3].shape
    ((4,), (3,))
    """

    _view = traitlets.Unicode("neurons").tag(sync=True)
    prompts = traitlets.List(traitlets.List(traitlets.Unicode())).tag(sync=True)
    """Token strings of each prompt."""
    labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    images = traitlets.List().tag(sync=True)
    """Per prompt, an image capture's patch grid (:func:`image_state`), or None for text."""
    """A short name per prompt."""
    layer_indices = traitlets.List(traitlets.Int()).tag(sync=True)
    """Model layer index of each captured layer."""
    d_mlp = traitlets.Int().tag(sync=True)
    """Neurons per layer."""
    n_top = traitlets.Int(10).tag(sync=True)
    """Neurons listed per token."""
    _initial = traitlets.Dict().tag(sync=True)  # first paint: {prompt, layer, neuron, values, vmax}

    _fetchers: ClassVar[dict[str, str]] = {
        "fetch-neuron": "_fetch_neuron",
        "fetch-top-neurons": "_fetch_top_neurons",
        "fetch-neuron-layer": "_fetch_neuron_layer",
        "fetch-strongest": "_fetch_strongest",
    }

    def __init__(
        self,
        activations: Any,
        tokens: Any,
        *,
        layers: Sequence[int] | None = None,
        layer: int | None = None,
        neuron: int | None = None,
        labels: Sequence[str] | None = None,
        n_top: int = 10,
        **kwargs: Any,
    ) -> None:
        many = isinstance(activations, (list, tuple))
        acts = [_acts(a, i) for i, a in enumerate(activations)] if many else [_acts(activations, 0)]
        if not acts:
            raise ValueError("activations is an empty list; pass at least one prompt's array.")
        if many:
            if (
                isinstance(tokens, str)
                or not isinstance(tokens, Sequence)
                or len(tokens) != len(acts)
            ):
                got = (
                    len(tokens)
                    if isinstance(tokens, Sequence) and not isinstance(tokens, str)
                    else type(tokens).__name__
                )
                raise ValueError(
                    f"with {len(acts)} prompts, tokens must be a list of {len(acts)} token lists; "
                    f"got {got}."
                )
            toks = [
                token_list(t, a.shape[1], f"activations[{i}]")
                for i, (t, a) in enumerate(zip(tokens, acts, strict=True))
            ]
        else:
            toks = [token_list(tokens, acts[0].shape[1], "activations")]
        n_layers, _, d_mlp = acts[0].shape
        for i, a in enumerate(acts[1:], 1):
            if a.shape[0] != n_layers or a.shape[2] != d_mlp:
                raise ValueError(
                    f"activations[{i}] has shape {tuple(a.shape)} but activations[0] has "
                    f"{tuple(acts[0].shape)}; every prompt needs the same layers and d_mlp."
                )
        layers = list(range(n_layers)) if layers is None else [int(x) for x in layers]
        if len(layers) != n_layers:
            raise ValueError(f"layers has {len(layers)} entries for {n_layers} captured layers.")
        if labels is None:
            labels = [f"prompt {i + 1}" for i in range(len(acts))]
        elif len(labels) != len(acts):
            raise ValueError(f"labels has {len(labels)} entries for {len(acts)} prompts.")
        if not isinstance(n_top, int) or n_top < 1:
            raise ValueError(f"n_top must be a positive int; got {n_top!r}.")
        self._acts = acts
        self._layers = layers
        li = len(layers) // 2 if layer is None else self._position(layer)
        model_layer = layers[li]
        ni = (
            self.default_neuron(model_layer)
            if neuron is None
            else index_in("neuron", neuron, d_mlp)
        )
        col, vmax = self.column(model_layer, ni, 0), self.vmax(model_layer, ni)
        super().__init__(
            prompts=toks,
            labels=[str(x) for x in labels],
            layer_indices=layers,
            d_mlp=int(d_mlp),
            n_top=min(n_top, int(d_mlp)),
            _initial={
                "prompt": 0,
                "layer": model_layer,
                "neuron": ni,
                "values": encode(col, "float32"),
                "vmax": vmax,
            },
            **kwargs,
        )
        if self.link.layer is None or self.link.layer not in layers or self.link.neuron is None:
            self.link.select(layer=model_layer, neuron=ni)

    # -- data access -----------------------------------------------------------------------
    @property
    def n_prompts(self) -> int:
        return len(self._acts)

    def _position(self, model_layer: int) -> int:
        try:
            return self._layers.index(int(model_layer))
        except (ValueError, TypeError):
            raise IndexError(
                f"layer {model_layer} was not captured; captured layers: {self._layers}."
            ) from None

    def _prompt(self, prompt: int) -> np.ndarray:
        return self._acts[index_in("prompt", prompt, len(self._acts))]

    def column(self, layer: int, neuron: int, prompt: int = 0) -> np.ndarray:
        """``[pos]`` activations of one neuron on one prompt (``layer``: model layer index)."""
        a = self._prompt(prompt)
        return a[self._position(layer), :, index_in("neuron", neuron, a.shape[2])]

    def vmax(self, layer: int, neuron: int) -> float:
        """The colour scale's half-width: the neuron's largest ``|activation|`` over all prompts."""
        li = self._position(layer)
        ni = index_in("neuron", neuron, self._acts[0].shape[2])
        cols = [np.abs(a[li, :, ni]) for a in self._acts]
        m = max((float(c[np.isfinite(c)].max()) for c in cols if np.isfinite(c).any()), default=0.0)
        return m if m > 0 else 1.0  # NaN / inf are drawn in their own colour, not scaled

    def top_neurons(
        self, layer: int, token: int, prompt: int = 0, n: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` neurons with the largest activation at ``token``: ``(indices, values)``."""
        a = self._prompt(prompt)
        row = a[self._position(layer), index_in("token", token, a.shape[1])]
        n = min(self.n_top if n is None else int(n), row.shape[0])
        idx = np.argpartition(-row, n - 1)[:n]
        idx = idx[np.argsort(-row[idx], kind="stable")]
        return idx, row[idx]

    def default_neuron(self, layer: int, prompt: int = 0) -> int:
        """The neuron with the largest activation on the prompt (ignoring position 0 if longer)."""
        a = self._prompt(prompt)[self._position(layer)]
        if a.shape[0] > 1:
            a = a[1:]
        return int(np.argmax(np.where(np.isnan(a), -np.inf, a).max(0)))  # all-NaN: neuron 0

    # -- fetch handlers ----------------------------------------------------------------------
    def _fetch_neuron(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        layer, neuron, prompt = msg["layer"], msg["neuron"], msg.get("prompt", 0)
        col = self.column(layer, neuron, prompt)
        return pack(values=encode(col, "float32"), vmax=self.vmax(layer, neuron))

    def _fetch_top_neurons(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        idx, vals = self.top_neurons(msg["layer"], msg["token"], msg.get("prompt", 0))
        return pack(neurons=[int(i) for i in idx], values=[round(float(v), 5) for v in vals])

    def _fetch_neuron_layer(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        layer, prompt = msg["layer"], msg.get("prompt", 0)
        codes, lo, scale = self._block(layer, prompt)
        li = self._position(layer)
        vmax = np.max(
            [np.abs(np.nan_to_num(a[li], posinf=0, neginf=0)).max(0) for a in self._acts], 0
        )
        raw = {"dtype": "uint8", "shape": list(codes.shape), "lo": 0.0, "scale": 1.0}
        return pack(
            layer=int(layer),
            prompt=int(prompt),
            codes={**raw, "data": codes.tobytes()},
            lo=encode(lo, "float32"),
            scale=encode(scale, "float32"),
            vmax=encode(np.where(vmax > 0, vmax, 1.0), "float32"),
        )

    def _fetch_strongest(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        layer, prompt = msg["layer"], msg.get("prompt", 0)
        return pack(layer=int(layer), neuron=self.default_neuron(layer, prompt))

    def _block(self, layer: int, prompt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cache = getattr(self, "_block_cache", None)
        key = (int(layer), int(prompt))
        if cache is not None and key in cache:
            return cache[key]
        out = quantize_columns(self._prompt(prompt)[self._position(layer)])
        if cache is not None:
            cache[key] = out
        return out

    # -- static report -----------------------------------------------------------------------
    def export_wanted(self, pointers: list[dict[str, int]]) -> None:
        """Selections other views of the same report point to (their neurons stay openable)."""
        self._pointers = [dict(p) for p in pointers]

    def _export_plan(self, budget_bytes: int) -> dict[str, Any]:
        """What a report embeds, most wanted first, within ``budget_bytes`` (raw bytes, as the
        report writer passes them; blocks are costed at their measured compressed size)."""
        self._block_cache = getattr(self, "_block_cache", None) or {}
        budget = budget_bytes / 2  # the writer assumes ~2x compression of raw bytes
        sel = self.link.selection
        cur_layer = sel["layer"] if sel["layer"] in self._layers else self._initial["layer"]
        cur_neuron = sel["neuron"] if sel["neuron"] is not None else self._initial["neuron"]
        if sel["neuron"] is None:
            cur_layer = self._initial["layer"]
        pointed = {(int(cur_layer), int(cur_neuron))}
        for p in getattr(self, "_pointers", []):
            if p.get("neuron") is not None and p.get("layer") in self._layers:
                if 0 <= p["neuron"] < self.d_mlp:
                    pointed.add((int(p["layer"]), int(p["neuron"])))
        prompts = range(self.n_prompts)
        reqs: list[dict[str, Any]] = []
        used = 0.0
        # Always: each (layer, prompt)'s strongest neuron (the layer menu) and the exact
        # columns of every neuron another view points to.
        for layer in self._layers:
            for p in prompts:
                reqs.append({"kind": "fetch-strongest", "prompt": p, "layer": layer})
                used += REPLY_OVERHEAD
        for layer, n in sorted(pointed):
            for p in prompts:
                reqs.append({"kind": "fetch-neuron", "prompt": p, "layer": layer, "neuron": n})
                used += REPLY_OVERHEAD + 4 * self._acts[p].shape[1] * 0.8
        # Whole layers as 8-bit codes: layers other views point to first, then the rest.
        hot = [x for x in self._layers if any(x == lay for lay, _ in pointed)]
        order = [int(cur_layer)] + [x for x in hot if x != cur_layer]
        order += [x for x in self._layers if x not in order]
        ratio = None
        blocks: list[tuple[int, int]] = []
        missing: list[tuple[int, int]] = []
        for layer in order:
            for p in prompts:
                codes = self._block(layer, p)[0]
                if ratio is None:  # measured once, on the first block
                    ratio = len(zlib.compress(codes.tobytes(), 6)) / max(codes.size, 1)
                cost = codes.size * ratio * 4 / 3 + 3 * 4 * self.d_mlp * 4 / 3 + REPLY_OVERHEAD
                if used + cost <= budget:
                    used += cost
                    blocks.append((layer, p))
                    reqs.append({"kind": "fetch-neuron-layer", "prompt": p, "layer": layer})
                else:
                    missing.append((layer, p))
        # Layers without their block: each token's top neurons, with their columns.
        partial: list[tuple[int, int]] = []
        for layer, p in missing:
            n_pos = self._acts[p].shape[1]
            wanted = set()
            lists = []
            for t in range(n_pos):
                lists.append({"kind": "fetch-top-neurons", "prompt": p, "layer": layer, "token": t})
                wanted.update(int(i) for i in self.top_neurons(layer, t, p)[0])
            wanted -= {n for lay, n in pointed if lay == layer}
            cost = n_pos * (REPLY_OVERHEAD + 20 * self.n_top) + len(wanted) * (
                REPLY_OVERHEAD + 4 * n_pos
            )
            if used + cost > budget:
                continue
            used += cost
            partial.append((layer, p))
            reqs.extend(lists)
            reqs.extend(
                {"kind": "fetch-neuron", "prompt": p, "layer": layer, "neuron": i}
                for i in sorted(wanted)
            )
        return {
            "requests": reqs,
            "blocks": blocks,
            "missing": missing,
            "partial": partial,
            "pointed": sorted(pointed),
        }

    def export_requests(self, budget_bytes: int) -> list[dict[str, Any]]:
        return self._export_plan(budget_bytes)["requests"]

    def export_notes(self, budget_bytes: int) -> list[str]:
        plan = self._export_plan(budget_bytes)
        self._block_cache = None
        n_pairs = len(self._layers) * self.n_prompts
        notes = []
        if plan["blocks"]:
            notes.append(
                f"Neurons: every neuron of {len(plan['blocks'])} of {n_pairs} (layer, prompt) "
                "pairs can be opened; their activations are stored as 8-bit codes per neuron "
                "(error at most 1/254 of that neuron's largest |activation| on the prompt); the "
                f"{len(plan['pointed'])} neurons the views point to are stored exactly."
            )
        if plan["missing"]:

            def names(pairs: list[tuple[int, int]]) -> str:
                by_prompt: dict[int, list[int]] = {}
                for lay, p in sorted(pairs, key=lambda x: (x[1], x[0])):
                    by_prompt.setdefault(p, []).append(lay)
                return "; ".join(
                    _layer_ranges(lays) + (f" of prompt {p + 1}" if self.n_prompts > 1 else "")
                    for p, lays in by_prompt.items()
                )

            partial = [x for x in plan["missing"] if x in plan["partial"]]
            none = [x for x in plan["missing"] if x not in plan["partial"]]
            if partial:
                notes.append(
                    f"Neurons: {names(partial)} did not fit the size budget as whole layers: only "
                    f"each token's top {self.n_top} neurons and the neurons other views point "
                    "to can be opened there."
                )
            if none:
                notes.append(
                    f"Neurons: {names(none)} did not fit the size budget at all: only the "
                    "neurons other views point to can be opened there."
                )
        return notes
