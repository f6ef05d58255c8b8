"""Per-category statistics of model components and their differences (effect sizes, t).

Every statistic is kept as mergeable running moments (count, mean, M2; Welford / Chan), so a
category's prompts can be processed in any number of shards, on any machine, and reduced
later with :meth:`Comparison.merge` or :meth:`RunningStats.merge`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._files import decoding, json_array, read_npz, stamp

HEAD_STATS: dict[str, str] = {
    "head_write": "‖z·W_O‖: norm of what the head writes to the residual",
    "attn_first": "attention to the first token",
    "attn_prev": "attention to the previous token",
    "attn_entropy": "attention entropy (nats)",
}
"""Per-head statistics ``[layers, heads]``, name → description."""
LAYER_STATS: dict[str, str] = {
    "attn_out": "‖attention output‖",
    "mlp_out": "‖MLP output‖",
}
"""Per-layer statistics ``[layers]``."""
NEURON_STATS: dict[str, str] = {"neurons": "MLP neuron activation (mlp.hook_post)"}
"""Per-neuron statistics ``[layers, d_mlp]``."""
RESID_STATS: dict[str, str] = {"resid": "residual stream entering the layer (hook_resid_pre)"}
"""Per-layer residual-stream vectors ``[layers, d_model]``: their mean difference between two
categories is a steering direction (:meth:`Comparison.direction`)."""
IMAGE_STATS: dict[str, str] = {
    "attn_patches": "attention from the sample position to each key: CLS and every patch",
    "pixels": "the input image's pixels (one sample per image)",
}
"""Image captures only (a fixed patch grid): ``attn_patches`` ``[layers, heads, tokens]``,
``pixels`` ``[channels, height, width]`` (its mean is the category's mean image)."""
STATS: dict[str, str] = {
    **HEAD_STATS,
    **LAYER_STATS,
    **NEURON_STATS,
    **RESID_STATS,
    **IMAGE_STATS,
}
MEASURES = ("d", "t", "diff")
_NEEDS = {  # stat → capture kinds
    "head_write": ("z",),
    "attn_first": ("pattern",),
    "attn_prev": ("pattern",),
    "attn_entropy": ("pattern",),
    "attn_out": ("attn_out",),
    "mlp_out": ("mlp_out",),
    "neurons": ("mlp_post",),
    "resid": ("resid_pre",),
    "attn_patches": ("pattern",),
    "pixels": (),
}
_TEXT_DEFAULT = [s for s in STATS if s not in IMAGE_STATS]
_IMAGE_DEFAULT = [s for s in STATS if s != "attn_prev"]  # patches have no "previous token"


# -- running moments ---------------------------------------------------------------------------
@dataclass
class RunningStats:
    """Count, mean and sum of squared deviations (M2) of samples of an array, mergeable.

    ``update`` adds a batch of samples (first axis); ``merge`` combines two shards exactly
    (Chan et al.), in any order, so ``var`` equals numpy's on all samples together.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(10.0).reshape(5, 2)
    >>> a = RunningStats.of(x[:2]).merge(RunningStats.of(x[2:]))
    >>> a.count, a.mean.tolist(), np.allclose(a.var(), x.var(0, ddof=1))
    (5, [4.0, 5.0], True)
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, shape: Sequence[int]) -> RunningStats:
        """No samples yet, for arrays of ``shape``."""
        return cls(0, np.zeros(tuple(shape)), np.zeros(tuple(shape)))

    @classmethod
    def of(cls, samples: Any) -> RunningStats:
        """Statistics of ``samples`` ``[n, *shape]`` (float64 internally)."""
        x = np.asarray(samples, dtype=np.float64)
        if x.ndim < 1 or x.shape[0] == 0:
            raise ValueError(f"samples must be [n, ...] with n >= 1; got shape {tuple(x.shape)}.")
        mean = x.mean(0)
        return cls(int(x.shape[0]), mean, ((x - mean) ** 2).sum(0))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mean.shape)

    def merge(self, other: RunningStats) -> RunningStats:
        """The statistics of both shards' samples together (a new object)."""
        if self.shape != other.shape:
            raise ValueError(
                f"cannot merge statistics of shape {self.shape} with {other.shape}; "
                "merge shards of the same model, layers and statistic."
            )
        if other.count == 0:
            return RunningStats(self.count, self.mean.copy(), self.m2.copy())
        if self.count == 0:
            return RunningStats(other.count, other.mean.copy(), other.m2.copy())
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return RunningStats(n, mean, m2)

    def update(self, samples: Any) -> RunningStats:
        """Add samples ``[n, *shape]`` in place; returns ``self``."""
        merged = self.merge(RunningStats.of(samples))
        self.count, self.mean, self.m2 = merged.count, merged.mean, merged.m2
        return self

    def var(self, ddof: int = 1) -> np.ndarray:
        """Variance (``ddof=1``: sample variance; NaN with fewer than ``ddof + 1`` samples)."""
        if self.count - ddof <= 0:
            return np.full(self.shape, np.nan)
        return self.m2 / (self.count - ddof)

    def std(self, ddof: int = 1) -> np.ndarray:
        """Standard deviation, see :meth:`var`."""
        return np.sqrt(self.var(ddof))


@dataclass(frozen=True)
class Effect:
    """The difference between two categories for every component of one statistic.

    ``diff = mean_a - mean_b``; ``d`` is Cohen's d (``diff`` over the pooled standard
    deviation); ``t`` is Welch's t statistic (``diff / sqrt(var_a/n_a + var_b/n_b)``). Where
    both categories are constant, ``d`` and ``t`` are 0 for equal means and ±inf otherwise.
    """

    stat: str
    a: str
    b: str
    mean_a: np.ndarray
    mean_b: np.ndarray
    std_a: np.ndarray
    std_b: np.ndarray
    n_a: int
    n_b: int
    diff: np.ndarray
    d: np.ndarray
    t: np.ndarray

    def measure(self, by: str) -> np.ndarray:
        """``d``, ``t`` or ``diff`` by name."""
        if by not in MEASURES:
            raise ValueError(f"by={by!r} is not a measure; use one of {list(MEASURES)}.")
        return getattr(self, by)


def effect_size(a: RunningStats, b: RunningStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(diff, d, t)`` between two sets of running statistics (see :class:`Effect`).

    >>> a = RunningStats.of([[1.0], [3.0]]); b = RunningStats.of([[0.0], [2.0]])
    >>> [round(float(v[0]), 4) for v in effect_size(a, b)]
    [1.0, 0.7071, 0.7071]
    """
    if a.count < 2 or b.count < 2:
        raise ValueError(
            f"effect sizes need at least 2 samples per category; got {a.count} and {b.count}. "
            "Add prompts to the smaller category (or use pos='all' to count every token)."
        )
    diff = a.mean - b.mean
    pooled = np.sqrt((a.m2 + b.m2) / (a.count + b.count - 2))
    se = np.sqrt(a.var() / a.count + b.var() / b.count)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(pooled > 0, diff / np.where(pooled > 0, pooled, 1), _degenerate(diff))
        t = np.where(se > 0, diff / np.where(se > 0, se, 1), _degenerate(diff))
    return diff, d, t


def _degenerate(diff: np.ndarray) -> np.ndarray:
    return np.where(diff == 0, 0.0, np.sign(diff) * np.inf)


# -- per-prompt samples --------------------------------------------------------------------
def _positions(pos: int | str, n_tokens: int, prompt: str | None) -> Any:
    if isinstance(pos, str):
        return slice(None)
    if not -n_tokens <= pos < n_tokens:
        raise ValueError(
            f"pos={pos} is outside a prompt of {n_tokens} tokens ({prompt!r}); use a position "
            f"in [-{n_tokens}, {n_tokens - 1}], or pos='all' / 'mean'."
        )
    return [pos % n_tokens]


def samples_from_capture(
    cap: Any, stats: Sequence[str], layers: Sequence[int], pos: int | str = -1
) -> dict[str, np.ndarray]:
    """One prompt's samples of each statistic: ``{stat: [n, *shape]}`` (float64).

    ``n`` is 1 for an int ``pos`` or ``"mean"`` (the mean over the prompt's tokens) and the
    number of tokens for ``"all"``. Head statistics are ``[n, layers, heads]``, layer
    statistics ``[n, layers]``, neurons ``[n, layers, d_mlp]``; for image captures
    ``attn_patches`` is ``[n, layers, heads, tokens]`` and ``pixels`` ``[1, C, H, W]``.
    """
    import torch

    T = cap.n_tokens
    idx = _positions(pos, T, cap.prompt)
    q = torch.arange(T)[idx]  # query positions, [n]
    out: dict[str, list[np.ndarray]] = {s: [] for s in stats}
    with torch.no_grad():
        for layer in layers:
            if "head_write" in out:
                z = cap[f"blocks.{layer}.attn.hook_z"][q].float()  # [n, H, d_head]
                w_o = _w_o(cap, layer, z.device)
                w = torch.einsum("nhd,hdm->nhm", z, w_o)  # what each head writes
                out["head_write"].append(w.norm(dim=-1).double().numpy())
            if any(s in out for s in ("attn_first", "attn_prev", "attn_entropy", "attn_patches")):
                for s, v in _pattern_samples(cap, layer, idx, out).items():
                    out[s].append(v)
            for s, hook in (("attn_out", "hook_attn_out"), ("mlp_out", "hook_mlp_out")):
                if s in out:
                    x = cap[f"blocks.{layer}.{hook}"][q].float()  # [n, d_model]
                    out[s].append(x.norm(dim=-1).double().numpy())
            if "neurons" in out:
                out["neurons"].append(cap[f"blocks.{layer}.mlp.hook_post"][q].double().numpy())
            if "resid" in out:
                out["resid"].append(cap[f"blocks.{layer}.hook_resid_pre"][q].double().numpy())
    pixels = out.pop("pixels", None)
    res = {s: np.stack(v, axis=1) for s, v in out.items()}  # layer axis after samples
    if pos == "mean":
        res = {s: v.mean(0, keepdims=True) for s, v in res.items()}
    if pixels is not None:
        res["pixels"] = cap.image["pixels"].double().numpy()[None]
    return res


def _pattern_samples(cap: Any, layer: int, idx: Any, wanted: Any) -> dict[str, np.ndarray]:
    """``attn_first`` / ``attn_prev`` / ``attn_entropy`` ``[n, heads]`` of the queries ``idx``,
    read from the pattern in chunks of query rows (never the whole ``[H, T, T]`` at once)."""
    import torch

    queries = slice(None) if isinstance(idx, slice) else int(idx[0])
    parts: dict[str, list[np.ndarray]] = {
        s: [] for s in ("attn_first", "attn_prev", "attn_entropy", "attn_patches") if s in wanted
    }
    for a, p in cap.pattern_rows(layer, queries=queries):  # p: [H, rows, keys] float32
        q = torch.arange(a, a + p.shape[1])
        if "attn_first" in parts:
            parts["attn_first"].append(p[..., 0].T.double().numpy())
        if "attn_prev" in parts:
            prev = torch.gather(p, 2, (q - 1).clamp(min=0).view(1, -1, 1).expand(p.shape[0], -1, 1))
            prev = prev[..., 0] * (q > 0).to(prev.dtype)
            parts["attn_prev"].append(prev.T.double().numpy())
        if "attn_patches" in parts:  # [rows, heads, keys]
            parts["attn_patches"].append(p.transpose(0, 1).double().numpy())
        if "attn_entropy" in parts:
            pl = p.double()
            ent = -(torch.where(pl > 0, pl * pl.log(), torch.zeros_like(pl))).sum(-1)
            parts["attn_entropy"].append(ent.T.numpy())
    return {s: np.concatenate(v, axis=0) for s, v in parts.items()}


def _w_o(cap: Any, layer: int, device: Any) -> Any:
    import torch

    key = f"blocks.{layer}.attn.W_O"
    if key not in cap.weights:
        raise KeyError(
            f"{key!r} is not in cap.weights; head_write needs the output projection. Use "
            "captures from cb.capture(), or leave 'head_write' out of stats=."
        )
    return cap.weights[key].detach().to(device=device, dtype=torch.float32)


# -- the comparison ------------------------------------------------------------------------
@dataclass(eq=False)
class Comparison:
    """Running statistics of model components per category of prompts.

    ``stats[category][stat]`` is a :class:`RunningStats`; head statistics have shape
    ``[len(layers), n_heads]``, ``attn_out`` / ``mlp_out`` ``[len(layers)]`` and ``neurons``
    ``[len(layers), d_mlp]`` (rows follow ``layers``, the model's layer indices).

    Examples
    --------
    >>> cmp = cb.compare(model, tok, {"IOI": ioi_prompts, "other": other_prompts})  # doctest: +SKIP
    >>> cmp.effect("IOI", "other", "head_write").d.shape  # doctest: +SKIP
    (30, 9)
    >>> cmp.top("IOI", "other", "neurons", k=3)  # doctest: +SKIP
    [{'label': 'L21 N860', 'd': 4.1, ...}, ...]
    >>> both = shard1.merge(shard2)  # same categories, both shards  # doctest: +SKIP
    """

    categories: list[str]
    stats: dict[str, dict[str, RunningStats]]
    layers: list[int]
    n_heads: int
    d_mlp: int
    pos: int | str = -1
    n_prompts: dict[str, int] = field(default_factory=dict)
    model_name: str = ""
    image: dict[str, Any] | None = None
    """Image captures (ViT): ``{"grid": [rows, cols], "patch": side}``; positions are CLS (0)
    and the patches. ``attn_patches`` and ``pixels`` are then held too (see IMAGE_STATS)."""

    def __repr__(self) -> str:
        cats = ", ".join(f"{c!r}: {self.n_prompts.get(c, '?')}" for c in self.categories)
        return (
            f"Comparison({{{cats}}} prompts, {len(self.layers)} layers × {self.n_heads} heads, "
            f"pos={self.pos!r}, stats={self.stat_names})"
        )

    @property
    def stat_names(self) -> list[str]:
        """The statistics held (the same for every category)."""
        first = self.stats[self.categories[0]] if self.categories else {}
        return [s for s in STATS if s in first]

    def _check(self, category: str) -> None:
        if category not in self.stats:
            raise KeyError(f"no category {category!r}; this comparison has {self.categories}.")

    def _check_stat(self, stat: str) -> None:
        if stat not in self.stat_names:
            raise ValueError(
                f"stat={stat!r} is not in this comparison; it holds {self.stat_names}. "
                "Compare again with stats=[...] including it."
            )

    def count(self, category: str) -> int:
        """Samples per component in ``category`` (prompts, or tokens with ``pos='all'``)."""
        self._check(category)
        return next(iter(self.stats[category].values())).count

    def effect(self, a: str, b: str, stat: str = "head_write") -> Effect:
        """Difference of category ``a`` minus ``b`` for ``stat`` (see :class:`Effect`)."""
        self._check(a)
        self._check(b)
        self._check_stat(stat)
        sa, sb = self.stats[a][stat], self.stats[b][stat]
        diff, d, t = effect_size(sa, sb)
        return Effect(
            stat, a, b, sa.mean, sb.mean, sa.std(), sb.std(), sa.count, sb.count, diff, d, t
        )

    def direction(self, a: str, b: str, layer: int) -> Any:
        """Steering direction: mean residual stream of ``a`` minus ``b`` at ``layer``'s input.

        A ``[d_model]`` float32 :class:`circuitboard.SteeringVector` (``blocks.{layer}.
        hook_resid_pre`` at this comparison's ``pos``, averaged per category), with its norm
        and the mean residual norm reported (the latter from the per-dimension moments:
        ``sqrt(Σ mean² + var)``, the RMS norm of the residual). Add it with
        ``cb.generate(model, tok, prompt, steer=cmp.direction("cat", "dog", 6))``.

        Examples
        --------
        >>> cmp = cb.compare(model, tok, {"cat": cat_prompts, "dog": dog_prompts})  # doctest: +SKIP
        >>> v = cmp.direction("cat", "dog", layer=6)  # doctest: +SKIP
        """
        import torch

        from ..intervene._steering import SteeringVector

        self._check(a)
        self._check(b)
        if "resid" not in self.stat_names:
            raise ValueError(
                "this comparison holds no residual-stream statistics; compare again with the "
                "default stats= (or stats=[..., 'resid'])."
            )
        if layer not in self.layers:
            raise IndexError(f"layer={layer!r} was not compared; layers are {self.layers}.")
        if not isinstance(self.pos, int):
            # pos='all' / 'mean' average over positions; still a valid mean difference
            pos = -1
        else:
            pos = self.pos
        row = self.layers.index(layer)
        sa, sb = self.stats[a]["resid"], self.stats[b]["resid"]
        diff = torch.from_numpy(sa.mean[row] - sb.mean[row]).float()
        norms = []
        for st in (sa, sb):
            var = st.var(ddof=0)[row] if st.count > 0 else 0.0
            norms.append(float(np.sqrt(np.sum(st.mean[row] ** 2 + var))))
        return SteeringVector.wrap(
            diff, layer=layer, pos=pos, resid_norm=float(np.mean(norms)), n=(sa.count, sb.count)
        )

    def top(
        self,
        a: str,
        b: str,
        stat: str = "neurons",
        *,
        k: int = 20,
        by: str = "d",
        layer: int | None = None,
    ) -> list[dict[str, Any]]:
        """The ``k`` components of ``stat`` that differ most (largest ``|by|``), ranked.

        Each entry: ``label`` (``L3H2``, ``L3 N120``, ``L3``), ``layer`` (model index),
        ``head`` / ``neuron`` where relevant, ``d``, ``t``, ``diff``, ``mean_a``, ``std_a``,
        ``mean_b``, ``std_b``. ``layer`` restricts to one model layer.
        """
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int; got {k!r}.")
        if stat == "pixels":
            raise ValueError(
                "pixels has no components to rank; read cmp.effect(a, b, 'pixels') (per "
                "channel and pixel) or the mean images cmp.stats[category]['pixels'].mean."
            )
        e = self.effect(a, b, stat)
        score = np.abs(np.nan_to_num(e.measure(by), nan=-1.0, posinf=np.inf))
        rows = np.arange(len(self.layers))
        if layer is not None:
            if layer not in self.layers:
                raise IndexError(f"layer={layer!r} was not compared; layers are {self.layers}.")
            rows = np.array([self.layers.index(layer)])
        sub = score[rows]
        flat = sub.reshape(len(rows), -1)
        order = np.argsort(-flat, axis=None, kind="stable")[:k]
        out = []
        for i in order:
            r, c = divmod(int(i), flat.shape[1])
            ix = (int(rows[r]),) if e.d.ndim == 1 else (int(rows[r]), c)
            li = self.layers[ix[0]]
            entry: dict[str, Any] = {"layer": li}
            if stat == "attn_patches":  # c runs over head × key
                h, key = divmod(c, e.d.shape[-1])
                entry.update(label=f"L{li}H{h} → {self._key_name(key)}", head=h)
                entry["key"] = key
                ix = (int(rows[r]), h, key)
            elif stat in HEAD_STATS:
                entry.update(label=f"L{li}H{c}", head=c)
            elif stat in NEURON_STATS:
                entry.update(label=f"L{li} N{c}", neuron=c)
            elif stat in RESID_STATS:
                entry.update(label=f"L{li} d{c}", dim=c)
            else:
                entry.update(label=f"L{li}")
            for key in ("d", "t", "diff", "mean_a", "std_a", "mean_b", "std_b"):
                entry[key] = float(getattr(e, key)[ix])
            out.append(entry)
        return out

    def _key_name(self, key: int) -> str:
        """A key position as a label: ``CLS`` or ``patch row,col`` of an image, else ``#k``."""
        if self.image is None:
            return f"#{key}"
        if key == 0:
            return "CLS"
        r, c = divmod(key - 1, int(self.image["grid"][1]))
        return f"patch {r},{c}"

    def merge(self, *others: Comparison) -> Comparison:
        """Combine shards: categories of the same name pool their prompts (exactly).

        Shards must share layers, heads, d_mlp, pos and statistics; categories present in
        only some shards are kept as they are.
        """
        res = Comparison(
            list(self.categories),
            {c: dict(s) for c, s in self.stats.items()},
            list(self.layers),
            self.n_heads,
            self.d_mlp,
            self.pos,
            dict(self.n_prompts),
            self.model_name,
            self.image,
        )
        for o in others:
            if not isinstance(o, Comparison):
                raise TypeError(f"merge takes Comparison objects; got {type(o).__name__}.")
            mine = (res.layers, res.n_heads, res.d_mlp, res.pos, res.stat_names)
            theirs = (o.layers, o.n_heads, o.d_mlp, o.pos, o.stat_names)
            if mine != theirs:
                raise ValueError(
                    "cannot merge comparisons made differently: (layers, n_heads, d_mlp, pos, "
                    f"stats) are {mine} and {theirs}. Compare every shard with the same "
                    "layers=, pos= and stats=."
                )
            for c in o.categories:
                if c in res.stats:
                    res.stats[c] = {s: res.stats[c][s].merge(v) for s, v in o.stats[c].items()}
                    res.n_prompts[c] = res.n_prompts.get(c, 0) + o.n_prompts.get(c, 0)
                else:
                    res.categories.append(c)
                    res.stats[c] = dict(o.stats[c])
                    res.n_prompts[c] = o.n_prompts.get(c, 0)
        return res

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write to a ``.npz`` file (no pickle); :meth:`load` reads it back, e.g. to merge."""
        import json

        arrays: dict[str, np.ndarray] = {}
        meta = {
            "categories": self.categories,
            "layers": self.layers,
            "n_heads": self.n_heads,
            "d_mlp": self.d_mlp,
            "pos": self.pos,
            "n_prompts": self.n_prompts,
            "model_name": self.model_name,
            "image": self.image,
            "counts": {c: {s: v.count for s, v in st.items()} for c, st in self.stats.items()},
        }
        for ci, c in enumerate(self.categories):
            for s, v in self.stats[c].items():
                arrays[f"{ci}/{s}/mean"] = v.mean
                arrays[f"{ci}/{s}/m2"] = v.m2
        from .._npz import save_npz  # byte-reproducible: the same statistics, the same file

        out = Path(path)
        meta_array = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        save_npz(out, {**stamp("comparison"), "__meta__": meta_array, **arrays})
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Comparison:
        """Read a file written by :meth:`save`."""
        writer = "Comparison.save(path)"
        z = read_npz(path, "comparison", writer, required=("__meta__",))
        meta = json_array(z, "__meta__", path, "comparison", writer)
        with decoding(path, "comparison", writer):
            stats = {
                c: {
                    s: RunningStats(n, z[f"{ci}/{s}/mean"], z[f"{ci}/{s}/m2"])
                    for s, n in meta["counts"][c].items()
                }
                for ci, c in enumerate(meta["categories"])
            }
            return cls(
                meta["categories"],
                stats,
                meta["layers"],
                meta["n_heads"],
                meta["d_mlp"],
                meta["pos"],
                meta["n_prompts"],
                meta["model_name"],
                meta.get("image"),
            )

    @classmethod
    def from_captures(
        cls,
        categories: Mapping[str, Sequence[Any]],
        *,
        pos: int | str = -1,
        stats: Sequence[str] | None = None,
        layers: Sequence[int] | None = None,
    ) -> Comparison:
        """Statistics from captures already made (``{name: [Capture, ...]}``).

        >>> cmp = Comparison.from_captures({"A": caps_a, "B": caps_b})  # doctest: +SKIP
        """
        _check_categories(categories, what="captures")
        first = next(iter(categories.values()))[0]
        image = _image_of(categories)
        stat_list = _parse_stats(stats, image=image is not None)
        _parse_pos(pos)
        if stats is None and not first.layers("hook_resid_pre"):
            stat_list.remove("resid")  # by default, only what these captures hold
        info = first.info
        layer_list = list(layers) if layers is not None else _available_layers(first, stat_list)
        n_heads = (
            info.n_heads
            if info is not None
            else int(first[f"blocks.{layer_list[0]}.attn.hook_z"].shape[1])
        )
        d_mlp = info.d_mlp if info is not None else 0
        acc = _Accumulator(stat_list, layer_list, pos)
        for name, caps in categories.items():
            for cap in caps:
                acc.add(name, cap)
        names = list(categories)
        return acc.result(names, n_heads, d_mlp, getattr(info, "model_name", ""), image)


class _Accumulator:
    def __init__(self, stats: list[str], layers: list[int], pos: int | str) -> None:
        self.stats, self.layers, self.pos = stats, layers, pos
        self.acc: dict[str, dict[str, RunningStats]] = {}
        self.n: dict[str, int] = {}
        self.pending: dict[str, dict[str, list[np.ndarray]]] = {}

    def add(self, name: str, cap: Any) -> None:
        samples = samples_from_capture(cap, self.stats, self.layers, self.pos)
        pend = self.pending.setdefault(name, {s: [] for s in self.stats})
        for s, v in samples.items():
            pend[s].append(v)
        self.n[name] = self.n.get(name, 0) + 1
        if len(pend[self.stats[0]]) >= 32:
            self.flush(name)

    def flush(self, name: str) -> None:
        pend = self.pending.pop(name, None)
        if not pend:
            return
        cur = self.acc.setdefault(name, {})
        for s, vs in pend.items():
            if vs:
                x = np.concatenate(vs)
                cur[s] = cur[s].update(x) if s in cur else RunningStats.of(x)

    def result(
        self,
        names: list[str],
        n_heads: int,
        d_mlp: int,
        model_name: str,
        image: dict[str, Any] | None = None,
    ) -> Comparison:
        for name in list(self.pending):
            self.flush(name)
        return Comparison(
            names,
            {c: self.acc[c] for c in names},
            list(self.layers),
            int(n_heads),
            int(d_mlp),
            self.pos,
            {c: self.n.get(c, 0) for c in names},
            model_name,
            image,
        )


def _image_of(categories: Mapping[str, Sequence[Any]]) -> dict[str, Any] | None:
    """``{"grid", "patch"}`` when every capture is of an image (one grid), None when none is;
    a clear error for a mix of text and image captures, or of patch grids."""
    grids = {
        None if getattr(c, "image", None) is None else (*c.image["grid"], c.image["patch"])
        for caps in categories.values()
        for c in caps
    }
    if len(grids) > 1:
        kinds = "text and image captures" if None in grids else "images of different patch grids"
        raise ValueError(
            f"the categories mix {kinds}; compare captures of one model and one input kind."
        )
    g = next(iter(grids))
    return None if g is None else {"grid": [int(g[0]), int(g[1])], "patch": int(g[2])}


def _available_layers(cap: Any, stats: list[str]) -> list[int]:
    hooks = {
        "attn_patches": "attn.hook_pattern",
        "head_write": "attn.hook_z",
        "attn_first": "attn.hook_pattern",
        "attn_prev": "attn.hook_pattern",
        "attn_entropy": "attn.hook_pattern",
        "attn_out": "hook_attn_out",
        "mlp_out": "hook_mlp_out",
        "neurons": "mlp.hook_post",
        "resid": "hook_resid_pre",
    }
    sets = [set(cap.layers(hooks[s])) for s in stats if s in hooks]  # pixels: no layer
    layers = sorted(set.intersection(*sets)) if sets else []
    if not layers:
        raise ValueError(
            f"the captures hold no layer with every tensor that stats={stats} need; capture "
            "with what=('z', 'pattern', 'attn_out', 'mlp_out', 'mlp_post') or pass fewer stats=."
        )
    return layers


def _check_categories(categories: Any, what: str = "prompts") -> None:
    if not isinstance(categories, Mapping):
        raise TypeError(
            f"categories must be a dict {{name: [{what}...]}}; got {type(categories).__name__}. "
            'Example: {"IOI": [...], "other": [...]}.'
        )
    if len(categories) < 2:
        raise ValueError(
            f"compare needs at least 2 categories; got {len(categories)} "
            f"({list(categories)}). Add another category of {what} to compare against."
        )
    for name, items in categories.items():
        if not isinstance(name, str):
            raise TypeError(
                f"category names must be strings; got {name!r} ({type(name).__name__})."
            )
        if isinstance(items, (str, bytes)):
            raise TypeError(
                f"category {name!r} is a single string; pass a list of {what}: [{items!r}]."
            )
        if hasattr(items, "shape"):
            raise TypeError(
                f"category {name!r} is an array: images go to an image model (ViT); this "
                f"model takes a list of {what}."
            )
        if not isinstance(items, Sequence) or len(items) == 0:
            raise ValueError(
                f"category {name!r} has no {what} (got {items!r}); every category needs at "
                f"least one (two or more for effect sizes)."
            )


def _parse_stats(stats: Sequence[str] | None, image: bool = False) -> list[str]:
    """The statistics to compute, in :data:`STATS` order; ``image``: of image captures."""
    default = _IMAGE_DEFAULT if image else _TEXT_DEFAULT
    if stats is None:
        return list(default)
    items = [stats] if isinstance(stats, str) else list(stats)
    bad = [s for s in items if s not in STATS]
    if bad or not items:
        raise ValueError(f"stats= got {items!r}; choose from {list(default)}.")
    unfit = [s for s in items if s not in default]
    if unfit:
        why = (
            "image patches have no previous token"
            if image
            else "they need image captures (a fixed patch grid)"
        )
        raise ValueError(f"stats= {unfit} do not apply here: {why}; choose from {default}.")
    return [s for s in STATS if s in items]


def _parse_pos(pos: Any) -> None:
    ok = (isinstance(pos, int) and not isinstance(pos, bool)) or pos in ("all", "mean")
    if not ok:
        raise ValueError(
            f"pos= got {pos!r}; use a token index (-1: the last token), 'all' (every token is a "
            "sample) or 'mean' (each prompt's mean over its tokens)."
        )


def compare(
    model: Any,
    tokenizer: Any,
    categories: Mapping[str, Sequence[str]],
    *,
    pos: int | str | None = None,
    layers: int | Sequence[int] | None = None,
    stats: Sequence[str] | None = None,
    batch_size: int = 8,
    dtype: Any = None,
    progress: bool | None = None,
    engine: str = "serial",
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    shards: int | None = None,
    checkpoint: Any = None,
    ray_address: str | None = None,
) -> Comparison:
    """Which heads, layers and neurons behave differently between categories of prompts.

    Runs the model on every prompt (in batches of ``batch_size``, so memory holds one batch's
    activations and the running statistics, never all captures) and keeps, per category and
    component, mergeable mean / variance of:

    - ``head_write``: ``‖z_h · W_O_h‖``, the norm of head ``h``'s write to the residual stream;
    - ``attn_first`` / ``attn_prev``: attention to the first / the previous token;
    - ``attn_entropy``: entropy of the head's attention distribution (nats);
    - ``attn_out`` / ``mlp_out``: norm of each layer's attention / MLP output;
    - ``neurons``: every MLP neuron's activation (``blocks.{l}.mlp.hook_post``).

    Parameters
    ----------
    model, tokenizer
        A Hugging Face causal LM and its tokenizer (see :func:`circuitboard.capture`), or an
        image classifier (ViT) and its image processor (None for the default vision model).
    categories
        ``{name: [prompt, ...]}``: at least 2 categories with at least one prompt each (2+ for
        effect sizes). For an image model, ``{name: images}`` (an array ``[N, H, W]`` /
        ``[N, C, H, W]`` or a list of images, validated as :func:`circuitboard.capture`
        does); ``attn_prev`` is left out (patches have no previous token), and two image
        statistics are added: ``attn_patches`` (attention from the sample position to CLS
        and each patch, ``[layers, heads, tokens]``) and ``pixels`` (the mean image).
    pos
        Which token of each prompt is a sample: an index (default ``-1``, the last token; the
        answer position of a prompt), ``"all"`` (every token is a sample) or ``"mean"`` (each
        prompt's mean over its tokens is one sample). For images the default is ``0``, CLS
        (what the classifier reads); ``"all"`` makes every patch a sample.
    layers
        Model layers to compare (default all).
    stats
        Subset of the statistic names above (default all; ``neurons`` dominates memory:
        3 × layers × d_mlp float64 per category).
    batch_size
        Prompts per forward pass.
    dtype
        Capture dtype (default float32; ``torch.float16`` halves activation memory).
    engine
        Where the prompts run: ``"serial"`` (this process), ``"processes"`` (a pool of local
        processes, each with its own model) or ``"ray"`` (Ray actors, each holding one model;
        ``pip install "circuitboard[ray]"``). Every engine runs the same plan: prompts cut
        into blocks of ``4 * batch_size`` (one capture each), blocks grouped into ``shards``,
        shard results merged in plan order, so the numbers (and saved bytes) are the same
        on every engine for the same shards.
    workers
        Worker processes or actors (default: the CPU cores, up to 8; Ray: one per CPU, or per
        ``gpus_per_worker`` GPUs, of the cluster).
    gpus_per_worker
        GPUs each worker holds (Ray); a model larger than one GPU loads over all of them with
        ``ModelSpec(..., device_map="auto")``.
    shards
        Pieces the work is cut into (default: one for ``"serial"``, four per worker otherwise);
        a shard is the unit of retry, checkpoint and progress.
    checkpoint
        A folder: each finished shard is written there, and a run interrupted (killed, out of
        time) resumes from it with the same call; a folder of another run is refused.
    ray_address
        Join a running cluster (``"auto"`` after ``ray start``, or ``"ray://host:10001"``);
        default: the connected one, else a local Ray.

    Pass a :class:`circuitboard.ModelSpec` as ``model`` (and ``None`` as tokenizer) so that
    each worker loads its own model; a loaded model is pickled to each worker instead.

    Returns
    -------
    Comparison
        ``.effect(a, b, stat)`` (Cohen's d, Welch's t, differences), ``.top(...)``,
        ``.merge(...)`` for shards; view it with :func:`circuitboard.compare_view`.

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> cmp = compare(model, tok, {"A": ["a b", "the store"], "B": ["Mary and John", "1 2 3"]})
    >>> cmp.effect("A", "B", "head_write").d.shape
    (2, 4)

    Digit classes of an image model (samples at CLS):

    >>> import numpy as np
    >>> from circuitboard.testing import tiny_model
    >>> vit, _ = tiny_model("vit", channels=1)
    >>> imgs = np.random.default_rng(0).random((6, 8, 8))
    >>> cmp = compare(vit, None, {"A": imgs[:3], "B": imgs[3:]})
    >>> cmp.pos, cmp.image, cmp.effect("A", "B", "attn_patches").d.shape
    (0, {'grid': [2, 2], 'patch': 4}, (2, 4, 5))
    """
    image = _is_image_model(model)
    if image:
        categories = _image_categories(model, categories)
        if engine != "serial" or shards is not None or checkpoint is not None:
            raise ValueError(
                "compare of an image model runs in this process only; drop engine=, shards= "
                "and checkpoint= (a few thousand small images take seconds)."
            )
        pos = 0 if pos is None else pos
    else:
        _check_categories(categories)
        for name, prompts in categories.items():
            for i, p in enumerate(prompts):
                if not isinstance(p, str) or not p:
                    raise ValueError(
                        f"category {name!r}: prompts[{i}] must be a non-empty string; got "
                        f"{p!r}."
                        + (" Images go to an image model (ViT)." if hasattr(p, "shape") else "")
                    )
        pos = -1 if pos is None else pos
    _parse_pos(pos)
    _parse_stats(stats, image=image)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")
    sharded = engine != "serial" or shards is not None or checkpoint is not None
    if sharded or (tokenizer is None and not image):
        from ..scale._jobs import compare_sharded

        return compare_sharded(
            model,
            tokenizer,
            categories,
            dict(pos=pos, layers=layers, stats=stats, batch_size=batch_size, dtype=dtype),
            engine=engine,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            shards=shards,
            checkpoint=checkpoint,
            ray_address=ray_address,
            progress=progress,
        )
    total = sum(len(p) for p in categories.values())
    show = progress if progress is not None else total >= 64
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="circuitboard compare", unit="prompt")
    blocks = [(name, categories[name][a:b]) for name, a, b in plan_blocks(categories, batch_size)]
    try:
        return compare_blocks(
            model,
            tokenizer,
            blocks,
            pos=pos,
            layers=layers,
            stats=stats,
            batch_size=batch_size,
            dtype=dtype,
            bar=bar,
        )
    finally:
        if bar is not None:
            bar.close()


def _is_image_model(model: Any) -> bool:
    from ..capture.adapters import get_adapter

    try:
        return get_adapter(model).modality == "image"
    except Exception:  # a ModelSpec or anything capture refuses later, with its own error
        return False


def _image_categories(model: Any, categories: Any) -> dict[str, np.ndarray]:
    """``{name: [N, C, H, W] in [0, 1]}``, each category validated as capture validates images;
    errors name the category (text given to an image model, mixed sizes, bad values)."""
    from ..capture._images import as_images

    if not isinstance(categories, Mapping):
        raise TypeError(
            f"categories must be a dict {{name: images}}; got {type(categories).__name__}. "
            'Example: {"3": threes, "8": eights} with arrays [N, H, W].'
        )
    if len(categories) < 2:
        raise ValueError(
            f"compare needs at least 2 categories; got {len(categories)} ({list(categories)})."
        )
    out = {}
    for name, items in categories.items():
        if not isinstance(name, str):
            raise TypeError(f"category names must be strings; got {name!r}.")
        if isinstance(items, list | tuple):
            if not items:
                raise ValueError(f"category {name!r} has no images; give at least one (2+).")
            shapes = {np.shape(x) for x in items if not isinstance(x, str)}
            if len(shapes) > 1:
                raise ValueError(
                    f"category {name!r} mixes image sizes {sorted(shapes)}; resize every image "
                    f"to the model's {model.config.image_size}×{model.config.image_size} first."
                )
        try:
            arr = as_images(model, items)
        except ValueError as err:
            raise ValueError(f"category {name!r}: {err}") from None
        if len(arr) == 0:
            raise ValueError(f"category {name!r} has no images; give at least one (2+).")
        out[name] = arr
    return out


def plan_blocks(
    categories: Mapping[str, Sequence[str]], batch_size: int
) -> list[tuple[str, int, int]]:
    """``(category, start, stop)`` of every block of prompts, in order: one capture call each.

    The block is the unit every engine shares: statistics are folded block by block, so a
    run cut into shards at block boundaries repeats the one-process computation shard by
    shard.
    """
    chunk = 4 * batch_size
    return [
        (name, start, min(start + chunk, len(prompts)))
        for name, prompts in categories.items()
        for start in range(0, len(prompts), chunk)
    ]


def compare_blocks(
    model: Any,
    tokenizer: Any,
    blocks: Sequence[tuple[str, Sequence[str]]],
    *,
    pos: int | str = -1,
    layers: int | Sequence[int] | None = None,
    stats: Sequence[str] | None = None,
    batch_size: int = 8,
    dtype: Any = None,
    bar: Any = None,
) -> Comparison:
    """The :class:`Comparison` of consecutive blocks ``(category, prompts)`` (see
    :func:`plan_blocks`): one shard of a run, or the whole run."""
    import torch

    from ..capture import capture
    from ..capture._run import _parse_layers
    from ..capture.adapters import get_adapter

    adapter = get_adapter(model)
    stat_list = _parse_stats(stats, image=adapter.modality == "image")
    layer_list = _parse_layers(layers, adapter.n_blocks(model))
    kinds = sorted({k for s in stat_list for k in _NEEDS[s]})
    dt = torch.float32 if dtype is None else dtype
    acc = _Accumulator(stat_list, layer_list, pos)
    info = None
    names: list[str] = []
    for name, prompts in blocks:
        caps = capture(
            model,
            tokenizer,
            list(prompts),
            layers=layer_list,
            what=kinds,
            dtype=dt,
            batch_size=batch_size,
            max_memory=None,
            progress=False,
        )
        for cap in caps:
            acc.add(name, cap)
        info = caps[0].info
        image = _image_of({name: caps})
        if bar is not None:
            bar.update(len(caps))
        del caps
        acc.flush(name)
        if name not in names:
            names.append(name)
    return acc.result(names, info.n_heads, info.d_mlp, info.model_name, image)


def load_comparison(path: str | os.PathLike[str]) -> Comparison:
    """Read a :class:`Comparison` written by :meth:`Comparison.save`, without unpickling; any
    other file is refused with :class:`circuitboard.CircuitboardFileError`.

    Examples
    --------
    >>> result = cb.compare(model, tok, {"a": ["x y"], "b": ["y x"]})  # doctest: +SKIP
    >>> result.save(tmp_path / "c.npz")  # doctest: +SKIP
    >>> cb.load_comparison(tmp_path / "c.npz").categories  # doctest: +SKIP
    ['a', 'b']
    """
    return Comparison.load(path)
