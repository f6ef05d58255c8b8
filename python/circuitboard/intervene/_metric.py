"""Metrics of the logits at one position, answer tokens, and the clean = 1 / corrupted = 0 scale.

Contract for a metric: a callable that takes the float32 logits at the metric position,
``[vocab]``, and returns a scalar (a 0-dim tensor or a float). Built-in metrics
(:func:`logit_diff`, :func:`log_prob`) also accept ``[..., vocab]`` and return ``[...]``; they
set ``metric.batched = True`` so :func:`evaluate` calls them once per batch. Keep metrics
differentiable (torch ops) for attribution patching.

A *per-example* metric takes the pair's index too: ``metric(logits, index)`` (two required
positional parameters), so pairs with different answers share one call of ``cb.patch`` /
``cb.circuit`` and its engines. :func:`at_index` binds the index of each pair (its place in
the whole list, also on a worker that runs a shard of it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Metric = Callable[[torch.Tensor], Any]

MIN_RANGE = 1e-6
"""Smallest ``|m_clean − m_corrupted|`` that :func:`normalize` accepts."""


def token_id(tokenizer: Any, token: str | int, what: str = "answer") -> int:
    """The id of a one-token string (or an id, checked against the vocabulary).

    Examples
    --------
    >>> from circuitboard.testing import tiny_tokenizer
    >>> tok = tiny_tokenizer()
    >>> token_id(tok, " the") == tok(" the", add_special_tokens=False)["input_ids"][0]
    True
    """
    if isinstance(token, bool):
        raise ValueError(f"{what} must be a one-token string or a token id; got {token!r}.")
    if isinstance(token, int):
        n = len(tokenizer) if tokenizer is not None else None
        if token < 0 or (n is not None and token >= n):
            raise ValueError(f"{what}={token} is not a token id (vocabulary size {n}).")
        return token
    if not isinstance(token, str) or not token:
        raise ValueError(f"{what} must be a one-token string or a token id; got {token!r}.")
    if tokenizer is None:
        raise ValueError(
            f"{what}={token!r} is a string but tokenizer is None: pass the model's tokenizer, "
            "or the token id (an int) instead."
        )
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        raise ValueError(
            f"{what}={token!r} is {len(ids)} tokens {pieces}; the metric needs one token. Use "
            f"its first token ({pieces[0]!r} = id {ids[0]}) or pass a token id, or a metric="
            "callable for multi-token answers."
        )
    return int(ids[0])


def token_ids(tokenizer: Any, token: Any, what: str = "answer") -> int | tuple[int, ...]:
    """:func:`token_id`, or for a list / tuple / set of tokens the sorted tuple of their
    distinct ids (a set answer: the metric uses the mean of their logits).

    Examples
    --------
    >>> token_ids(None, [7, 3, 7])
    (3, 7)
    """
    if isinstance(token, list | tuple | set | frozenset):
        items = sorted(token, key=repr) if isinstance(token, set | frozenset) else list(token)
        if not items:
            raise ValueError(f"{what}=[] is an empty token set; give one token or several.")
        ids = sorted({token_id(tokenizer, x, f"{what}[{i}]") for i, x in enumerate(items)})
        return ids[0] if len(ids) == 1 else tuple(ids)
    return token_id(tokenizer, token, what)


def _mean_logit(logits: torch.Tensor, ids: int | tuple[int, ...]) -> torch.Tensor:
    return logits[..., ids] if isinstance(ids, int) else logits[..., list(ids)].mean(-1)


def logit_diff(answer: int | tuple[int, ...], wrong: int | tuple[int, ...] | None = None) -> Metric:
    """``logits[answer] − logits[wrong]`` (or ``logits[answer]`` when ``wrong`` is None).

    A tuple of ids is a token set, valued as the mean of its logits (linear in the logits, so
    exact patching identities and attribution stay exact).

    Examples
    --------
    >>> m = logit_diff(2, 0)
    >>> float(m(torch.tensor([1.0, 0.0, 4.0])))
    3.0
    >>> float(logit_diff((1, 2), 0)(torch.tensor([1.0, 0.0, 4.0])))
    1.0
    """

    def metric(logits: torch.Tensor) -> torch.Tensor:
        out = _mean_logit(logits, answer)
        return out - _mean_logit(logits, wrong) if wrong is not None else out

    def name(ids: Any) -> str:
        return f"logit[{ids}]" if isinstance(ids, int) else f"mean logit[{list(ids)}]"

    metric.batched = True  # type: ignore[attr-defined]
    metric.description = (  # type: ignore[attr-defined]
        f"{name(answer)} − {name(wrong)}" if wrong is not None else name(answer)
    )
    return metric


def log_prob(answer: int) -> Metric:
    """``log_softmax(logits)[answer]``.

    Examples
    --------
    >>> round(float(log_prob(0)(torch.zeros(4))), 4)
    -1.3863
    """

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits, -1)[..., answer]

    metric.batched = True  # type: ignore[attr-defined]
    metric.description = f"log p[{answer}]"  # type: ignore[attr-defined]
    return metric


def direction_metric(
    answer: Any, wrong: Any, d_model: int | None, d_vocab: int | None, what: str = "answer"
) -> Any:
    """The metric of ``answer=cb.Direction(v)`` (``logits · v``), or None when ``answer`` is
    not a direction. Refuses a ``wrong=`` beside it and residual-stream directions (patching
    metrics see only the logits)."""
    from .._direction import Direction

    if isinstance(wrong, Direction):
        raise ValueError(
            "wrong= takes tokens; a direction is the whole target: pass "
            "answer=cb.Direction(v_answer − v_wrong)."
        )
    if not isinstance(answer, Direction):
        return None
    if wrong is not None:
        raise ValueError(
            f"{what}=cb.Direction(...) takes no wrong=: fold it into the vector (for a "
            "vocabulary direction subtract the wrong token's one-hot, v[w] -= 1)."
        )
    d = answer.resolve(d_model, d_vocab, what)
    if d.space == "resid":
        d.value_of_logits(torch.zeros(0))  # raises: why, and what to use instead
    return d.metric()


def takes_index(metric: Any) -> bool:
    """Whether ``metric`` is per-example, ``metric(logits, index)``: it has two required
    positional parameters.

    Examples
    --------
    >>> takes_index(lambda logits, i: logits[i]), takes_index(lambda logits, k=2: logits[k])
    (True, False)
    """
    if isinstance(metric, AtIndex) or not callable(metric):
        return False
    try:
        params = inspect.signature(metric).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature take the logits alone
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in params if p.kind in positional and p.default is p.empty]
    return len(required) >= 2


@dataclass(frozen=True)
class AtIndex:
    """A per-example metric with its pair's index bound: ``AtIndex(m, i)(logits) ==
    m(logits, i)``. Picklable whenever ``m`` is (it travels to process and Ray workers).

    Examples
    --------
    >>> m = AtIndex(lambda logits, i: logits[i], 2)
    >>> float(m(torch.tensor([1.0, 5.0, 7.0]))), m.index
    (7.0, 2)
    """

    metric: Any
    index: int

    def __call__(self, logits: torch.Tensor) -> Any:
        return self.metric(logits, self.index)

    @property
    def batched(self) -> bool:
        return bool(getattr(self.metric, "batched", False))

    @property
    def description(self) -> str:
        name = getattr(self.metric, "__name__", "metric")
        return str(getattr(self.metric, "description", name))

    @property
    def __name__(self) -> str:  # type: ignore[override]
        return str(getattr(self.metric, "__name__", "metric"))


def at_index(metric: Any, index: int) -> Any:
    """``metric`` for pair ``index``: a per-example metric (:func:`takes_index`) with the index
    bound, any other metric as it is."""
    return AtIndex(metric, index) if takes_index(metric) else metric


def evaluate(metric: Metric, logits: torch.Tensor) -> torch.Tensor:
    """The metric of each row of ``logits [B, vocab]`` as a float tensor ``[B]`` (differentiable).

    Raises a ValueError naming the shape when the metric does not return one number per row.
    """
    if getattr(metric, "batched", False):
        out = metric(logits)
        if not isinstance(out, torch.Tensor) or out.shape != logits.shape[:1]:
            raise ValueError(f"batched metric returned {getattr(out, 'shape', out)!r}.")
        return _finite(out.float(), logits)
    return _finite(_rows(metric, logits), logits)


def _finite(values: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Refuse a metric that came out inf or NaN: every normalized number would be NaN."""
    if bool(torch.isfinite(values.detach()).all()):
        return values
    bad = values.detach()[~torch.isfinite(values.detach())][0].item()
    if not bool(torch.isfinite(logits.detach()).all()):
        cause = (
            "the model's own logits hold inf or NaN: the forward overflowed in its dtype. "
            "Load the model in bfloat16 or float32 (from_pretrained(..., dtype=torch.bfloat16)) "
            "instead of float16"
        )
    else:
        cause = (
            "the logits are finite, so the metric itself overflowed or divided by zero: compute "
            "it in float32 (logits.float()) and avoid exp/softmax of raw logits"
        )
    raise ValueError(f"the metric gave {bad} on a run: {cause}.")


