"""A small attention-only transformer and the repeated-sequence task where induction heads form.

The model names its tensors like TransformerLens (``blocks.{l}.attn.hook_pattern``,
``blocks.{l}.hook_resid_post``...) through identity modules, so a recorder, its probes and
capture names all find them.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_ctx: int) -> None:
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.o = nn.Linear(d_model, d_model)
        self.hook_pattern = nn.Identity()  # [batch, heads, query, key]
        self.hook_z = nn.Identity()  # [batch, pos, heads, d_head]
        self.register_buffer("mask", torch.tril(torch.ones(n_ctx, n_ctx, dtype=torch.bool)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.d_head).unbind(2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.d_head)
        scores = scores.masked_fill(~self.mask[:T, :T], float("-inf"))
        pattern = self.hook_pattern(scores.softmax(-1))
        # contiguous before the hook: the reshape below copies it anyway, and a hook (or a
        # recorder) then reads it in place instead of making a copy of its own
        z = self.hook_z(torch.einsum("bhqk,bkhd->bqhd", pattern, v).contiguous())
        return self.o(z.view(B, T, D))


class _Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_ctx: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = _Attention(d_model, n_heads, n_ctx)
        self.hook_attn_out = nn.Identity()
        self.hook_resid_post = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_resid_post(x + self.hook_attn_out(self.attn(self.ln1(x))))


class AttentionOnlyTransformer(nn.Module):
    """Pre-LayerNorm attention-only transformer with learned absolute positions.

    ``model(ids)`` returns logits ``[batch, pos, vocab]``. The defaults are the model in which
    induction heads form within a few hundred steps on :func:`repeated_sequences`.

    Examples
    --------
    >>> model = AttentionOnlyTransformer(n_layers=2, d_model=16, n_heads=2, vocab=8, n_ctx=8)
    >>> model(torch.zeros(1, 8, dtype=torch.long)).shape
    torch.Size([1, 8, 8])
    """

    def __init__(
        self,
        n_layers: int = 2,
        d_model: int = 64,
        n_heads: int = 4,
        vocab: int = 64,
        n_ctx: int = 64,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos_embed = nn.Embedding(n_ctx, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, n_heads, n_ctx) for _ in range(n_layers))
        self.ln_final = nn.LayerNorm(d_model)
        self.unembed = nn.Linear(d_model, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos_embed(torch.arange(ids.shape[1], device=ids.device))
        for blk in self.blocks:
            x = blk(x)
        return self.unembed(self.ln_final(x))


def repeated_sequences(
    batch: int,
    n_ctx: int = 64,
    vocab: int = 64,
    *,
    periods: tuple[int, int] = (6, 20),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[batch, n_ctx]``: a random segment of random period, repeated to fill the row.

    Returns ``(ids, repeated)`` where ``repeated`` ``[batch, n_ctx]`` is True from the second
    period on: those tokens can be predicted by copying (an induction head's job). A fixed
    period would let a layer-0 head copy from a fixed offset instead, and a single repeat inside
    random filler stays on its plateau for thousands of steps; this task avoids both.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> ids, rep = repeated_sequences(2, 12, 10, periods=(3, 3), generator=g)
    >>> bool((ids[:, 3:] == ids[:, :-3]).all()), rep[0].tolist()[:4]
    (True, [False, False, False, True])
    """
    lo, hi = periods
    p = torch.randint(lo, hi + 1, (batch, 1), generator=generator)
    seg = torch.randint(0, vocab, (batch, hi), generator=generator)
    pos = torch.arange(n_ctx)[None, :]
    ids = torch.gather(seg, 1, pos % p)
    return ids, pos >= p
