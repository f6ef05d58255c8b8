"""`CausalTrace`: the result of :func:`~circuitboard.intervene.causal_trace`, as numpy data."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .._files import decoding, json_array, read_npz, stamp
from .._npz import save_npz

KINDS = ("hidden", "mlp", "attn")
"""What a restoration puts back: the block's output (residual stream), the MLP's output, the
attention's output."""

_ARRAYS = ("values", "normalized", "sample_values", "sample_corrupted")


@dataclass(frozen=True, eq=False)
class CausalTrace:
    """Indirect effects of restoring clean states into a subject-corrupted run.

    Attributes
    ----------
    values
        ``[kind, layer, position]``: the answer's probability with that state restored, minus
        its probability in the corrupted run (mean over noise samples): the average indirect
        effect of Meng et al. (2022).
    normalized
        ``values / (clean_value − corrupted_value)``: 1 = the whole effect of the corruption
        undone (NaN when clean and corrupted are equal, e.g. ``noise=0``).
    sample_values
        ``[samples, kind, layer, position]``: the effect for each noise draw.
    kinds
        Which states each row of ``values`` restores (``"hidden"``, ``"mlp"``, ``"attn"``).
    tokens, subject
        Token texts of the prompt and the positions of the subject's tokens (corrupted).
    answer, answer_id
        The token whose probability is the metric.
    clean_value, corrupted_value, sample_corrupted
        The answer's probability in the clean run, in the corrupted runs (mean) and per draw.
    noise, noise_std, samples, seed, windows
        The noise scale (× embedding std), its absolute std, draws, seed and the restoration
        windows ``(hidden, mlp_and_attn)`` in layers.

    Examples
    --------
    >>> import numpy as np
    >>> t = CausalTrace(np.zeros((1, 2, 3)), np.zeros((1, 2, 3)), np.zeros((1, 1, 2, 3)),
    ...                 ("mlp",), ["a", "b", "c"], [1], " x", 5, 0.5, 0.1, np.array([0.1]),
    ...                 3.0, 0.3, 1, 0, (1, 10))
    >>> t.labels[0, 1, 2]
    "mlp L1 pos 2 'c'"
    """

    values: np.ndarray
    normalized: np.ndarray
    sample_values: np.ndarray
    kinds: tuple[str, ...]
    tokens: list[str]
    subject: list[int]
    answer: str
    answer_id: int
    clean_value: float
    corrupted_value: float
    sample_corrupted: np.ndarray
    noise: float
    noise_std: float
    samples: int
    seed: int
    windows: tuple[int, int]
    prompt: str = ""
    model_name: str = ""
    notes: list[str] = field(default_factory=list)
    cost: dict[str, float] = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        """``[kind, layer, position]`` label strings (``"mlp L5 pos 3 ' Tower'"``)."""
        K, L, T = self.values.shape
        out = np.empty((K, L, T), dtype=object)
        for k in range(K):
            for layer in range(L):
                for p in range(T):
                    star = "*" if p in self.subject else ""
                    out[k, layer, p] = f"{self.kinds[k]} L{layer} pos {p} {self.tokens[p]!r}{star}"
        return out

    def effect(self, kind: str) -> np.ndarray:
        """``values`` of one kind, ``[layer, position]``."""
        if kind not in self.kinds:
            raise ValueError(f"kind {kind!r} was not traced; this trace has {self.kinds}.")
        return self.values[self.kinds.index(kind)]

    def peak(self, kind: str) -> dict[str, Any]:
        """Where restoring ``kind`` helps most: ``{"layer", "position", "token", "value"}``."""
        v = self.effect(kind)
        layer, p = np.unravel_index(int(np.nanargmax(v)), v.shape)
        return {
            "layer": int(layer),
            "position": int(p),
            "token": self.tokens[p],
            "value": float(v[layer, p]),
        }

    def top(self, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` restorations with the largest effect, each a dict with ``label`` first.

        Examples
        --------
        >>> import numpy as np
        >>> v = np.array([[[0.0, 0.2], [0.5, 0.1]]])
        >>> t = CausalTrace(v, v / 0.5, v[None], ("mlp",), ["a", "b"], [0], "x", 1, 0.6, 0.1,
        ...                 np.array([0.1]), 3.0, 0.3, 1, 0, (1, 10))
        >>> t.top(1)[0]["label"], t.top(1)[0]["value"]
        ("mlp L1 pos 0 'a'*", 0.5)
        """
        flat = np.nan_to_num(self.values, nan=-np.inf).ravel()
        labels = self.labels
        out = []
        for i in np.argsort(-flat, kind="stable")[:k]:
            kk, layer, p = (int(j) for j in np.unravel_index(int(i), self.values.shape))
            out.append(
                {
                    "label": labels[kk, layer, p],
                    "value": float(self.values[kk, layer, p]),
                    "normalized": float(self.normalized[kk, layer, p]),
                    "kind": self.kinds[kk],
                    "layer": layer,
                    "position": p,
                    "token": self.tokens[p],
                }
            )
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write to a ``.npz`` file (no pickle); :func:`load_causal_trace` reads it back."""
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _ARRAYS}
        meta["kinds"], meta["windows"] = list(self.kinds), list(self.windows)
        arrays: dict[str, Any] = {k: np.asarray(getattr(self, k)) for k in _ARRAYS}
        arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        out = Path(path)
        save_npz(out, {**stamp("causal trace"), **arrays})
        return out

    def __repr__(self) -> str:
        K, L, T = self.values.shape
        peaks = ", ".join(
            f"{k} peak {self.peak(k)['value']:.3g} at L{self.peak(k)['layer']} "
            f"{self.peak(k)['token']!r}"
            for k in self.kinds
        )
        return (
            f"CausalTrace(p({self.answer!r}): clean={self.clean_value:.4g}, "
            f"corrupted={self.corrupted_value:.4g}; noise {self.noise:g}× emb std on "
            f"{[self.tokens[i] for i in self.subject]}, {self.samples} samples, windows "
            f"{self.windows}; {K} kinds × {L} layers × {T} positions; {peaks})"
        )


def load_causal_trace(path: str | os.PathLike[str]) -> CausalTrace:
    """Read a :class:`CausalTrace` written by :meth:`CausalTrace.save` (never unpickles).

    Examples
    --------
    >>> import os, tempfile
    >>> t = CausalTrace(np.ones((1, 1, 2)), np.ones((1, 1, 2)), np.ones((1, 1, 1, 2)),
    ...                 ("mlp",), ["a", "b"], [0], "x", 1, 0.6, 0.1, np.array([0.1]),
    ...                 3.0, 0.3, 1, 0, (1, 10))
    >>> again = load_causal_trace(t.save(os.path.join(tempfile.mkdtemp(), "t.npz")))
    >>> again.kinds, again.windows, float(again.values.sum())
    (('mlp',), (1, 10), 2.0)
    """
    writer = "CausalTrace.save(path)"
    z = read_npz(path, "causal trace", writer, required=("__meta__", *_ARRAYS))
    meta = json_array(z, "__meta__", path, "causal trace", writer)
    with decoding(path, "causal trace", writer):
        meta["kinds"], meta["windows"] = tuple(meta["kinds"]), tuple(meta["windows"])
        return CausalTrace(**meta, **{k: z[k] for k in _ARRAYS})


__all__ = ["KINDS", "CausalTrace", "load_causal_trace"]
