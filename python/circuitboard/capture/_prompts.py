"""Prompts as text or as token ids: one parser for every call that takes a prompt.

A prompt is a non-empty string, or token ids: a list/tuple of ints, or a 1-D integer tensor or
array. Several prompts are a list of those, or a 2-D integer tensor/array (one row each).
Token ids skip the tokenizer: their texts come from it when there is one (decoded one token
after another, see :func:`circuitboard.capture._tokens.decode_incremental`), else read
``"#<id>"``. A string needs a tokenizer; without one the error names the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._tokens import decode_incremental, tokenize

Prompt = str | list[int]


def _is_int(x: Any) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool | np.bool_)


def _array_dims(x: Any) -> tuple[int, bool] | None:
    """``(ndim, integer dtype)`` of a tensor / array, or None for anything else."""
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is None or dtype is None or isinstance(x, str | bytes):
        return None
    kind = getattr(np.dtype(dtype) if isinstance(x, np.ndarray) else None, "kind", None)
    integer = (
        kind in ("i", "u")
        if kind is not None
        else not (
            getattr(dtype, "is_floating_point", False)
            or getattr(dtype, "is_complex", False)
            or str(dtype) == "torch.bool"
        )
    )
    return len(shape), integer


def as_ids(x: Any) -> list[int] | None:
    """``x`` as a list of token ids when it is one prompt of ids; else None."""
    dims = _array_dims(x)
    if dims is not None:
        return [int(v) for v in x.tolist()] if dims == (1, True) else None
    if isinstance(x, list | tuple) and x and all(_is_int(v) for v in x):
        return [int(v) for v in x]
    return None


def _array_error(x: Any, what: str, image_model: bool) -> ValueError:
    ndim, integer = _array_dims(x)  # type: ignore[misc]
    shape = tuple(int(s) for s in x.shape)
    if not integer:
        hint = (
            "token ids are integers: pass a long tensor (ids.long()) or a list of ints."
            if not image_model
            else "Pass images (PIL images or arrays) to this image model."
        )
        if not image_model and ndim >= 2:  # [H, W], [C, H, W] or a batch of them
            hint += (
                " A float array of this shape looks like images: images go to an image model "
                "(ViTForImageClassification), not a language model."
            )
        return ValueError(f"{what} is a {x.dtype} array of shape {shape}; {hint}")
    return ValueError(
        f"{what} is an integer array of shape {shape}; token ids are one prompt [tokens] (1-D) "
        "or a batch [prompts, tokens] (2-D). Reshape it, e.g. ids.reshape(1, -1) or ids[0]."
    )


def split_prompts(prompts: Any, what: str = "prompts") -> tuple[list[Prompt], bool]:
    """``(items, single)``: each item a non-empty string or a non-empty list of token ids.

    Raises a ValueError saying what was received and what is accepted.

    Examples
    --------
    >>> split_prompts([3, 5, 7])
    ([[3, 5, 7]], True)
    >>> split_prompts(["a b", [1, 2]])
    (['a b', [1, 2]], False)
    """
    accepted = (
        "a string or a list of strings, or token ids (a list of ints or a 1-D integer tensor; "
        "several prompts: a list of those or a 2-D integer tensor [prompts, tokens])"
    )
    if isinstance(prompts, str):
        if not prompts:
            raise ValueError(f"{what}[0] must be a non-empty string or token ids; got ''.")
        return [prompts], True
    dims = _array_dims(prompts)
    if dims is not None:
        if dims == (1, True):
            if len(prompts) == 0:
                raise ValueError(f"{what} is an empty tensor; pass at least one token id.")
            return [as_ids(prompts)], True  # type: ignore[list-item]
        if dims == (2, True):
            rows = [[int(v) for v in row] for row in prompts.tolist()]
            if not rows or not rows[0]:
                raise ValueError(
                    f"{what} has shape {tuple(prompts.shape)}; pass at least one token."
                )
            return rows, False  # type: ignore[return-value]
        raise _array_error(prompts, what, image_model=False)
    ids = as_ids(prompts)
    if ids is not None:
        return [ids], True
    if not isinstance(prompts, Sequence) or isinstance(prompts, bytes):
        raise ValueError(f"{what} must be {accepted}; got {type(prompts).__name__}.")
    items = list(prompts)
    if not items:
        raise ValueError(f"{what} is an empty list; pass at least one prompt.")
    out: list[Prompt] = []
    for i, p in enumerate(items):
        if isinstance(p, str) and p:
            out.append(p)
            continue
        ids = as_ids(p)
        if ids is None:
            raise ValueError(
                f"{what}[{i}] must be a non-empty string or token ids (a list of ints or a 1-D "
                f"integer tensor); got {p!r}."
            )
        out.append(ids)
    return out, False


def id_texts(tokenizer: Any, ids: list[int]) -> list[str]:
    """Texts of token ids: decoded by the tokenizer when there is one, else ``"#<id>"``."""
    if tokenizer is None:
        return [f"#{i}" for i in ids]
    return decode_incremental(tokenizer, [], ids)


def encode(
    tokenizer: Any, prompt: Prompt, what: str = "prompt", d_vocab: int | None = None
) -> tuple[list[int], list[str]]:
    """Token ids and texts of one prompt (a string, or ids passed through unchanged).

    ``d_vocab`` (the model's vocabulary size) bounds the ids.

    Examples
    --------
    >>> encode(None, [5, 7])
    ([5, 7], ['#5', '#7'])
    """
    ids = as_ids(prompt)
    if ids is not None:
        check_vocab(ids, d_vocab, what)
        if min(ids) < 0:
            raise ValueError(f"{what} has the negative token id {min(ids)}; token ids are >= 0.")
        return ids, id_texts(tokenizer, ids)
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(
            f"{what} must be a non-empty string or token ids (a list of ints or a 1-D integer "
            f"tensor); got {prompt!r}."
        )
    if tokenizer is None:
        raise ValueError(
            f"{what} is a string ({prompt[:40]!r}) but tokenizer is None: pass the model's "
            "tokenizer, or token ids instead of text (a list of ints or a 1-D integer tensor)."
        )
    ids, texts = tokenize(tokenizer, prompt)
    if not ids:
        raise ValueError(f"the tokenizer produced no tokens for {what} {prompt!r}.")
    return ids, texts


def prompt_text(prompt: Prompt, texts: list[str]) -> str:
    """The text a prompt stands for: itself, or its tokens' texts joined (``"#1 #300"`` when
    they are bare ids)."""
    if isinstance(prompt, str):
        return prompt
    bare = all(t == f"#{i}" for t, i in zip(texts, prompt, strict=False))
    return (" " if bare else "").join(texts)


def check_vocab(ids: list[int], d_vocab: int | None, what: str = "prompt") -> None:
    """Refuse ids the model's embedding cannot look up (before any forward pass)."""
    if d_vocab is None:
        return
    bad = [i for i in ids if not 0 <= i < d_vocab]
    if bad:
        raise ValueError(
            f"{what} has token id {bad[0]}; the model's vocabulary has {d_vocab} entries "
            f"(ids 0..{d_vocab - 1})."
        )


def is_loaded_model(model: Any) -> bool:
    """True for a loaded torch module (it runs here even with ``tokenizer=None``, on token ids);
    False for a ``ModelSpec`` and the like, which go through a plan."""
    return callable(getattr(model, "forward", None)) and callable(
        getattr(model, "parameters", None)
    )


__all__ = [
    "Prompt",
    "as_ids",
    "check_vocab",
    "encode",
    "id_texts",
    "is_loaded_model",
    "prompt_text",
    "split_prompts",
]
