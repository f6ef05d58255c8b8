"""`Patching`: the result of activation / attribution patching, as plain numpy data.

Conventions travel with every result: ``direction`` (``"denoise"``: clean activations patched
into the corrupted run; ``"noise"``: corrupted into clean), ``method`` (``"exact"``,
``"attribution"``, ``"ig"``), the metric's description, the raw metric values and both
endpoints. ``values`` are normalized so that the clean run is 1 and the corrupted run is 0,
for both directions.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .._files import decoding, json_array, read_npz, save_stamped

AXES = {
    "position": ("layer", "position"),
    "heads": ("layer", "head"),
    "heads_pos": ("layer", "position", "head"),
    "neurons": ("layer", "neuron"),
}

_ARRAYS = (
    "values",
    "raw",
    "pair_values",
    "pair_raw",
    "pair_clean",
    "pair_corrupted",
    "reference",
    "completeness",
    "images",
    "sufficiency",
    "necessity",
)


@dataclass(frozen=True, eq=False)
class Patching:
    """What patching each site does to the metric.

    Attributes
    ----------
    values
        Normalized effect, ``(m − m_corrupted) / (m_clean − m_corrupted)``: clean = 1,
        corrupted = 0 (both directions). Averaged over pairs. Shape by ``axes``:
        ``[layer, position]``, ``[layer, head]``, ``[layer, position, head]`` or
        ``[layer, neuron]``.
    raw
        The metric itself with the site patched (mean over pairs), same shape.
    site, method, direction, metric
        What was patched, how (``exact`` / ``attribution`` / ``ig``), which way, and the
        metric's description.
    axes
        Names of the axes of ``values``.
    layers, positions, heads
        The labels along the axes (``positions`` None for per-head and neuron sites).
    tokens
        ``{"clean": [...], "corrupted": [...]}`` token texts of the (first) pair.
    clean_value, corrupted_value
        The metric on the clean and the corrupted run (mean over pairs).
    first_diff
        First position where clean and corrupted tokens differ (first pair).
    notes
        Plain-language statements of what was skipped and why, the conventions, GQA mappings.
    pair_values, pair_raw, pair_clean, pair_corrupted
        Per-pair values ``[pairs, ...]`` and endpoints ``[pairs]``.
    reference
        Exact-patching values when they were computed next to an estimate
        (``compare_exact=True``), else None; ``correlation`` is Pearson's r between the two.
    completeness, completeness_error
        For ``method="ig"``: per layer, the sum of the layer's IG values minus the exact effect
        of patching that whole layer (normalized units), and its largest absolute value.

    Examples
    --------
    >>> kw = dict(answer=" Mary", wrong=" John", site="heads")
    >>> res = cb.patch(model, tok, clean, corrupted, **kw)  # doctest: +SKIP
    >>> res.values.shape, res.top(3)  # [layers, heads]; 1 = clean  # doctest: +SKIP
    >>> res.save("ioi-heads.npz")  # doctest: +SKIP
    >>> again = cb.load_patching("ioi-heads.npz")  # doctest: +SKIP
    """

    values: np.ndarray
    raw: np.ndarray
    site: str
    method: str
    direction: str
    metric: str
    axes: tuple[str, ...]
    layers: list[int]
    positions: list[int] | None
    heads: list[int] | None
    tokens: dict[str, list[str]]
    clean_value: float
    corrupted_value: float
    first_diff: int
    notes: list[str] = field(default_factory=list)
    pair_values: np.ndarray | None = None
    pair_raw: np.ndarray | None = None
    pair_clean: np.ndarray | None = None
    pair_corrupted: np.ndarray | None = None
    reference: np.ndarray | None = None
    correlation: float | None = None
    completeness: np.ndarray | None = None
    completeness_error: float | None = None
    steps: int | None = None
    model_name: str = ""
    kv_groups: dict[int, list[int]] | None = None
    """For ``k`` / ``v`` sites: KV head → the query heads it serves."""
    cost: dict[str, float] = field(default_factory=dict)
    """Forwards run, seconds, forward-equivalents where measured."""
    image: dict[str, Any] | None = None
    """Image pairs (ViT): ``{"grid": [rows, cols], "patch": side}``; tokens are CLS + patches."""
    images: np.ndarray | None = None
    """Image pairs: the (first) pair's pixels ``[2 (clean, corrupted), C, H, W]`` in [0, 1]."""
    sufficiency: np.ndarray | None = None
    """Where both directions were run (``corrupted="resample"``): the denoising values (clean
    activation into the corrupted run: is the site sufficient?), same shape as ``values``."""
    necessity: np.ndarray | None = None
    """Where run (``corrupted="mean"`` / ``"resample"``): the noising values (corrupted
    activation into the clean run: is the site necessary? 1 = not at all)."""

    # -- reading -------------------------------------------------------------------------
    def label(self, index: tuple[int, ...]) -> str:
        """The label of the cell at ``index`` of ``values`` (``L3H5``, ``L3 pos 7 ' John'``)."""
        li = self.layers[index[0]]
        names = dict(zip(self.axes[1:], index[1:], strict=True))
        s = f"L{li}"
        if "head" in names:
            s += f"H{self.heads[names['head']] if self.heads else names['head']}"
        if "neuron" in names:
            s += f" N{names['neuron']}"
        if "position" in names:
            p = self.positions[names["position"]] if self.positions else names["position"]
            clean, corrupt = self.tokens["clean"][p], self.tokens["corrupted"][p]
            if self.image is not None:  # CLS, or a patch by its row,col
                return s + (" CLS" if p == 0 else f" patch {clean}")
            tok = repr(clean) if clean == corrupt else f"{clean!r}→{corrupt!r}"
            s += f" pos {p} {tok}"
        return s

    @property
    def effects(self) -> np.ndarray:
        """How much patching each site moved the metric from the run it patched, normalized:
        ``values`` for denoising (from corrupted = 0), ``values − 1`` for noising (from clean)."""
        return self.values - (1.0 if self.direction == "noise" else 0.0)

    def top(self, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` sites with the largest effect (``|values|`` when denoising,
        ``|values − 1|`` when noising), each a dict with ``label`` first.

        Examples
        --------
        >>> p = Patching(np.array([[0.1, 0.9]]), np.array([[1.0, 2.0]]), "heads", "exact",
        ...              "denoise", "logit diff", ("layer", "head"), [0], None, [0, 1],
        ...              {"clean": [], "corrupted": []}, 2.1, 0.9, 0)
        >>> p.top(1)[0]["label"], p.top(1)[0]["value"]
        ('L0H1', 0.9)
        """
        flat = np.nan_to_num(np.abs(self.effects), nan=-1.0).ravel()
        order = np.argsort(-flat, kind="stable")[:k]
        out = []
        for i in order:
            idx = tuple(int(j) for j in np.unravel_index(int(i), self.values.shape))
            entry: dict[str, Any] = {"label": self.label(idx)}
            entry["value"] = float(self.values[idx])
            entry["raw"] = float(self.raw[idx])
            entry["layer"] = self.layers[idx[0]]
            for name in ("sufficiency", "necessity"):
                arr = getattr(self, name)
                if arr is not None:
                    entry[name] = float(arr[idx])
            for name, j in zip(self.axes[1:], idx[1:], strict=True):
                if name == "position":
                    p = self.positions[j] if self.positions else j
                    entry["position"] = p
                    entry["token"] = self.tokens["clean"][p]
                elif name == "head":
                    entry["head"] = self.heads[j] if self.heads else j
                else:
                    entry[name] = j
            out.append(entry)
        return out

    # -- files ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write to a ``.npz`` file (no pickle); :func:`load_patching` reads it back."""
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _ARRAYS}
        meta["axes"] = list(self.axes)
        if self.kv_groups is not None:
            meta["kv_groups"] = {str(k): v for k, v in self.kv_groups.items()}
        arrays = {k: np.asarray(getattr(self, k)) for k in _ARRAYS if getattr(self, k) is not None}
        return save_stamped(path, "patching", meta, arrays)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (arrays as nested lists)."""
        d = asdict(self)
        for k in _ARRAYS:
            if d[k] is not None:
                d[k] = np.asarray(d[k]).tolist()
        return d

    def __repr__(self) -> str:
        shape = "×".join(f"{n} {a}s" for a, n in zip(self.axes, self.values.shape, strict=True))
        extra = ""
        if self.correlation is not None:
            extra += f", r(exact)={self.correlation:.3f}"
        if self.completeness_error is not None:
            extra += f", completeness error={self.completeness_error:.2g}"
        both = [n for n in ("sufficiency", "necessity") if getattr(self, n) is not None]
        if both:
            extra += f", with {' and '.join(both)}"
        return (
            f"Patching({self.site}, method={self.method}, direction={self.direction}, "
            f"metric={self.metric}: clean={self.clean_value:.4g}, "
            f"corrupted={self.corrupted_value:.4g}; {shape}{extra})"
        )


def load_patching(path: str | os.PathLike[str]) -> Patching:
    """Read a :class:`Patching` written by :meth:`Patching.save`.

    Examples
    --------
    >>> import tempfile, os
    >>> p = Patching(np.zeros((1, 2)), np.ones((1, 2)), "heads", "exact", "denoise", "m",
    ...              ("layer", "head"), [0], None, [0, 1], {"clean": [], "corrupted": []},
    ...              1.0, 0.0, 0)
    >>> f = p.save(os.path.join(tempfile.mkdtemp(), "p.npz"))
    >>> load_patching(f).site
    'heads'
    """
    writer = "Patching.save(path)"
    z = read_npz(path, "patching", writer, required=("__meta__", "values", "raw"))
    meta = json_array(z, "__meta__", path, "patching", writer)
    with decoding(path, "patching", writer):
        meta["axes"] = tuple(meta["axes"])
        if meta.get("kv_groups") is not None:
            meta["kv_groups"] = {int(k): v for k, v in meta["kv_groups"].items()}
        return Patching(**meta, **{k: z.get(k) for k in _ARRAYS})


__all__ = ["AXES", "Patching", "load_patching"]
