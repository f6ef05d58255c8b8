"""MLP neurons over a dataset: running top-k examples, activation histograms, logit effects.

A neuron's activation is the input of its layer's MLP output projection (TransformerLens'
``blocks.{l}.mlp.hook_post``), read with a forward pre-hook. Torch is imported inside the
functions, so a saved :class:`TopActivations` can be viewed without it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Module paths per architecture family: decoder blocks, the MLP output projection inside a
# block, the final norm and the unembedding. Tried in order; the first that resolves wins.
_BLOCKS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")
_OUT_PROJ = ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc2", "mlp.dense_out")
_FINAL_NORM = (
    "model.norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
    "model.final_layernorm",
)
_UNEMBED = ("lm_head", "embed_out")


class _Stop(Exception):
    """Raised by the last hook to skip the layers nobody asked for."""


def _attr(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _first(obj: Any, paths: Sequence[str]) -> tuple[str, Any] | None:
    for p in paths:
        try:
            return p, _attr(obj, p)
        except AttributeError:
            continue
    return None


def _blocks(model: Any) -> Any:
    found = _first(model, _BLOCKS)
    if found is None:
        raise TypeError(
            f"cannot find the decoder blocks of {type(model).__name__}; looked for "
            f"{', '.join(_BLOCKS)}. Pass a Hugging Face causal LM (Llama, GPT-2, NeoX, ... family)."
        )
    return found[1]


def mlp_out_proj(model: Any, layer: int) -> Any:
    """The module whose *input* holds layer ``layer``'s neuron activations.

    Examples
    --------
    >>> from tests.unit.tiny_models import tiny_llama
    >>> model, _ = tiny_llama()
    >>> type(mlp_out_proj(model, 0)).__name__
    'Linear'
    """
    blocks = _blocks(model)
    n = len(blocks)
    if not isinstance(layer, (int, np.integer)) or isinstance(layer, bool) or not 0 <= layer < n:
        raise IndexError(f"layer={layer!r} is out of range: the model has {n} layers (0..{n - 1}).")
    found = _first(blocks[int(layer)], _OUT_PROJ)
    if found is None:
        raise TypeError(
            f"cannot find the MLP output projection of {type(blocks[0]).__name__}; looked for "
            f"{', '.join(_OUT_PROJ)}. Add the path to circuitboard.analysis._neurons._OUT_PROJ."
        )
    return found[1]


def _w_out(proj: Any) -> Any:
    """``[d_mlp, d_model]`` output weights (Linear stores the transpose, GPT-2's Conv1D not)."""
    w = proj.weight.detach()
    return w if type(proj).__name__ == "Conv1D" else w.T


def _d_mlp(model: Any, layer: int) -> int:
    return int(_w_out(mlp_out_proj(model, layer)).shape[0])


@dataclass
class TopActivations:
    """Per neuron: the top-``k`` texts by maximum activation, with context, and a histogram.

    Arrays are indexed ``[neuron, rank, ...]`` in the order of :attr:`neurons`. Missing ranks
    (fewer texts than ``k``) have ``text_index == -1`` and ``values == nan``.

    Attributes
    ----------
    neurons : list of (layer, index)
    texts : list of str
    values : ``[n, k]`` maximum activation of the neuron in each example text, descending.
    text_index, position : ``[n, k]`` which text, and the token position of the maximum.
    window_ids, window_acts : ``[n, k, W]`` token ids (``-1`` = outside the text) and the
        neuron's activation on each token of the context window around ``position``.
    window_start : ``[n, k]`` text position of the window's first entry (may be negative).
    hist_edges : ``[n, bins + 1]``; hist_counts ``[n, bins]`` counts over every token (values
        beyond the edges are counted in the end bins; ``minimum`` / ``maximum`` are exact).
    count, mean, std, minimum, maximum, frac_positive : ``[n]`` statistics over every token.
    promoted_ids, promoted, suppressed_ids, suppressed : ``[n, m]`` the neuron's direct logit
        effect (``W_out[neuron] @ W_U``, through the final norm's weight), largest first.
    vocab : dict id → token text, for every id above.
    """

    neurons: list[tuple[int, int]]
    texts: list[str]
    values: np.ndarray
    text_index: np.ndarray
    position: np.ndarray
    window_ids: np.ndarray
    window_acts: np.ndarray
    window_start: np.ndarray
    hist_edges: np.ndarray
    hist_counts: np.ndarray
    count: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    frac_positive: np.ndarray
    promoted_ids: np.ndarray
    promoted: np.ndarray
    suppressed_ids: np.ndarray
    suppressed: np.ndarray
    vocab: dict[int, str] = field(default_factory=dict)
    model_name: str = ""

    def __len__(self) -> int:
        return len(self.neurons)

    def __repr__(self) -> str:
        return (
            f"TopActivations({len(self.neurons)} neurons, {len(self.texts)} texts, "
            f"k={self.values.shape[1]})"
        )

    def index(self, layer: int, neuron: int) -> int:
        """Row of ``(layer, neuron)`` in the arrays; IndexError names the recorded neurons."""
        try:
            return self.neurons.index((int(layer), int(neuron)))
        except ValueError:
            shown = ", ".join(f"({a}, {b})" for a, b in self.neurons[:6])
            more = " ..." if len(self.neurons) > 6 else ""
            raise IndexError(
                f"neuron ({layer}, {neuron}) was not recorded; recorded: {shown}{more}. Run "
                "top_activations(..., neurons=[(layer, neuron), ...]) with it."
            ) from None

    def examples(self, layer: int, neuron: int) -> list[dict[str, Any]]:
        """The top examples of one neuron as dicts (text index, value, tokens, activations).

        >>> top.examples(3, 120)[0]["value"]  # doctest: +SKIP
        4.21
        """
        i = self.index(layer, neuron)
        out = []
        for r in range(self.values.shape[1]):
            if self.text_index[i, r] < 0:
                break
            ids = self.window_ids[i, r]
            keep = ids >= 0
            out.append(
                {
                    "text_index": int(self.text_index[i, r]),
                    "position": int(self.position[i, r]),
                    "value": float(self.values[i, r]),
                    "tokens": [self.vocab.get(int(t), "?") for t in ids[keep]],
                    "activations": self.window_acts[i, r][keep].astype(float).tolist(),
                    "max_at": int(self.position[i, r] - max(self.window_start[i, r], 0)),
                }
            )
        return out

    def save(self, path: Any) -> None:
        """Write to one ``.npz`` file (no pickle); read back with :meth:`load`."""
        import json

        arrays = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), np.ndarray)
        }
        meta = {
            "neurons": [list(n) for n in self.neurons],
            "texts": self.texts,
            "vocab": {str(k): v for k, v in self.vocab.items()},
            "model_name": self.model_name,
        }
        np.savez_compressed(
            path, _meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays
        )

    @classmethod
    def load(cls, path: Any) -> TopActivations:
        """Read a file written by :meth:`save`."""
        import json

        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["_meta"].tobytes().decode())
            arrays = {k: z[k] for k in z.files if k != "_meta"}
        return cls(
            neurons=[(int(a), int(b)) for a, b in meta["neurons"]],
            texts=list(meta["texts"]),
            vocab={int(k): v for k, v in meta["vocab"].items()},
            model_name=meta.get("model_name", ""),
            **arrays,
        )

    def dashboard(self, neuron: tuple[int, int] | None = None, **kwargs: Any) -> Any:
        """A :class:`~circuitboard.widgets.NeuronDashboard` of these records."""
        from ..widgets._dashboard import NeuronDashboard

        return NeuronDashboard(self, neuron=neuron, **kwargs)


