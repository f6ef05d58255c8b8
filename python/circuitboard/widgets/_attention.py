"""AttentionView: every head's pattern, a zoomed head on canvas, the prompt as tokens."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import traitlets

from ._codec import encode
from ._validate import attention_array, index_in, token_list
from ._view import View, pack


class AttentionView(View):
    """Attention patterns of one prompt: pick a head, hover a token to see where it looks.

    Parameters
    ----------
    attention : array or tensor, ``[layers, heads, query, key]`` or ``[heads, query, key]``
        Attention probabilities (rows sum to 1).
    tokens : list of str
        One string per position.
    layers : list of int, optional
        The model layer index of each entry of the first dim (default ``0..layers-1``).
    layer, head : int
        The head shown first.

    Examples
    --------
    >>> import numpy as np
    >>> att = np.tril(np.ones((2, 4, 5, 5))); att /= att.sum(-1, keepdims=True)
    >>> view = AttentionView(attention=att, tokens=["a", "b", "c", "d", "e"])
    >>> view.n_layers, view.n_heads
    (2, 4)
    """

    _view = traitlets.Unicode("attention").tag(sync=True)
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """Token strings, one per position."""
    layer_indices = traitlets.List(traitlets.Int()).tag(sync=True)
    """Model layer index of each captured layer."""
    n_heads = traitlets.Int().tag(sync=True)
    """Heads per layer."""
    _initial = traitlets.Dict().tag(sync=True)  # {layer, head, pattern: Encoded} first paint

    _fetchers: ClassVar[dict[str, str]] = {"fetch-head": "_fetch_head"}

    def __init__(
        self,
        attention: Any,
        tokens: Any,
        *,
        layers: list[int] | None = None,
        layer: int = 0,
        head: int = 0,
        **kwargs: Any,
    ) -> None:
        arr = attention_array(attention)
        n_layers, n_heads, n_q, n_k = arr.shape
        if n_q != n_k:
            raise ValueError(
                f"attention must be square over positions [.., query, key]; got query={n_q}, "
                f"key={n_k}. Slice cached keys away before passing a generation step."
            )
        tokens = token_list(tokens, n_q, "attention")
        layers = list(range(n_layers)) if layers is None else [int(x) for x in layers]
        if len(layers) != n_layers:
            raise ValueError(f"layers has {len(layers)} entries for {n_layers} captured layers.")
        li = index_in("layer", layer, n_layers)
        hi = index_in("head", head, n_heads)
        self._attention = arr
        super().__init__(
            tokens=tokens,
            layer_indices=layers,
            n_heads=n_heads,
            _initial={"layer": li, "head": hi, "pattern": encode(arr[li, hi], lo=0.0, hi=1.0)},
            **kwargs,
        )
        if self.link.layer is None:
            self.link.select(layer=layers[li], head=hi)

    @property
    def n_layers(self) -> int:
        return len(self.layer_indices)

    def _position(self, model_layer: int) -> int:
        try:
            return self.layer_indices.index(int(model_layer))
        except ValueError:
            raise IndexError(
                f"layer {model_layer} was not captured; captured layers: {self.layer_indices}."
            ) from None

    def pattern(self, layer: int, head: int) -> np.ndarray:
        """The ``[query, key]`` pattern of a head (``layer`` is the model's layer index)."""
        return self._attention[self._position(layer), index_in("head", head, self.n_heads)]

    def _fetch_head(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        return pack(pattern=encode(self.pattern(msg["layer"], msg["head"]), lo=0.0, hi=1.0))

    def export_requests(self, budget_bytes: int) -> list[dict[str, Any]]:
        per_head = self._attention.shape[2] * self._attention.shape[3]
        n = min(self.n_layers * self.n_heads, max(1, budget_bytes // max(per_head, 1)))
        reqs = [
            {"kind": "fetch-head", "layer": self.layer_indices[i // self.n_heads], "head": i % self.n_heads}
            for i in range(self.n_layers * self.n_heads)
        ]
        return reqs[:n]
