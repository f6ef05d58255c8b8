"""Weight-based composition scores between attention heads (Elhage et al. 2021).

An earlier head A writes ``x · W_OV^A`` into the residual stream (``W_OV = W_V W_O``, row
vectors, TransformerLens' convention). A later head B reads it through its query (Q-composition:
``W_OV^A W_QK^B``), its key (K-composition: ``W_OV^A (W_QK^B)ᵀ``) or its value (V-composition:
``W_OV^A W_OV^B``), with ``W_QK = W_Q W_Kᵀ``. The score is ``‖W_A W_B‖_F / (‖W_A‖_F ‖W_B‖_F)``.

Every product is rank ``d_head``: with ``W_V = Q R`` (QR), ``‖W_V M‖_F = ‖R M‖_F`` for any
``M``, and ``‖P M‖_F² = <Pᵀ P, M Mᵀ>_F`` turns all pairs into one matrix product of
``d_model × d_model`` Gram matrices. A KV head serves several query heads
(grouped-query attention): query head ``h`` reads with ``W_K[h // group]`` and ``W_V[h // group]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

KINDS = ("Q", "K", "V")
BASELINE_SAMPLES = 32


@dataclass(frozen=True, eq=False)
class CompositionScores:
    """Q-, K- and V-composition of every earlier head's OV circuit with every later head.

    ``values[kind][la, ha, lb, hb]`` is the composition of writer head ``(la, ha)`` into reader
    head ``(lb, hb)``, zero unless ``la < lb`` (TransformerLens' layout). ``baseline[kind]`` is
    the mean score of random Gaussian matrices of the same shapes, ``baseline_std[kind]`` its
    spread: a score reads as "above chance" by ``values − baseline``.

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> res = composition_scores(tiny_model("llama")[0])
    >>> res.values["K"].shape  # [layers, heads, layers, heads]
    (2, 4, 2, 4)
    >>> float(res.values["K"][1, 0, 0, 0])  # a later head never writes into an earlier one
    0.0
    >>> res.top(1, kind="K")[0]["label"][:2]
    'L0'
    """

    values: dict[str, np.ndarray]
    baseline: dict[str, float]
    baseline_std: dict[str, float]
    n_layers: int
    n_heads: int
    n_kv_heads: int
    folded_norms: bool
    model_name: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        """Head labels ``L{l}H{h}`` in the order of the flattened ``[layer, head]`` axes."""
        return [f"L{li}H{h}" for li in range(self.n_layers) for h in range(self.n_heads)]

    def matrix(self, kind: str) -> np.ndarray:
        """``[heads, heads]`` (writer rows, reader columns) flattening of ``values[kind]``."""
        n = self.n_layers * self.n_heads
        return self.values[_kind(kind)].reshape(n, n)

    def above_chance(self, kind: str) -> np.ndarray:
        """``values − baseline`` on valid pairs (writer layer before reader layer), else 0."""
        k = _kind(kind)
        return np.where(self.valid, self.values[k] - self.baseline[k], 0.0)

    @property
    def valid(self) -> np.ndarray:
        """``[layers, heads, layers, heads]`` mask of the pairs that can compose."""
        li = np.arange(self.n_layers)
        m = li[:, None, None, None] < li[None, None, :, None]
        return np.broadcast_to(m, (self.n_layers, self.n_heads) * 2)

    def top(self, k: int = 10, kind: str | None = None) -> list[dict[str, Any]]:
        """The ``k`` (writer, reader, kind) pairs furthest above their random baseline, each a
        dict with ``label`` first (``"L0H1 → L1H2 (K)"``), ``value`` and ``above_chance``."""
        kinds = KINDS if kind is None else (_kind(kind),)
        rows = []
        for kd in kinds:
            ab = self.above_chance(kd)
            for idx in np.argwhere(self.valid):
                la, ha, lb, hb = (int(i) for i in idx)
                rows.append((float(ab[la, ha, lb, hb]), kd, la, ha, lb, hb))
        rows.sort(key=lambda r: -r[0])
        out = []
        for ab, kd, la, ha, lb, hb in rows[: max(0, int(k))]:
            out.append(
                {
                    "label": f"L{la}H{ha} → L{lb}H{hb} ({kd})",
                    "kind": kd,
                    "writer": (la, ha),
                    "reader": (lb, hb),
                    "value": float(self.values[kd][la, ha, lb, hb]),
                    "above_chance": ab,
                }
            )
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write to a ``.npz`` file (no pickle); :func:`load_composition_scores` reads it."""
        from .._files import save_stamped

        meta = {
            "baseline": self.baseline,
            "baseline_std": self.baseline_std,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "folded_norms": self.folded_norms,
            "model_name": self.model_name,
            "notes": self.notes,
        }
        arrays = {k: self.values[k] for k in KINDS}
        return save_stamped(path, "composition scores", meta, arrays)

    def __repr__(self) -> str:
        best = self.top(1)
        lead = f"; strongest {best[0]['label']} = {best[0]['value']:.3f}" if best else ""
        base = ", ".join(f"{k} {self.baseline[k]:.3f}" for k in KINDS)
        return (
            f"CompositionScores({self.model_name or 'model'}: {self.n_layers} layers × "
            f"{self.n_heads} heads ({self.n_kv_heads} KV), ‖W_A W_B‖_F/(‖W_A‖_F‖W_B‖_F), "
            f"norms {'folded' if self.folded_norms else 'not folded'}; random baseline {base}"
            f"{lead})"
        )


def load_composition_scores(path: str | os.PathLike[str]) -> CompositionScores:
    """Read a :class:`CompositionScores` written by :meth:`CompositionScores.save`.

    Examples
    --------
    >>> import tempfile, os
    >>> from circuitboard.testing import tiny_model
    >>> res = composition_scores(tiny_model("llama")[0], baseline_samples=2)
    >>> f = res.save(os.path.join(tempfile.mkdtemp(), "comp.npz"))
    >>> bool((load_composition_scores(f).values["Q"] == res.values["Q"]).all())
    True
    """
    from .._files import decoding, json_array, read_npz

    kind, writer = "composition scores", "CompositionScores.save(path)"
    z = read_npz(path, kind, writer, required=("__meta__", *KINDS))
    meta = json_array(z, "__meta__", path, kind, writer)
    with decoding(path, kind, writer):
        return CompositionScores(values={k: z[k] for k in KINDS}, **meta)


def _kind(kind: str) -> str:
    k = str(kind).upper()
    if k not in KINDS:
        raise ValueError(f"kind must be one of 'Q', 'K', 'V'; got {kind!r}.")
    return k


# -- weights ------------------------------------------------------------------------------------
def _head_weights(model: Any, fold_norms: bool) -> tuple[dict[str, torch.Tensor], Any, str]:
    """``W_Q, W_K, W_V [L, H, d_model, d_head]`` (K/V expanded to query heads) and
    ``W_O [L, H, d_head, d_model]`` in float64, read through the model's adapter (or a
    Capture's weights), with each layer's input-norm weight folded into its readers."""
    from ..capture import Capture

    if isinstance(model, Capture):
        if model.info is None or not model.weights:
            raise ValueError(
                "composition_scores got a Capture without weights or model info; pass the model "
                "itself (cb.composition_scores(model)) or a capture made by cb.capture."
            )
        info, weights, name = model.info, model.weights, model.info.model_name
    else:
        from ..capture._run import model_info
        from ..capture.adapters import get_adapter
        from ..capture.adapters._base import gather_weights

        adapter = get_adapter(model)
        info = model_info(model, adapter)
        with torch.no_grad():
            weights = gather_weights(model, adapter, info)
        name = info.model_name
    L, H, KV = info.n_layers, info.n_heads, info.n_kv_heads
    group = H // KV
    out: dict[str, list[torch.Tensor]] = {n: [] for n in ("Q", "K", "V", "O")}
    for li in range(L):
        p = f"blocks.{li}."
        if p + "attn.W_Q" not in weights:
            raise ValueError(
                f"layer {li} has no attention weights ({p}attn.W_Q); composition scores need an "
                "attention head in every layer."
            )
        read = torch.ones(info.d_model, dtype=torch.float64)
        center = False
        w = weights.get(p + "ln1.w")
        if fold_norms and w is not None:
            read = w.detach().double().cpu() + (1.0 if info.norm == "gemma_rmsnorm" else 0.0)
            center = info.norm == "layernorm"
        for n in ("Q", "K", "V"):
            W = weights[p + f"attn.W_{n}"].detach().double().cpu() * read[:, None]
            if center:  # LayerNorm removes the mean: a reader sees only centred directions
                W = W - W.mean(-2, keepdim=True)
            out[n].append(W.repeat_interleave(group, 0) if n != "Q" else W)
        out["O"].append(weights[p + "attn.W_O"].detach().double().cpu())
    return {n: torch.stack(v) for n, v in out.items()}, info, name


def _r_factor(W: torch.Tensor) -> torch.Tensor:
    """``R`` of the thin QR of ``W [..., n, r]`` (``‖W M‖_F = ‖R M‖_F``), as ``[..., r, r]``."""
    return torch.linalg.qr(W, mode="r")[1]


_GRAM_CHUNK = 16  # heads per d_model × d_model Gram block (bounds memory)


def _grams(F: torch.Tensor, iu: tuple[torch.Tensor, torch.Tensor], w: Any = 1.0) -> torch.Tensor:
    """``Fᵀ F`` of each ``F [N, r, d]``, its upper triangle flattened, times ``w``:
    ``[N, d (d + 1) / 2]``. With ``w`` 2 off the diagonal on one side, ``<Fᵀ F, Gᵀ G>_F`` of two
    symmetric matrices is a plain dot product."""
    out = []
    for s in range(0, F.shape[0], _GRAM_CHUNK):
        f = F[s : s + _GRAM_CHUNK]
        out.append((f.transpose(1, 2) @ f)[:, iu[0], iu[1]] * w)
    return torch.cat(out)


def _scores_from_factors(
    writer_gram: torch.Tensor, writer_norm: torch.Tensor, reader: torch.Tensor, group: int, iu
) -> torch.Tensor:
    """``‖W_A W_B‖_F / (‖W_A‖_F ‖W_B‖_F)`` for every writer and every reader in a later layer.

    ``‖P M‖_F² = <Pᵀ P, M Mᵀ>_F``: with the writers' Gram matrices ``Pᵀ P`` and the readers'
    ``M Mᵀ`` (``reader`` holds ``Mᵀ [N, r, d]``), every pair is one entry of a matrix product
    ``[writers, d²/2] × [d²/2, readers]``, about ``r² / (d / 2)`` times cheaper than forming the
    ``r × r`` products pair by pair. Heads come in layers of ``group``; pairs whose reader is
    not in a later layer stay 0. Returns ``[N_writers, N_readers]``."""
    N = writer_gram.shape[0]
    rn = reader.flatten(1).norm(dim=1)
    out = torch.zeros(N, reader.shape[0], dtype=torch.float64)
    for s in range(group, reader.shape[0], group):  # one reader layer at a time
        h = _grams(reader[s : s + group], iu)
        out[:s, s : s + group] = (writer_gram[:s] @ h.T).clamp_min(0).sqrt()
    return out / writer_norm[:, None] / rn[None, :]


def _all_scores(Ws: dict[str, torch.Tensor], group: int) -> dict[str, torch.Tensor]:
    """``[N, N]`` flat scores per kind from per-head weights ``[N, ...]``, ``group`` heads per
    layer (0 unless the reader is in a later layer)."""
    Q, K, V, W_O = Ws["Q"], Ws["K"], Ws["V"], Ws["O"]
    d = W_O.shape[-1]
    iu = torch.triu_indices(d, d)
    w = torch.where(iu[0] == iu[1], 1.0, 2.0).double()
    writer = _r_factor(V) @ W_O  # R_V W_O: ‖W_V W_O M‖ = ‖R_V W_O M‖
    gram = _grams(writer, (iu[0], iu[1]), w)
    wn = writer.flatten(1).norm(dim=1)
    o_r = _r_factor(W_O.transpose(-1, -2))  # W_O = (W_Oᵀ)ᵀ = R_Oᵀ Q_Oᵀ: ‖M W_O‖ = ‖M R_Oᵀ‖
    # each reader as Mᵀ [N, r, d] with M = (its left factor) · (its right factor's R)ᵀ
    readers = {
        "Q": _r_factor(K) @ Q.transpose(-1, -2),  # W_Q W_Kᵀ
        "K": _r_factor(Q) @ K.transpose(-1, -2),  # (W_Q W_Kᵀ)ᵀ = W_K W_Qᵀ
        "V": o_r @ V.transpose(-1, -2),  # W_V W_O
    }
    return {k: _scores_from_factors(gram, wn, m, group, (iu[0], iu[1])) for k, m in readers.items()}


def _baseline(d_model: int, d_head: int, samples: int, seed: int) -> dict[str, np.ndarray]:
    """Scores of ``samples`` independent pairs of Gaussian heads of the model's shapes."""
    g = torch.Generator().manual_seed(int(seed))

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    n = 2 * samples
    Ws = {
        "Q": draw(n, d_model, d_head),
        "K": draw(n, d_model, d_head),
        "V": draw(n, d_model, d_head),
        "O": draw(n, d_head, d_model),
    }
    full = _all_scores(Ws, samples)  # "layer" 0: the writers, "layer" 1: the readers
    # writer i with reader samples + i: independent draws, never a head with itself
    idx = torch.arange(samples)
    return {k: v[idx, samples + idx].numpy() for k, v in full.items()}


def composition_scores(
    model: Any,
    *,
    fold_norms: bool = True,
    baseline_samples: int = BASELINE_SAMPLES,
    seed: int = 0,
) -> CompositionScores:
    """Q-, K- and V-composition scores of every pair of heads in different layers.

    ``score(A, B) = ‖W_A W_B‖_F / (‖W_A‖_F ‖W_B‖_F)`` with ``W_A = W_V^A W_O^A`` (the earlier
    head's OV circuit) and ``W_B`` the later head's ``W_Q W_Kᵀ`` (Q), ``W_K W_Qᵀ`` (K) or
    ``W_V W_O`` (V), following Elhage et al. (2021) and TransformerLens'
    ``all_composition_scores``. Computed exactly in float64 from ``d_head × d_head`` cores.

    Parameters
    ----------
    model
        A Hugging Face model served by a circuitboard adapter, or a :class:`Capture` holding
        its weights.
    fold_norms
        Multiply each reader's ``W_Q`` / ``W_K`` / ``W_V`` by its layer's input-norm weight
        (and centre them for LayerNorm), as TransformerLens' ``fold_ln`` does, so a score
        measures what the head really reads. ``False`` scores the raw projection weights.
    baseline_samples, seed
        Pairs of random Gaussian heads of the same shapes whose mean score is the chance
        baseline (seeded, so the baseline is reproducible).

    Returns
    -------
    CompositionScores

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> res = composition_scores(tiny_model("llama")[0], baseline_samples=4)
    >>> sorted(res.values)
    ['K', 'Q', 'V']
    >>> 0.0 < res.baseline["K"] < 1.0
    True
    """
    if int(baseline_samples) < 1:
        raise ValueError(
            f"baseline_samples must be at least 1; got {baseline_samples}. The default, "
            f"{BASELINE_SAMPLES}, gives the chance level to about ±1%."
        )
    Ws, info, name = _head_weights(model, fold_norms)
    L, H = info.n_layers, info.n_heads
    flat = {k: v.flatten(0, 1) for k, v in Ws.items()}
    scores = _all_scores(flat, H)
    li = torch.arange(L)
    mask = (li[:, None, None, None] < li[None, None, :, None]).expand(L, H, L, H)
    values = {
        k: torch.where(mask, s.reshape(L, H, L, H), torch.zeros(())).numpy()
        for k, s in scores.items()
    }
    base = _baseline(info.d_model, info.d_head, int(baseline_samples), seed)
    notes = [
        f"Baseline: mean score of {int(baseline_samples)} pairs of Gaussian heads with "
        f"d_model={info.d_model}, d_head={info.d_head} (seed {seed}).",
    ]
    if info.n_kv_heads != H:
        notes.append(
            f"Grouped-query attention: KV head g serves query heads {H // info.n_kv_heads}g.."
            f"{H // info.n_kv_heads}g+{H // info.n_kv_heads - 1}; each query head is scored "
            "with the K / V weights it reads."
        )
    return CompositionScores(
        values=values,
        baseline={k: float(v.mean()) for k, v in base.items()},
        baseline_std={k: float(v.std()) for k, v in base.items()},
        n_layers=L,
        n_heads=H,
        n_kv_heads=info.n_kv_heads,
        folded_norms=bool(fold_norms),
        model_name=name,
        notes=notes,
    )


__all__ = ["CompositionScores", "composition_scores", "load_composition_scores"]