def _neuron_list(model: Any, neurons: Any, layers: Any) -> list[tuple[int, int]]:
    n_layers = len(_blocks(model))
    out: list[tuple[int, int]] = []
    if layers is not None:
        for layer in [layers] if isinstance(layers, int) else layers:
            out.extend((int(layer), i) for i in range(_d_mlp(model, int(layer))))
    if neurons is not None:
        if (
            isinstance(neurons, tuple)
            and len(neurons) == 2
            and all(isinstance(x, (int, np.integer)) for x in neurons)
        ):
            neurons = [neurons]
        for item in neurons:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise TypeError(
                    f"neurons must be a list of (layer, index) pairs; got the item {item!r}. "
                    "Example: neurons=[(3, 120), (5, 7)]; for whole layers use layers=[3, 5]."
                )
            out.append((int(item[0]), int(item[1])))
    if not out:
        raise ValueError(
            "top_activations needs neurons=[(layer, index), ...] or layers=[...]; got neither."
        )
    seen: dict[tuple[int, int], None] = {}
    for layer, i in out:
        if not 0 <= layer < n_layers:
            raise IndexError(f"neuron ({layer}, {i}): layer out of range 0..{n_layers - 1}.")
        d = _d_mlp(model, layer)
        if not 0 <= i < d:
            raise IndexError(
                f"neuron ({layer}, {i}): index out of range, layer {layer} has {d} neurons."
            )
        seen.setdefault((layer, i), None)
    return list(seen)


