"""Dictionary features in analyses: reading them from a capture, and their share of a logit.

A capture made with ``cb.capture(..., saes=[...])`` holds each dictionary's sparse feature
activations, reconstruction and error next to the hook it reads (see
:mod:`circuitboard.capture._saes`). :func:`feature_acts` reads them back;
:func:`split_by_features` turns one dictionary's hooked activation into per-feature terms of a
direct logit attribution: ``features + bias + error + rest == model_value``, where ``bias`` is
the decoder bias, ``error`` what the dictionary misses and ``rest`` every component the hooked
activation does not contain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._files import decoding, json_array, read_npz, save_stamped

WHAT = "direct_logit_attribution(saes=...)"
_HOOK = re.compile(r"blocks\.(\d+)\.(.+)$")


def feature_labels(sae: Any) -> dict[int, str]:
    """User names of features by index: ``sae.labels`` (a list, ``cb.SAE``'s default names
    ``f0, f1, ...`` left out, or a dict), else ``sae.metadata["labels"]``."""
    labels = getattr(sae, "labels", None)
    if labels is None:
        labels = (getattr(sae, "metadata", None) or {}).get("labels")
    if isinstance(labels, list | tuple):
        return {i: str(v) for i, v in enumerate(labels) if str(v) != f"f{i}"}
    return {int(k): str(v) for k, v in (labels or {}).items()}


def resolve_saes(cap: Any, saes: Any, what: str) -> dict[str, Any]:
    """``saes=`` as ``{hook: dictionary}``: dictionaries (one, a list, a dict), or ``True`` for
    every dictionary the capture ran; each must have its tensors in the capture."""
    from ..capture._saes import sae_hook, sae_names

    if saes is True:
        found = dict(getattr(cap, "saes", None) or {})
        if not found:
            raise ValueError(
                f"{what}: saes=True uses the dictionaries the capture ran, but this capture ran "
                "none. Capture with cb.capture(model, tokenizer, prompt, saes=[...]) or pass "
                "the dictionaries: saes=[sae]."
            )
        items = list(found.values())
    elif isinstance(saes, dict):
        items = list(saes.values())
    elif isinstance(saes, list | tuple):
        items = list(saes)
    else:
        items = [saes]
    out: dict[str, Any] = {}
    for sae in items:
        hook = sae_hook(sae)
        name = sae_names(hook)["hook_sae_acts_post"]
        if name not in cap.tensors:
            raise KeyError(
                f"{what}: the capture has no features of the dictionary reading {hook!r} "
                f"({name!r} missing). Capture with cb.capture(model, tokenizer, prompt, "
                "saes=[sae]) so its features, reconstruction and error are recorded."
            )
        out[hook] = sae
    return out


def feature_acts(cap: Any, hook: str, positions: Any = None) -> torch.Tensor:
    """Dense float32 ``[pos, d_sae]`` feature activations of the dictionary reading ``hook``
    (only ``positions``, a list of ints, when given; the stored tensor stays sparse)."""
    from ..capture._saes import sae_names

    acts = cap.tensors[sae_names(hook)["hook_sae_acts_post"]]
    if positions is not None:
        acts = acts.index_select(0, torch.as_tensor(positions, dtype=torch.long))
    return (acts.to_dense() if acts.is_sparse else acts).float()


def decoder_matrix(sae: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_dec [d_sae, d_out], b_dec [d_out])`` in float64, read from the dictionary, or
    from ``decode`` of unit vectors when it keeps them under other names (affine decoders)."""
    W, b = getattr(sae, "W_dec", None), getattr(sae, "b_dec", None)
    if isinstance(W, torch.Tensor) and W.dim() == 2 and isinstance(b, torch.Tensor):
        return W.detach().to("cpu", torch.float64), b.detach().to("cpu", torch.float64)
    d_sae = int(getattr(sae, "d_sae", 0))
    ref = next(iter(sae.parameters()))
    with torch.no_grad():
        zero = sae.decode(torch.zeros(1, d_sae, dtype=ref.dtype, device=ref.device))[0]
        eye = sae.decode(torch.eye(d_sae, dtype=ref.dtype, device=ref.device))
    return (eye - zero).to("cpu", torch.float64), zero.to("cpu", torch.float64)


