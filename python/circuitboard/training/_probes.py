"""Attention patterns and head scores of a fixed probe batch, taken between training steps."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from ..analysis._head_scores import apply_score_weights, score_weights
from ._sites import adapter_sites

HEAD_SCORES = ("induction", "previous_token", "duplicate_token")


def pattern_modules(model: Any) -> list[Any]:
    """Modules named ``...attn.hook_pattern`` (TransformerLens hook points and circuitboard's
    :class:`~circuitboard.training.AttentionOnlyTransformer`), in layer order."""
    return [m for n, m in model.named_modules() if n.endswith("attn.hook_pattern")]


def can_probe(model: Any) -> bool:
    return bool(pattern_modules(model)) or adapter_sites(model) is not None


@contextlib.contextmanager
def _probe_mode(model: Any) -> Any:
    """Eval mode without gradients, training mode restored after (dropout never runs, so the
    random number generator is not touched and training stays bit-identical)."""
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            yield
    finally:
        model.train(was)


def probe_patterns(model: Any, ids: torch.Tensor) -> np.ndarray:
    """Attention patterns ``[batch, layers, heads, query, key]`` (float32) of ``ids``."""
    mods = pattern_modules(model)
    dev = next(model.parameters()).device
    ids = ids.to(dev)
    with _probe_mode(model):
        if mods:
            got: list[torch.Tensor] = []
            handles = [
                m.register_forward_hook(lambda mod, a, out: got.append(out.detach().float()))
                for m in mods
            ]
            try:
                model(ids)
            finally:
                for h in handles:
                    h.remove()
            att = torch.stack(got, 1)
        else:
            from ..capture._run import _capture_mode

            with _capture_mode(model, eager=True):
                out = model(ids, output_attentions=True)
            att = torch.stack([a.detach().float() for a in out.attentions], 1)
    return att.cpu().numpy()


def weights(ids: torch.Tensor) -> Any:
    """What :func:`scores` needs of the probe tokens (computed once per recorder)."""
    return score_weights(ids.cpu())


def scores(patterns: np.ndarray, weights: Any) -> dict[str, np.ndarray]:
    """Induction, previous-token and duplicate-token scores ``[layers, heads]`` of patterns
    (those of :func:`circuitboard.analysis.scores_from_patterns`: mass on every position that
    follows an earlier copy of the query's token, and so on), from the probe tokens'
    :func:`weights`."""
    s = apply_score_weights(torch.from_numpy(patterns), weights)
    return {k: s[k].numpy().astype(np.float32) for k in HEAD_SCORES}


def quantize(patterns: np.ndarray) -> np.ndarray:
    """Patterns as uint8 codes (``p ≈ code / 255``, error ≤ 1/510)."""
    return np.clip(np.rint(patterns * 255.0), 0, 255).astype(np.uint8)