def _texts(texts: Any) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(
            "texts must be a list of strings; got a single string. Wrap it: texts=[text]."
        )
    out = list(texts)
    bad = [i for i, t in enumerate(out) if not isinstance(t, str) or not t]
    if bad:
        raise TypeError(
            f"texts must be non-empty strings; texts[{bad[0]}] is {out[bad[0]]!r}. "
            "cb.load_texts() gives a ready-made list."
        )
    if not out:
        raise ValueError("texts is empty; pass at least one string (e.g. cb.load_texts()).")
    return out


def _progress(total: int, enabled: bool) -> Any:
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc="top activations", unit="text")
        except ImportError:
            pass
    return None


def _cover(edges: Any, counts: Any, lo: Any, hi: Any) -> tuple[Any, Any]:
    """Widen each neuron's histogram until ``[lo, hi]`` fits, exactly: bin width doubles and
    neighbouring bins merge, so no count moves to a bin that does not hold its value."""
    import torch

    bins = counts.shape[1]
    edges, counts = edges.clone(), counts.clone()
    for _ in range(64):
        left, right = edges[:, 0], edges[:, -1]
        up = hi > right
        down = (lo < left) & ~up
        if not bool((up | down).any()):
            break
        width = (right - left) / bins
        merged = counts.view(-1, bins // 2, 2).sum(-1)
        zeros = torch.zeros_like(merged)
        new_counts = torch.where(
            up[:, None], torch.cat([merged, zeros], 1), torch.cat([zeros, merged], 1)
        )
        grow = up | down
        counts = torch.where(grow[:, None], new_counts, counts)
        new_left = torch.where(down, left - bins * width, left)
        new_width = torch.where(grow, 2 * width, width)
        steps = torch.arange(bins + 1, dtype=edges.dtype)
        edges = new_left[:, None] + new_width[:, None] * steps
    return edges, counts


def top_activations(
    model: Any,
    tokenizer: Any,
    texts: Iterable[str],
    neurons: Any = None,
    *,
    layers: Any = None,
    k: int = 20,
    context: tuple[int, int] = (24, 8),
    batch_size: int = 16,
    max_length: int = 128,
    bins: int = 50,
    n_logits: int = 12,
    through_norm: bool = True,
    skip_special: bool = True,
    progress: bool = True,
) -> TopActivations:
    """Run ``model`` over ``texts`` and keep, per neuron, its top-``k`` texts and a histogram.

    Texts are tokenized one by one (truncated to ``max_length``), sorted by length and run in
    padded batches; only the running top-``k`` (with a context window) and fixed-bin
    histogram counts are kept, so memory does not grow with the number of texts. The forward
    pass stops after the deepest requested layer.

    Parameters
    ----------
    model, tokenizer : a Hugging Face causal LM and its tokenizer.
    texts : list of str (e.g. :func:`circuitboard.load_texts`).
    neurons : list of ``(layer, index)`` pairs; or ``layers=[...]`` for every neuron of them.
    k : examples kept per neuron (one per text: the text's maximum).
    context : tokens kept before and after each example's maximum.
    bins : histogram bins (edges fixed per neuron from the first batch, widened).
    n_logits : promoted / suppressed tokens kept per neuron (direct logit effect).
    through_norm : multiply by the final norm's weight before the unembedding.
    skip_special : ignore special tokens (BOS, pad, ...) as examples and in the histogram.

    Examples
    --------
    >>> from tests.unit.tiny_models import tiny_llama
    >>> model, tok = tiny_llama()
    >>> top = top_activations(model, tok, ["a b c", "the lazy dog"], [(0, 3), (1, 5)], k=2,
    ...                       progress=False)
    >>> top.values.shape, bool(top.examples(1, 5)[0]["value"] == top.values[1, 0])
    ((2, 2), True)
    """
    import torch

    texts = _texts(texts)
    sel = _neuron_list(model, neurons, layers)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int; got {k!r}.")
    if bins < 2:
        raise ValueError(f"bins must be at least 2; got {bins}.")
    bins += bins % 2  # even: widening merges bins in pairs
    before, after = (int(context[0]), int(context[1]))
    width = before + 1 + after
    n = len(sel)
    req_layers = sorted({layer for layer, _ in sel})
    cols = {layer: [i for l2, i in sel if l2 == layer] for layer in req_layers}
    # order of the concatenated [.., n] activations follows req_layers; map back to `sel`.
    concat_order = [(layer, i) for layer in req_layers for i in cols[layer]]
    to_sel = torch.tensor([concat_order.index(s) for s in sel])

    special = set(getattr(tokenizer, "all_special_ids", []) or []) if skip_special else set()
    encoded = []
    for t in texts:
        ids = tokenizer(t, truncation=True, max_length=max_length)["input_ids"]
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        encoded.append([int(x) for x in ids])
    order = sorted(range(len(texts)), key=lambda j: -len(encoded[j]))
    pad_id = getattr(tokenizer, "pad_token_id", None)
    pad_id = 0 if pad_id is None else int(pad_id)

    device = next(model.parameters()).device
    dtype = torch.float32
    top_v = torch.full((n, k), -torch.inf, dtype=dtype)
    top_t = torch.full((n, k), -1, dtype=torch.long)
    top_p = torch.zeros((n, k), dtype=torch.long)
    top_s = torch.zeros((n, k), dtype=torch.long)
    top_ids = torch.full((n, k, width), -1, dtype=torch.long)
    top_acts = torch.zeros((n, k, width), dtype=dtype)
    edges: torch.Tensor | None = None
    counts = torch.zeros((n, bins), dtype=torch.long)
    s1 = torch.zeros(n, dtype=torch.float64)
    s2 = torch.zeros(n, dtype=torch.float64)
    cnt = torch.zeros(n, dtype=torch.float64)
    pos_cnt = torch.zeros(n, dtype=torch.float64)
    vmin = torch.full((n,), torch.inf, dtype=torch.float64)
    vmax = torch.full((n,), -torch.inf, dtype=torch.float64)

    got: dict[int, torch.Tensor] = {}
    last = req_layers[-1]

    def make_hook(layer: int) -> Any:
        idx = torch.tensor(cols[layer])

        def hook(_mod: Any, args: tuple[Any, ...]) -> None:
            x = args[0]
            got[layer] = x[..., idx.to(x.device)].detach().to("cpu", dtype)
            if layer == last:
                raise _Stop

        return hook

    handles = [
        mlp_out_proj(model, layer).register_forward_pre_hook(make_hook(layer))
        for layer in req_layers
    ]
    bar = _progress(len(texts), progress)
    offs = torch.arange(-before, after + 1)
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                lens = torch.tensor([len(encoded[j]) for j in batch])
                T = int(lens.max())
                ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), T), dtype=torch.long)
                for b, j in enumerate(batch):
                    ids[b, : lens[b]] = torch.tensor(encoded[j])
                    mask[b, : lens[b]] = 1
                got.clear()
                try:
                    model(input_ids=ids.to(device), attention_mask=mask.to(device))
                except _Stop:
                    pass
                acts = torch.cat([got[layer] for layer in req_layers], dim=-1)[
                    ..., to_sel
                ]  # [B,T,n]
                valid = mask.bool()
                if special:
                    valid &= ~torch.isin(ids, torch.tensor(sorted(special)))
                flat = acts[valid].double()  # [N, n]
                if flat.shape[0]:
                    if edges is None:
                        lo, hi = flat.min(0).values, flat.max(0).values
                        span = (hi - lo).clamp_min(1e-6)
                        lo = torch.minimum(lo - 0.25 * span, torch.zeros_like(lo))
                        hi = hi + 0.5 * span
                        edges = lo[:, None] + (hi - lo)[:, None] * torch.linspace(
                            0, 1, bins + 1, dtype=torch.float64
                        )
                    edges, counts = _cover(edges, counts, flat.min(0).values, flat.max(0).values)
                    lo_e, w_e = edges[:, 0], (edges[:, -1] - edges[:, 0]) / bins
                    b_idx = ((flat - lo_e) / w_e).floor().clamp(0, bins - 1).long()  # [N, n]
                    flat_bin = (b_idx + torch.arange(n) * bins).reshape(-1)
                    counts += torch.bincount(flat_bin, minlength=n * bins).view(n, bins)
                    s1 += flat.sum(0)
                    s2 += (flat * flat).sum(0)
                    cnt += flat.shape[0]
                    pos_cnt += (flat > 0).sum(0)
                    vmin = torch.minimum(vmin, flat.min(0).values)
                    vmax = torch.maximum(vmax, flat.max(0).values)
                masked = acts.masked_fill(~valid[..., None], -torch.inf)
                bv, bp = masked.max(dim=1)  # [B, n]
                keep = torch.isfinite(bv)
                # context windows around each text's maximum, for every (text, neuron)
                wpos = bp[:, :, None] + offs  # [B, n, W]
                inside = (wpos >= 0) & (wpos < lens[:, None, None])
                wc = wpos.clamp(0, T - 1)
                wacts = torch.gather(acts.transpose(1, 2), 2, wc)  # [B, n, W]
                wids = torch.gather(ids[:, None, :].expand(-1, n, -1), 2, wc)
                wacts = wacts.masked_fill(~inside, 0.0)
                wids = wids.masked_fill(~inside, -1)
                bt = torch.tensor(batch)[:, None].expand(-1, n)
                bv = bv.masked_fill(~keep, -torch.inf)
                all_v = torch.cat([top_v, bv.T], 1)
                vals, pick = all_v.topk(k, dim=1)
                top_v = vals
                top_t = torch.cat([top_t, bt.T], 1).gather(1, pick)
                top_t = top_t.masked_fill(~torch.isfinite(vals), -1)
                top_p = torch.cat([top_p, bp.T], 1).gather(1, pick)
                top_s = torch.cat([top_s, (bp - before).T], 1).gather(1, pick)
                pw = pick[:, :, None].expand(-1, -1, width)
                top_ids = torch.cat([top_ids, wids.transpose(0, 1)], 1).gather(1, pw)
                top_acts = torch.cat([top_acts, wacts.transpose(0, 1)], 1).gather(1, pw)
                if bar is not None:
                    bar.update(len(batch))
    finally:
        for h in handles:
            h.remove()
        if bar is not None:
            bar.close()

    if edges is None:
        edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64).repeat(n, 1)
    c = cnt.clamp_min(1)
    mean = s1 / c
    std = (s2 / c - mean * mean).clamp_min(0).sqrt()
    eff = logit_effects(model, sel, k=n_logits, through_norm=through_norm)
    top_t[~torch.isfinite(top_v)] = -1
    used = set(top_ids[top_ids >= 0].tolist()) | set(eff["promoted_ids"].ravel().tolist())
    used |= set(eff["suppressed_ids"].ravel().tolist())
    vocab = {int(i): tokenizer.decode([int(i)]) for i in sorted(used)}
    values = top_v.numpy().astype(np.float32)
    values[~np.isfinite(values)] = np.nan
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    return TopActivations(
        neurons=sel,
        texts=texts,
        values=values,
        text_index=top_t.numpy(),
        position=top_p.numpy(),
        window_ids=top_ids.numpy(),
        window_acts=top_acts.numpy().astype(np.float32),
        window_start=top_s.numpy(),
        hist_edges=edges.numpy(),
        hist_counts=counts.numpy(),
        count=cnt.numpy().astype(np.int64),
        mean=mean.numpy(),
        std=std.numpy(),
        minimum=vmin.numpy(),
        maximum=vmax.numpy(),
        frac_positive=(pos_cnt / c).numpy(),
        promoted_ids=eff["promoted_ids"],
        promoted=eff["promoted"],
        suppressed_ids=eff["suppressed_ids"],
        suppressed=eff["suppressed"],
        vocab=vocab,
        model_name=str(name),
    )