@dataclass(frozen=True, eq=False)
class FeatureAttribution:
    """One dictionary's features as terms of a direct logit attribution at one position.

    ``values[i]`` is feature ``i``'s direct contribution (its activation times its decoder row,
    through what follows the hook to the logit with the final norm frozen); ``bias`` the
    decoder bias's, ``error`` the dictionary error's, ``rest`` every component outside the
    hooked activation. ``values.sum() + bias + error + rest == model_value``.

    Examples
    --------
    >>> attr = cb.direct_logit_attribution(cap, " Mary", " John", saes=True)  # doctest: +SKIP
    >>> attr.features(12).top(3)  # doctest: +SKIP
    [{'label': 'blocks.12.hook_resid_post#301', 'value': 1.2}, ...]
    """

    hook: str
    values: np.ndarray
    bias: float
    error: float
    rest: float
    model_value: float
    description: str = ""
    names: dict[int, str] | None = None

    @property
    def labels(self) -> list[str]:
        """``hook#index`` per feature, with the user's name where one is set."""
        names = self.names or {}
        return [
            f"{self.hook}#{i}" + (f" {names[i]}" if i in names else "")
            for i in range(len(self.values))
        ]

    @property
    def total(self) -> float:
        """``values.sum() + bias + error + rest`` (equals ``model_value`` up to float error)."""
        return float(self.values.astype(np.float64).sum() + self.bias + self.error + self.rest)

    def top(self, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` features with the largest absolute contribution (label first)."""
        order = np.argsort(-np.abs(self.values), kind="stable")[:k]
        labels = self.labels
        return [
            {"label": labels[i], "feature": int(i), "value": float(self.values[i])} for i in order
        ]

    def save(self, path: str | Path) -> None:
        """Write ``.npz`` (arrays) with the scalars as JSON; reopen with
        :func:`load_feature_attribution` (no pickle)."""
        meta = {k: getattr(self, k) for k in ("hook", "bias", "error", "rest", "model_value")}
        meta["description"] = self.description
        meta["names"] = {str(k): v for k, v in (self.names or {}).items()}
        save_stamped(path, "feature attribution", meta, {"values": self.values})

    def __repr__(self) -> str:
        active = int((self.values != 0).sum())
        return (
            f"FeatureAttribution({self.hook}, {self.description}: {active} active features sum "
            f"{float(self.values.sum()):.4g}, bias {self.bias:.4g}, error {self.error:.4g}, "
            f"rest {self.rest:.4g}; model {self.model_value:.4g})"
        )


def load_feature_attribution(path: str | Path) -> FeatureAttribution:
    """Open a :class:`FeatureAttribution` written by its ``save``.

    Examples
    --------
    >>> import tempfile, os
    >>> fa = FeatureAttribution("blocks.0.hook_resid_post", np.array([0.5, 0.0, -0.25]),
    ...                         bias=0.1, error=0.05, rest=1.0, model_value=1.4, names={0: "x"})
    >>> path = os.path.join(tempfile.mkdtemp(), "fa.npz")
    >>> fa.save(path)
    >>> back = load_feature_attribution(path)
    >>> round(back.total, 6), back.labels[0]
    (1.4, 'blocks.0.hook_resid_post#0 x')
    """
    writer = "FeatureAttribution.save(path)"
    z = read_npz(path, "feature attribution", writer, required=("__meta__", "values"))
    meta = json_array(z, "__meta__", path, "feature attribution", writer)
    with decoding(path, "feature attribution", writer):
        names = {int(k): v for k, v in meta.pop("names").items()}
        return FeatureAttribution(values=z["values"], names=names, **meta)


def _covered(hook: str, labels: list[str], biases: dict[str, float]) -> tuple[set, set, str]:
    """Labels and bias keys of the components the hooked activation is made of, and how the
    activation reaches the residual stream (``"resid"``, ``"mlp_post"``, ``"z"``)."""
    m = _HOOK.match(hook)
    if m is None:
        raise ValueError(f"{WHAT}: cannot attribute through {hook!r}.")
    layer, kind = int(m.group(1)), m.group(2)

    def layer_of(label: str) -> float:
        """The layer of a component label (``L3H1``, ``L3.mlp.b_out``); embeddings come first,
        the final norm's and unembedding's biases last."""
        if label in ("embed", "pos_embed"):
            return -1
        lm = re.match(r"L(\d+)", label)
        return int(lm.group(1)) if lm else float("inf")

    if kind in ("hook_resid_pre", "hook_resid_post"):
        last = layer if kind == "hook_resid_post" else layer - 1
        labs = {lab for lab in labels if lab != "bias" and layer_of(lab) <= last}
        return labs, {k for k in biases if layer_of(k) <= last}, "resid"
    if kind in ("hook_mlp_out", "mlp.hook_post"):
        labs = {f"L{layer}.mlp"}
        keys = {f"L{layer}.mlp.b_out"} if kind == "hook_mlp_out" else set()
        return labs, keys & set(biases), "resid" if kind == "hook_mlp_out" else "mlp_post"
    if kind in ("hook_attn_out", "attn.hook_z"):
        labs = {lab for lab in labels if re.fullmatch(rf"L{layer}H\d+", lab)}
        keys = {f"L{layer}.attn.b_O"} if kind == "hook_attn_out" else set()
        return labs, keys & set(biases), "resid" if kind == "hook_attn_out" else "z"
    raise ValueError(
        f"{WHAT}: {hook!r} is not a direct input of the residual stream (resid_mid feeds only "
        "the MLP); attribute dictionaries at hook_resid_pre / hook_resid_post / hook_attn_out / "
        "hook_mlp_out / mlp.hook_post / attn.hook_z."
    )


def split_by_features(
    cap: Any,
    attr: Any,
    saes: dict[str, Any],
    direction: torch.Tensor,
    decoders: dict[str, Any] | None = None,
) -> dict[str, FeatureAttribution]:
    """Per dictionary (by hook its output lands at), the :class:`FeatureAttribution` of
    ``attr`` (one position; ``direction`` ``[d_model]`` as the attribution used it).
    ``decoders``: a dict this fills with each dictionary's float64 decoder, so that calls for
    many positions read it once."""
    from ..capture._saes import sae_hook_out, sae_names

    out: dict[str, FeatureAttribution] = {}
    for hook, sae in saes.items():
        hook_out = sae_hook_out(sae)
        labs, bias_keys, path = _covered(hook_out, attr.labels, attr.biases)
        layer = int(_HOOK.match(hook_out).group(1))  # type: ignore[union-attr]
        eff = direction
        if path == "mlp_post":  # the neurons reach the residual through W_out
            eff = (
                cap.weights[f"blocks.{layer}.mlp.W_out"].detach().to("cpu", torch.float64)
                @ direction
            )
        elif path == "z":
            W_O = cap.weights[f"blocks.{layer}.attn.W_O"].detach().to("cpu", torch.float64)
            eff = (W_O @ direction).reshape(-1)
        if decoders is None or hook not in decoders:
            dec = decoder_matrix(sae)
            if decoders is not None:
                decoders[hook] = dec
        else:
            dec = decoders[hook]
        W_dec, b_dec = dec
        acts = feature_acts(cap, hook, [attr.pos])[0].double()
        error = cap.tensors[sae_names(hook)["hook_sae_error"]][attr.pos].detach().double()
        rest = sum(
            float(attr.values[i])
            for i, lab in enumerate(attr.labels)
            if lab not in labs and lab != "bias"
        )
        rest += sum(v for k, v in attr.biases.items() if k not in bias_keys)
        out[hook_out] = FeatureAttribution(
            hook=hook,
            values=(acts * (W_dec @ eff)).numpy(),
            bias=float(b_dec @ eff),
            error=float(error.reshape(-1) @ eff),
            rest=float(rest),
            model_value=attr.model_value,
            description=attr.description,
            names=feature_labels(sae),
        )
    return out
