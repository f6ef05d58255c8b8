"""Dictionary features in the corpus scan: a reader that hands :func:`scan_texts` feature
activations instead of MLP neurons, and the features' direct logit effects.

``cb.top_activations(model, tok, texts, features=(sae, ids))`` runs the same plan as for
neurons (the same batches, running top-k, histograms and moments, mergeable across shards and
engines); only what is read differs: the dictionary encodes the activation at its hook and the
selected features' columns are kept. The forward stops right after the hook.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def feature_selection(features: Any) -> tuple[Any, list[int]]:
    """``features=(sae, ids)`` checked: the dictionary and its feature indices (``ids`` None:
    every feature)."""
    if not (isinstance(features, tuple | list) and len(features) == 2):
        raise TypeError(
            f"features= takes (sae, ids), e.g. features=(sae, [3, 17]) or (sae, None) for all; "
            f"got {features!r}."
        )
    sae, ids = features
    d_sae = int(getattr(sae, "d_sae", 0))
    if ids is None:
        ids = list(range(d_sae))
    elif isinstance(ids, int | np.integer):
        ids = [int(ids)]
    out = []
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int | np.integer) or not 0 <= int(i) < d_sae:
            raise IndexError(
                f"feature index {i!r} is out of range for a dictionary of d_sae={d_sae}; use "
                f"0..{d_sae - 1}."
            )
        out.append(int(i))
    return sae, list(dict.fromkeys(out))


class FeatureReader:
    """Reads the selected features of one dictionary (same interface as the neuron reader)."""

    def __init__(self, model: Any, sae: Any, ids: Sequence[int], cofiring: bool = False) -> None:
        from ..capture._saes import locate_hook, sae_hook
        from ..capture.adapters import get_adapter

        adapter = get_adapter(model)
        self.model, self.sae = model, sae
        self.point = locate_hook(model, adapter, sae_hook(sae), adapter.n_blocks(model))
        self.ids = list(ids)
        self.cofiring = cofiring
        self.got: Any = None
        self.fire: Any = None  # [B, T, d_sae] bool: which features fire (cofiring only)
        self.handle: Any = None

    def __enter__(self) -> FeatureReader:
        import torch

        from ..capture._saes import _register
        from ._neuron_scan import _Stop

        idx = torch.tensor(self.ids)
        ref = next(self.sae.parameters())

        def read(x: Any) -> None:
            flat = x.reshape(*x.shape[:2], -1).to(device=ref.device, dtype=ref.dtype)
            acts = self.sae.encode(flat)
            self.got = acts[..., idx.to(acts.device)].detach().to("cpu", torch.float32)
            if self.cofiring:
                self.fire = (acts > 0).to("cpu")
            raise _Stop  # nothing after the hook is needed

        self.handle = _register(self.point, read)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def run(self, rows: list[list[int]], pad_id: int) -> tuple[Any, Any, Any]:
        """``(acts [B, T, n] float32, ids [B, T], lens [B])`` of right-padded ``rows``."""
        from ._neuron_scan import forward_rows

        device = next(self.model.parameters()).device
        ids, lens = forward_rows(self.model, rows, pad_id, device)
        return self.got, ids, lens


MAX_COFIRING_BYTES = 1 << 30
"""Largest co-firing count matrix (``[features, d_sae]`` int64) a scan keeps."""


def check_cofiring(n: int, d_sae: int) -> None:
    """Refuse a co-firing matrix larger than :data:`MAX_COFIRING_BYTES`, saying the fix."""
    size = 8 * n * d_sae
    if size > MAX_COFIRING_BYTES:
        raise ValueError(
            f"co-firing counts for {n} features × d_sae={d_sae} would take {size / 2**30:.1f} "
            f"GiB (int64); select fewer features (features=(sae, ids) with up to "
            f"{MAX_COFIRING_BYTES // (8 * d_sae)} ids) or pass cofiring=False."
        )


def add_cofiring(counts: Any, fire: Any, ids: Sequence[int]) -> Any:
    """``counts[i, j] +=`` the tokens of ``fire`` (``[N, d_sae]`` bool, the counted tokens)
    on which selected feature ``ids[i]`` and feature ``j`` both fire.

    A sparse × dense product of 0/1 values in float32: exact, since a batch holds far fewer
    than 2^24 tokens; the firing mask of a sparse dictionary is sparse, so the cost is
    ``active × d_sae`` per token, not ``features × d_sae``.
    """
    import torch

    if fire.shape[0] == 0:
        return counts
    cols = torch.as_tensor([int(i) for i in ids], dtype=torch.long)
    sel = fire.index_select(1, cols).T.to(torch.float32).to_sparse()  # [n, N]
    both = torch.sparse.mm(sel, fire.to(torch.float32))  # [n, d_sae]
    return counts + both.round().to(torch.int64)


def cofiring_top(counts: np.ndarray, row: int, feature: int, k: int) -> list[tuple[int, int]]:
    """The ``k`` features firing most often with ``feature`` (row ``row`` of ``counts``):
    ``(index, tokens)``, most first, ties to the smaller index, itself and zeros left out."""
    c = np.asarray(counts[row], dtype=np.int64).copy()
    c[int(feature)] = 0
    order = np.lexsort((np.arange(len(c)), -c))[:k]
    return [(int(j), int(c[j])) for j in order if c[j] > 0]


def feature_directions(
    model: Any, sae: Any, ids: Sequence[int], *, through_norm: bool = True
) -> Any:
    """``[n, d_model]`` float64 decoder rows ``W_dec[f]`` as the unembedding sees them (times the
    final norm's weight, centred for LayerNorm), for dictionaries that write the residual
    stream or an MLP / attention output; ``mlp.hook_post`` dictionaries go through ``W_out``."""
    import torch

    from ..capture._saes import sae_hook_out
    from ._features import decoder_matrix
    from ._mlp_parts import _w_out, mlp_out_proj, through_final_norm

    W_dec, _ = decoder_matrix(sae)
    d = W_dec[list(ids)]
    hook = sae_hook_out(sae)
    if hook.endswith("mlp.hook_post"):
        layer = int(hook.split(".")[1])
        d = d @ _w_out(mlp_out_proj(model, layer)).to("cpu", torch.float64)
    return through_final_norm(model, d) if through_norm else d


def feature_logit_effects(
    model: Any, sae: Any, ids: Sequence[int], *, k: int = 12, through_norm: bool = True
) -> dict[str, np.ndarray]:
    """Tokens each feature directly promotes / suppresses: ``W_dec[f] (· w_norm) @ W_U``."""
    from ._mlp_parts import top_logit_effects

    return top_logit_effects(
        model,
        list(ids),
        lambda part: feature_directions(model, sae, part, through_norm=through_norm),
        k,
    )
