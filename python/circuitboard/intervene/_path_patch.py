"""Path patching (Wang et al. 2022): change only the senders' direct effect on chosen receivers.

A sender head ``(l, h)`` writes ``o_proj(z)`` into the residual stream. Path patching replaces
that write with the other prompt's (``Δ = o_proj(z_other with head h) − o_proj(z_base)``, the
head's exact direct contribution, the output bias cancelling) *only where the receivers read
it*: a receiver ``(l, h, "q" | "k" | "v")`` computes its query / key / value from
``resid_pre[l] + Σ Δ`` (every other path, MLPs included, keeps its base value), and the rest of
the model runs on the base prompt. With ``receivers="logits"`` the final norm reads
``resid_post[-1] + Σ Δ``.

Everything runs through the :class:`Runner` used by :func:`circuitboard.patch`: one two-row
forward reads the endpoints; for q/k/v receivers one batched forward per chunk of sender sets
recomputes the receivers' inputs (written at ``attn_in``, which only the attention reads, and
read back as the rotated q / k / v the model really used), then one batched patched forward per
chunk measures the metric. ``k`` / ``v`` receivers are key-value heads (grouped-query attention:
KV head ``g`` serves query heads ``g·G .. g·G + G − 1``), as for ``cb.patch(site="k")``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..capture.adapters._base import get_module
from ._hooks import Edit
from ._metric import evaluate, normalize
from ._result import Patching
from ._runner import Runner
from ._sites import Site

RECEIVER_KINDS = ("q", "k", "v")
DIRECTIONS = ("noise", "denoise")

Head = tuple[int, int]
Receiver = tuple[int, int, str]


@dataclass(frozen=True, eq=False)
class PathPatching:
    """The metric after path patching each sender set into the receivers.

    Attributes
    ----------
    values
        ``[sets]`` normalized, ``(m − m_corrupted) / (m_clean − m_corrupted)``: clean = 1,
        corrupted = 0. With ``direction="noise"`` (the base run is clean, senders take the
        corrupted values) an empty set gives 1; :attr:`effects` is then ``values − 1``.
    raw
        ``[sets]`` the metric itself (mean over prompt pairs).
    sets
        The sender sets, each a list of ``(layer, head)``.
    receivers
        ``[(layer, head, "q" | "k" | "v"), ...]`` (``k`` / ``v``: key-value heads) or
        ``"logits"``.

    Examples
    --------
    >>> res = cb.path_patch(model, tok, clean, corrupted, senders="heads",
    ...                     receivers=[(9, 6, "q")], answer=" Mary",
    ...                     wrong=" John")  # doctest: +SKIP
    >>> res.top(3)  # doctest: +SKIP
    >>> cb.patching_view(res.heatmap())  # doctest: +SKIP
    """

    values: np.ndarray
    raw: np.ndarray
    sets: list[list[Head]]
    receivers: list[Receiver] | str
    direction: str
    metric: str
    clean_value: float
    corrupted_value: float
    tokens: dict[str, list[str]]
    first_diff: int
    n_layers: int
    n_heads: int
    model_name: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        """One label per sender set: ``L0H1+L0H3``, ``∅`` for the empty set."""
        return ["+".join(f"L{li}H{h}" for li, h in s) or "∅" for s in self.sets]

    @property
    def effects(self) -> np.ndarray:
        """How far each set moved the metric from the base run, normalized (0 = no effect)."""
        return self.values - (1.0 if self.direction == "noise" else 0.0)

    def top(self, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` sender sets with the largest ``|effects|``, each a dict with ``label``
        first, ``value`` (normalized), ``raw``, ``effect`` and ``senders``."""
        eff = np.nan_to_num(np.abs(self.effects), nan=-1.0)
        order = np.argsort(-eff, kind="stable")[: max(0, int(k))]
        return [
            {
                "label": self.labels[i],
                "value": float(self.values[i]),
                "raw": float(self.raw[i]),
                "effect": float(self.effects[i]),
                "senders": list(self.sets[i]),
            }
            for i in order.tolist()
        ]

    def heatmap(self) -> Patching:
        """A ``[layer, head]`` :class:`Patching` of the single-head sender sets, for
        :func:`circuitboard.patching_view`. Heads in or after the first receiver's layer
        cannot reach a receiver: they show the base run's value exactly (no effect); other
        heads that were not a sender set of their own are NaN."""
        singles = [(i, s[0]) for i, s in enumerate(self.sets) if len(s) == 1]
        if not singles:
            raise ValueError(
                "heatmap() shows sender sets of one head each; these sets have "
                f"{sorted({len(s) for s in self.sets})} heads. Use senders='heads' for a map."
            )
        vals = np.full((self.n_layers, self.n_heads), np.nan)
        raw = np.full((self.n_layers, self.n_heads), np.nan)
        first = self.n_layers if self.receivers == "logits" else min(r[0] for r in self.receivers)
        noise = self.direction == "noise"
        vals[first:] = 1.0 if noise else 0.0
        raw[first:] = self.clean_value if noise else self.corrupted_value
        for i, (li, h) in singles:
            vals[li, h], raw[li, h] = self.values[i], self.raw[i]
        notes = [f"path patching into {self._receivers_text()}", *self.notes]
        if first < self.n_layers:
            notes.append(
                f"heads of layers {first}.. cannot reach the receivers: shown at the base "
                "run's value (no effect)"
            )
        return Patching(
            values=vals,
            raw=raw,
            site="path",
            method="exact",
            direction=self.direction,
            metric=self.metric,
            axes=("layer", "head"),
            layers=list(range(self.n_layers)),
            positions=None,
            heads=list(range(self.n_heads)),
            tokens=self.tokens,
            clean_value=self.clean_value,
            corrupted_value=self.corrupted_value,
            first_diff=self.first_diff,
            notes=notes,
            model_name=self.model_name,
        )

    def _receivers_text(self) -> str:
        if self.receivers == "logits":
            return "the logits (direct effect)"
        return ", ".join(f"L{li}H{h}.{k}" for li, h, k in self.receivers)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write to a ``.npz`` file (no pickle); :func:`load_path_patching` reads it back."""
        from .._files import save_stamped

        meta = {
            "sets": [[list(x) for x in s] for s in self.sets],
            "receivers": self.receivers
            if isinstance(self.receivers, str)
            else [list(r) for r in self.receivers],
            "direction": self.direction,
            "metric": self.metric,
            "clean_value": self.clean_value,
            "corrupted_value": self.corrupted_value,
            "tokens": self.tokens,
            "first_diff": self.first_diff,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "model_name": self.model_name,
            "notes": self.notes,
        }
        return save_stamped(path, "path patching", meta, {"values": self.values, "raw": self.raw})

    def __repr__(self) -> str:
        return (
            f"PathPatching({len(self.sets)} sender sets → {self._receivers_text()}, "
            f"direction={self.direction}, metric={self.metric}: clean={self.clean_value:.4g}, "
            f"corrupted={self.corrupted_value:.4g})"
        )


def load_path_patching(path: str | os.PathLike[str]) -> PathPatching:
    """Read a :class:`PathPatching` written by :meth:`PathPatching.save`.

    Examples
    --------
    >>> import tempfile, os
    >>> p = PathPatching(np.array([1.0]), np.array([2.0]), [[(0, 1)]], "logits", "noise", "m",
    ...                  2.0, 0.5, {"clean": [], "corrupted": []}, 0, 2, 4)
    >>> f = p.save(os.path.join(tempfile.mkdtemp(), "p.npz"))
    >>> load_path_patching(f).labels
    ['L0H1']
    """
    from .._files import decoding, json_array, read_npz

    kind, writer = "path patching", "PathPatching.save(path)"
    z = read_npz(path, kind, writer, required=("__meta__", "values", "raw"))
    meta = json_array(z, "__meta__", path, kind, writer)
    with decoding(path, kind, writer):
        meta["sets"] = [[tuple(x) for x in s] for s in meta["sets"]]
        if not isinstance(meta["receivers"], str):
            meta["receivers"] = [(int(a), int(b), str(c)) for a, b, c in meta["receivers"]]
        return PathPatching(values=z["values"], raw=z["raw"], **meta)


# -- input checks -------------------------------------------------------------------------------
def _head(x: Any, n_layers: int, n_heads: int, what: str) -> Head:
    if not (isinstance(x, tuple | list) and len(x) == 2 and all(isinstance(i, int) for i in x)):
        raise ValueError(f"each {what} must be a (layer, head) pair of ints; got {x!r}.")
    li, h = int(x[0]), int(x[1])
    if not 0 <= li < n_layers:
        raise ValueError(
            f"{what} {tuple(x)}: layer {li} out of range; the model has {n_layers} layers "
            f"(0..{n_layers - 1})."
        )
    if not 0 <= h < n_heads:
        raise ValueError(
            f"{what} {tuple(x)}: head {h} out of range; layer {li} has {n_heads} heads "
            f"(0..{n_heads - 1})."
        )
    return li, h


def _receivers(receivers: Any, info: Any) -> list[Receiver] | str:
    if isinstance(receivers, str):
        if receivers != "logits":
            raise ValueError(
                f"receivers must be 'logits' or a list of (layer, head, 'q'|'k'|'v'); got "
                f"{receivers!r}."
            )
        return "logits"
    out: list[Receiver] = []
    for r in receivers or []:
        if not (isinstance(r, tuple | list) and len(r) == 3 and r[2] in RECEIVER_KINDS):
            raise ValueError(
                f"each receiver must be (layer, head, 'q' | 'k' | 'v'); got {r!r}. For the "
                "senders' direct effect on the output, pass receivers='logits'."
            )
        n = info.n_heads if r[2] == "q" else info.n_kv_heads
        li, h = _head((r[0], r[1]), info.n_layers, n, f"receiver ({r[2]})")
        out.append((li, h, str(r[2])))
    if not out:
        raise ValueError("receivers is empty; give at least one (layer, head, kind) or 'logits'.")
    return list(dict.fromkeys(out))


def _sets(senders: Any, info: Any, limit: int) -> list[list[Head]]:
    """Sender sets: ``"heads"`` (every head before ``limit``, one set each), a list of
    ``(layer, head)`` (one set) or a list of such lists (many sets)."""
    L, H = info.n_layers, info.n_heads
    if isinstance(senders, str):
        if senders != "heads":
            raise ValueError(
                f"senders must be 'heads', a list of (layer, head) or a list of such lists; got "
                f"{senders!r}."
            )
        return [[(li, h)] for li in range(min(limit, L)) for h in range(H)]
    items = list(senders)
    nested = bool(items) and all(
        isinstance(s, list | tuple) and (not s or isinstance(s[0], list | tuple)) for s in items
    )
    raw_sets = items if nested else [items]
    sets = [[_head(x, L, H, "sender") for x in s] for s in raw_sets]
    for s in sets:
        for li, h in s:
            if li >= limit:
                where = "the logits" if limit > L - 1 else f"its receiver at layer {limit}"
                raise ValueError(
                    f"sender L{li}H{h} is not before {where}: a head can only reach heads of "
                    f"later layers. Drop it, or choose receivers after layer {li}."
                )
    return [list(dict.fromkeys(s)) for s in sets]


# -- the computation ----------------------------------------------------------------------------
def _deltas(
    runner: Runner, layer_z: dict[int, tuple[torch.Tensor, torch.Tensor]], heads: list[Head]
) -> dict[Head, torch.Tensor]:
    """Each head's direct write with its ``z`` taken from the source run: ``[T, d_model]``."""
    out: dict[Head, torch.Tensor] = {}
    with torch.no_grad():
        for li, h in heads:
            base, src = layer_z[li]  # [T, n_heads, d_head], as the z site reads them
            o_proj = get_module(runner.adapter.block(runner.model, li), runner.adapter.block_o_proj)
            swapped = base.clone()
            swapped[:, h] = src[:, h]
            flat = torch.stack([swapped, base]).flatten(2)  # [2, T, n_heads * d_head]
            y = o_proj(flat)
            out[(li, h)] = (y[0] - y[1]).float()
    return out


