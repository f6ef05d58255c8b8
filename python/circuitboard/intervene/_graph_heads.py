"""Head loadings: each cross-position edge of an attribution graph split into per-head parts.

Going down from a target at position ``t``, the gradient that has stayed at ``t`` (through the
residual stream and attention to ``t`` itself) is *untagged*. At every layer, each head's share
of it that lands on an earlier position starts a *tagged* path ``(layer, head)``: the last hop
at which the path changes position. Causal attention never returns to ``t``, so the parts of an
edge from a source at another position sum to the edge exactly.
"""

from __future__ import annotations

import torch

from ._graph_rows import NeuronBasis


def _untagged_seeds(basis: NeuronBasis, direction, cand) -> tuple[int, int, int, torch.Tensor]:
    """``(position, layer where the seed enters, 0 final / 1 MLP input, seed [pos, d_model])``."""
    fr = basis.fr
    P, D = fr.n_pos, fr.embed.shape[1]
    seed = torch.zeros(P, D)
    if direction is not None:
        seed[P - 1] = fr.logit_seed(direction)
        return P - 1, fr.n_layers - 1, 0, seed
    ((layer, idx, pos, seeds, _),) = basis.seeds(torch.as_tensor([cand]))
    seed[int(pos[0])] = seeds[0]
    return int(pos[0]), layer, 1, seed


def _sources(basis: NeuronBasis, cols: torch.Tensor):
    """``(layer, pos, vector)`` each source column writes (layer -1: token embeddings)."""
    fr = basis.fr
    is_basis = cols < basis.n_basis
    is_error = (cols >= basis.n_basis) & (cols < basis.token_offset)
    is_token = cols >= basis.token_offset
    P = fr.n_pos
    layer_of = torch.full((len(cols),), -2, dtype=torch.long)
    pos_of = torch.zeros(len(cols), dtype=torch.long)
    vecs = torch.zeros(len(cols), fr.d_model)
    if is_basis.any():
        lyr, pos, vec = basis.writes(cols[is_basis])
        layer_of[is_basis], pos_of[is_basis], vecs[is_basis] = lyr, pos, vec
    if is_error.any():
        e = cols[is_error] - basis.n_basis
        layer_of[is_error], pos_of[is_error] = e // P, e % P
        vecs[is_error] = torch.stack(
            [basis.errors[int(a)][int(b)] for a, b in zip(e // P, e % P, strict=True)]
        )
    if is_token.any():
        pos_of[is_token] = cols[is_token] - basis.token_offset
        layer_of[is_token] = -1
        vecs[is_token] = fr.embed[pos_of[is_token]]
    return layer_of, pos_of, vecs


def head_parts(
    basis: NeuronBasis,
    cols: torch.Tensor,
    direction: torch.Tensor | None = None,
    cand: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head parts of the edges from source columns ``cols`` into one target (a logit
    direction or a basis candidate). Returns ``tags [n, 2]`` (layer, head) and
    ``parts [n, len(cols)]``; for sources at another position than the target, ``parts``
    sums over tags to the edge.

    Going down, each layer's heads that move gradient off the target's position start their
    tagged paths at once (one backward pass of at most ``n_heads`` rows from the layer below),
    so no more than one layer's tagged gradients ``[heads, pos, d_model]`` is held.
    """
    from ._graph_rows import rows_per_backward

    fr = basis.fr
    t, top, where, seed = _untagged_seeds(basis, direction, cand)
    cols = torch.as_tensor(cols, dtype=torch.long)
    layer_of, pos_of, vecs = _sources(basis, cols)
    step = rows_per_backward(fr.n_pos, fr.d_model)

    def read_into(vals: torch.Tensor):
        def read(layer: int, gr: torch.Tensor) -> None:
            j = (layer_of == layer).nonzero().flatten()
            if len(j):
                vals[:, j] = (gr[:, pos_of[j]] * vecs[j]).sum(-1)

        return read

    g = torch.zeros_like(seed)[None]
    tags: list[tuple[int, int]] = []
    out: list[torch.Tensor] = []
    for layer in range(top, -1, -1):
        if layer == top and (where == 0 or not fr.parallel):
            g = g + seed
        if g.abs().amax() > 0:
            parts = fr.head_vjp(layer, g)[0]  # [heads, pos, d_model]
            g = g.clone()
            g[0, t] += parts[:, t].sum(0)
            parts[:, t] = 0  # what moved off the target's position, per head
            live = [h for h in range(parts.shape[0]) if parts[h].abs().amax() > 0]
            for s in range(0, len(live), step):
                hs = live[s : s + step]
                vals = torch.zeros(len(hs), len(cols))
                read = read_into(vals)
                fr.backward(
                    None,
                    {},
                    read,
                    lambda gr, read=read: read(-1, gr),
                    {layer - 1: parts[hs]},
                    n_rows=len(hs),
                )
                tags.extend((layer, h) for h in hs)
                out.append(vals)
            del parts
        if layer == top and where == 1 and fr.parallel:
            g = g + seed  # the target reads resid_pre: its own layer's attention is not upstream
    if not tags:
        return torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, len(cols))
    return torch.tensor(tags, dtype=torch.long), torch.cat(out)
