"""Targets that are directions: ``cb.Direction(vector)`` wherever a token target is taken.

A direction over the **vocabulary** (``d_vocab`` entries) is valued as ``logits · vector`` (a
token is the one-hot vector, a token set its mean, a logit difference ``e_a − e_b``); a
direction over the **residual stream** (``d_model`` entries) as ``final_norm(resid) · vector``,
the unembedding's input read along it (a probe's direction, a feature's decoder row). Both are
linear in the final residual once the final norm's scale is frozen, so direct logit
attribution stays exact.

Where it is taken: ``cb.direct_logit_attribution`` / ``cb.logit_attribution`` /
``cb.explain_head_output`` / ``Generation.attribution`` / ``cb.attribution_graph``
(``target=``, both spaces); ``cb.patch`` and ``cb.circuit`` (``answer=``, vocabulary
directions: their metrics are functions of the logits, which a residual direction is not).
A direction is the whole target: ``baseline=`` / ``wrong=`` beside it are refused (fold them
into the vector).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

SPACES = ("vocab", "resid")


class Direction:
    """A direction target: ``vector`` over the vocabulary or the residual stream.

    Parameters
    ----------
    vector
        1-D tensor, array or list: ``d_vocab`` entries (a logit direction) or ``d_model``
        entries (a residual-stream direction, read after the final norm).
    space
        ``"vocab"`` or ``"resid"``; by default from the length (required when a model's
        ``d_model`` equals its ``d_vocab``).
    name
        How results label it (default ``"direction"``).

    Examples
    --------
    >>> import circuitboard as cb
    >>> d = cb.Direction([0.0, 1.0, -1.0], name="b − c")
    >>> d.resolve(d_model=2, d_vocab=3, what="target").space
    'vocab'
    >>> float(d.value_of_logits(torch.tensor([5.0, 2.0, 0.5])))
    1.5
    """

    def __init__(self, vector: Any, *, space: str | None = None, name: str = "direction") -> None:
        v = torch.as_tensor(vector).detach()
        if v.ndim != 1 or v.numel() == 0:
            raise ValueError(
                f"Direction needs a 1-D vector (d_vocab or d_model entries); got shape "
                f"{tuple(v.shape)}. Flatten it, or pass one row of a matrix."
            )
        v = v.to("cpu", torch.float64)
        if not bool(torch.isfinite(v).all()):
            raise ValueError("Direction vector holds NaN or inf; pass a finite vector.")
        if space is not None and space not in SPACES:
            raise ValueError(f"Direction space must be 'vocab' or 'resid'; got {space!r}.")
        self.vector, self.space, self.name = v, space, str(name)

    def resolve(self, d_model: int | None, d_vocab: int | None, what: str = "target") -> Direction:
        """This direction with its ``space`` decided for a model; errors name the sizes. With
        neither size known (no model at hand) an undeclared space is the vocabulary's."""
        n = len(self.vector)
        if d_model is None and d_vocab is None:
            return self if self.space else Direction(self.vector, space="vocab", name=self.name)
        if self.space is not None:
            want = d_vocab if self.space == "vocab" else d_model
            if want is not None and n != want:
                raise ValueError(
                    f"{what}=cb.Direction(..., space={self.space!r}) has {n} entries; this "
                    f"model's {'vocabulary' if self.space == 'vocab' else 'd_model'} is {want}."
                )
            return self
        fits = [s for s, size in (("vocab", d_vocab), ("resid", d_model)) if size == n]
        if len(fits) == 2:
            raise ValueError(
                f"{what}=cb.Direction(...) has {n} entries, both this model's d_vocab and its "
                "d_model; say which: cb.Direction(v, space='vocab') or space='resid'."
            )
        if not fits:
            raise ValueError(
                f"{what}=cb.Direction(...) has {n} entries; this model needs d_vocab={d_vocab} "
                f"(a logit direction) or d_model={d_model} (a residual-stream direction)."
            )
        return Direction(self.vector, space=fits[0], name=self.name)

    def value_of_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits [..., vocab] · vector`` (a vocabulary direction only)."""
        if self.space == "resid":
            raise ValueError(
                f"{self.name!r} is a residual-stream direction: its value is read before the "
                "unembedding, which a function of the logits cannot see. Take it where the "
                "residual is (cb.direct_logit_attribution, cb.attribution_graph), or pass a "
                "vocabulary direction (d_vocab entries)."
            )
        return logits @ self.vector.to(logits.device, logits.dtype)

    def metric(self) -> Any:
        """A batched metric (``[..., vocab] -> [...]``) of this vocabulary direction; picklable."""
        return _DirectionMetric(self)

    @property
    def label(self) -> str:
        kind = {"vocab": "logit direction", "resid": "residual direction"}.get(
            self.space or "", "direction"
        )
        return f"{kind} {self.name!r}"

    def __repr__(self) -> str:
        # the vector's digest: checkpoint keys (built from reprs) tell two directions apart
        digest = hashlib.sha256(self.vector.numpy().tobytes()).hexdigest()[:12]
        space = f", space={self.space!r}" if self.space else ""
        return f"Direction({len(self.vector)} entries{space}, name={self.name!r}, sha {digest})"


class _DirectionMetric:
    """``logits · vector``: the metric of a vocabulary :class:`Direction`."""

    batched = True

    def __init__(self, direction: Direction) -> None:
        self.direction = direction
        self.description = direction.label
        self.__name__ = direction.name

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return self.direction.value_of_logits(logits)


__all__ = ["Direction"]
