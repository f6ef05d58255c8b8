"""The identities each view's data satisfies, computed from the view's exported state alone.

A report shows these as badges and `circuitboard verify` recomputes them from the page's
embedded data, so both read the same function of the same numbers: a check cannot pass at
export and be skipped on reading. Each function takes a view's state (the synced traits, with
encoded tensors' ``data`` as bytes) and returns a list of check records.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ._codec import decode

Check = dict[str, Any]  # {"name", "detail", "error", "tolerance", "ok"}


def check(name: str, detail: str, error: float, tolerance: float) -> Check:
    """One check record; ``ok`` when ``|error| <= tolerance`` (NaN fails)."""
    error = float(error)
    return {
        "name": name,
        "detail": detail,
        "error": error,
        "tolerance": float(tolerance),
        "ok": bool(np.isfinite(error) and abs(error) <= tolerance),
    }


def attribution_checks(state: dict[str, Any]) -> list[Check]:
    """Direct logit attribution: the parts sum to the model's value; bars match the heads."""
    heads = decode(state["_heads"]).astype(np.float64)
    attn, mlp = decode(state["_layers"]).astype(np.float64)
    terms = sum(float(v) for _, v in state["_terms"])
    total = heads.sum() + mlp.sum() + terms
    model = float(state["model_value"])
    # A half-precision model's own logits are rounded: the attribution states how far its
    # float64 sum may sit from them (float32: 1e-4 relative).
    dtype = state.get("dtype", "float32")
    return [
        check(
            "parts sum to the model's value",
            f"sum of parts {total:+.6f} vs model {model:+.6f} ({dtype})",
            total - model,
            max(1e-4 * max(1.0, abs(model)), float(state.get("tolerance", 0.0))),
        ),
        check(
            "layer bars equal their heads",
            "attention bar of each layer = sum of its heads",
            float(np.abs(attn - heads.sum(1)).max(initial=0.0)),
            1e-5 * max(1.0, float(np.abs(heads).max(initial=0.0))),
        ),
    ]


def lens_checks(state: dict[str, Any]) -> list[Check]:
    """Logit lens: the row of the model's last layer predicts exactly what the model does."""
    if state.get("final_row", -1) < 0 or not state.get("_logits_top_prob"):
        return []
    row = int(state["final_row"])
    strings = state["_strings"]
    lens_idx = decode(state["_top_index"])[row].astype(np.int64)
    lens_prob = decode(state["_top_prob"])[row]
    model_idx = decode(state["_logits_top_index"]).astype(np.int64)
    model_prob = decode(state["_logits_top_prob"])
    same = [strings[a] == strings[b] for a, b in zip(lens_idx[:, 0], model_idx[:, 0], strict=True)]
    return [
        check(
            "last layer's top token is the model's",
            f"{sum(same)} of {len(same)} positions agree",
            float(len(same) - sum(same)),
            0.0,
        ),
        check(
            "last layer's probabilities are the model's",
            "max |p(lens) − p(model)| over the top-k (stored as float16)",
            float(np.abs(lens_prob - model_prob).max(initial=0.0)),
            2e-3,
        ),
    ]


def _feature_checks(state: dict[str, Any]) -> list[Check]:
    from ._features import feature_checks  # dictionary features

    return feature_checks(state)


CHECKS: dict[str, Callable[[dict[str, Any]], list[Check]]] = {
    "attribution": attribution_checks,
    "features": _feature_checks,
    "lens": lens_checks,
}


def view_checks(state: dict[str, Any]) -> list[Check]:
    """The checks of one view's state (an empty list for views that state no identity)."""
    fn = CHECKS.get(state.get("_view", ""))
    return fn(state) if fn is not None else []