def _final_norm(model: Any) -> tuple[Any, str] | None:
    found = _first(model, _FINAL_NORM)
    if found is None:
        return None
    mod = found[1]
    name = type(mod).__name__.lower()
    kind = "layernorm" if "layernorm" in name and "rms" not in name else "rmsnorm"
    if "gemma" in name:
        kind = "gemma_rmsnorm"
    return mod, kind


def neuron_directions(
    model: Any, neurons: Sequence[tuple[int, int]], *, through_norm: bool = True
) -> Any:
    """``[n, d_model]`` float64 output directions ``W_out[neuron]``, as the unembedding sees them.

    With ``through_norm`` they are multiplied by the final norm's weight (``1 + w`` for Gemma)
    and, for LayerNorm, centred (the norm removes the mean). The norm's input-dependent scale
    is not applied: these are direct effects per unit of activation up to that scale.
    """
    import torch

    rows = []
    for layer, i in neurons:
        rows.append(_w_out(mlp_out_proj(model, layer))[int(i)].to("cpu", torch.float64))
    d = torch.stack(rows)
    if through_norm:
        found = _final_norm(model)
        if found is not None:
            mod, kind = found
            if kind == "layernorm":
                d = d - d.mean(-1, keepdim=True)
            w = getattr(mod, "weight", None)
            if w is not None:
                w = w.detach().to("cpu", torch.float64)
                d = d * (1.0 + w if kind == "gemma_rmsnorm" else w)
    return d


