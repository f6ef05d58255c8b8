"""Head scores: how much each head attends to the previous, duplicate, induction and first token."""

from __future__ import annotations

from typing import Any

import torch

SCORES = ("previous_token", "induction", "duplicate_token", "first_token")


def scores_from_patterns(patterns: Any, token_ids: Any) -> dict[str, torch.Tensor]:
    """Head scores from attention patterns and the tokens they were computed on.

    For each query position ``q``:

    - ``previous_token``: attention on ``q - 1`` (queries ``q >= 1``);
    - ``duplicate_token``: attention on earlier positions holding the same token as ``q``;
    - ``induction``: attention on the positions right after earlier copies of ``q``'s token
      (``j + 1`` where ``tokens[j] == tokens[q]``, ``j + 1 < q``);
    - ``first_token``: attention on position 0 (queries ``q >= 1``).

    Each score is averaged over the queries where it is defined (and over the batch), so a
    head that always does the thing scores 1.

    Parameters
    ----------
    patterns : tensor ``[layers, heads, query, key]`` or ``[batch, layers, heads, query, key]``
    token_ids : tensor ``[pos]`` or ``[batch, pos]``

    Returns
    -------
    dict mapping each name in ``("previous_token", "induction", "duplicate_token",
    "first_token")`` to a ``[layers, heads]`` tensor (NaN where no query qualifies).

    Examples
    --------
    >>> ids = torch.tensor([5, 6, 7, 5, 6, 7])
    >>> prev = torch.diag(torch.ones(5), -1); prev[0, 0] = 1
    >>> s = scores_from_patterns(prev[None, None], ids)
    >>> float(s["previous_token"][0, 0]), float(s["induction"][0, 0])
    (1.0, 0.0)
    """
    att = torch.as_tensor(patterns).detach().float().cpu()
    ids = torch.as_tensor(token_ids).detach().long().cpu()
    if att.ndim == 4:
        att = att[None]
    if ids.ndim == 1:
        ids = ids[None]
    if att.ndim != 5 or att.shape[-1] != att.shape[-2]:
        raise ValueError(
            f"patterns must be [layers, heads, query, key] or [batch, layers, heads, query, key] "
            f"with query == key; got shape {tuple(att.shape)}."
        )
    B, L, H, n, _ = att.shape
    if ids.shape != (B, n):
        raise ValueError(
            f"token_ids has shape {tuple(ids.shape)} but the patterns need [{B}, {n}] "
            "(one id per position, per batch row)."
        )
    q = torch.arange(n)
    earlier = q[None, :] < q[:, None]  # [q, k]: k < q
    same = ids[:, :, None] == ids[:, None, :]  # [B, q, k]
    dup = same & earlier  # earlier copies of q's token
    # induction target k = j + 1 for every earlier copy j with j + 1 < q.
    ind = torch.zeros_like(dup)
    ind[:, :, 1:] = dup[:, :, :-1] & earlier[None, :, 1:]
    prev = torch.zeros(n, n, dtype=torch.bool)
    prev[q[1:], q[1:] - 1] = True
    first = torch.zeros(n, n, dtype=torch.bool)
    first[1:, 0] = True

    def score(mask: torch.Tensor) -> torch.Tensor:
        mask = mask.expand(B, n, n) if mask.ndim == 2 else mask
        rows = mask.any(-1)  # [B, q] queries where the score is defined
        mass = (att * mask[:, None, None].float()).sum(-1)  # [B, L, H, q]
        count = rows.sum()
        if count == 0:
            return torch.full((L, H), float("nan"))
        return (mass * rows[:, None, None].float()).sum((0, -1)) / count

    return {
        "previous_token": score(prev),
        "induction": score(ind),
        "duplicate_token": score(dup),
        "first_token": score(first),
    }


def _random_ids(tokenizer: Any, vocab: int, shape: tuple[int, int], seed: int) -> torch.Tensor:
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, shape, generator=gen)
    if special:
        bad = torch.tensor(sorted(special))
        while bool(torch.isin(ids, bad).any()):
            mask = torch.isin(ids, bad)
            ids[mask] = torch.randint(0, vocab, (int(mask.sum()),), generator=gen)
    return ids


@torch.no_grad()
def head_scores(
    model: Any,
    tokenizer: Any = None,
    *,
    seq_len: int = 50,
    n_seqs: int = 4,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Score every head on previous-token, induction, duplicate-token and first-token attention.

    With a model, runs ``n_seqs`` sequences of ``seq_len`` random tokens repeated twice
    (after the tokenizer's BOS token, when it has one): induction heads attend from the
    second copy of a token to the token after its first copy. With a Capture, scores the
    captured prompt's own patterns (induction and duplicate scores then need repeated tokens).

    Parameters
    ----------
    model : Hugging Face causal LM, or a Capture with attention patterns
    tokenizer : the model's tokenizer (to avoid special tokens and add BOS)
    seq_len, n_seqs, seed : size and seed of the random repeated sequences

    Returns
    -------
    dict of ``[layers, heads]`` float tensors, keys ``"previous_token"``, ``"induction"``,
    ``"duplicate_token"``, ``"first_token"``.

    Examples
    --------
    >>> scores = cb.head_scores(model, tokenizer)  # doctest: +SKIP
    >>> scores["induction"].max()  # doctest: +SKIP
    tensor(0.93)
    """
    if hasattr(model, "stack") and hasattr(model, "tensors"):  # a Capture
        cap = model
        if not cap.layers("attn.hook_pattern"):
            raise ValueError(
                "this capture has no attention patterns (blocks.*.attn.hook_pattern); capture "
                "again with patterns, or pass (model, tokenizer) to score on random tokens."
            )
        return scores_from_patterns(cap.stack("attn.hook_pattern"), cap.token_ids)
    if not hasattr(model, "config") or not callable(model):
        raise TypeError(
            f"head_scores expects a Hugging Face model (and tokenizer) or a Capture; got "
            f"{type(model).__name__}."
        )
    for name, v in (("seq_len", seq_len), ("n_seqs", n_seqs)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 2:
            raise ValueError(f"{name} must be an int >= 2; got {v!r}.")
    cfg = model.config
    half = _random_ids(tokenizer, cfg.vocab_size, (n_seqs, seq_len), seed)
    ids = torch.cat([half, half], dim=1)
    bos = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None
    if bos is not None:
        ids = torch.cat([torch.full((n_seqs, 1), int(bos)), ids], dim=1)
    device = next(model.parameters()).device
    before = getattr(cfg, "_attn_implementation", None)
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    try:
        out = model(input_ids=ids.to(device), output_attentions=True)
    finally:
        if before is not None and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(before)
    att = torch.stack([a.float().cpu() for a in out.attentions], dim=1)  # [B, L, H, n, n]
    return scores_from_patterns(att, ids)
