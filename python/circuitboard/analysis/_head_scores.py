"""Head scores: how much each head attends to the previous, duplicate, induction and first token."""

from __future__ import annotations

from typing import Any

import torch

from ..capture.adapters._base import execution_device

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
    if att.ndim == 4:
        att = att[None]
    if att.ndim != 5 or att.shape[-1] != att.shape[-2]:
        raise ValueError(
            f"patterns must be [layers, heads, query, key] or [batch, layers, heads, query, key] "
            f"with query == key; got shape {tuple(att.shape)}."
        )
    B, _, _, n, _ = att.shape
    ids = torch.as_tensor(token_ids).detach().long().cpu()
    if ids.ndim == 1:
        ids = ids[None]
    if ids.shape != (B, n):
        raise ValueError(
            f"token_ids has shape {tuple(ids.shape)} but the patterns need [{B}, {n}] "
            "(one id per position, per batch row)."
        )
    return apply_score_weights(att, score_weights(ids))


def score_weights(token_ids: torch.Tensor) -> tuple[tuple[str, ...], torch.Tensor]:
    """The score names and weights ``[batch, query * key, scores]`` whose sum against a
    pattern gives each score of :func:`scores_from_patterns`: the score's key mask over the
    number of queries where it is defined (NaN when there are none). They depend on the
    tokens only, so a fixed probe batch computes them once."""
    B, n = token_ids.shape
    q = torch.arange(n)
    earlier = q[None, :] < q[:, None]  # [q, k]: k < q
    same = token_ids[:, :, None] == token_ids[:, None, :]  # [B, q, k]
    dup = same & earlier  # earlier copies of q's token
    # induction target k = j + 1 for every earlier copy j with j + 1 < q.
    ind = torch.zeros_like(dup)
    ind[:, :, 1:] = dup[:, :, :-1] & earlier[None, :, 1:]
    prev = torch.zeros(n, n, dtype=torch.bool)
    prev[q[1:], q[1:] - 1] = True
    first = torch.zeros(n, n, dtype=torch.bool)
    first[1:, 0] = True

    def weights(mask: torch.Tensor) -> torch.Tensor:
        mask = mask.expand(B, n, n)
        count = mask.any(-1).sum()  # queries where the score is defined
        return mask.float() / count if count else torch.full((B, n, n), float("nan"))

    masks = {"previous_token": prev, "induction": ind, "duplicate_token": dup, "first_token": first}
    stacked = torch.stack([weights(m).reshape(B, n * n) for m in masks.values()], -1)
    return tuple(masks), stacked


def apply_score_weights(
    patterns: torch.Tensor, weights: tuple[tuple[str, ...], torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Scores ``[layers, heads]`` of patterns ``[batch, layers, heads, query, key]`` from
    :func:`score_weights` of their tokens, in one batched product."""
    names, w = weights
    B, L, H, n, _ = patterns.shape
    out = torch.bmm(patterns.reshape(B, L * H, n * n), w).sum(0)  # [L * H, scores]
    return {name: out[:, i].reshape(L, H) for i, name in enumerate(names)}


def _score_masks(ids: torch.Tensor, a: int, b: int) -> dict[str, torch.Tensor]:
    """The ``[b - a, n]`` key masks of each score for query rows ``[a, b)`` (see
    :func:`scores_from_patterns`)."""
    n = ids.shape[0]
    q = torch.arange(a, b)[:, None]
    k = torch.arange(n)[None, :]
    earlier = k < q
    dup = (ids[a:b, None] == ids[None, :]) & earlier
    ind = torch.zeros_like(dup)
    ind[:, 1:] = dup[:, :-1] & earlier[:, 1:]
    return {
        "previous_token": (k == q - 1) & (q >= 1),
        "induction": ind,
        "duplicate_token": dup,
        "first_token": (k == 0) & (q >= 1),
    }


def scores_from_capture(cap: Any, layers: list[int] | None = None) -> dict[str, torch.Tensor]:
    """:func:`scores_from_patterns` of one capture, read in chunks of query rows.

    Never holds more than one chunk of a layer's pattern (``cap.pattern_rows``), so it works
    at the model's full context on captures whose patterns are computed on demand. Returns
    ``[layers, heads]`` tensors for ``layers`` (default: every captured layer).

    Examples
    --------
    >>> from circuitboard.capture import Capture
    >>> ids = torch.tensor([5, 6, 7, 5, 6, 7])
    >>> prev = torch.diag(torch.ones(5), -1); prev[0, 0] = 1
    >>> cap = Capture(["x"] * 6, ids, {"blocks.0.attn.hook_pattern": prev[None]})
    >>> float(scores_from_capture(cap)["previous_token"][0, 0])
    1.0
    """
    layers = cap.layers("attn.hook_pattern") if layers is None else list(layers)
    ids = torch.as_tensor(cap.token_ids).long().cpu()
    rows: list[dict[str, torch.Tensor]] = []
    counts = dict.fromkeys(SCORES, 0)
    for li, layer in enumerate(layers):
        total: dict[str, torch.Tensor] = {}
        for a, p in cap.pattern_rows(layer):
            masks = _score_masks(ids, a, a + p.shape[1])
            for name, m in masks.items():
                # per head and row q: p[h, q] . m[q], as batched dot products over p[h]'s own
                # contiguous rows: no [H, rows, n] temporary (a transposed p would be copied)
                mf = m.float()[:, :, None]
                mass = torch.stack([torch.bmm(p[h][:, None, :], mf).sum() for h in range(len(p))])
                total[name] = total.get(name, 0) + mass
                if li == 0:
                    counts[name] += int(m.any(-1).sum())
            del p, masks  # before the next chunk is computed (see Patterns.rows)
        rows.append(total)
    out = {}
    for name in SCORES:
        if counts[name] == 0 or not rows:
            n_heads = cap.pattern(layers[0], queries=0).shape[0] if layers else 0
            out[name] = torch.full((len(layers), n_heads), float("nan"))
        else:
            out[name] = torch.stack([r[name] for r in rows]) / counts[name]
    return out


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
        return scores_from_capture(cap)
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
    device = execution_device(model)
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
