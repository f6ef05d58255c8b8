"""LogitLensView: a layers × positions grid of each layer's top next-token prediction."""

from __future__ import annotations

from typing import Any

import numpy as np
import traitlets

from ._codec import encode, to_numpy
from ._validate import token_list
from ._view import View


class LogitLensView(View):
    """What each layer would predict at each position, read through the final norm and unembedding.

    Each cell shows the top-1 token of a layer (row) at a position (column), coloured by its
    probability (or by the probability of the true next token). Hover shows the top-k;
    clicking selects ``{layer, token}`` in the link.

    Parameters
    ----------
    lens : LogitLens
        From :func:`circuitboard.logit_lens` (anything with ``layers``, ``tokens``,
        ``top_tokens``, ``top_probs``, ``target_ids``, ``target_probs``, ``target_ranks``).
    target_tokens : list of str, optional
        Text of the token tracked at each position (default: decoded by the lens' capture
        tokenizer when there is one, else ``#id``).

    Examples
    --------
    >>> import numpy as np
    >>> class Lens:  # usually cb.logit_lens(cap)
    ...     layers = [0, 1]; tokens = ["a", "b"]
    ...     top_tokens = [[["x", "y"], ["b", "x"]], [["b", "y"], ["c", "b"]]]
    ...     top_probs = np.array([[[0.5, 0.2], [0.4, 0.3]], [[0.9, 0.1], [0.6, 0.2]]])
    ...     target_ids = np.array([7, -1]); target_probs = np.array([[0.1, np.nan], [0.9, np.nan]])
    ...     target_ranks = np.array([[3, -1], [0, -1]])
    >>> view = LogitLensView(Lens(), target_tokens=["b", ""])
    >>> view.layer_indices, view.k
    ([0, 1], 2)
    """

    _view = traitlets.Unicode("lens").tag(sync=True)
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """Input tokens, one per position."""
    layer_indices = traitlets.List(traitlets.Int()).tag(sync=True)
    """Model layer of each row."""
    k = traitlets.Int().tag(sync=True)
    """Top tokens kept per cell."""
    target_tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """Token tracked at each position ("" where none: the last position without a target)."""
    target_label = traitlets.Unicode("next token").tag(sync=True)
    """What the tracked token is: "next token" or the target's text."""
    color_by = traitlets.Unicode("top").tag(sync=True)
    """Cell colour: "top" (top-1 probability) or "target" (tracked token's probability)."""
    _strings = traitlets.List(traitlets.Unicode()).tag(sync=True)  # distinct top-k token texts
    _top_index = traitlets.Dict().tag(sync=True)  # Encoded float32 [layers, pos, k] → _strings
    _top_prob = traitlets.Dict().tag(sync=True)  # Encoded float16 [layers, pos, k]
    _target_prob = traitlets.Dict().tag(sync=True)  # Encoded float16 [layers, pos] (NaN: none)
    _target_rank = traitlets.Dict().tag(sync=True)  # Encoded float32 [layers, pos] (-1: none)
    final_row = traitlets.Int(-1).tag(sync=True)
    """Row of the model's last layer (its check: it predicts what the model does); -1: none."""
    _logits_top_index = traitlets.Dict().tag(sync=True)  # Encoded float32 [pos, k] → _strings
    _logits_top_prob = traitlets.Dict().tag(sync=True)  # Encoded float32 [pos, k], from the logits

    def __init__(self, lens: Any, *, target_tokens: list[str] | None = None, **kwargs: Any) -> None:
        try:
            layers = [int(x) for x in lens.layers]
            tokens = list(lens.tokens)
            top_tokens = lens.top_tokens
            top_probs = to_numpy(lens.top_probs)
            target_ids = to_numpy(lens.target_ids).astype(np.int64)
            target_probs = to_numpy(lens.target_probs)
            target_ranks = to_numpy(lens.target_ranks)
        except AttributeError as err:
            raise TypeError(
                f"LogitLensView needs a LogitLens (from cb.logit_lens); got "
                f"{type(lens).__name__}, which lacks {err.name!r}."
            ) from None
        if top_probs.ndim != 3 or top_probs.shape[:2] != (len(layers), len(tokens)):
            raise ValueError(
                f"lens.top_probs must be [layers, positions, k] = [{len(layers)}, "
                f"{len(tokens)}, k]; got shape {tuple(top_probs.shape)}."
            )
        tokens = token_list(tokens, top_probs.shape[1], "the lens")
        strings: list[str] = []
        seen: dict[str, int] = {}
        index = np.zeros(top_probs.shape, dtype=np.float32)
        for li, row in enumerate(top_tokens):
            for p, cell in enumerate(row):
                for j, text in enumerate(cell):
                    if text not in seen:
                        seen[text] = len(strings)
                        strings.append(text)
                    index[li, p, j] = seen[text]
        if target_tokens is None:
            tok = getattr(getattr(lens, "_cap", None), "tokenizer", None)
            target_tokens = [
                "" if t < 0 else (tok.decode([int(t)]) if tok is not None else f"#{t}")
                for t in target_ids.tolist()
            ]
        target_tokens = token_list(list(target_tokens), len(tokens), "the lens")
        final_row, model_index, model_prob = _model_top(lens, layers, top_probs.shape[2], seen)
        strings = list(seen)  # the model's own top tokens joined the table, in index order
        tid = getattr(lens, "target", None)
        label = "next token" if tid is None else (target_tokens[0] if target_tokens else "target")
        super().__init__(
            tokens=tokens,
            layer_indices=layers,
            k=int(top_probs.shape[2]),
            target_tokens=target_tokens,
            target_label=label,
            _strings=strings,
            _top_index=encode(index, "float32"),
            _top_prob=encode(top_probs, "float16"),
            _target_prob=encode(target_probs, "float16"),
            _target_rank=encode(target_ranks, "float32"),
            final_row=final_row,
            _logits_top_index=encode(model_index, "float32") if model_index is not None else {},
            _logits_top_prob=encode(model_prob, "float32") if model_prob is not None else {},
            **kwargs,
        )


def _model_top(
    lens: Any, layers: list[int], k: int, seen: dict[str, int]
) -> tuple[int, np.ndarray | None, np.ndarray | None]:
    """The model's own top-k next tokens from the capture's logits, for the last-layer check.

    Token texts join ``seen`` (the view's string table). Returns ``(-1, None, None)`` when the
    lens has no capture with logits or does not show the model's last layer.
    """
    cap = getattr(lens, "_cap", None)
    info = getattr(cap, "info", None)
    logits = getattr(cap, "logits", None)
    if logits is None or info is None or info.n_layers - 1 not in layers:
        return -1, None, None
    import torch  # a capture with logits came from torch

    logp = torch.log_softmax(torch.as_tensor(to_numpy(logits), dtype=torch.float64), -1)
    top = logp.topk(k, dim=-1)  # as the lens ranks its rows; a full sort took seconds
    ids = top.indices.numpy()
    probs = top.values.exp().numpy().astype(np.float32)
    tok = getattr(cap, "tokenizer", None)
    index = np.zeros(ids.shape, dtype=np.float32)
    for (p, j), i in np.ndenumerate(ids):
        text = tok.decode([int(i)]) if tok is not None else f"#{int(i)}"
        index[p, j] = seen.setdefault(text, len(seen))
    return layers.index(info.n_layers - 1), index, probs
