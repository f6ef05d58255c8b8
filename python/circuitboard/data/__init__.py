"""A small offline text dataset for demos and tests (written for this project, MIT licensed)."""

from __future__ import annotations

import functools
from importlib import resources

from ._corpus import load_corpus  # the training corpus (dictionaries)

KINDS = ("prose", "code", "list")


@functools.cache
def _entries() -> tuple[tuple[str, str], ...]:
    raw = resources.files(__package__).joinpath("texts.txt").read_text(encoding="utf-8")
    out: list[tuple[str, str]] = []
    for block in raw.split("\n%%\n")[1:]:  # the first block is the header comment
        head, _, text = block.partition("\n")
        kind = head.strip().strip("[]")
        text = text.rstrip("\n")
        if kind in KINDS and text:
            out.append((kind, text))
    return tuple(out)


def load_texts(kind: str | list[str] | None = None, n: int | None = None) -> list[str]:
    """About 200 short English texts (prose, code snippets, lists) shipped with the package.

    Parameters
    ----------
    kind : "prose", "code", "list", a list of them, or None for all.
    n : keep the first ``n`` texts (in file order) after filtering.

    Examples
    --------
    >>> texts = load_texts()
    >>> len(texts) > 150, texts[0]
    (True, 'When Mary and John went to the store, John gave a drink to Mary.')
    >>> load_texts("code", n=1)[0].splitlines()[0]
    'def fibonacci(n):'
    """
    kinds = KINDS if kind is None else ([kind] if isinstance(kind, str) else list(kind))
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown text kind {bad[0]!r}; expected one of {KINDS} or None (all).")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"n must be a positive int or None; got {n!r}.")
    texts = [t for k, t in _entries() if k in kinds]
    return texts if n is None else texts[:n]


__all__ = ["KINDS", "load_corpus", "load_texts"]
