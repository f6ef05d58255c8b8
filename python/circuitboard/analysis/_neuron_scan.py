"""One pass over tokenized texts reading the selected MLP neurons into a partial
:class:`TopActivations` (texts tokenized once and batched longest first)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..capture._prompts import id_texts, prompt_text
from ..capture.adapters._base import execution_device
from ._histograms import (
    lattice,
    lattice_edges,
    rebin_lattice,
)
from ._mlp_parts import (
    mlp_out_proj,
)
from ._running_stats import RunningStats
from ._top_activations import TopActivations, _select_top


class _Stop(Exception):
    """Raised by the last hook to skip the layers nobody asked for."""


# -- the plan: tokenize once, batch longest first ----------------------------------------------
@dataclass(frozen=True)
class TextPlan:
    """Texts tokenized once and grouped into the batches every engine runs (longest first).

    ``batches[b]`` lists global text indices; ties in length keep text order, so the plan is a
    pure function of the texts, the tokenizer and ``batch_size``.
    """

    encoded: Any  # token ids by text index: a list, or a dict holding only some texts
    batches: list[list[int]]
    special: tuple[int, ...]
    pad_id: int

    def batch_inputs(self, b: int) -> tuple[list[int], list[list[int]]]:
        """``(text indices, token ids)`` of batch ``b``: what a worker needs to run it."""
        idx = self.batches[b]
        return idx, [self.encoded[j] for j in idx]


def plan_texts(
    tokenizer: Any, texts: list[Any], *, max_length: int, batch_size: int, skip_special: bool
) -> TextPlan:
    """Tokenize ``texts`` (truncated to ``max_length``) and cut them into batches."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")
    special = set(getattr(tokenizer, "all_special_ids", []) or []) if skip_special else set()
    encoded = []
    for t in texts:
        if not isinstance(t, str):  # token ids, run as given (truncated like text)
            ids = list(t)[:max_length]
        else:
            if tokenizer is None:
                raise ValueError(
                    f"texts has the string {t[:40]!r} but tokenizer is None: pass the model's "
                    "tokenizer, or token ids (lists of ints) instead of text."
                )
            ids = tokenizer(t, truncation=True, max_length=max_length)["input_ids"]
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        encoded.append([int(x) for x in ids])
    order = sorted(range(len(texts)), key=lambda j: -len(encoded[j]))  # stable: ties by index
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    pad_id = getattr(tokenizer, "pad_token_id", None)
    return TextPlan(encoded, batches, tuple(sorted(special)), 0 if pad_id is None else int(pad_id))


