"""Rows of an attribution graph: the direct effect of every source on a batch of target nodes.

A *source* is a token embedding, a basis node (a neuron, or a transcoder feature) or an error
node; its column index ("candidate") is fixed by the :class:`NeuronBasis` layout. A row is
computed by one backward pass through the frozen system (:mod:`._graph_frozen`): the edge from
source ``s`` to target ``t`` is ``<gradient of t where s writes, what s writes>``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._graph_frozen import Frozen, Seeds

BACKWARD_BYTES = 128 * 2**20
"""Bound on one backward pass's ``rows x pos x d_model`` gradient: a batch whose gradient would
pass it runs as several backward passes of fewer rows (long prompts), so the temporaries of a
pass (about :data:`BACKWARD_COPIES` such tensors) stay bounded whatever the batch size."""

BACKWARD_COPIES = 6
"""Gradient-sized tensors alive at once in a backward pass (the gradient, the attention's
per-head and value-side products, the norm's, and the sum), for the memory estimate."""

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
        out = torch.zeros(len(cand))
        for lyr in layer.unique().tolist():  # index each layer: no copy of all activations
            i = (layer == lyr).nonzero().flatten()
            out[i] = self.fr.act[lyr][pos[i], n[i]]
        return out

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


def rows_per_backward(n_pos: int, d_model: int) -> int:
    """Rows one backward pass carries: as many as keep its gradient under
    :data:`BACKWARD_BYTES`."""
    return max(1, BACKWARD_BYTES // (4 * n_pos * d_model))


def compute_rows(
    basis: NeuronBasis,
    logit_dirs: torch.Tensor | None = None,
    cand: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense rows ``[rows, n_cand]`` and bias parts ``[rows]`` for logit directions
    ``[k, vocab]`` (rows first) and then basis candidates ``cand``.

    Each row plus its bias is the target's value in the frozen system exactly: the logit
    (difference) for a logit row, the activation for a neuron row. Long prompts run the rows
    as several backward passes (:func:`rows_per_backward`).
    """
    n_logit = 0 if logit_dirs is None else len(logit_dirs)
    n_node = 0 if cand is None else len(cand)
    rows = torch.zeros(n_logit + n_node, basis.n_cand)
    own = torch.zeros(n_logit + n_node)
    step = rows_per_backward(basis.fr.n_pos, basis.fr.d_model)
    if n_logit:
        for a in range(0, n_logit, step):
            b = min(n_logit, a + step)
            _rows_into(basis, rows[a:b], own[a:b], logit_dirs=logit_dirs[a:b])
    for a in range(0, n_node, step):
        b = min(n_node, a + step)
        _rows_into(
            basis, rows[n_logit + a : n_logit + b], own[n_logit + a : n_logit + b], cand=cand[a:b]
        )
    return rows, own


def _rows_into(
    basis: NeuronBasis,
    rows: torch.Tensor,
    out_bias: torch.Tensor,
    logit_dirs: torch.Tensor | None = None,
    cand: torch.Tensor | None = None,
) -> None:
    """One backward pass: fill ``rows`` (a view of the caller's buffer) and ``out_bias``."""
    fr = basis.fr
    B = len(rows)
    if logit_dirs is not None:
        P = fr.n_pos
        vecs = torch.stack([fr.logit_seed(d) for d in logit_dirs])
        out_bias[:] = torch.tensor([fr.logit_bias(d) for d in logit_dirs])
        final = Seeds(B, torch.arange(B), torch.full((B,), P - 1), vecs)
        in_seeds: dict[int, Seeds] = {}
    else:
        final = None
        P = int(basis.locate(cand)[1].max()) + 1
        in_seeds = {}
        for layer, idx, pos, seeds, node_own in basis.seeds(cand):
            in_seeds[layer] = Seeds(B, idx, pos, seeds)
            out_bias[idx] = node_own

    def read_embed(g: torch.Tensor) -> None:
        rows[:, basis.token_offset : basis.token_offset + P] = (g * fr.embed[:P]).sum(-1)

    bias = fr.backward(
        final,
        in_seeds,
        lambda layer, g: basis.read_mlp(layer, g, rows),
        read_embed,
        n_pos=P,
        mlp_bias=basis.mlp_bias,
        n_rows=B,
    )
    out_bias += bias
