"""Rows of an attribution graph: the direct effect of every source on a batch of target nodes.

A *source* is a token embedding, a basis node (a neuron, or a transcoder feature) or an error
node; its column index ("candidate") is fixed by the :class:`NeuronBasis` layout. A row is
computed by one backward pass through the frozen system (:mod:`._graph_frozen`): the edge from
source ``s`` to target ``t`` is ``<gradient of t where s writes, what s writes>``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._graph_frozen import Frozen

KIND_TOKEN, KIND_BASIS, KIND_ERROR, KIND_LOGIT = 0, 1, 2, 3
KIND_NAMES = ("token", "neuron", "error", "logit")


class CandidateLayout:
    """The candidates of a basis, in order: its ``n_basis`` nodes, ``n_error`` error nodes,
    then one token node per position (a basis sets ``fr``, ``n_basis`` and ``n_error``)."""

    @property
    def token_offset(self) -> int:
        return self.n_basis + self.n_error

    @property
    def n_cand(self) -> int:
        return self.token_offset + self.fr.n_pos


@dataclass
class NeuronBasis(CandidateLayout):
    """Every MLP neuron at every position is a node; neurons are never zero under SwiGLU, so
    all of them are candidates. Layout: ``(layer * pos + p) * d_mlp + n``, then the tokens."""

    fr: Frozen
    name: str = "neurons"

    @property
    def per_layer(self) -> int:
        return self.fr.n_pos * self.fr.d_mlp

    @property
    def n_basis(self) -> int:
        return self.fr.n_layers * self.per_layer

    @property
    def n_error(self) -> int:
        return 0

    def locate(self, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(layer, pos, neuron)`` of basis candidates."""
        layer, rest = cand // self.per_layer, cand % self.per_layer
        return layer, rest // self.fr.d_mlp, rest % self.fr.d_mlp

    def mlp_bias(self, layer: int) -> torch.Tensor:
        return self.fr.b_out[layer]

    def writes(self, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(layer, pos, vector [k, d_model])``: what basis candidates write (activation times
        their output direction)."""
        layer, pos, n = self.locate(cand)
        vec = (
            torch.stack([self.fr.W_out[int(a)][int(i)] for a, i in zip(layer, n, strict=True)])
            if len(cand)
            else torch.zeros(0, self.fr.embed.shape[1])
        )
        return layer, pos, vec * self.activation(cand)[:, None]

    def activation(self, cand: torch.Tensor) -> torch.Tensor:
        layer, pos, n = self.locate(cand)
        flat = torch.stack([a.reshape(-1) for a in self.fr.act])
        return flat[layer, pos * self.fr.d_mlp + n]

    def read_mlp(self, layer: int, g: torch.Tensor, rows: torch.Tensor) -> None:
        """Edges from layer ``layer``'s neurons: ``act * (g @ W_out^T)``."""
        n = g.shape[1]  # the first n positions (targets sit before position n)
        block = torch.matmul(g, self.fr.W_out[layer].T)  # [rows, pos, d_mlp]
        block.mul_(self.fr.act[layer][:n])
        s = layer * self.per_layer
        rows[:, s : s + n * self.fr.d_mlp] = block.reshape(len(g), -1)

    def seeds(
        self, cand: torch.Tensor
    ) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per layer: ``(layer, row indices, pos, seeds [rows, d_model])`` and the rows' own bias
        terms, for basis targets ``cand``."""
        layer, pos, n = self.locate(cand)
        out = []
        for lyr in layer.unique().tolist():
            idx = (layer == lyr).nonzero().flatten()
            seeds, own = self.fr.neuron_seeds(lyr, pos[idx], n[idx])
            out.append((lyr, idx, pos[idx], seeds, own))
        return out


def compute_rows(
    basis: NeuronBasis,
    logit_dirs: torch.Tensor | None = None,
    cand: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense rows ``[rows, n_cand]`` and bias parts ``[rows]`` for logit directions
    ``[k, vocab]`` (rows first) and then basis candidates ``cand``.

    Each row plus its bias is the target's value in the frozen system exactly: the logit
    (difference) for a logit row, the activation for a neuron row.
    """
    fr = basis.fr
    n_logit = 0 if logit_dirs is None else len(logit_dirs)
    n_node = 0 if cand is None else len(cand)
    B, D = n_logit + n_node, fr.embed.shape[1]
    P = fr.n_pos if n_logit or not n_node else int(basis.locate(cand)[1].max()) + 1
    rows = torch.zeros(B, basis.n_cand)
    own = torch.zeros(B)
    final = None
    if n_logit:
        final = torch.zeros(B, P, D)
        for i, d in enumerate(logit_dirs):
            final[i, P - 1] = fr.logit_seed(d)
            own[i] = fr.logit_bias(d)
    in_seeds: dict[int, torch.Tensor] = {}
    if n_node:
        for layer, idx, pos, seeds, node_own in basis.seeds(cand):
            buf = in_seeds.setdefault(layer, torch.zeros(B, P, D))
            buf[n_logit + idx, pos] = seeds
            own[n_logit + idx] = node_own

    def read_embed(g: torch.Tensor) -> None:
        rows[:, basis.token_offset : basis.token_offset + P] = (g * fr.embed[:P]).sum(-1)

    if final is None and not in_seeds:
        return rows, own
    bias = fr.backward(
        final,
        in_seeds,
        lambda layer, g: basis.read_mlp(layer, g, rows),
        read_embed,
        n_pos=P,
        mlp_bias=basis.mlp_bias,
    )
    return rows, bias + own
