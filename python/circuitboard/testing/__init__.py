"""Tiny, randomly initialized models for tests and docstring examples, built offline.

Every supported architecture has a model a few layers deep with small dimensions, seeded (two
calls give the same weights), and a byte-level BPE tokenizer trained in code on a small corpus.
They need ``transformers`` (the ``capture`` extra) and nothing from the network, so your own
tests can run circuitboard end to end in a second.

>>> from circuitboard.testing import tiny_model
>>> model, tok = tiny_model("llama")
>>> model.config.num_hidden_layers, model.config.model_type
(2, 'llama')
"""

from __future__ import annotations

from typing import Any

from ._models import (
    ARCH_FACTORIES,
    ATTENTION_VARIANTS,
    FACTORIES,
    MORE_TYPES,
    tiny_tokenizer,
    tiny_vit,
)
from ._shapes import SHAPES, random_model

__all__ = ["SHAPES", "families", "random_model", "tiny_model", "tiny_tokenizer"]


def _all() -> dict[str, Any]:
    return {**FACTORIES, **ARCH_FACTORIES, **ATTENTION_VARIANTS, **MORE_TYPES, "vit": tiny_vit}


def families() -> list[str]:
    """The names :func:`tiny_model` accepts, sorted.

    >>> "gpt2" in families() and "vit" in families()
    True
    """
    return sorted(_all())


def tiny_model(family: str, seed: int = 0, **options: Any) -> tuple[Any, Any]:
    """A tiny random model of ``family`` and its tokenizer (``None`` for the image model ``vit``).

    Parameters
    ----------
    family : str
        An architecture name from :func:`families`, e.g. ``"gpt2"``, ``"llama"`` (grouped-query
        attention), ``"gemma2"``, ``"mixtral"``, ``"bert"`` or ``"vit"``.
    seed : int
        Seed of the random weights (the same seed gives the same model).
    **options
        Passed to the family's builder: ``channels=1`` for ``"vit"`` (grey images).

    Returns
    -------
    (model, tokenizer)
        The model in eval mode; a Hugging Face fast tokenizer (``None`` for ``"vit"``).

    Examples
    --------
    >>> import circuitboard as cb
    >>> from circuitboard.testing import tiny_model
    >>> model, tok = tiny_model("gpt2")
    >>> cap = cb.capture(model, tok, "When Mary and John went to the store")
    >>> cap["blocks.0.attn.hook_pattern"].shape[0] == model.config.n_head
    True
    """
    factories = _all()
    if family not in factories:
        raise ValueError(
            f"tiny_model got family={family!r}; expected one of {', '.join(sorted(factories))}. "
            "Pass one of those names."
        )
    return factories[family](seed=seed, **options)
