"""Patching dictionary features: ``cb.patch(..., site="features", saes=sae)``.

The dictionary reading hook ``H`` splits the activation there into features, decoder bias and
error: ``x = decode(a) + error``. Patching feature ``f`` (denoising: the corrupted run, with the
clean value of ``f`` at every position) writes ``x_base + decode(a_base with column f from
the source) − decode(a_base)`` at ``H``: only that feature changes, the base run's error term
stays. Patching every feature and the error together writes the source activation itself, so
it equals patching the whole hooked activation (a test checks this identity).

``method="attribution"`` estimates every feature from one forward and one backward on the base
run: ``Σ_pos (a_src − a_base)[pos, f] · ∂metric/∂a[pos, f]``, with the gradient taken through
``x_base + decode(a) − decode(a).detach()`` (value exactly ``x_base``; gradient through the
features only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._files import decoding, json_array, read_npz, save_stamped
from ._metric import evaluate, normalize


@dataclass(frozen=True, eq=False)
class FeaturePatching:
    """The effect of patching each active feature of one dictionary on the metric.

    ``values[i]`` (normalized: clean = 1, corrupted = 0, either direction) is the effect of
    patching feature ``features[i]`` at every position; ``raw`` the metric itself. ``error``:
    the error term alone; ``all_and_error`` / ``whole``: every feature plus the error, and the
    whole hooked activation (equal up to float rounding); all three normalized.

    Examples
    --------
    >>> res = cb.patch(model, tok, clean, corrupted, answer=" Mary", wrong=" John",
    ...                site="features", saes=sae)  # doctest: +SKIP
    >>> res.top(3)  # doctest: +SKIP
    [{'label': 'blocks.12.hook_resid_post#301', 'feature': 301, 'value': 0.41}, ...]
    """

    hook: str
    features: np.ndarray
    values: np.ndarray
    raw: np.ndarray
    method: str
    direction: str
    metric: str
    clean_value: float
    corrupted_value: float
    error: float
    all_and_error: float
    whole: float
    names: dict[int, str]

    @property
    def labels(self) -> list[str]:
        return [
            f"{self.hook}#{f}" + (f" {self.names[int(f)]}" if int(f) in self.names else "")
            for f in self.features
        ]

    def top(self, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` features with the largest absolute effect (label first)."""
        order = np.argsort(-np.abs(self.values), kind="stable")[:k]
        labels = self.labels
        return [
            {"label": labels[i], "feature": int(self.features[i]), "value": float(self.values[i])}
            for i in order
        ]

    def save(self, path: str | Path) -> None:
        """``.npz`` of the arrays with the rest as JSON; reopen with
        :func:`load_feature_patching` (no pickle)."""
        meta = {
            k: getattr(self, k)
            for k in ("hook", "method", "direction", "metric", "clean_value", "corrupted_value",
                      "error", "all_and_error", "whole")
        }  # fmt: skip
        meta["names"] = {str(k): v for k, v in self.names.items()}
        arrays = {"features": self.features, "values": self.values, "raw": self.raw}
        save_stamped(path, "feature patching", meta, arrays)

    def __repr__(self) -> str:
        return (
            f"FeaturePatching({self.hook}, {len(self.features)} features, {self.method}, "
            f"{self.direction}, metric {self.metric}: clean {self.clean_value:.4g}, corrupted "
            f"{self.corrupted_value:.4g}; error term {self.error:.3g}, all features + error "
            f"{self.all_and_error:.4g}, whole activation {self.whole:.4g})"
        )


