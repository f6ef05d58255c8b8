"""FeaturesView: tokens coloured by one dictionary feature, the top features per token, and a
searchable list of features (by index, by label, by "fires on this token")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import traitlets

from ._codec import encode
from ._validate import displayable, index_in, token_list
from ._view import View, pack


@dataclass(frozen=True)
class SparseFeatures:
    """One dictionary's feature activations on one prompt, as COO triples (numpy, no torch).

    ``rows`` (positions), ``cols`` (feature indices), ``values`` (activations); zeros are not
    stored. ``hook`` is the capture name the dictionary reads, ``d_sae`` its width and
    ``labels`` the user's names of features by index.

    >>> sf = SparseFeatures.from_dense(np.array([[0, 2.0], [1.0, 0]]), "blocks.0.hook_resid_post")
    >>> sf.column(1).tolist(), sf.top(0, 5)
    ([2.0, 0.0], ([1], [2.0]))
    """

    hook: str
    d_sae: int
    n_tokens: int
    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    labels: dict[int, str]

    @classmethod
    def from_dense(
        cls, acts: Any, hook: str, labels: dict[int, str] | None = None
    ) -> SparseFeatures:
        a = np.asarray(acts, np.float32)
        if a.ndim != 2:
            raise ValueError(
                f"feature activations of {hook!r} have shape {a.shape}; expected [pos, d_sae]."
            )
        r, c = np.nonzero(a)
        return cls(hook, a.shape[1], a.shape[0], r.astype(np.int32), c.astype(np.int32),
                   a[r, c], dict(labels or {}))  # fmt: skip

    @property
    def layer(self) -> int:
        parts = self.hook.split(".")
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1

    def column(self, feature: int) -> np.ndarray:
        """``[pos]`` activations of one feature (zeros where it is silent)."""
        out = np.zeros(self.n_tokens, np.float32)
        sel = self.cols == feature
        out[self.rows[sel]] = self.values[sel]
        return out

    def top(self, token: int, k: int) -> tuple[list[int], list[float]]:
        """The ``k`` features with the largest activation at ``token``."""
        sel = self.rows == token
        cols, vals = self.cols[sel], self.values[sel]
        order = np.lexsort((cols, -vals))[:k]
        return [int(c) for c in cols[order]], [float(v) for v in vals[order]]

    def strongest(self) -> int:
        """The feature with the largest activation on the prompt (ignoring position 0, which
        often holds an attention sink, when there are others)."""
        sel = self.rows > 0 if self.n_tokens > 1 and (self.rows > 0).any() else slice(None)
        if not len(self.values[sel]):
            return 0
        return int(self.cols[sel][np.argmax(self.values[sel])])


def sparse_from_capture(cap: Any, hook: str, sae: Any = None) -> SparseFeatures:
    """The :class:`SparseFeatures` a capture recorded for the dictionary reading ``hook``."""
    name = f"{hook}.sae.hook_sae_acts_post"
    if name not in cap.tensors:
        have = sorted(h for h in (getattr(cap, "saes", None) or {})) or "none"
        raise KeyError(
            f"this capture has no features of a dictionary reading {hook!r} (dictionaries: "
            f"{have}). Capture with cb.capture(model, tokenizer, prompt, saes=[sae])."
        )
    acts = cap.tensors[name]
    if getattr(acts, "is_sparse", False):
        acts = acts.coalesce()
        idx = acts.indices().numpy()
        vals = acts.values().float().numpy()
        d_sae, n = int(acts.shape[1]), int(acts.shape[0])
        keep = vals != 0
        rows, cols, vals = idx[0][keep], idx[1][keep], vals[keep]
    else:
        return SparseFeatures.from_dense(acts.float().numpy(), hook, _labels(sae))
    return SparseFeatures(hook, d_sae, n, rows.astype(np.int32), cols.astype(np.int32),
                          vals.astype(np.float32), _labels(sae))  # fmt: skip


def _labels(sae: Any) -> dict[int, str]:
    """Named features only (``cb.SAE``'s default names ``f0, f1, ...`` are left out)."""
    labels = getattr(sae, "labels", None)
    if labels is None:
        labels = (getattr(sae, "metadata", None) or {}).get("labels")
    if isinstance(labels, list | tuple):
        return {i: str(v) for i, v in enumerate(labels) if str(v) != f"f{i}"}
    return {int(k): str(v) for k, v in (labels or {}).items()}


class FeaturesView(View):
    """Tokens coloured by the selected feature; per token, the features that fire most there;
    a searchable list of the prompt's features.

    The shared selection carries the feature: ``dictionary`` (the hook the dictionary reads)
    and ``feature`` (its index), with ``layer`` set to the hook's layer, so linked views follow
    a feature click and a token hovered anywhere lists its features here. The browser gets
    each dictionary's active features once (``fetch-dictionary``: COO triples, memory that
    grows with active features, not with ``d_sae``) and does the rest locally.

    Parameters
    ----------
    dictionaries : list of :class:`SparseFeatures`
        One per dictionary (different hooks).
    tokens : list of str
    dictionary, feature : optional
        Shown first: a hook name and a feature index (default: the first dictionary's
        strongest feature on the prompt).
    n_top : int
        Features listed per token.

    Examples
    --------
    >>> acts = np.zeros((3, 100), np.float32); acts[1, 7] = 2.0; acts[2, 7] = 1.0
    >>> sf = SparseFeatures.from_dense(acts, "blocks.2.hook_resid_post", {7: "dogs"})
    >>> view = FeaturesView([sf], ["a", "b", "c"])
    >>> view.selection["feature"], view.selection["dictionary"], view.selection["layer"]
    (7, 'blocks.2.hook_resid_post', 2)
    """

    _view = traitlets.Unicode("features").tag(sync=True)
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """Token strings of the prompt."""
    dictionaries = traitlets.List(traitlets.Dict()).tag(sync=True)
    """Per dictionary: ``{"hook", "layer", "d_sae", "labels": {index: name}}``."""
    n_top = traitlets.Int(10).tag(sync=True)
    """Features listed per token."""
    _initial = traitlets.Dict().tag(sync=True)  # first paint: {dictionary, feature}
    _proof = traitlets.Dict().tag(sync=True)  # per dictionary: what the feature badge checks

    _fetchers: ClassVar[dict[str, str]] = {"fetch-dictionary": "_fetch_dictionary"}

    def __init__(
        self,
        dictionaries: Sequence[SparseFeatures],
        tokens: Sequence[str],
        *,
        dictionary: str | None = None,
        feature: int | None = None,
        n_top: int = 10,
        **kwargs: Any,
    ) -> None:
        dicts = list(dictionaries)
        if not dicts:
            raise ValueError(
                "FeaturesView needs at least one dictionary's features; capture with "
                "cb.capture(model, tokenizer, prompt, saes=[sae]) and call cb.features(cap)."
            )
        hooks = [d.hook for d in dicts]
        if len(set(hooks)) != len(hooks):
            raise ValueError(f"two dictionaries read the same hook: {hooks}; pass one per hook.")
        for d in dicts:
            token_list(tokens, d.n_tokens, f"features of {d.hook}")
        if not isinstance(n_top, int) or n_top < 1:
            raise ValueError(f"n_top must be a positive int; got {n_top!r}.")
        self._dicts = {d.hook: d for d in dicts}
        first = self._dict(dictionary if dictionary is not None else hooks[0])
        f = first.strongest() if feature is None else index_in("feature", feature, first.d_sae)
        super().__init__(
            tokens=[str(t) for t in tokens],
            dictionaries=[
                {
                    "hook": d.hook,
                    "layer": d.layer,
                    "d_sae": d.d_sae,
                    "labels": {str(k): displayable(v) for k, v in d.labels.items()},
                }
                for d in dicts
            ],  # fmt: skip
            n_top=n_top,
            _initial={"dictionary": first.hook, "feature": f},
            **kwargs,
        )
        if self.link.feature is None or self.link.dictionary not in self._dicts:
            self.link.select(layer=first.layer, dictionary=first.hook, feature=f)

    def _dict(self, hook: str) -> SparseFeatures:
        try:
            return self._dicts[hook]
        except KeyError:
            raise KeyError(
                f"no dictionary reading {hook!r} in this view; dictionaries: {list(self._dicts)}."
            ) from None

    def column(self, dictionary: str, feature: int) -> np.ndarray:
        """``[pos]`` activations of one feature."""
        d = self._dict(dictionary)
        return d.column(index_in("feature", feature, d.d_sae))

    def top_features(self, dictionary: str, token: int, n: int | None = None) -> tuple:
        """``(indices, values)`` of the features that fire most at ``token``."""
        d = self._dict(dictionary)
        return d.top(index_in("token", token, d.n_tokens), n or self.n_top)

    def _fetch_dictionary(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        d = self._dict(msg["dictionary"])
        return pack(
            dictionary=d.hook,
            rows=encode(d.rows.astype(np.float32), "float32"),
            cols=encode(d.cols.astype(np.float32), "float32"),
            values=encode(d.values, "float32"),
        )

    def export_requests(self, budget_bytes: int) -> list[dict[str, Any]]:
        # sparse: a dictionary's active features on one prompt are small; embed them all
        return [{"kind": "fetch-dictionary", "dictionary": h} for h in self._dicts]


def features(
    cap: Any,
    *,
    saes: Any = None,
    dictionary: str | None = None,
    feature: int | None = None,
    **kwargs: Any,
) -> FeaturesView:
    """The features view of a capture made with ``cb.capture(..., saes=[...])``.

    ``saes``: the dictionaries to show (default: every one the capture ran); their labels
    (``sae.labels`` / ``sae.metadata["labels"]``) name features in the view.

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> from circuitboard.dictionaries import SAE
    >>> import circuitboard as cb
    >>> model, tok = tiny_model("llama")
    >>> sae = SAE(32, 64, kind="topk", k=4, hook="blocks.1.hook_resid_post", seed=0)
    >>> view = cb.features(cb.capture(model, tok, "the store", saes=sae))
    >>> view.selection["dictionary"]
    'blocks.1.hook_resid_post'
    """
    from .._api import _one_capture, _with_provenance

    _one_capture(cap, "cb.features", "cb.features({})")
    chosen = getattr(cap, "saes", None) or {}
    if saes is not None:
        items = saes.values() if isinstance(saes, dict) else saes
        items = items if isinstance(items, list | tuple) or hasattr(items, "__iter__") else [items]
        if not isinstance(saes, list | tuple | dict):
            items = [saes]
        hooks = [getattr(s, "hook", None) or s.cfg.hook_name for s in items]
        chosen = dict(zip(hooks, items, strict=True))
    if not chosen:
        raise ValueError(
            "cb.features needs a capture with dictionary features; this one ran none. Capture "
            "with cb.capture(model, tokenizer, prompt, saes=[sae]) (cb.load_default_saes() for "
            "the default model)."
        )
    dicts = [sparse_from_capture(cap, h, s) for h, s in chosen.items()]
    view = FeaturesView(dicts, cap.tokens, dictionary=dictionary, feature=feature, **kwargs)
    view._proof = {h: p for h, s in chosen.items() if (p := proof_state(cap, h, s)) is not None}
    return _with_provenance(view, cap)


PROOF_POSITIONS = 4


def proof_state(cap: Any, hook: str, sae: Any) -> dict[str, Any] | None:
    """What the feature badge checks at a few shown positions (the last, and where the
    strongest features peak): the hooked activation, the active features' activations and
    decoder rows, the decoder bias and the error. None for decoders that are not
    ``acts @ W_dec + b_dec`` (skip transcoders) or transcoders (their target is elsewhere)."""
    W, b = getattr(sae, "W_dec", None), getattr(sae, "b_dec", None)
    if W is None or b is None or getattr(sae, "W_skip", None) is not None:
        return None
    out_hook = getattr(sae, "hook_out", None) or hook
    if out_hook != hook:
        return None
    n = f"{hook}.sae."
    x = cap.tensors[n + "hook_sae_input"].float().numpy()
    err = cap.tensors[n + "hook_sae_error"].double().numpy()
    sf = sparse_from_capture(cap, hook, sae)
    peaks = [int(sf.rows[i]) for i in np.argsort(-sf.values, kind="stable")]
    positions = list(dict.fromkeys([x.shape[0] - 1, *peaks]))[:PROOF_POSITIONS]
    keep = np.isin(sf.rows, positions)
    feats = np.unique(sf.cols[keep])
    acts = np.zeros((len(positions), len(feats)), np.float32)
    for r, c, v in zip(sf.rows[keep], sf.cols[keep], sf.values[keep], strict=True):
        acts[positions.index(int(r)), int(np.searchsorted(feats, c))] = v
    W_rows = W.detach().float().cpu().numpy()[feats]
    return {
        "positions": positions,
        "input": encode(x[positions], "float32"),
        "error": encode(err[positions].astype(np.float32), "float32"),
        "acts": encode(acts, "float32"),
        "decoder": encode(W_rows, "float32"),
        "bias": encode(b.detach().float().cpu().numpy(), "float32"),
    }


def feature_checks(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The features view's badge: at the shown positions, every dictionary's features times
    their decoder rows, plus the decoder bias and the error, rebuild the hooked activation."""
    from ._checks import check
    from ._codec import decode

    out = []
    for hook, p in sorted((state.get("_proof") or {}).items()):  # the order JSON gives back
        x = decode(p["input"]).astype(np.float64)
        rebuilt = (
            decode(p["acts"]).astype(np.float64) @ decode(p["decoder"]).astype(np.float64)
            + decode(p["bias"]).astype(np.float64)
            + decode(p["error"]).astype(np.float64)
        )
        err = float(np.abs(rebuilt - x).max(initial=0.0)) / max(
            float(np.abs(x).max(initial=0.0)), 1e-12
        )
        out.append(
            check(
                f"features + error rebuild {hook}",
                f"max |Σ a·W_dec + b_dec + error − x| / max |x| at positions {p['positions']}",
                err,
                1e-5,
            )
        )
    return out


def feature_dashboard(
    top: Any,
    tokenizer: Any = None,
    texts: Sequence[str] | None = None,
    *,
    features: Any = None,
    feature: int | None = None,
    labels: Any = None,
    **kwargs: Any,
) -> Any:
    """The neuron dashboard over dictionary features: top examples, histogram, density, logit
    effects through the final norm's weight, the features that fire with it most often, and
    each feature's label (as text).

    Pass ``cb.top_activations(model, tok, texts, features=(sae, ids))``, or a model, its
    tokenizer, texts and ``features=(sae, ids)``. ``feature`` picks the one shown first (its
    entry is ``(sae layer, feature)``). ``labels``: names to show instead of those recorded
    with the records (a ``cb.SAE`` whose ``labels`` were edited since, a dict or a list).

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> import circuitboard as cb
    >>> model, tok = tiny_model("llama")
    >>> sae = cb.SAE(32, 64, kind="topk", k=4, hook="blocks.1.hook_resid_post", seed=0)
    >>> top = cb.top_activations(model, tok, ["a b c", "the store"], features=(sae, [3, 9]),
    ...                          progress=False)
    >>> cb.feature_dashboard(top, feature=9).selection["neuron"]
    9
    """
    from .._api import neuron_dashboard

    if not hasattr(top, "hist_counts"):
        if features is None:
            raise TypeError(
                "feature_dashboard needs top_activations(..., features=(sae, ids)) records, or a "
                "model, tokenizer, texts and features=(sae, ids)."
            )
        from ..analysis._neurons import top_activations

        top = top_activations(top, tokenizer, texts, features=features, **kwargs)
        kwargs = {}
    neuron = None
    if feature is not None:
        layer = next((lay for lay, i in top.neurons if i == int(feature)), None)
        if layer is None:
            raise IndexError(f"feature {feature} is not in these records; they hold "
                             f"{[i for _, i in top.neurons][:8]} ...")  # fmt: skip
        neuron = (layer, int(feature))
    return neuron_dashboard(top, neuron=neuron, labels=labels, **kwargs)