def _chunks(n: int, size: int) -> list[range]:
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def _one_pair(
    runner: Runner,
    pair: Any,
    sets: list[list[Head]],
    receivers: list[Receiver] | str,
    direction: str,
    batch_size: int,
) -> tuple[np.ndarray, float, float]:
    L = runner.info.n_layers
    heads = sorted({x for s in sets for x in s})
    sender_layers = sorted({li for li, _ in heads})
    recv_layers = [L - 1] if receivers == "logits" else sorted({r[0] for r in receivers})
    base_kind = "resid_post" if receivers == "logits" else "attn_in"
    reads = [Edit(Site("z", li), "read") for li in sender_layers]
    reads += [Edit(Site(base_kind, li), "read") for li in recv_layers]
    lg = runner.logits(torch.stack([pair.clean_ids, pair.corrupt_ids]), reads)
    m = evaluate(pair.metric, lg)
    m_clean, m_corr = float(m[0]), float(m[1])
    normalize(0.0, m_clean, m_corr)  # refuse early when the endpoints coincide
    b, s = (0, 1) if direction == "noise" else (1, 0)
    acts = {e.site: e.activation for e in reads}
    layer_z = {li: (acts[Site("z", li)][b], acts[Site("z", li)][s]) for li in sender_layers}
    delta = _deltas(runner, layer_z, heads)
    base_ids = pair.clean_ids if direction == "noise" else pair.corrupt_ids

    def written(rows: range, layer: int) -> torch.Tensor:
        """``[rows, T, d_model]``: the base residual at ``layer`` plus each set's senders."""
        x = acts[Site(base_kind, layer)][b].float()
        out = x.expand(len(rows), *x.shape).clone()
        for r, i in enumerate(rows):
            for li, h in sets[i]:
                if li < layer or (receivers == "logits" and li <= layer):
                    out[r] += delta[(li, h)]
        return out

    if receivers == "logits":
        runs = []
        for i in range(len(sets)):
            val = written(range(i, i + 1), L - 1)[0]
            runs.append([Edit(Site("resid_post", L - 1), "replace", val)])
        raw = runner.patched(base_ids, runs, pair.metric, batch_size=batch_size)
        return raw.numpy(), m_clean, m_corr

    # 1. the receivers' q / k / v with their inputs shifted by the senders' writes
    got: dict[Receiver, list[torch.Tensor]] = {r: [] for r in receivers}
    start = min(recv_layers)
    for rows in _chunks(len(sets), batch_size):
        edits = [Edit(Site("attn_in", li), "replace", written(rows, li)) for li in recv_layers]
        rd = {r: Edit(Site(r[2], r[0], head=r[1]), "read") for r in receivers}
        runner.logits(base_ids, [*edits, *rd.values()], expand_at=start, batch=len(rows))
        for r, e in rd.items():
            got[r].extend(e.activation.unbind(0))
    # 2. the base run with only those inputs replaced
    runs = [
        [Edit(Site(r[2], r[0], head=r[1]), "replace", got[r][i]) for r in receivers]
        for i in range(len(sets))
    ]
    raw = runner.patched(base_ids, runs, pair.metric, batch_size=batch_size)
    return raw.numpy(), m_clean, m_corr


