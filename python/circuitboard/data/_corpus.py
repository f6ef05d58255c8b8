"""The offline training corpus: Python documentation, the King James Bible and WordNet glosses,
shipped xz-compressed in the package (built by ``scripts/build_corpus.py``)."""

from __future__ import annotations

import functools
import hashlib
import json
import lzma
from importlib import resources

SOURCES = ("python-docs", "bible", "wordnet")
SPLITS = ("train", "eval", "all")
_EVAL_EVERY = 20  # one document in 20 (by a hash of its id) is held out


@functools.cache
def _documents() -> tuple[tuple[str, str, str], ...]:
    raw = resources.files(__package__).joinpath("corpus.jsonl.xz").read_bytes()
    out = []
    for line in lzma.decompress(raw).decode("utf-8").splitlines():
        d = json.loads(line)
        out.append((d["id"], d["source"], d["text"]))
    return tuple(out)


def _held_out(doc_id: str) -> bool:
    return int(hashlib.sha1(doc_id.encode()).hexdigest()[:8], 16) % _EVAL_EVERY == 0


def load_corpus(
    split: str = "train",
    source: str | list[str] | None = None,
    n: int | None = None,
) -> list[str]:
    """About 19 M characters (4.9 M SmolLM2 tokens) of English and code for training and
    evaluating dictionaries, offline.

    Sources: the Python 3.11 documentation's reST sources (``"python-docs"``, PSF licence:
    technical English with code), the King James Bible (``"bible"``, public domain) and WordNet
    3.0 glosses (``"wordnet"``, WordNet licence), from Debian's ``python3.11-doc``,
    ``bible-kjv-text`` and ``wordnet-base``. Documents are chunks of at most ~3,000 characters
    (a Bible chapter, 40 glosses).

    Parameters
    ----------
    split : ``"train"`` (95%), ``"eval"`` (the 5% held out, chosen by a hash of each document's
        id, so it never changes) or ``"all"``.
    source : one source, a list of them, or None for all.
    n : keep the first ``n`` documents (in id order) after filtering.

    Examples
    --------
    >>> import circuitboard as cb
    >>> docs = cb.load_corpus("eval", source="bible")
    >>> len(docs) > 30, docs[0][:40]
    (True, 'And the LORD spake unto Moses, saying, S')
    >>> len(cb.load_corpus("train", n=5))
    5
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}.")
    sources = SOURCES if source is None else ([source] if isinstance(source, str) else source)
    bad = [s for s in sources if s not in SOURCES]
    if bad:
        raise ValueError(f"unknown corpus source {bad[0]!r}; expected one of {SOURCES} or None.")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"n must be a positive int or None; got {n!r}.")
    out = [
        text
        for doc_id, src, text in _documents()
        if src in sources and (split == "all" or _held_out(doc_id) == (split == "eval"))
    ]
    return out if n is None else out[:n]