def load_feature_patching(path: str | Path) -> FeaturePatching:
    """Open a :class:`FeaturePatching` written by its ``save``.

    Examples
    --------
    >>> import tempfile, os
    >>> fp = FeaturePatching("blocks.0.hook_resid_post", np.array([3, 9]), np.array([0.7, 0.1]),
    ...                      np.array([1.2, 0.3]), "exact", "denoise", "logit diff", 1.5, 0.1,
    ...                      0.02, 1.0, 1.0, {})
    >>> path = os.path.join(tempfile.mkdtemp(), "fp.npz")
    >>> fp.save(path)
    >>> load_feature_patching(path).top(1)
    [{'label': 'blocks.0.hook_resid_post#3', 'feature': 3, 'value': 0.7}]
    """
    writer = "FeaturePatching.save(path)"
    keys = ("features", "values", "raw")
    z = read_npz(path, "feature patching", writer, required=("__meta__", *keys))
    meta = json_array(z, "__meta__", path, "feature patching", writer)
    with decoding(path, "feature patching", writer):
        names = {int(k): v for k, v in meta.pop("names").items()}
        return FeaturePatching(**{k: z[k] for k in keys}, **meta, names=names)


def _one_dictionary(saes: Any) -> Any:
    if saes is None:
        raise ValueError(
            "site='features' needs the dictionary whose features to patch: pass saes=sae "
            "(e.g. cb.load_default_saes()[12] or cb.SAE.load(folder))."
        )
    items = list(saes.values()) if isinstance(saes, dict) else saes
    if isinstance(items, list | tuple):
        if len(items) != 1:
            raise ValueError(
                f"site='features' patches one dictionary at a time; got {len(items)}. Pass "
                "saes=sae (call cb.patch once per dictionary)."
            )
        return items[0]
    return items


