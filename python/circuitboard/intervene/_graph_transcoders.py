"""The transcoder basis of an attribution graph: active features as nodes, one error node per
(layer, position) holding what the transcoder misses (``mlp_out - reconstruction``; the whole
MLP output where a layer has no transcoder), so the graph stays exact with any layers covered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ._graph_frozen import Frozen
from ._graph_rows import CandidateLayout

_READS = ("mlp.hook_in", "hook_resid_mid")

READ_BLOCK_BYTES = 32 * 2**20
"""Bound on the ``rows x features x d_model`` gradient gathered to read a block of features."""


def read_block(n_rows: int, d_model: int) -> int:
    """Active features read at once: their gathered gradient stays under
    :data:`READ_BLOCK_BYTES`."""
    return max(1, READ_BLOCK_BYTES // (4 * n_rows * d_model))


def transcoder_list(basis: Any, n_layers: int, d_model: int, parallel: bool) -> list[Any]:
    """The per-layer transcoders in ``basis`` (an SAE, a TranscoderSet or a list of SAEs),
    checked against the model; raises a ValueError naming the fix."""
    from ..dictionaries import SAE

    if isinstance(basis, SAE):
        items = [basis]
    elif hasattr(basis, "layers") and hasattr(basis, "__getitem__") and not isinstance(basis, str):
        if not all(isinstance(layer, int) for layer in basis.layers):
            raise ValueError(
                "cross-layer transcoders are not supported by attribution graphs yet; pass "
                "per-layer transcoders (cb.TranscoderSet) or basis='neurons'."
            )
        items = [basis[layer] for layer in basis.layers]
    elif isinstance(basis, (list, tuple)) and basis and all(isinstance(t, SAE) for t in basis):
        items = list(basis)
    else:
        raise ValueError(
            f"basis must be 'neurons', a transcoder (cb.SAE), a cb.TranscoderSet or a list of "
            f"transcoders; got {type(basis).__name__}."
        )
    seen = set()
    for t in items:
        layer = t.layer
        where = (t.hook or "").split(".", 2)[-1] if t.hook else None
        fix = (
            "Pass transcoders that read 'blocks.L.mlp.hook_in' (or 'blocks.L.hook_resid_mid') "
            "and write 'blocks.L.hook_mlp_out' of the same layer L of this model."
        )
        if not t.is_transcoder or layer is None or t.hook_out != f"blocks.{layer}.hook_mlp_out":
            raise ValueError(
                f"{t!r} does not fit: attribution graphs need MLP transcoders (read before the "
                f"MLP, write its output). {fix}"
            )
        if where not in _READS or (parallel and where != "mlp.hook_in"):
            raise ValueError(f"{t!r} reads {t.hook!r}, not the MLP's input. {fix}")
        if not 0 <= layer < n_layers or t.d_in != d_model or t.d_out != d_model:
            raise ValueError(
                f"{t!r} does not fit this model: layer {layer} of {n_layers}, widths "
                f"{t.d_in} -> {t.d_out} (model width {d_model}). {fix}"
            )
        if layer in seen:
            raise ValueError(f"two transcoders for layer {layer}; pass one per layer.")
        seen.add(layer)
    return sorted(items, key=lambda t: t.layer)


@dataclass
class TranscoderBasis(CandidateLayout):
    """Active transcoder features (sorted by layer, then position) are the basis nodes, then
    ``n_layers * pos`` error nodes, then the tokens."""

    fr: Frozen
    transcoders: list[Any]
    name: str = "transcoders"
    layer: torch.Tensor = field(init=False)
    pos: torch.Tensor = field(init=False)
    feat: torch.Tensor = field(init=False)
    act: torch.Tensor = field(init=False)
    pre: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        fr = self.fr
        self.by_layer = {t.layer: t for t in self.transcoders}
        layers, poss, feats, acts, pres = [], [], [], [], []
        self.W_dec: dict[int, torch.Tensor] = {}  # the transcoders' own (float32: no copy)
        self.errors = []
        self.bias_vec = []
        self.offsets = [0]
        with torch.no_grad():
            for layer in range(fr.n_layers):
                mlp_out = fr.mlp_out[layer]
                t = self.by_layer.get(layer)
                if t is None:
                    self.errors.append(mlp_out)
                    self.bias_vec.append(torch.zeros(mlp_out.shape[1]))
                    self.offsets.append(self.offsets[-1])
                    continue
                x = self._read(layer)
                pre = t.pre_activations(x.to(t.device, t.dtype)).float().cpu()
                f = t.activate(pre.to(t.device, t.dtype)).float().cpu()
                p, i = f.nonzero(as_tuple=True)
                W_dec = t.W_dec.detach().float().cpu()
                self.W_dec[layer] = W_dec
                recon = f @ W_dec + t.b_dec.detach().float().cpu()
                self.errors.append(mlp_out - recon)  # a skip term, if any, stays in the error
                self.bias_vec.append(t.b_dec.detach().float().cpu())
                layers.append(torch.full_like(p, layer))
                poss.append(p)
                feats.append(i)
                acts.append(f[p, i])
                pres.append(pre[p, i])
                self.offsets.append(self.offsets[-1] + len(p))

        def cat(xs: list[torch.Tensor], dt: torch.dtype) -> torch.Tensor:
            return torch.cat(xs) if xs else torch.zeros(0, dtype=dt)

        self.layer, self.pos = cat(layers, torch.long), cat(poss, torch.long)
        self.feat, self.act = cat(feats, torch.long), cat(acts, torch.float32)
        self.pre = cat(pres, torch.float32)

    def _read(self, layer: int) -> torch.Tensor:
        t, fr = self.by_layer[layer], self.fr
        x = fr.mlp_in_resid[layer]
        return fr.ln2[layer].apply(x) if t.hook.endswith("mlp.hook_in") else x

    @property
    def n_basis(self) -> int:
        return len(self.layer)

    @property
    def n_error(self) -> int:
        return self.fr.n_layers * self.fr.n_pos

    def locate(self, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.layer[cand], self.pos[cand], self.feat[cand]

    def activation(self, cand: torch.Tensor) -> torch.Tensor:
        return self.act[cand]

    def writes(self, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(layer, pos, vector [k, d_model])`` that basis candidates write."""
        layer = self.layer[cand]
        vec = torch.zeros(len(cand), self.fr.d_model)
        for lyr in layer.unique().tolist():  # decoder rows gathered per call, never all of them
            i = (layer == lyr).nonzero().flatten()
            vec[i] = self.W_dec[lyr][self.feat[cand[i]]]
        return layer, self.pos[cand], vec * self.act[cand][:, None]

    def mlp_bias(self, layer: int) -> torch.Tensor:
        return self.bias_vec[layer]

    def read_mlp(self, layer: int, g: torch.Tensor, rows: torch.Tensor) -> None:
        """Edges from layer ``layer``'s active features and error nodes into ``rows`` (zeros
        on entry: features at positions the gradient does not reach stay 0)."""
        n = g.shape[1]
        s, e = self.offsets[layer], self.offsets[layer + 1]
        m = int(torch.searchsorted(self.pos[s:e], n)) if e > s else 0  # sorted by position
        if m:
            slot, k_max = self._slots(layer)
            if n * k_max <= 4 * m:
                self._read_by_position(layer, g, rows, slot, k_max, m)
            else:  # a few positions with many features (ReLU): padding would waste too much
                self._read_gathered(layer, g, rows, m)
        err0 = self.n_basis + layer * self.fr.n_pos
        g_by_pos = g.transpose(0, 1)  # [pos, rows, d_model]
        rows[:, err0 : err0 + n] = torch.bmm(g_by_pos, self.errors[layer][:n, :, None])[..., 0].T

    def _slots(self, layer: int) -> tuple[torch.Tensor, int]:
        """Each of the layer's features' index among its position's features, and the most
        features any position has (cached per layer)."""
        cache = self.__dict__.setdefault("_slot_cache", {})
        if layer not in cache:
            pos = self.pos[self.offsets[layer] : self.offsets[layer + 1]]
            counts = torch.bincount(pos, minlength=self.fr.n_pos)
            first = torch.cumsum(counts, 0) - counts
            cache[layer] = (torch.arange(len(pos)) - first[pos], int(counts.max()))
        return cache[layer]

    def _read_by_position(
        self,
        layer: int,
        g: torch.Tensor,
        rows: torch.Tensor,
        slot: torch.Tensor,
        k_max: int,
        m: int,
    ) -> None:
        """One batched product per block of positions: each position's gradient against its
        own features' decoder rows, laid out ``[pos, k_max, d_model]`` (no gathered copy of
        the gradient per feature)."""
        s = self.offsets[layer]
        pos, D = self.pos[s : s + m], self.fr.d_model
        n = g.shape[1]
        span = max(1, READ_BLOCK_BYTES // (4 * k_max * D))  # positions per block
        for p0 in range(0, n, span):
            p1 = min(n, p0 + span)
            a, b = (int(torch.searchsorted(pos, p)) for p in (p0, p1))
            if a == b:
                continue
            dec = torch.zeros(p1 - p0, k_max, D)
            at = (pos[a:b] - p0, slot[a:b])
            dec[at] = self.W_dec[layer][self.feat[s + a : s + b]]
            out = torch.bmm(g[:, p0:p1].transpose(0, 1), dec.transpose(1, 2))  # [pos, rows, k]
            rows[:, s + a : s + b] = out[at[0], :, at[1]].T * self.act[s + a : s + b]

    def _read_gathered(self, layer: int, g: torch.Tensor, rows: torch.Tensor, m: int) -> None:
        """Each feature's gradient gathered by its position, in blocks: never a ``[rows, all
        active, d_model]`` temporary."""
        s = self.offsets[layer]
        step = read_block(len(g), self.fr.d_model)
        for a in range(s, s + m, step):
            b = min(a + step, s + m)
            gp = g[:, self.pos[a:b]]  # [rows, block, d_model]
            dec = self.W_dec[layer][self.feat[a:b]]  # [block, d_model]
            rows[:, a:b] = torch.einsum("bkd,kd->bk", gp, dec) * self.act[a:b]

    def seeds(self, cand: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor, Any, Any]]:
        """Per layer ``(layer, row indices, pos, seeds [rows, d_model], own bias [rows])``:
        a feature's pre-activation is linear in the residual the MLP reads."""
        layer, pos, feat = self.locate(cand)
        out = []
        for lyr in layer.unique().tolist():
            idx = (layer == lyr).nonzero().flatten()
            t = self.by_layer[lyr]
            w = t.W_enc.detach().float().cpu()[:, feat[idx]].T  # [rows, d_model]
            own = t.b_enc.detach().float().cpu()[feat[idx]].clone()
            if t.center_input:
                own -= w @ t.b_dec.detach().float().cpu()
            if t.hook.endswith("mlp.hook_in"):
                norm = self.fr.ln2[lyr]
                own += w @ norm.b
                seeds = norm.vjp_at(w, pos[idx])
            else:
                seeds = w
            out.append((lyr, idx, pos[idx], seeds, own))
        return out