class _NeuronReader:
    """Forward pre-hooks that read the selected neurons; the pass stops after the last layer."""

    def __init__(self, model: Any, sel: list[tuple[int, int]]) -> None:
        import torch

        self.model = model
        self.layers = sorted({layer for layer, _ in sel})
        self.cols = {layer: [i for l2, i in sel if l2 == layer] for layer in self.layers}
        concat = [(layer, i) for layer in self.layers for i in self.cols[layer]]
        self.to_sel = torch.tensor([concat.index(s) for s in sel])
        self.got: dict[int, Any] = {}
        self.handles: list[Any] = []

    def __enter__(self) -> _NeuronReader:
        import torch

        last = self.layers[-1]

        def make_hook(layer: int) -> Any:
            idx = torch.tensor(self.cols[layer])

            def hook(_mod: Any, args: tuple[Any, ...]) -> None:
                x = args[0]
                self.got[layer] = x[..., idx.to(x.device)].detach().to("cpu", torch.float32)
                if layer == last:
                    raise _Stop

            return hook

        try:
            for layer in self.layers:
                proj = mlp_out_proj(self.model, layer)
                self.handles.append(proj.register_forward_pre_hook(make_hook(layer)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def run(self, rows: list[list[int]], pad_id: int) -> tuple[Any, Any, Any]:
        """``(acts [B, T, n] float32, ids [B, T], lens [B])`` of right-padded ``rows``."""
        import torch

        self.got.clear()
        ids, lens = forward_rows(self.model, rows, pad_id, execution_device(self.model))
        acts = torch.cat([self.got[layer] for layer in self.layers], dim=-1)[..., self.to_sel]
        return acts, ids, lens


def forward_rows(model: Any, rows: list[list[int]], pad_id: int, device: Any) -> tuple[Any, Any]:
    """Run ``model`` on ``rows`` right-padded with ``pad_id`` (until a hook raises
    :class:`_Stop`); ``(ids [B, T], lens [B])`` on the CPU."""
    import torch

    lens = torch.tensor([len(r) for r in rows])
    T = int(lens.max())
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : lens[b]] = torch.tensor(r)
        mask[b, : lens[b]] = 1
    with torch.no_grad():
        try:
            model(input_ids=ids.to(device), attention_mask=mask.to(device))
        except _Stop:
            pass
    return ids, lens


def _valid(ids: Any, lens: Any, special: Sequence[int]) -> Any:
    import torch

    valid = torch.arange(ids.shape[1])[None, :] < lens[:, None]
    if special:
        valid &= ~torch.isin(ids, torch.tensor(list(special)))
    return valid


def scan_texts(
    model: Any,
    sel: list[tuple[int, int]],
    batches: Sequence[tuple[list[int], list[list[int]]]],
    *,
    edges: np.ndarray | None,
    bins: int,
    k: int,
    context: tuple[int, int],
    special: Sequence[int],
    pad_id: int,
    bar: Any = None,
    features: Any = None,
    cofiring: bool = False,
) -> TopActivations:
    """A partial :class:`TopActivations` of some batches (texts indexed globally).

    ``batches`` are ``(text indices, token ids)`` pairs from :meth:`TextPlan.batch_inputs`. The
    partial has no texts, vocabulary or logit effects yet; :meth:`TopActivations.merge` combines
    partials and :func:`finish_top_activations` completes the merged one. ``edges`` fixes the
    histogram's bins (:func:`histogram_edges`); with ``None`` they follow the data on a
    power-of-two lattice of ``bins`` cells (:func:`lattice_width`). ``features``: the
    dictionary whose features ``sel`` names; ``cofiring``: also count, per selected feature,
    the tokens on which each feature of the dictionary fires with it (``cofire``).
    """
    import torch

    n = len(sel)
    fixed = edges is not None
    before, after = int(context[0]), int(context[1])
    width = before + 1 + after
    top_v = np.full((n, k), -np.inf, dtype=np.float32)
    top_t = np.full((n, k), -1, dtype=np.int64)
    top_p = np.zeros((n, k), dtype=np.int64)
    top_s = np.zeros((n, k), dtype=np.int64)
    top_ids = np.full((n, k, width), -1, dtype=np.int64)
    top_acts = np.zeros((n, k, width), dtype=np.float32)
    counts = torch.zeros((n, bins), dtype=torch.long)
    below = torch.zeros(n, dtype=torch.long)
    above = torch.zeros(n, dtype=torch.long)
    moments = RunningStats.empty((n,))
    positive = torch.zeros(n, dtype=torch.long)
    vmin = torch.full((n,), torch.inf, dtype=torch.float64)
    vmax = torch.full((n,), -torch.inf, dtype=torch.float64)
    if fixed:
        edges_t = torch.from_numpy(np.array(edges, dtype=np.float64))  # a writable copy
        lo_e, w_e = edges_t[:, 0], (edges_t[:, -1] - edges_t[:, 0]) / bins
    else:  # lattice: width w and first cell k0 per neuron, set by the first values
        w_l = np.ones(n)
        k0_l = np.zeros(n, dtype=np.int64)
    offs = torch.arange(-before, after + 1)
    cofire = None
    if features is not None:  # a dictionary's features (sel: (layer, feature index))
        from ._feature_scan import FeatureReader, add_cofiring, check_cofiring

        feature_ids = [i for _, i in sel]
        reader_ctx: Any = FeatureReader(model, features, feature_ids, cofiring=cofiring)
        if cofiring:
            check_cofiring(n, int(features.d_sae))
            cofire = torch.zeros((n, int(features.d_sae)), dtype=torch.long)
    else:
        reader_ctx = _NeuronReader(model, sel)
    with reader_ctx as reader:
        for batch, rows in batches:
            acts, ids, lens = reader.run(rows, pad_id)  # [B, T, n]
            T = ids.shape[1]
            valid = _valid(ids, lens, special)
            flat = acts[valid].double()  # [N, n]
            if flat.shape[0]:
                if fixed:
                    low, high = flat < lo_e, flat > edges_t[:, -1]
                    below += low.sum(0)
                    above += high.sum(0)
                    b_idx = ((flat - lo_e) / w_e).floor().clamp(0, bins - 1).long()  # [N, n]
                    outside = low | high
                else:  # widen the lattice to the values seen so far, then count exactly
                    lo_all = torch.minimum(vmin, flat.min(0).values).numpy()
                    hi_all = torch.maximum(vmax, flat.max(0).values).numpy()
                    w_new, k0_new = lattice(lo_all, hi_all, bins)
                    moved = not (np.array_equal(w_new, w_l) and np.array_equal(k0_new, k0_l))
                    if moved and moments.count:  # the first values only place the lattice
                        counts = torch.from_numpy(
                            rebin_lattice(counts.numpy(), w_l, k0_l, w_new, k0_new)
                        )
                    w_l, k0_l = w_new, k0_new
                    cell = (flat / torch.from_numpy(w_l)).floor().long()  # exact: w = 2^e
                    b_idx = cell - torch.from_numpy(k0_l)
                    outside = torch.zeros_like(b_idx, dtype=torch.bool)
                flat_bin = (b_idx + torch.arange(n) * bins).masked_fill(outside, n * bins)
                counts += torch.bincount(flat_bin.reshape(-1), minlength=n * bins + 1)[:-1].view(
                    n, bins
                )
                moments = moments.merge(RunningStats.of(flat.numpy()))
                positive += (flat > 0).sum(0)
                vmin = torch.minimum(vmin, flat.min(0).values)
                vmax = torch.maximum(vmax, flat.max(0).values)
                if cofire is not None:  # the same tokens as every other statistic
                    cofire = add_cofiring(cofire, reader.fire[valid], feature_ids)
            masked = acts.masked_fill(~valid[..., None], -torch.inf)
            bv, bp = masked.max(dim=1)  # [B, n]: each text's maximum (first position on ties)
            # context windows around each text's maximum, for every (text, neuron)
            wpos = bp[:, :, None] + offs  # [B, n, W]
            inside = (wpos >= 0) & (wpos < lens[:, None, None])
            wc = wpos.clamp(0, T - 1)
            wacts = torch.gather(acts.transpose(1, 2), 2, wc).masked_fill(~inside, 0.0)
            wids = torch.gather(ids[:, None, :].expand(-1, n, -1), 2, wc).masked_fill(~inside, -1)
            bt = torch.tensor(batch)[:, None].expand(-1, n).masked_fill(~torch.isfinite(bv), -1)
            top_v, top_t, top_p, top_s, top_ids, top_acts = _select_top(
                k,
                np.concatenate([top_v, bv.T.numpy()], 1),
                np.concatenate([top_t, bt.T.numpy()], 1),
                np.concatenate([top_p, bp.T.numpy()], 1),
                np.concatenate([top_s, (bp - before).T.numpy()], 1),
                np.concatenate([top_ids, wids.transpose(0, 1).numpy()], 1),
                np.concatenate([top_acts, wacts.transpose(0, 1).numpy()], 1),
            )
            if bar is not None:
                bar.update(len(batch))
    c = np.maximum(moments.count, 1)
    none = np.zeros((n, 0), dtype=np.int64)
    return TopActivations(
        neurons=list(sel),
        texts=[],
        values=np.where(top_t >= 0, top_v, np.nan).astype(np.float32),
        text_index=top_t,
        position=top_p,
        window_ids=top_ids,
        window_acts=top_acts,
        window_start=top_s,
        hist_edges=(
            np.asarray(edges, dtype=np.float64) if fixed else lattice_edges(w_l, k0_l, bins)
        ),
        hist_counts=counts.numpy(),
        count=np.full(n, moments.count, dtype=np.int64),
        mean=moments.mean.copy(),
        std=np.sqrt(np.maximum(moments.m2 / c, 0.0)),
        minimum=vmin.numpy(),
        maximum=vmax.numpy(),
        frac_positive=positive.numpy() / c,
        promoted_ids=none,
        promoted=none.astype(np.float32),
        suppressed_ids=none,
        suppressed=none.astype(np.float32),
        m2=moments.m2.copy(),
        positive=positive.numpy(),
        hist_below=below.numpy(),
        hist_above=above.numpy(),
        cofire=None if cofire is None else cofire.numpy(),
    )


def finish_top_activations(
    part: TopActivations,
    texts: list[str],
    tokenizer: Any,
    effects: dict[str, np.ndarray],
    model_name: str,
) -> TopActivations:
    """The merged partial with its texts, logit effects and the vocabulary of every id shown."""
    used = set(part.window_ids[part.window_ids >= 0].tolist())
    used |= set(effects["promoted_ids"].ravel().tolist())
    used |= set(effects["suppressed_ids"].ravel().tolist())
    values = part.values.astype(np.float32)
    values[~np.isfinite(values)] = np.nan
    return dataclasses.replace(
        part,
        texts=[t if isinstance(t, str) else prompt_text(t, id_texts(tokenizer, t)) for t in texts],
        values=values,
        vocab={int(i): id_texts(tokenizer, [int(i)])[0] for i in sorted(used)},
        model_name=str(model_name),
        **effects,
    )