def _rows(metric: Metric, logits: torch.Tensor) -> torch.Tensor:
    vals = []
    for row in logits:
        v = metric(row)
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                raise ValueError(
                    f"metric returned a tensor of shape {tuple(v.shape)}; it must return one "
                    "number (a 0-dim tensor or a float) from the logits at the metric position "
                    "[vocab]. Reduce it, e.g. with .sum() or by indexing one token."
                )
            vals.append(v.reshape(()).float())
        elif isinstance(v, int | float) and not isinstance(v, bool):
            vals.append(torch.tensor(float(v), device=logits.device))
        else:
            raise ValueError(
                f"metric returned {type(v).__name__} {v!r}; it must return one number (a 0-dim "
                "tensor or a float) from the logits at the metric position [vocab]."
            )
    return torch.stack(vals)


def resolution(model: Any, *values: float) -> float:
    """The smallest endpoint gap worth normalizing for a model: :data:`MIN_RANGE`, or for a
    half-precision model 4 × its dtype's eps × the endpoints' size (its logits are rounded).

    Examples
    --------
    >>> resolution(torch.nn.Linear(1, 1).to(torch.bfloat16), 2.0, -1.0)
    0.0625
    """
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return max(MIN_RANGE, 4 * torch.finfo(dtype).eps * max(map(abs, values), default=0.0))


def normalize(raw: Any, clean: float, corrupted: float, *, min_range: float = MIN_RANGE) -> Any:
    """``(raw − corrupted) / (clean − corrupted)``: clean = 1, corrupted = 0.

    Refuses (ValueError) when the endpoints are closer than ``min_range`` (default
    :data:`MIN_RANGE`; a half-precision model's :func:`resolution`): the scale would only
    amplify noise.

    Examples
    --------
    >>> normalize(2.0, clean=3.0, corrupted=1.0)
    0.5
    """
    span = clean - corrupted
    if not abs(span) > min_range:
        raise ValueError(
            f"cannot normalize: the metric is {clean:.6g} on the clean run and {corrupted:.6g} on "
            f"the corrupted run (difference below {min_range:.2g}, what the model's precision "
            "resolves), so clean = 1 / corrupted = 0 is undefined. Pick a corrupted prompt (or "
            "answer/wrong tokens) the model tells apart."
        )
    return (raw - corrupted) / span


__all__ = [
    "MIN_RANGE",
    "AtIndex",
    "at_index",
    "direction_metric",
    "evaluate",
    "log_prob",
    "logit_diff",
    "normalize",
    "resolution",
    "takes_index",
    "token_id",
    "token_ids",
]
