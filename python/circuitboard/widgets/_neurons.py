"""NeuronsView: tokens coloured by one MLP neuron, and the neurons that fire most per token."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import traitlets

from ._codec import encode, to_numpy
from ._validate import index_in, token_list
from ._view import View, pack

REPLY_OVERHEAD = 160  # bytes a report spends per embedded reply besides its tensor data


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

    # -- static report -----------------------------------------------------------------------
    def _export_plan(self, budget_bytes: int) -> tuple[list[dict[str, Any]], int, int]:
        sel = self.link.selection
        cur_layer = sel["layer"] if sel["layer"] in self._layers else self._initial["layer"]
        cur_neuron = sel["neuron"] if sel["neuron"] is not None else self._initial["neuron"]
        cur_prompt = sel["prompt"] if 0 <= (sel["prompt"] or 0) < self.n_prompts else 0
        li = self._layers.index(cur_layer)
        layer_order = [self._layers[li]] + [x for i, x in enumerate(self._layers) if i != li]
        prompt_order = [cur_prompt] + [p for p in range(self.n_prompts) if p != cur_prompt]
        reqs: list[dict[str, Any]] = []
        used = 0
        done = total = 0
        for layer in layer_order:
            for p in prompt_order:
                total += 1
                n_pos = self._acts[p].shape[1]
                wanted = {int(cur_neuron)} if layer == cur_layer else set()
                lists = []
                for t in range(n_pos):
                    lists.append(
                        {"kind": "fetch-top-neurons", "prompt": p, "layer": layer, "token": t}
                    )
                    wanted.update(int(i) for i in self.top_neurons(layer, t, p)[0])
                cost = n_pos * (REPLY_OVERHEAD + 20 * self.n_top) + len(wanted) * (
                    REPLY_OVERHEAD + 4 * n_pos
                )
                if reqs and used + cost > budget_bytes:
                    continue
                used += cost
                done += 1
                reqs.extend(lists)
                reqs.extend(
                    {"kind": "fetch-neuron", "prompt": p, "layer": layer, "neuron": i}
                    for i in sorted(wanted)
                )
        return reqs, done, total

    def export_requests(self, budget_bytes: int) -> list[dict[str, Any]]:
        return self._export_plan(budget_bytes)[0]

    def export_notes(self, budget_bytes: int) -> list[str]:
        _, done, total = self._export_plan(budget_bytes)
        note = (
            f"Neurons: each token's top {self.n_top} neurons and their activations are included; "
            "other neurons of a layer cannot be opened in this page."
        )
        if done < total:
            note += f" Only {done} of {total} (layer, prompt) pairs fit the size budget."
        return [note]
