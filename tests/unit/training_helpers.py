"""Small models and loops shared by the training-recorder tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from circuitboard.training import AttentionOnlyTransformer, repeated_sequences


class TokenMLP(nn.Module):
    """Embedding → MLP → unembedding over ``[batch, pos]`` ids (per-token activations)."""

    def __init__(self, vocab: int = 16, d: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.up = nn.Linear(d, 2 * d)
        self.act = nn.ReLU()
        self.down = nn.Linear(2 * d, d)
        self.unembed = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        return self.unembed(h + self.down(self.act(self.up(h))))


def token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-token next-token loss ``[batch, pos]`` (0 at the last position)."""
    B, T, V = logits.shape
    tok = nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1), reduction="none"
    ).view(B, T - 1)
    return torch.cat([tok, torch.zeros(B, 1)], 1)


def tiny_toy(seed: int = 0) -> AttentionOnlyTransformer:
    torch.manual_seed(seed)
    return AttentionOnlyTransformer(n_layers=2, d_model=16, n_heads=2, vocab=12, n_ctx=16)


def toy_batch(step: int, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return repeated_sequences(batch, 16, 12, periods=(3, 6), generator=g)


def train_toy(
    model: nn.Module,
    steps: int,
    rec: Any = None,
    *,
    start: int = 0,
    raise_at: int | None = None,
    exc: type[BaseException] = RuntimeError,
    lr: float = 1e-2,
    batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]] = toy_batch,
) -> None:
    """AdamW on the repeated-sequence task (``batch(step)``: ids and repeat mask); optionally
    recorded, optionally failing at a step."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(start, start + steps):
        ids, _ = batch(step)
        ctx = rec.step(step) if rec is not None else _null()
        with ctx:
            if step == raise_at:
                raise exc("planted failure")
            per = token_loss(model(ids), ids)
            loss = per.mean()
            if rec is not None:
                rec.loss(per)
            loss.backward()
        opt.step()
        opt.zero_grad()


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: Any) -> None:
        return None


def hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )
