"""Ablations over a set of prompts: zero, mean or resampled heads, neurons, MLPs and layers.

Each ablation (one component, or a list ablated together) replaces the components' outputs:

- ``how="zero"``: by zeros;
- ``how="mean"``: by their mean over the ``reference`` prompts, per position when every prompt
  and every reference prompt have the same token length (templated data sets), else also over
  positions (said in ``notes``);
- ``how="resample"``: by their value on a reference prompt drawn for each prompt (seeded with
  ``seed``; the reference prompts must have the prompt's token length).

Components: ``"L3H5"`` or ``(3, 5)`` (a head: its ``z``, the input of the output projection),
``"L3N120"`` (one MLP neuron), ``"L3.mlp"`` (the MLP's output), ``"L3.attn"`` (the attention's
output), ``"L3"`` (the whole layer's writes: attention and MLP output), and dictionary features
``(sae, 301)`` / ``(sae, [3, 7])``: the features' activations are replaced and the hooked
activation gets ``decode(new) − decode(old)`` added, so the dictionary's error term stays
(:mod:`~circuitboard.intervene._ablate_features`). Runs go through the write hooks every
intervention shares; each prompt is one batched forward of its baseline and all ablations.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..capture._tokens import tokenize
from ._ablate_features import (
    FeatureEdit,
    Features,
    check_tuple,
    columns,
    feature_component,
    is_dictionary,
    reading,
    writing,
)
from ._hooks import Edit, check_applied, write_hooks
from ._metric import token_id
from ._runner import Runner, eval_mode
from ._sites import Site

HOWS = ("zero", "mean", "resample")
_SPEC = re.compile(r"^L(\d+)(?:H(\d+)|N(\d+)|\.(mlp|attn))?$")


@dataclass(frozen=True, eq=False)
class Ablation:
    """The metric on each prompt with each ablation applied.

    Attributes
    ----------
    values
        ``[ablations, prompts]``: the metric with the ablation.
    baseline
        ``[prompts]``: the metric of the unablated model.
    labels
        One label per ablation (``"L3H5"``, ``"L3H5+L4.mlp"``).
    how, metric, seed
        How the components were replaced, the metric's description, the resample seed.

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> res = ablate(model, tok, ["the quick brown fox"], ["L0H1", "L1.mlp", []])
    >>> res.values.shape, float(res.effects[2, 0])  # the empty ablation changes nothing
    ((3, 1), 0.0)
    """

    values: np.ndarray
    baseline: np.ndarray
    labels: list[str]
    how: str
    metric: str
    prompts: list[str]
    seed: int | None = None
    n_reference: int = 0
    model_name: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def effects(self) -> np.ndarray:
        """``[ablations, prompts]``: ``values − baseline`` (0 = the ablation changed nothing)."""
        return self.values - self.baseline[None, :]

    @property
    def mean_effect(self) -> np.ndarray:
        """``[ablations]``: the effect averaged over prompts."""
        return self.effects.mean(1)

    def top(self, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` ablations with the largest ``|mean effect|``, each a dict with ``label``
        first, ``value`` (mean effect), ``std`` (over prompts) and ``metric`` (mean metric)."""
        order = np.argsort(-np.abs(np.nan_to_num(self.mean_effect)), kind="stable")
        return [
            {
                "label": self.labels[i],
                "value": float(self.mean_effect[i]),
                "std": float(self.effects[i].std()),
                "metric": float(self.values[i].mean()),
            }
            for i in order[: max(0, int(k))].tolist()
        ]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write to a ``.npz`` file (no pickle); :func:`load_ablation` reads it back."""
        from .._files import save_stamped

        meta = {
            "labels": self.labels,
            "how": self.how,
            "metric": self.metric,
            "prompts": self.prompts,
            "seed": self.seed,
            "n_reference": self.n_reference,
            "model_name": self.model_name,
            "notes": self.notes,
        }
        return save_stamped(
            path, "ablation", meta, {"values": self.values, "baseline": self.baseline}
        )

    def __repr__(self) -> str:
        ref = f" over {self.n_reference} reference prompts" if self.how != "zero" else ""
        seed = f", seed {self.seed}" if self.how == "resample" else ""
        best = self.top(1)
        lead = f"; largest {best[0]['label']} {best[0]['value']:+.4g}" if best else ""
        return (
            f"Ablation({len(self.labels)} ablations × {len(self.prompts)} prompts, "
            f"how={self.how}{ref}{seed}, metric={self.metric}: baseline mean "
            f"{float(self.baseline.mean()):.4g}{lead})"
        )


def load_ablation(path: str | os.PathLike[str]) -> Ablation:
    """Read an :class:`Ablation` written by :meth:`Ablation.save`.

    Examples
    --------
    >>> import tempfile, os
    >>> a = Ablation(np.zeros((1, 2)), np.ones(2), ["L0H0"], "zero", "loss", ["a", "b"])
    >>> load_ablation(a.save(os.path.join(tempfile.mkdtemp(), "a.npz"))).labels
    ['L0H0']
    """
    from .._files import decoding, json_array, read_npz

    kind, writer = "ablation", "Ablation.save(path)"
    z = read_npz(path, kind, writer, required=("__meta__", "values", "baseline"))
    meta = json_array(z, "__meta__", path, kind, writer)
    with decoding(path, kind, writer):
        return Ablation(values=z["values"], baseline=z["baseline"], **meta)


# -- components ---------------------------------------------------------------------------------
def _component(spec: Any, info: Any) -> tuple[str, list[Site]]:
    """A label and the sites a component's output lives at."""
    L = info.n_layers
    if isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(i, int) for i in spec):
        spec = f"L{spec[0]}H{spec[1]}"
    m = _SPEC.match(spec) if isinstance(spec, str) else None
    if m is None:
        raise ValueError(
            f"unknown component {spec!r}; use 'L3H5' or (3, 5) for a head, 'L3N120' for a "
            "neuron, 'L3.mlp' / 'L3.attn' for a sublayer's output, 'L3' for a whole layer, "
            "(sae, 301) or (sae, [3, 7]) for dictionary features."
        )
    layer = int(m.group(1))
    if not 0 <= layer < L:
        raise ValueError(
            f"component {spec!r}: layer {layer} out of range; the model has {L} "
            f"layers (0..{L - 1})."
        )
    if m.group(2) is not None:
        h = int(m.group(2))
        if not 0 <= h < info.n_heads:
            raise ValueError(
                f"component {spec!r}: head {h} out of range; layer {layer} has "
                f"{info.n_heads} heads (0..{info.n_heads - 1})."
            )
        return spec, [Site("z", layer, head=h)]
    if m.group(3) is not None:
        n = int(m.group(3))
        if not 0 <= n < info.d_mlp:
            raise ValueError(
                f"component {spec!r}: neuron {n} out of range; the MLP has "
                f"{info.d_mlp} neurons (0..{info.d_mlp - 1})."
            )
        return spec, [Site("mlp_post", layer, neuron=n)]
    if m.group(4) is not None:
        return spec, [Site(f"{m.group(4)}_out", layer)]
    return spec, [Site("attn_out", layer), Site("mlp_out", layer)]


def _ablations(
    components: Any, info: Any, model: Any, adapter: Any
) -> list[tuple[str, list[Site], list[Features]]]:
    """Each ablation's label, the sites of its components and the dictionary features in it."""
    if isinstance(components, str | tuple):
        components = [components]
    out = []
    for c in components:
        group = c if isinstance(c, list) else [c]
        labels, sites, feats = [], [], []
        for x in group:
            if isinstance(x, tuple) and x and is_dictionary(x[0]):
                label, f = feature_component(x, model, adapter, info.n_layers)
                labels.append(label)
                feats.append(f)
                continue
            if isinstance(x, tuple):
                check_tuple(x)
            label, ss = _component(x, info)
            labels.append(label)
            sites.extend(ss)
        out.append(("+".join(labels) or "∅", sites, feats))
    if not out:
        raise ValueError(
            "components is empty; give at least one, e.g. ['L3H5', 'L4.mlp'] or [(sae, 301)]."
        )
    return out


def _full(site: Site) -> Site:
    """The whole tensor the site indexes (every head / neuron)."""
    return Site(site.kind, site.layer)


def _part(site: Site, act: torch.Tensor) -> torch.Tensor:
    """The site's slice ``[T, *rest]`` of a whole-site activation ``[T, *full]``."""
    comp = site.head if site.head is not None else site.neuron
    return act if comp is None else act[:, comp]


# -- metrics ------------------------------------------------------------------------------------
def _metric(tokenizer: Any, metric: Any, answer: Any, wrong: Any) -> tuple[Any, str]:
    """``f(logits [B, T, vocab], ids [T]) -> [B]`` and its description."""
    if metric is not None and answer is not None:
        raise ValueError("give metric= or answer= (with wrong=), not both.")
    if answer is not None:
        a = token_id(tokenizer, answer, "answer")
        w = token_id(tokenizer, wrong, "wrong") if wrong is not None else None

        def diff(lg: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            last = lg[:, -1]
            return last[:, a] - (last[:, w] if w is not None else 0.0)

        at = tokenizer.decode([a])
        return diff, f"logit({at!r})" + (f" − logit({tokenizer.decode([w])!r})" if w else "")
    if metric is None or metric == "loss":

        def loss(lg: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            logp = torch.log_softmax(lg[:, :-1].float(), -1)
            tgt = ids[1:].to(lg.device)
            return -logp[:, torch.arange(len(tgt)), tgt].mean(1)

        return loss, "next-token loss (mean over positions)"
    if callable(metric):

        def custom(lg: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            vals = [torch.as_tensor(metric(row[-1])).float().reshape(()) for row in lg]
            return torch.stack(vals)

        return custom, getattr(metric, "description", getattr(metric, "__name__", "metric"))
    raise ValueError(
        f"metric must be 'loss', a callable of the last position's logits [vocab], or None; got "
        f"{metric!r}. For a logit difference pass answer= and wrong=."
    )


# -- the run ------------------------------------------------------------------------------------
def _read(runner: Runner, ids: list[int], sites: list[Site]) -> dict[Site, torch.Tensor]:
    acts, _ = runner.read(torch.tensor(ids), sites)
    return {s: a.float() for s, a in acts.items()}


def ablate(
    model: Any,
    tokenizer: Any,
    prompts: str | Sequence[str],
    components: Any,
    *,
    how: str = "zero",
    reference: Sequence[str] | None = None,
    metric: Any = None,
    answer: Any = None,
    wrong: Any = None,
    seed: int = 0,
    batch_size: int | None = None,
) -> Ablation:
    """Ablate components (alone or in groups) on each prompt and measure a metric.

    Parameters
    ----------
    model, tokenizer
        A Hugging Face causal LM served by a circuitboard adapter and its tokenizer.
    prompts
        One prompt or a list.
    components
        A list of ablations; each is a component (``"L3H5"`` / ``(3, 5)``, ``"L3N120"``,
        ``"L3.mlp"``, ``"L3.attn"``, ``"L3"``, dictionary features ``(sae, i)`` /
        ``(sae, [i, j])``) or a list of components ablated together (``[]`` is the empty
        ablation). A feature is replaced in the dictionary's delta form (its error term stays).
    how
        ``"zero"``, ``"mean"`` (mean over ``reference``) or ``"resample"`` (one reference
        prompt drawn per prompt, seeded).
    reference
        Prompts whose activations define the mean or the resampling pool.
    metric, answer, wrong
        ``"loss"`` (default: mean next-token cross-entropy of the prompt), ``answer=`` /
        ``wrong=`` for the logit difference at the last position, or a callable of the last
        position's logits ``[vocab]``.
    seed
        Seed of the resample draws (the same seed gives the same draws).

    Returns
    -------
    Ablation

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> res = ablate(model, tok, ["the quick brown fox"], ["L0H1", "L1"], how="mean",
    ...              reference=["the quick brown fox"])
    >>> bool(abs(res.effects).max() < 1e-5)  # the mean of the prompt itself changes nothing
    True
    """
    if how not in HOWS:
        raise ValueError(f"unknown how={how!r}; use 'zero', 'mean' or 'resample'.")
    plist = [prompts] if isinstance(prompts, str) else list(prompts)
    if not plist or not all(isinstance(p, str) and p for p in plist):
        raise ValueError("prompts must be a non-empty string or a list of non-empty strings.")
    if how != "zero" and not reference:
        raise ValueError(
            f"how={how!r} needs reference= prompts (the distribution to take the "
            f"{'mean' if how == 'mean' else 'samples'} from), e.g. reference=prompts or a larger "
            "set of prompts of the same template; or use how='zero'."
        )
    runner = Runner(model)
    info = runner.info
    if runner.image:
        raise ValueError("ablate takes text prompts; this is an image model.")
    abl = _ablations(components, info, model, runner.adapter)
    score, desc = _metric(tokenizer, metric, answer, wrong)
    ids = [tokenize(tokenizer, p)[0] for p in plist]
    sites = list(dict.fromkeys(_full(s) for _, ss, _ in abl for s in ss))
    feats = [f for _, _, fs in abl for f in fs]
    cols_of = columns(feats)
    notes: list[str] = []
    refs: list[list[int]] = [tokenize(tokenizer, p)[0] for p in reference or []]
    ref_acts: list[dict[Site, torch.Tensor]] = []
    ref_feats: list[dict[int, torch.Tensor]] = []  # per reference: {id(sae): [T, columns]}
    if how != "zero":
        for r in refs:
            got: dict[int, torch.Tensor] = {}
            with reading(model, runner.adapter, feats, got):
                ref_acts.append(_read(runner, r, sites))
            ref_feats.append(got)
    lengths = {len(x) for x in ids} | {len(x) for x in refs}
    per_position = len(lengths) == 1
    mean: dict[Site, torch.Tensor] = {}
    mean_feats: dict[int, torch.Tensor] = {}
    if how == "mean":
        pool = torch.stack if per_position else torch.cat
        mean = {s: pool([a[s] for a in ref_acts]).mean(0) for s in sites}
        mean_feats = {k: pool([a[k] for a in ref_feats]).mean(0) for k in cols_of}
        if per_position:
            notes.append("mean over the reference prompts, per position")
        else:
            notes.append(
                "mean over the reference prompts and over positions (their token lengths "
                "differ from the prompts'; give prompts of one template for a per-position mean)"
            )
    draws: list[int] = []
    if how == "resample":
        g = np.random.default_rng(seed)
        for i, x in enumerate(ids):
            pool_i = [j for j, r in enumerate(refs) if len(r) == len(x)]
            if not pool_i:
                raise ValueError(
                    f"how='resample' takes each position from a reference prompt of the same "
                    f"token length; prompt {i} has {len(x)} tokens and the reference prompts "
                    f"have {sorted({len(r) for r in refs})}. Add reference prompts of its "
                    "template, or use how='mean'."
                )
            draws.append(pool_i[int(g.integers(0, len(pool_i)))])
        notes.append(f"resampled: prompt i takes reference prompt {draws} (seed {seed})")

    def value(site: Site, i: int, T: int) -> torch.Tensor:
        full = _full(site)
        if how == "zero":
            return torch.zeros(())
        if how == "mean":
            return _part(site, mean[full] if per_position else mean[full][None])
        return _part(site, ref_acts[draws[i]][full])

    def feature_value(f: Features, i: int) -> torch.Tensor:
        """The replacement of ``f``'s features on prompt ``i``: ``[]``, ``[k]`` or ``[T, k]``."""
        if how == "zero":
            return torch.zeros(())
        key = id(f.sae)
        at = [cols_of[key].index(j) for j in f.idx]
        if how == "mean":
            return mean_feats[key][..., at]
        return ref_feats[draws[i]][key][:, at]

    rows = len(abl) + 1  # row 0: the unablated baseline
    values = np.zeros((len(abl), len(plist)))
    baseline = np.zeros(len(plist))
    for i, x in enumerate(ids):
        T = len(x)
        size = batch_size or max(1, 4096 // T)
        out = np.zeros(rows)
        for lo in range(0, rows, size):
            chunk = range(lo, min(rows, lo + size))
            edits = [
                Edit(s, "replace", value(s, i, T), rows=r - lo)
                for r in chunk
                if r > 0
                for s in abl[r - 1][1]
            ]
            fedits = [
                FeatureEdit(f, r - lo, feature_value(f, i))
                for r in chunk
                if r > 0
                for f in abl[r - 1][2]
            ]
            inp = torch.tensor(x, device=runner.device)[None].expand(len(chunk), T)
            with (
                torch.no_grad(),
                eval_mode(model),
                write_hooks(model, edits, adapter=runner.adapter),
                writing(model, runner.adapter, fedits) as hits,
            ):
                lg = model(input_ids=inp, use_cache=False).logits
            check_applied(edits)
            if not all(hits):
                raise RuntimeError(
                    "the forward never reached a dictionary's hook, so its feature ablation "
                    "did nothing; was the model wrapped (load a fresh copy)?"
                )
            out[lo : lo + len(chunk)] = score(lg.float(), torch.tensor(x)).cpu().numpy()
        baseline[i] = out[0]
        values[:, i] = out[1:]
    return Ablation(
        values=values,
        baseline=baseline,
        labels=[a[0] for a in abl],
        how=how,
        metric=desc,
        prompts=plist,
        seed=seed if how == "resample" else None,
        n_reference=len(refs),
        model_name=info.model_name,
        notes=notes,
    )


__all__ = ["HOWS", "Ablation", "ablate", "load_ablation"]
