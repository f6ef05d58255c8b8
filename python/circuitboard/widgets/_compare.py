"""CompareView: heads heatmap of the effect size between two categories, layer bars, neurons."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import traitlets

from ._codec import encode
from ._validate import displayable
from ._view import View, image_state, pack

N_TOP = 12
MEASURES = ("d", "t", "diff")
_HEAD_STATS = ("head_write", "attn_first", "attn_prev", "attn_entropy")
_LAYER_STATS = ("attn_out", "mlp_out")
_COLUMNS = ("layer", "neuron", "d", "t", "diff", "mean_a", "std_a", "mean_b", "std_b")
_FEATURE_COLUMNS = ("layer", "feature", "d", "t", "diff", "mean_a", "std_a", "mean_b", "std_b")


class CompareView(View):
    """Which heads, layers and neurons differ between two categories of prompts.

    A layers × heads heatmap of the chosen measure (Cohen's ``d``, Welch's ``t`` or the
    difference of means ``diff``) of a head statistic between category ``a`` and ``b``
    (blue: higher in ``a``), per-layer bars for the attention and MLP output norms, and the
    top differing neurons and, for a comparison made with ``saes=``, the top differing
    dictionary features (with their labels, as text). The pickers switch categories,
    statistic and measure in the browser (also in a static report). Hover shows the value
    with both categories' mean ± std and n; clicking a head selects ``{layer, head}`` on the
    link (a linked attention view opens it), clicking a neuron selects ``{layer, neuron}``,
    clicking a feature ``{layer, dictionary, feature}`` (a linked features view shows it).

    A comparison of image categories (a ViT) also shows each category's mean image as its
    patch grid, and for the selected head (default: the top one) where its sample position
    (CLS) looks: the effect of ``a`` vs ``b`` on the attention to each patch, over the mean
    image of ``a``.

    Parameters
    ----------
    comparison : Comparison
        From :func:`circuitboard.compare` (or :meth:`Comparison.from_captures`).
    a, b : str, optional
        Categories to compare (default: the first two).
    stat : str
        Head statistic shown first: ``head_write``, ``attn_first``, ``attn_prev`` or
        ``attn_entropy``.
    measure : str
        ``"d"`` (default), ``"t"`` or ``"diff"``.
    k : int
        Neurons (and features) listed.
    labels : dictionaries, optional
        ``cb.SAE`` objects (one or a list) whose current labels name their features in the
        list, in place of those the comparison recorded when it was made.

    Examples
    --------
    >>> cmp = cb.compare(model, tok, {"IOI": ioi, "other": other})  # doctest: +SKIP
    >>> view = cb.compare_view(cmp, measure="t")  # doctest: +SKIP
    >>> view.a, view.b = "other", "IOI"  # doctest: +SKIP
    """

    _view = traitlets.Unicode("compare").tag(sync=True)
    categories = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """Category names, in the comparison's order."""
    a = traitlets.Unicode().tag(sync=True)
    """The first category (positive values: larger in ``a``)."""
    b = traitlets.Unicode().tag(sync=True)
    """The category ``a`` is compared against."""
    stat = traitlets.Unicode("head_write").tag(sync=True)
    """The head statistic in the heatmap."""
    measure = traitlets.Unicode("d").tag(sync=True)
    """``"d"`` (Cohen's d), ``"t"`` (Welch's t) or ``"diff"`` (mean a − mean b)."""
    layers = traitlets.List(traitlets.Int()).tag(sync=True)
    """Model layer of each heatmap row."""
    n_heads = traitlets.Int().tag(sync=True)
    """Heads per layer."""
    counts = traitlets.List(traitlets.Int()).tag(sync=True)
    """Samples per category (prompts; tokens with ``pos='all'``)."""
    n_prompts = traitlets.List(traitlets.Int()).tag(sync=True)
    """Prompts per category."""
    pos = traitlets.Unicode().tag(sync=True)
    """Which token was a sample (``-1``, ``all``, ``mean``)."""
    k = traitlets.Int(N_TOP).tag(sync=True)
    """How many neurons are listed."""
    head_stats = traitlets.List().tag(sync=True)  # [[name, description]]
    layer_stats = traitlets.List().tag(sync=True)  # [[name, description]]
    has_neurons = traitlets.Bool(False).tag(sync=True)
    feature_dicts = traitlets.List().tag(sync=True)
    """The dictionaries compared: ``[[hook, layer], ...]`` (``[]``: no features)."""
    images = traitlets.List().tag(sync=True)
    """Image comparisons: each category's mean image as a patch grid; ``[]`` for text."""
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """Image comparisons: the positions' labels (``CLS``, ``row,col``)."""
    _patch_attn = traitlets.Dict().tag(sync=True)  # float32 [categories, 2, L, H, tokens]
    _heads = traitlets.Dict().tag(sync=True)  # float32 [stats, categories, 2 (mean, std), L, H]
    _layer_vals = traitlets.Dict().tag(sync=True)  # float32 [stats, categories, 2, L]

    _fetchers: ClassVar[dict[str, str]] = {
        "fetch-neurons": "_fetch_neurons",
        "fetch-features": "_fetch_features",
    }

    def __init__(
        self,
        comparison: Any,
        *,
        a: str | None = None,
        b: str | None = None,
        stat: str = "head_write",
        measure: str = "d",
        k: int = N_TOP,
        labels: Any = None,
        **kwargs: Any,
    ) -> None:
        try:
            cats = list(comparison.categories)
            stats = comparison.stats
            layers = [int(x) for x in comparison.layers]
            n_heads = int(comparison.n_heads)
        except AttributeError as err:
            raise TypeError(
                "CompareView needs a Comparison (from cb.compare); got "
                f"{type(comparison).__name__}, which lacks {err.name!r}."
            ) from None
        if len(cats) < 2:
            raise ValueError(
                f"a comparison view needs at least 2 categories; got {cats}. "
                "Merge in or compare another category."
            )
        a = cats[0] if a is None else a
        b = (cats[1] if a != cats[1] else cats[0]) if b is None else b
        for which, name in (("a", a), ("b", b)):
            if name not in cats:
                raise ValueError(f"{which}={name!r} is not a category; categories are {cats}.")
        if a == b:
            raise ValueError(f"a and b are both {a!r}; pick two different categories of {cats}.")
        held = list(stats[cats[0]])
        hstats = [s for s in _HEAD_STATS if s in held]
        lstats = [s for s in _LAYER_STATS if s in held]
        if not hstats:
            raise ValueError(
                f"the comparison holds no per-head statistic (it has {held}); compare with "
                f"stats= including one of {list(_HEAD_STATS)}."
            )
        if stat not in hstats:
            raise ValueError(f"stat={stat!r} is not a head statistic here; choose from {hstats}.")
        if measure not in MEASURES:
            raise ValueError(f"measure={measure!r}; use one of {list(MEASURES)}.")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int; got {k!r}.")
        self._cmp = comparison
        self._names = _feature_names(comparison, labels)
        desc = _descriptions()

        def moments(names: list[str]) -> np.ndarray:
            return np.stack(
                [
                    np.stack([np.stack([stats[c][s].mean, stats[c][s].std()]) for c in cats])
                    for s in names
                ]
            ).astype(np.float32)

        heads = moments(hstats)  # [S, C, 2, L, H]
        layer_vals = (
            moments(lstats) if lstats else np.zeros((0, len(cats), 2, len(layers)), np.float32)
        )
        grid = getattr(comparison, "image", None)
        images, tokens, patch_attn = [], [], {}
        if grid and "pixels" in held and "attn_patches" in held:
            from ..capture._images import patch_tokens

            images = [image_state({**grid, "pixels": stats[c]["pixels"].mean}) for c in cats]
            tokens = patch_tokens(tuple(grid["grid"]))
            patch_attn = encode(moments(["attn_patches"])[0], "float32")
        super().__init__(
            categories=cats,
            a=a,
            b=b,
            stat=stat,
            measure=measure,
            layers=layers,
            n_heads=n_heads,
            counts=[int(stats[c][held[0]].count) for c in cats],
            n_prompts=[int(getattr(comparison, "n_prompts", {}).get(c, 0)) for c in cats],
            pos=str(getattr(comparison, "pos", "")),
            k=k,
            head_stats=[[s, desc.get(s, s)] for s in hstats],
            layer_stats=[[s, desc.get(s, s)] for s in lstats],
            has_neurons="neurons" in held,
            feature_dicts=[
                [h, int(f["layer"])]
                for h, f in (getattr(comparison, "features", None) or {}).items()
            ],
            images=images,
            tokens=tokens,
            _patch_attn=patch_attn,
            _heads=encode(heads, "float32"),
            _layer_vals=encode(layer_vals, "float32"),
            **kwargs,
        )

    @traitlets.validate("a", "b")
    def _valid_category(self, proposal: Any) -> str:
        name = proposal["value"]
        if self.categories and name not in self.categories:
            raise traitlets.TraitError(
                f"{proposal['trait'].name}={name!r} is not a category; categories are "
                f"{self.categories}."
            )
        return name

    @traitlets.validate("stat")
    def _valid_stat(self, proposal: Any) -> str:
        names = [s for s, _ in self.head_stats]
        if names and proposal["value"] not in names:
            raise traitlets.TraitError(f"stat={proposal['value']!r}; choose from {names}.")
        return proposal["value"]

    @traitlets.validate("measure")
    def _valid_measure(self, proposal: Any) -> str:
        if proposal["value"] not in MEASURES:
            raise traitlets.TraitError(
                f"measure={proposal['value']!r}; use one of {list(MEASURES)}."
            )
        return proposal["value"]

    @property
    def comparison(self) -> Any:
        """The :class:`Comparison` shown."""
        return self._cmp

    def effect(self, stat: str | None = None) -> Any:
        """The :class:`Effect` of ``a`` vs ``b`` for ``stat`` (default the shown one)."""
        return self._cmp.effect(self.a, self.b, stat or self.stat)

    def _fetch_neurons(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        cats = self.categories
        ai, bi, by, layer = msg.get("a"), msg.get("b"), msg.get("by", "d"), msg.get("layer")
        for name, v in (("a", ai), ("b", bi)):
            if not isinstance(v, int) or not 0 <= v < len(cats):
                raise IndexError(f"{name}={v!r} is not a category index; there are {len(cats)}.")
        if not self.has_neurons:
            raise ValueError(
                "this comparison has no neuron statistics (compare with stats=[..., 'neurons'])."
            )
        top = self._cmp.top(cats[ai], cats[bi], "neurons", k=int(self.k), by=by, layer=layer)
        rows = np.array([[t[c] for c in _COLUMNS] for t in top], dtype=np.float32).reshape(
            -1, len(_COLUMNS)
        )
        return pack(layer=layer, rows=encode(rows, "float32"))

    def _fetch_features(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        """The top features of every dictionary (``layer`` None) or of those at ``layer``:
        rows of :data:`_FEATURE_COLUMNS` plus each one's hook and label (text)."""
        cats = self.categories
        ai, bi, by, layer = msg.get("a"), msg.get("b"), msg.get("by", "d"), msg.get("layer")
        for name, v in (("a", ai), ("b", bi)):
            if not isinstance(v, int) or not 0 <= v < len(cats):
                raise IndexError(f"{name}={v!r} is not a category index; there are {len(cats)}.")
        if not self.feature_dicts:
            raise ValueError("this comparison has no feature statistics (compare with saes=[sae]).")
        if layer is not None and layer not in {lyr for _, lyr in self.feature_dicts}:
            layer = None  # a layer without a dictionary: every dictionary's features
        top = self._cmp.top(cats[ai], cats[bi], "features", k=int(self.k), by=by, layer=layer)
        rows = np.array([[t[c] for c in _FEATURE_COLUMNS] for t in top], dtype=np.float32).reshape(
            -1, len(_FEATURE_COLUMNS)
        )
        return pack(
            layer=layer,
            rows=encode(rows, "float32"),
            hooks=[t["hook"] for t in top],
            names=[
                displayable(self._names.get(t["hook"], {}).get(str(t["feature"]), t["name"]))
                for t in top
            ],  # fmt: skip
        )

    def export_requests(self, budget_bytes: int) -> list[dict[str, Any]]:
        n = len(self.categories)
        pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
        first = (self.categories.index(self.a), self.categories.index(self.b))
        pairs.sort(key=lambda p: p != first)
        reqs = []
        if self.has_neurons:
            for layer in [None, *self.layers]:
                for by in MEASURES:
                    for i, j in pairs:
                        reqs.append(
                            {"kind": "fetch-neurons", "a": i, "b": j, "by": by, "layer": layer}
                        )
        if self.feature_dicts:
            for layer in [None, *sorted({lyr for _, lyr in self.feature_dicts})]:
                for by in MEASURES:
                    for i, j in pairs:
                        reqs.append(
                            {"kind": "fetch-features", "a": i, "b": j, "by": by, "layer": layer}
                        )
        return reqs


def _feature_names(comparison: Any, labels: Any) -> dict[str, dict[str, str]]:
    """``{hook: {"index": name}}``: the comparison's recorded labels, updated from the
    dictionaries in ``labels`` (their current ``labels``)."""
    from ..analysis._features import feature_labels
    from ..capture._saes import sae_hook

    names = {
        h: dict(f.get("labels", {}))
        for h, f in (getattr(comparison, "features", None) or {}).items()
    }
    if labels is None:
        return names
    items = labels if isinstance(labels, list | tuple) else [labels]
    for sae in items:
        hook = sae_hook(sae)
        if hook not in names:
            raise ValueError(
                f"labels= has a dictionary reading {hook!r}, which this comparison did not "
                f"compare (it compared {list(names)}); pass the dictionaries given to "
                "cb.compare(..., saes=...)."
            )
        names[hook] = {str(i): v for i, v in feature_labels(sae).items()}
    return names


def _descriptions() -> dict[str, str]:
    return {
        "head_write": "head write norm ‖z·W_O‖",
        "attn_first": "attention to first token",
        "attn_prev": "attention to previous token",
        "attn_entropy": "attention entropy",
        "attn_out": "‖attn out‖",
        "mlp_out": "‖MLP out‖",
    }


def compare_view(comparison: Any, **kwargs: Any) -> CompareView:
    """The :class:`CompareView` of a :class:`Comparison` (keywords go to the view).

    Examples
    --------
    >>> cmp = cb.compare(model, tok, {"IOI": ioi, "other": other})  # doctest: +SKIP
    >>> cb.compare_view(cmp, a="IOI", b="other", stat="attn_first")  # doctest: +SKIP
    """
    return CompareView(comparison, **kwargs)