def path_patch(
    model: Any,
    tokenizer: Any,
    clean: str | Sequence[str],
    corrupted: str | Sequence[str],
    *,
    senders: Any = "heads",
    receivers: Any = "logits",
    answer: Any = None,
    wrong: Any = None,
    metric: Any = None,
    direction: str = "noise",
    batch_size: int | None = None,
) -> PathPatching:
    """Path patching: replace only the senders' direct effect on the receivers' inputs.

    With ``direction="noise"`` (default) the base run is ``clean`` and each sender head's
    output comes from ``corrupted``, but only along the direct path into the receivers: a
    receiver ``(layer, head, "q" | "k" | "v")`` reads ``resid_pre + Σ Δ_sender`` (every other
    path, MLPs and other heads, keeps its clean value), ``receivers="logits"`` reads the final
    residual plus the senders' writes. ``direction="denoise"`` swaps the prompts' roles.

    Parameters
    ----------
    model, tokenizer
        A Hugging Face causal LM served by a circuitboard adapter and its tokenizer.
    clean, corrupted
        One prompt each (or equal-length lists of pairs, averaged), of equal token lengths.
    senders
        ``"heads"``: every head before the first receiver, one set each (a ``[layer, head]``
        map, :meth:`PathPatching.heatmap`); a list of ``(layer, head)``: one set, patched
        together; a list of such lists: many sets, batched. Each sender must be in a layer
        before every receiver.
    receivers
        ``"logits"`` or a list of ``(layer, head, kind)``, kind ``"q"`` (a query head) or
        ``"k"`` / ``"v"`` (a key-value head, as in ``cb.patch(site="k")``).
    answer, wrong, metric
        The default metric is ``logit[answer] − logit[wrong]`` at the last position; or a
        ``metric`` callable of the logits ``[vocab]``.
    batch_size
        Sender sets per forward (default: about 4,096 tokens per forward).

    Returns
    -------
    PathPatching

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> res = path_patch(model, tok, "When Mary and John went", "When John and Mary went",
    ...                  senders=[[], [(0, 1)]], receivers=[(1, 0, "q")],
    ...                  answer=" to", wrong=" the")
    >>> res.labels, float(res.effects[0])  # the empty set changes nothing
    (['∅', 'L0H1'], 0.0)
    """
    from ._patch_inputs import _prepare_pairs

    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; use 'noise' or 'denoise'.")
    runner = Runner(model)
    info = runner.info
    if runner.image or not runner.adapter.causal or not runner.adapter.pre_norm:
        raise ValueError(
            f"path_patch needs a causal pre-norm language model; {info.architecture!r} is not "
            "one (image, bidirectional or post-norm blocks)."
        )
    if runner.adapter.post_norms is not None:
        raise ValueError(
            f"path_patch reads each head's write as o_proj(z); {info.architecture!r} normalizes "
            "the attention output before adding it to the residual (sandwich norms), so a "
            "head's write is not linear in z. Use cb.patch(site='heads') instead."
        )
    recv = _receivers(receivers, info)
    limit = info.n_layers if recv == "logits" else min(r[0] for r in recv)
    sets = _sets(senders, info, limit)
    if not sets:
        raise ValueError(
            "no sender can reach the receivers: senders='heads' takes heads before the first "
            f"receiver's layer ({limit}); choose receivers in a later layer."
        )
    pairs = _prepare_pairs(tokenizer, clean, corrupted, answer, wrong, metric, runner)
    T = len(pairs[0].clean_tokens)
    if batch_size is None:
        batch_size = max(1, 4096 // T)
    raws, cleans, corrs = [], [], []
    for pair in pairs:
        raw, mc, mk = _one_pair(runner, pair, sets, recv, direction, int(batch_size))
        raws.append(raw)
        cleans.append(mc)
        corrs.append(mk)
    raw = np.mean(raws, axis=0).astype(np.float64)
    m_clean, m_corr = float(np.mean(cleans)), float(np.mean(corrs))
    notes = [
        f"direction={direction}: base run "
        f"{'clean' if direction == 'noise' else 'corrupted'}, senders from the other prompt; "
        "every path but sender → receiver keeps the base value (MLPs included).",
    ]
    if recv != "logits" and any(k != "q" for _, _, k in recv):
        g = info.n_heads // info.n_kv_heads
        notes.append(
            f"k / v receivers are key-value heads; KV head g serves query heads {g}g..{g}g+{g - 1}."
        )
    return PathPatching(
        values=np.asarray(normalize(raw, m_clean, m_corr), dtype=np.float64),
        raw=raw,
        sets=sets,
        receivers=recv,
        direction=direction,
        metric=getattr(pairs[0].metric, "description", "metric"),
        clean_value=m_clean,
        corrupted_value=m_corr,
        tokens={"clean": pairs[0].clean_tokens, "corrupted": pairs[0].corrupt_tokens},
        first_diff=pairs[0].first_diff,
        n_layers=info.n_layers,
        n_heads=info.n_heads,
        model_name=info.model_name,
        notes=notes,
    )


__all__ = ["PathPatching", "load_path_patching", "path_patch"]