def patch_features(
    model: Any,
    tokenizer: Any,
    clean: Any,
    corrupted: Any,
    *,
    saes: Any,
    answer: Any = None,
    wrong: Any = None,
    metric: Any = None,
    method: str = "exact",
    direction: str = "denoise",
    batch_size: int = 32,
) -> FeaturePatching:
    """Patch each feature of one dictionary that is active on either prompt (see the module).

    Examples
    --------
    >>> import circuitboard as cb
    >>> from circuitboard.testing import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> sae = cb.SAE(32, 64, kind="topk", k=4, hook="blocks.0.hook_resid_post", seed=0)
    >>> clean = "When Mary and John went to the store, John gave a drink to"
    >>> corrupted = "When Mary and John went to the store, Mary gave a drink to"
    >>> res = cb.patch(model, tok, clean, corrupted, answer=" Mary", wrong=" John",
    ...                site="features", saes=sae)
    >>> abs(res.all_and_error - res.whole) < 1e-5
    True
    """
    from ..capture._run import _capture_mode
    from ..capture._saes import check_fits, locate_hook, sae_hook, sae_hook_out
    from ..capture.adapters import get_adapter
    from ._patch_inputs import _prepare_pairs

    sae = _one_dictionary(saes)
    hook = sae_hook(sae)
    if sae_hook_out(sae) != hook:
        raise ValueError(
            f"site='features' patches dictionaries that reconstruct what they read; the one "
            f"reading {hook!r} is a transcoder (writes {sae_hook_out(sae)!r})."
        )
    if method not in ("exact", "attribution"):
        raise ValueError(
            f"site='features' supports method='exact' or 'attribution'; got {method!r}."
        )
    if direction not in ("denoise", "noise"):
        raise ValueError(f"unknown direction {direction!r}; use denoise or noise.")
    adapter = get_adapter(model)
    point = locate_hook(model, adapter, hook, adapter.n_blocks(model))
    pairs = _prepare_pairs(tokenizer, clean, corrupted, answer, wrong, metric)
    if len(pairs) != 1:
        raise ValueError("site='features' takes one prompt pair; loop over pairs to average.")
    pair = pairs[0]
    device = next(model.parameters()).device
    dtype = next(sae.parameters()).dtype

    def run(ids: torch.Tensor, edit: Any = None, grad: bool = False) -> torch.Tensor:
        """Metric per row of ``ids [B, T]``; ``edit(x) -> new x`` at the hook (or reads)."""
        seen: dict[str, torch.Tensor] = {}

        def fn(x: torch.Tensor) -> torch.Tensor | None:
            seen["x"] = x
            return None if edit is None else edit(x)

        from ..capture._saes import _register

        handle = _register(point, fn)
        try:
            ctx = torch.enable_grad() if grad else torch.no_grad()
            with ctx, _capture_mode(model, eager=False):
                out = model(input_ids=ids.to(device), use_cache=False)
            logits = (out.logits if hasattr(out, "logits") else out[0])[:, -1].float()
            vals = evaluate(pair.metric, logits)
        finally:
            handle.remove()
        run.last_x = seen.get("x")  # type: ignore[attr-defined]
        return vals

    clean_ids, corrupt_ids = pair.clean_ids[None], pair.corrupt_ids[None]
    m_clean = float(run(clean_ids)[0])
    x_clean = run.last_x.detach()  # type: ignore[attr-defined]
    m_corr = float(run(corrupt_ids)[0])
    x_corr = run.last_x.detach()  # type: ignore[attr-defined]
    check_fits(sae, x_clean.reshape(*x_clean.shape[:2], -1).shape[-1], hook)
    base_ids, x_base, x_src = (
        (corrupt_ids, x_corr, x_clean) if direction == "denoise" else (clean_ids, x_clean, x_corr)
    )
    with torch.no_grad():
        a_base = sae.encode(x_base.reshape(*x_base.shape[:2], -1).to(dtype))
        a_src = sae.encode(x_src.reshape(*x_src.shape[:2], -1).to(dtype))
        dec_base = sae.decode(a_base)
        err_base = x_base.reshape(dec_base.shape).double() - dec_base.double()
        err_src = x_src.reshape(dec_base.shape).double() - sae.decode(a_src).double()
    active = ((a_base != 0) | (a_src != 0))[0].any(0).nonzero()[:, 0]

    def write(delta: torch.Tensor) -> Any:
        """Add ``delta [B, T, d]`` (float64) to the hooked activation of each row."""
        return lambda x: (x.double() + delta.reshape(x.shape)).to(x.dtype)

    # the identities: every feature + the error, and the whole activation
    d_all = (sae.decode(a_src).double() - dec_base.double()) + (err_src - err_base)
    with torch.no_grad():
        all_and_error = float(run(base_ids, write(d_all.to(x_base.device)))[0])
        whole = float(run(base_ids, lambda x: x_src.to(x.dtype))[0])
        error = float(run(base_ids, write((err_src - err_base).to(x_base.device)))[0])

    if method == "exact":
        raws: list[float] = []
        with torch.no_grad():
            for start in range(0, len(active), batch_size):
                fs = active[start : start + batch_size]
                a = a_base.repeat(len(fs), 1, 1)
                rows = torch.arange(len(fs))
                a[rows, :, fs] = a_src[0][:, fs].T
                delta = sae.decode(a).double() - dec_base.double()
                ids = base_ids.repeat(len(fs), 1)
                raws.extend(run(ids, write(delta.to(x_base.device))).tolist())
        raw = np.array(raws, np.float64)
    else:
        a = a_base.detach().clone().requires_grad_(True)

        def splice(x: torch.Tensor) -> torch.Tensor:
            dec = sae.decode(a)
            return (x.double() + (dec.double() - dec.double().detach()).reshape(x.shape)).to(
                x.dtype
            )

        m = run(base_ids, splice, grad=True)
        (g,) = torch.autograd.grad(m.sum(), a)
        est = ((a_src - a_base).double() * g.double())[0].sum(0)[active]
        base_m = m_corr if direction == "denoise" else m_clean
        raw = (base_m + est).detach().cpu().numpy()
    from ..analysis._features import feature_labels

    return FeaturePatching(
        hook=hook,
        features=active.cpu().numpy(),
        values=np.asarray(normalize(raw, m_clean, m_corr), np.float64),
        raw=raw,
        method=method,
        direction=direction,
        metric=getattr(pair.metric, "description", "metric"),
        clean_value=m_clean,
        corrupted_value=m_corr,
        error=float(normalize(error, m_clean, m_corr)),
        all_and_error=float(normalize(all_and_error, m_clean, m_corr)),
        whole=float(normalize(whole, m_clean, m_corr)),
        names=feature_labels(sae),
    )
