"""`Comparison`: per-category running statistics of model components, their effect sizes,
directions and top components; merged, saved and loaded exactly."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._files import decoding, json_array, read_npz, save_stamped
from ._compare_samples import (
    HEAD_STATS,
    NEURON_STATS,
    RESID_STATS,
    STATS,
    _available_layers,
    _check_categories,
    _image_of,
    _parse_pos,
    _parse_stats,
    feature_hook,
    feature_info,
    feature_stat,
    is_feature_stat,
    samples_from_capture,
)
from ._running_stats import Effect, RunningStats, effect_size


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
    features: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Dictionaries compared (``compare(..., saes=...)``), by the hook each reads:
    ``{"layer", "d_sae", "labels": {"index": name}}``; their statistics are
    ``"features:<hook>"`` ``[d_sae]``."""

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
        return [s for s in STATS if s in first] + [feature_stat(h) for h in self.features]

    def _resolve(self, stat: str) -> str:
        """``"features"`` as the one dictionary's ``"features:<hook>"``; other names as given."""
        if stat == "features":
            if len(self.features) == 1:
                return feature_stat(next(iter(self.features)))
            if not self.features:
                raise ValueError(
                    "this comparison holds no dictionary features; compare with "
                    "saes=[sae] (e.g. cb.load_default_saes())."
                )
            raise ValueError(
                f"this comparison holds {len(self.features)} dictionaries; name one: "
                f"{[feature_stat(h) for h in self.features]}."
            )
        return stat

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
        """Difference of category ``a`` minus ``b`` for ``stat`` (see :class:`Effect`);
        ``"features"`` names the one dictionary compared, ``"features:<hook>"`` one of
        several."""
        stat = self._resolve(stat)
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

        ``stat="features"`` ranks the features of every dictionary compared together (or of
        the dictionaries at ``layer``); entries carry ``hook``, ``feature``, ``label``
        (``L9 F120``) and ``name`` (the feature's user label, ``""`` when it has none).
        """
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int; got {k!r}.")
        if stat == "features" or is_feature_stat(stat):
            return self._top_features(a, b, stat, k, by, layer)
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

    def _top_features(
        self, a: str, b: str, stat: str, k: int, by: str, layer: int | None
    ) -> list[dict[str, Any]]:
        if stat == "features":
            if not self.features:
                self._resolve(stat)  # the error naming the fix
            hooks = [h for h, f in self.features.items() if layer is None or f["layer"] == layer]
            if not hooks:
                raise IndexError(
                    f"no dictionary at layer={layer!r}; dictionaries read "
                    f"{ {h: f['layer'] for h, f in self.features.items()} }."
                )
        else:
            self._check_stat(stat)
            hooks = [feature_hook(stat)]
        effects = [self.effect(a, b, feature_stat(h)) for h in hooks]
        score = np.concatenate(
            [np.abs(np.nan_to_num(e.measure(by), nan=-1.0, posinf=np.inf)) for e in effects]
        )
        starts = np.cumsum([0] + [e.d.shape[0] for e in effects])
        out = []
        for i in np.argsort(-score, kind="stable")[:k]:
            which = int(np.searchsorted(starts, i, side="right") - 1)
            hook, e, f = hooks[which], effects[which], int(i - starts[which])
            info = self.features[hook]
            entry: dict[str, Any] = {
                "label": f"L{info['layer']} F{f}",
                "name": info.get("labels", {}).get(str(f), ""),
                "layer": info["layer"],
                "hook": hook,
                "feature": f,
            }
            for key in ("d", "t", "diff", "mean_a", "std_a", "mean_b", "std_b"):
                entry[key] = float(getattr(e, key)[f])
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
            dict(self.features),
        )
        for o in others:
            if not isinstance(o, Comparison):
                raise TypeError(f"merge takes Comparison objects; got {type(o).__name__}.")
            if list(o.features) != list(res.features):
                raise ValueError(
                    "cannot merge comparisons of different dictionaries: they read "
                    f"{list(res.features)} and {list(o.features)}. Compare every shard with the "
                    "same saes=."
                )
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
            "features": self.features,
            "counts": {c: {s: v.count for s, v in st.items()} for c, st in self.stats.items()},
        }
        for ci, c in enumerate(self.categories):
            for si, (s, v) in enumerate(self.stats[c].items()):
                # features:<hook> holds dots; arrays are named by position, meta keeps names
                name = f"features{si}" if is_feature_stat(s) else s
                arrays[f"{ci}/{name}/mean"] = v.mean
                arrays[f"{ci}/{name}/m2"] = v.m2
        # byte-reproducible: the same statistics, the same file
        return save_stamped(path, "comparison", meta, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Comparison:
        """Read a file written by :meth:`save`."""
        writer = "Comparison.save(path)"
        z = read_npz(path, "comparison", writer, required=("__meta__",))
        meta = json_array(z, "__meta__", path, "comparison", writer)
        with decoding(path, "comparison", writer):
            stats = {
                c: {
                    s: RunningStats(
                        n,
                        z[f"{ci}/{_array_name(s, si)}/mean"],
                        z[f"{ci}/{_array_name(s, si)}/m2"],
                    )
                    for si, (s, n) in enumerate(meta["counts"][c].items())
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
                meta.get("features") or {},
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
        items = None if stats is None else [stats] if isinstance(stats, str) else list(stats)
        plain = None if items is None else [s for s in items if s != "features"]
        stat_list = _parse_stats(plain, image=image is not None) if plain != [] else []
        _parse_pos(pos)
        if stats is None and not first.layers("hook_resid_pre"):
            stat_list.remove("resid")  # by default, only what these captures hold
        saes = dict(getattr(first, "saes", None) or {})
        if items is not None and "features" in items and not saes:
            raise ValueError(
                "stats= asks for 'features' but these captures ran no dictionaries; capture "
                "with cb.capture(..., saes=[sae])."
            )
        features = feature_info(list(saes.values())) if items is None or plain != items else {}
        stat_list += [feature_stat(h) for h in features]
        info = first.info
        plain_list = [s for s in stat_list if not is_feature_stat(s)]
        layer_list = (
            list(layers)
            if layers is not None
            else _available_layers(first, plain_list)
            if plain_list
            else []
        )
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
        return acc.result(names, n_heads, d_mlp, getattr(info, "model_name", ""), image, features)


def _array_name(stat: str, index: int) -> str:
    return f"features{index}" if is_feature_stat(stat) else stat


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
        features: dict[str, dict[str, Any]] | None = None,
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
            dict(features or {}),
        )


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