def _unembed(model: Any) -> Any:
    import torch

    get = getattr(model, "get_output_embeddings", None)
    mod = get() if callable(get) else None
    if mod is None:
        found = _first(model, _UNEMBED)
        if found is None:
            raise TypeError(
                f"cannot find the unembedding of {type(model).__name__}; looked for "
                f"get_output_embeddings(), {', '.join(_UNEMBED)}."
            )
        mod = found[1]
    return mod.weight.detach().to("cpu", torch.float32)  # [vocab, d_model]


def logit_effects(
    model: Any,
    neurons: Sequence[tuple[int, int]],
    *,
    k: int = 12,
    through_norm: bool = True,
) -> dict[str, np.ndarray]:
    """Tokens each neuron directly promotes and suppresses: ``W_out[neuron] @ W_U``.

    Returns ``promoted_ids`` / ``promoted`` (largest first) and ``suppressed_ids`` /
    ``suppressed`` (most negative first), each ``[n, k]``; ``through_norm`` as in
    :func:`neuron_directions`.

    Examples
    --------
    >>> from tests.unit.tiny_models import tiny_llama
    >>> model, _ = tiny_llama()
    >>> eff = logit_effects(model, [(0, 1)], k=3)
    >>> eff["promoted"].shape, bool(eff["promoted"][0, 0] >= eff["promoted"][0, 1])
    ((1, 3), True)
    """
    import torch

    neurons = [(int(a), int(b)) for a, b in neurons]
    W_U = _unembed(model)
    k = min(int(k), W_U.shape[0])
    out = {key: [] for key in ("promoted_ids", "promoted", "suppressed_ids", "suppressed")}
    for s in range(0, len(neurons), 256):
        dirs = neuron_directions(model, neurons[s : s + 256], through_norm=through_norm)
        eff = dirs.float() @ W_U.T  # float32: ranking only; float64 costs 2x on CPU
        pv, pi = eff.topk(k, dim=1)
        sv, si = (-eff).topk(k, dim=1)
        out["promoted_ids"].append(pi)
        out["promoted"].append(pv)
        out["suppressed_ids"].append(si)
        out["suppressed"].append(-sv)
    return {
        key: torch.cat(v).numpy().astype(np.int64 if key.endswith("ids") else np.float32)
        for key, v in out.items()
    }
