"""`patch()`: activation patching (exact, batched) and attribution patching (gradients, IG).

Exact patching runs one patched forward per site, many sites per forward (the batch
dimension), each forward starting its rows at the lowest block it patches (blocks below run
once); in a causal model the tokens before the first difference are run once as a KV cache
and only the rest is recomputed per site (not for ``q``/``k``/``v``/``pattern``, whose
tensors span the cached keys). Attribution patching estimates every site of a kind to first
order from one forward of both prompts (two batch rows) and one backward. Integrated
gradients (``method="ig"``) interpolate each layer's sites together between the two runs
(midpoint rule, ``steps`` points) and report how far the sum over each layer is from exactly
patching that whole layer (its completeness error).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..capture._tokens import tokenize
from ._hooks import Edit
from ._metric import Metric, evaluate, logit_diff, normalize, token_id
from ._result import AXES, Patching
from ._runner import Runner
from ._sites import Site

POSITION_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
ATTN_SITES = ("q", "k", "v", "pattern")
SITES = (*POSITION_SITES, "heads", "heads_pos", *ATTN_SITES, "neurons")
"""Site names :func:`patch` accepts."""
METHODS = ("exact", "attribution", "ig")
DIRECTIONS = ("denoise", "noise")
PROGRESS_FROM = 20_000  # show a progress bar from this many patched token-rows on


@dataclass(frozen=True)
class _Pair:
    clean_ids: torch.Tensor
    corrupt_ids: torch.Tensor
    clean_tokens: list[str]
    corrupt_tokens: list[str]
    first_diff: int
    metric: Metric
    pixels: np.ndarray | None = None  # image pairs: [2 (clean, corrupted), C, H, W] in [0, 1]
    image: dict[str, Any] | None = None  # image pairs: {"grid": [rows, cols], "patch": side}

    @property
    def n_tokens(self) -> int:
        """Positions per run: tokens, or CLS plus the patches of an image."""
        return len(self.clean_tokens)


@dataclass
class _PairResult:
    raw: np.ndarray
    clean: float
    corrupted: float
    skipped: np.ndarray  # bool mask of cells not run (exactly 0)
    reference_raw: np.ndarray | None = None
    completeness: np.ndarray | None = None  # per layer, raw units


def _kind(site: str) -> str:
    return {"heads": "z", "heads_pos": "z", "neurons": "mlp_post"}.get(site, site)


def _as_list(x: Any, n: int, what: str, pairs: str = "prompt pairs") -> list[Any]:
    if isinstance(x, list | tuple):
        if len(x) != n:
            raise ValueError(f"{what} has {len(x)} entries for {n} {pairs}; give one each.")
        return list(x)
    return [x] * n


def _check_choice(value: Any, options: Sequence[str], what: str) -> None:
    if value not in options:
        raise ValueError(f"unknown {what} {value!r}; use one of {', '.join(options)}.")


def _prepare_pairs(
    tokenizer: Any,
    clean: Any,
    corrupted: Any,
    answer: Any,
    wrong: Any,
    metric: Any,
    runner: Runner | None = None,
) -> list[_Pair]:
    if runner is not None and runner.image:
        return _prepare_image_pairs(runner, tokenizer, clean, corrupted, answer, wrong, metric)
    if any(hasattr(x, "shape") for x in (clean, corrupted)):
        raise ValueError(
            "clean and corrupted are arrays, but this is a text model: give prompts (strings). "
            "Images go to an image model (ViTForImageClassification)."
        )
    single = isinstance(clean, str)
    if single != isinstance(corrupted, str):
        raise ValueError(
            "clean and corrupted must both be strings (one pair) or both lists of strings "
            f"(pairs); got {type(clean).__name__} and {type(corrupted).__name__}."
        )
    cl = [clean] if single else list(clean)
    co = [corrupted] if single else list(corrupted)
    if not cl or len(cl) != len(co):
        raise ValueError(
            f"clean has {len(cl)} prompts and corrupted {len(co)}; give the same (>= 1) number."
        )
    if metric is None and answer is None:
        raise ValueError(
            "give answer= (and usually wrong=) for the default logit-difference metric, or a "
            "metric= callable of the logits at the last position."
        )
    if metric is not None and not callable(metric):
        raise ValueError(f"metric must be a callable of the logits; got {type(metric).__name__}.")
    answers = _as_list(answer, len(cl), "answer")
    wrongs = _as_list(wrong, len(cl), "wrong")
    pairs = []
    for i, (a, b) in enumerate(zip(cl, co, strict=True)):
        for name, p in (("clean", a), ("corrupted", b)):
            if not isinstance(p, str) or not p:
                raise ValueError(f"{name} prompt {i} must be a non-empty string; got {p!r}.")
        ia, ta = tokenize(tokenizer, a)
        ib, tb = tokenize(tokenizer, b)
        diff = next((j for j, (x, y) in enumerate(zip(ia, ib, strict=False)) if x != y), None)
        if len(ia) != len(ib):
            j = diff if diff is not None else min(len(ia), len(ib))
            ta_j = repr(ta[j]) if j < len(ta) else "(end)"
            tb_j = repr(tb[j]) if j < len(tb) else "(end)"
            raise ValueError(
                f"pair {i}: clean has {len(ia)} tokens and corrupted has {len(ib)}; patching needs "
                f"equal lengths. They first differ at position {j}: clean {ta_j} vs corrupted "
                f"{tb_j}. Choose a corruption with the same number of tokens (e.g. swap names that "
                "are one token each)."
            )
        if metric is not None:
            m = metric
        else:
            aid = token_id(tokenizer, answers[i], "answer")
            wid = token_id(tokenizer, wrongs[i], "wrong") if wrongs[i] is not None else None
            m = logit_diff(aid, wid)
            at, wt = tokenizer.decode([aid]), tokenizer.decode([wid]) if wid is not None else None
            m.description = f"logit({at!r}) − logit({wt!r})" if wt else f"logit({at!r})"
        pairs.append(
            _Pair(
                torch.tensor(ia),
                torch.tensor(ib),
                ta,
                tb,
                diff if diff is not None else len(ia),
                m,
            )
        )
    return pairs


def _prepare_image_pairs(
    runner: Runner, processor: Any, clean: Any, corrupted: Any, answer: Any, wrong: Any, metric: Any
) -> list[_Pair]:
    """Image pairs (see :mod:`._image_pairs`): pixels where text pairs hold token ids. A ViT
    has no causal mask, so every position can differ: ``first_diff`` is 0, nothing is skipped.
    """
    from ._image_pairs import image_pairs

    out = []
    for p in image_pairs(runner.model, processor, clean, corrupted, answer, wrong, metric):
        out.append(
            _Pair(
                p["clean"],
                p["corrupted"],
                list(p["tokens"]),
                list(p["tokens"]),
                0,
                p["metric"],
                pixels=p["pixels"],
                image={"grid": list(p["grid"]), "patch": p["patch"]},
            )
        )
    return out


def _parse_layers(layers: Any, n_layers: int) -> list[int]:
    if layers is None:
        return list(range(n_layers))
    items = [layers] if isinstance(layers, int) else list(layers)
    out = []
    for layer in items:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ValueError(f"layers= must be ints; got {layer!r}.")
        if not -n_layers <= layer < n_layers:
            raise ValueError(
                f"layers= got {layer}; the model has {n_layers} layers (0..{n_layers - 1})."
            )
        out.append(layer % n_layers)
    return sorted(set(out))


def _parse_positions(positions: Any, n_tokens: int) -> list[int]:
    if positions is None:
        return list(range(n_tokens))
    items = [positions] if isinstance(positions, int) else list(positions)
    out = []
    for p in items:
        if isinstance(p, bool) or not isinstance(p, int) or not -n_tokens <= p < n_tokens:
            raise ValueError(
                f"positions= got {p!r}; the prompts have {n_tokens} tokens, so use ints in "
                f"[0, {n_tokens - 1}] (negative counts from the end)."
            )
        out.append(p % n_tokens)
    return sorted(set(out))


class _Grid:
    """The cells of one result: their sites, how each takes its value from a layer's tensor,
    and how a layer's per-element contributions reduce to cells."""

    def __init__(
        self, site: str, layers: list[int], positions: list[int] | None, info: Any, T: int
    ) -> None:
        self.site, self.kind = site, _kind(site)
        self.layers, self.positions, self.T = layers, positions, T
        self.H = info.n_kv_heads if site in ("k", "v") else info.n_heads
        self.N = info.d_mlp
        if site in POSITION_SITES:
            self.shape = (len(layers), len(positions))
        elif site in ("heads", *ATTN_SITES):
            self.shape = (len(layers), self.H)
        elif site == "heads_pos":
            self.shape = (len(layers), len(positions), self.H)
        else:
            self.shape = (len(layers), self.N)

    def cells(self) -> list[tuple[tuple[int, ...], Site]]:
        out = []
        for li, layer in enumerate(self.layers):
            if self.site in POSITION_SITES:
                for pi, p in enumerate(self.positions):
                    out.append(((li, pi), Site(self.kind, layer, pos=p)))
            elif self.site in ("heads", *ATTN_SITES):
                for h in range(self.H):
                    out.append(((li, h), Site(self.kind, layer, head=h)))
            elif self.site == "heads_pos":
                for pi, p in enumerate(self.positions):
                    for h in range(self.H):
                        out.append(((li, pi, h), Site("z", layer, pos=p, head=h)))
            else:
                pos = None if self.positions is None else self.positions
                for n in range(self.N):
                    out.append(((li, n), Site("mlp_post", layer, pos=_one(pos), neuron=n)))
        return out

    def skipped(self, first_diff: int, causal: bool) -> np.ndarray:
        """Cells whose every position precedes the first differing token (causal models):
        their clean and corrupted values are equal, so patching them changes nothing."""
        mask = np.zeros(self.shape, dtype=bool)
        if not causal or self.positions is None:
            return mask
        before = np.array(self.positions) < first_diff
        if self.site == "neurons":
            mask[:] = before.all()
        elif self.site == "heads_pos":
            mask[:, before, :] = True
        elif self.site in POSITION_SITES:
            mask[:, before] = True
        return mask

    def reduce(self, contrib: torch.Tensor) -> torch.Tensor:
        """Per-element contributions of one layer ``[T, *rest]`` → that layer's cells."""
        if self.site in POSITION_SITES:
            return contrib.sum(-1)[self.positions]
        if self.site in ("heads", *ATTN_SITES):
            return contrib.sum((0, 2))
        if self.site == "heads_pos":
            return contrib.sum(-1)[self.positions]
        if self.positions is None:
            return contrib.sum(0)
        return contrib[self.positions].sum(0)


def _one(pos: list[int] | None) -> int | tuple[int, ...] | None:
    if pos is None:
        return None
    return pos[0] if len(pos) == 1 else tuple(pos)


def _value(src: torch.Tensor, site: Site, T: int) -> torch.Tensor:
    """The slice of a layer's source tensor ``[T, *rest]`` that a cell's site replaces."""
    x = src if site.pos is None else src[site.positions(T)]
    if site.head is not None:
        x = x[:, site.head]
    if site.neuron is not None:
        x = x[:, site.neuron]
    return x


def _shifted(site: Site, p: int, T: int) -> Site:
    """``site`` with positions counted from token ``p`` (those before ``p`` dropped)."""
    if site.pos is None:
        return site
    kept = tuple(q - p for q in site.positions(T) if q >= p)
    return replace(site, pos=kept[0] if len(kept) == 1 else kept)


def _skippable(grid: _Grid, site: Site, first_diff: int, causal: bool) -> bool:
    """A site whose every position precedes the first differing token cannot change anything
    in a causal model: its clean and corrupted values are equal."""
    if not causal:
        return False
    return max(site.positions(grid.T)) < first_diff


def _exact(
    runner: Runner,
    pair: _Pair,
    grid: _Grid,
    base: torch.Tensor,
    src_acts: dict[Site, torch.Tensor],
    m_base: float,
    batch_size: int | None,
    progress: Callable[[int], None] | None,
) -> tuple[np.ndarray, np.ndarray]:
    raw = np.full(grid.shape, m_base, dtype=np.float64)
    skipped = np.zeros(grid.shape, dtype=bool)
    # Tokens before the first difference are the same in both runs, and so (causal model) is
    # everything computed there: run them once, as a KV cache, and patch only what follows.
    p = pair.first_diff if grid.kind not in ATTN_SITES else 0
    kv = runner.prefix_cache(base, p) if p > 0 else None
    p = p if kv is not None else 0
    idx_run, runs = [], []
    for idx, site in grid.cells():
        if _skippable(grid, site, pair.first_diff, runner.adapter.causal):
            skipped[idx] = True
            continue
        src = src_acts[Site(grid.kind, site.layer)]
        if p:
            site = _shifted(site, p, grid.T)
            src = src[p:]
        idx_run.append(idx)
        runs.append([Edit(site, "replace", _value(src, site, grid.T - p))])
    if runs:
        vals = runner.patched(
            base, runs, pair.metric, batch_size=batch_size, progress=progress, prefix=kv
        )
        for idx, v in zip(idx_run, vals.tolist(), strict=True):
            raw[idx] = v
    return raw, skipped


def _endpoints(
    runner: Runner, pair: _Pair, grid: _Grid
) -> tuple[dict[Site, torch.Tensor], dict[Site, torch.Tensor], float, float]:
    """One two-row forward (clean, corrupted) reading every layer's site tensor."""
    reads = [Edit(Site(grid.kind, layer), "read") for layer in grid.layers]
    lg = runner.logits(torch.stack([pair.clean_ids, pair.corrupt_ids]), reads)
    m = evaluate(pair.metric, lg)
    clean = {e.site: e.activation[0] for e in reads}
    corr = {e.site: e.activation[1] for e in reads}
    m_clean, m_corr = float(m[0]), float(m[1])
    normalize(0.0, m_clean, m_corr)  # refuse early when the endpoints coincide
    return clean, corr, m_clean, m_corr


def _sources(runner: Runner, pair: _Pair, grid: _Grid, direction: str) -> dict[Site, torch.Tensor]:
    clean, corr, _, _ = _endpoints(runner, pair, grid)
    return clean if direction == "denoise" else corr


def _attribution(
    runner: Runner, pair: _Pair, grid: _Grid, direction: str
) -> tuple[np.ndarray, float, float]:
    """One forward of both prompts (two rows: source read, base differentiated) and one
    backward of the base row's metric; returns (raw estimates, m_clean, m_corrupted)."""
    src_row, base_row = (0, 1) if direction == "denoise" else (1, 0)
    ids = torch.stack([pair.clean_ids, pair.corrupt_ids])
    reads = [Edit(Site(grid.kind, layer), "read", rows=[src_row]) for layer in grid.layers]
    grads = [Edit(Site(grid.kind, layer), "grad", rows=[base_row]) for layer in grid.layers]
    m = evaluate(pair.metric, runner.logits(ids, [*reads, *grads]))
    m_clean, m_corr = float(m[0].detach()), float(m[1].detach())
    normalize(0.0, m_clean, m_corr)
    g_all = torch.autograd.grad(m[base_row], [e.delta for e in grads], allow_unused=True)
    raw = np.zeros(grid.shape)
    for li, (r, e, g) in enumerate(zip(reads, grads, g_all, strict=True)):
        g = torch.zeros_like(e.activation) if g is None else g
        contrib = (r.activation[0].float() - e.activation[0].float()) * g[0].float()
        raw[li] = grid.reduce(contrib).detach().cpu().numpy()
    return float(m[base_row].detach()) + raw, m_clean, m_corr


def _layer_chunks(layers: list[int], rows_per_layer: int, batch_size: int) -> list[list[int]]:
    per = max(1, batch_size // rows_per_layer)
    return [layers[i : i + per] for i in range(0, len(layers), per)]


def _ig(
    runner: Runner,
    pair: _Pair,
    grid: _Grid,
    base: torch.Tensor,
    base_acts: dict[Site, torch.Tensor],
    src: dict[Site, torch.Tensor],
    m_base: float,
    steps: int,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Midpoint-rule IG per layer; returns (raw estimates, per-layer sums in raw units)."""
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    raw = np.zeros(grid.shape)
    sums = np.zeros(len(grid.layers))
    for chunk in _layer_chunks(grid.layers, steps, batch_size):
        edits, grads_for = [], []
        for j, layer in enumerate(chunk):
            site = Site(grid.kind, layer)
            a0, a1 = base_acts[site], src[site]
            a = alphas.to(a0.device).view(-1, *[1] * a0.ndim)
            path = a0[None] + a * (a1 - a0)[None]
            rows = list(range(j * steps, (j + 1) * steps))
            edits.append(Edit(site, "replace", path, rows=rows))
            g = Edit(site, "grad", rows=rows)
            edits.append(g)
            grads_for.append((layer, g))
        lg = runner.logits(base, edits, expand_at=chunk[0], batch=len(chunk) * steps)
        total = evaluate(pair.metric, lg).sum()
        grads = torch.autograd.grad(total, [g.delta for _, g in grads_for], allow_unused=True)
        for (layer, e), g in zip(grads_for, grads, strict=True):
            site = Site(grid.kind, layer)
            g = torch.zeros_like(e.activation) if g is None else g
            contrib = (src[site] - base_acts[site]).float() * g.float().mean(0)
            li = grid.layers.index(layer)
            raw[li] = grid.reduce(contrib).detach().cpu().numpy()
            sums[li] = float(contrib.sum())
    return m_base + raw, sums


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def patch_layout(
    pairs: list[_Pair], site: str, layers: Any, positions: Any, n_layers: int
) -> tuple[list[int], list[int] | None]:
    """The layers and positions :func:`patch` patches (sharded runs resolve them the same way,
    so every shard patches the cells one run would)."""
    lengths = {p.n_tokens for p in pairs}
    if site in (*POSITION_SITES, "heads_pos") and len(lengths) > 1:
        raise ValueError(
            f"site={site!r} averages per position, but the pairs have different lengths "
            f"{sorted(lengths)}; use pairs of one length (the same template) or a per-head site "
            "(site='heads')."
        )
    layer_list = _parse_layers(layers, n_layers)
    T0 = pairs[0].n_tokens
    if site in ("heads", *ATTN_SITES):
        if positions is not None:
            raise ValueError(
                f"site={site!r} patches every position; use site='heads_pos' for per-position "
                "head outputs."
            )
        return layer_list, None
    if site == "neurons":
        return layer_list, None if positions is None else _parse_positions(positions, T0)
    return layer_list, _parse_positions(positions, T0)


def patch(
    model: Any,
    tokenizer: Any,
    clean: str | Sequence[str],
    corrupted: str | Sequence[str],
    *,
    answer: str | int | Sequence[str | int] | None = None,
    wrong: str | int | Sequence[str | int] | None = None,
    metric: Callable[[torch.Tensor], Any] | None = None,
    site: str = "resid_pre",
    method: str = "exact",
    direction: str = "denoise",
    layers: int | Sequence[int] | None = None,
    positions: int | Sequence[int] | None = None,
    batch_size: int | None = None,
    progress: bool | None = None,
    steps: int = 16,
    compare_exact: bool = False,
    engine: str = "serial",
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    shards: int | None = None,
    checkpoint: Any = None,
    ray_address: str | None = None,
    saes: Any = None,
) -> Patching:
    """Patch activations between a clean and a corrupted prompt and measure what comes back.

    Parameters
    ----------
    model, tokenizer
        A Hugging Face model of any supported architecture and its tokenizer; for an image
        classifier (ViT) its image processor, or None when the model carries its pixel
        normalization (``cb.load_default_vision_model()``).
    clean, corrupted
        Two prompts of equal token length, or two equal-length lists of such pairs (results
        are averaged over pairs; per-pair values are kept in ``pair_values``). For an image
        model: two images (``[H, W]`` / ``[C, H, W]``, values in [0, 1] or uint8), or two
        equal-length batches of them; positions are CLS (0) and the patches in raster order
        (``tokens`` holds ``"row,col"``), and as a ViT has no causal mask every cell is run.
    answer, wrong
        One-token strings or token ids (or one per pair) for the default metric, the logit
        difference ``logit(answer) − logit(wrong)`` at the last position. For an image model:
        class ids (``3``) or labels (``"3"``), read from the class logits at CLS.
    metric
        Instead: any callable of the float32 logits at the last position ``[vocab]`` (an
        image model: the class logits ``[classes]``) returning one number (differentiable for
        ``attribution`` / ``ig``).
    site
        ``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out`` →
        ``values[layer, position]``; ``heads`` (each head's output ``z`` at all positions) →
        ``[layer, head]``; ``heads_pos`` → ``[layer, position, head]``; ``q``, ``k``, ``v``,
        ``pattern`` (each head's queries / keys / values / attention weights at every
        position, through the model's attention function) → ``[layer, head]`` (``k`` / ``v``:
        key-value heads; ``kv_groups`` says which query heads each serves); ``neurons`` (MLP
        neurons, at ``positions`` or at every position) → ``[layer, neuron]``; exact patching
        of neurons is one run per neuron (46,080 on the default model), so use
        ``method="attribution"`` there and exact on the few it ranks first.
    method
        ``"exact"`` (one patched forward per site, batched), ``"attribution"`` (first-order
        estimate of every site from one forward on each prompt and one backward) or ``"ig"``
        (integrated gradients with ``steps`` midpoint steps per layer; reports its
        completeness error).
    direction
        ``"denoise"``: run the corrupted prompt, patch in clean activations (is the site
        sufficient?). ``"noise"``: run the clean prompt, patch in corrupted activations (is it
        necessary?). Both normalize to clean = 1, corrupted = 0.
    layers, positions
        Restrict the layers / positions (negative counts from the end). Positions before the
        first differing token are exactly 0 in a causal model and are not run.
    batch_size
        Patched runs per forward (default: about 4,096 tokens per forward).
    progress
        Show a progress bar (default: for large exact runs).
    steps
        Interpolation steps for ``method="ig"``.
    compare_exact
        With ``attribution`` / ``ig``: also run exact patching and report the correlation.
    engine
        Where a list of pairs runs: ``"serial"`` (this process), ``"processes"`` (a pool of
        local processes, each with its own model) or ``"ray"`` (Ray actors; ``pip install
        "circuitboard[ray]"``). Every engine runs the same plan: consecutive pairs form
        ``shards``, each pair is patched exactly as one run patches it, and the per-pair
        results are put together in pair order, so the result (and its saved bytes) is the
        same for every engine and every shard count. ``values`` stays the mean over pairs of
        each pair's normalized effect; ``cost`` then holds only ``forwards`` (run time:
        ``circuitboard.scale.last_run()``). A custom ``metric`` travels pickled by value
        (cloudpickle); one that cannot is refused before any worker starts.
    workers, gpus_per_worker, shards, checkpoint, ray_address
        As for :func:`circuitboard.compare`: worker count, GPUs per worker, pieces of work
        (default one for ``"serial"``, four per worker otherwise; the unit of retry,
        checkpoint and progress), a folder from which an interrupted run resumes, and the
        Ray cluster to join. Pass a :class:`circuitboard.ModelSpec` as ``model``
        (``tokenizer=None``) so that each worker loads its own model.

    saes
        With ``site="features"``: the dictionary (``cb.SAE``) whose features are patched, each
        at every position with the error term kept; returns a
        :class:`~circuitboard.intervene._feature_patch.FeaturePatching` (``method`` "exact" or
        "attribution"; one pair).
    Returns
    -------
    Patching
        ``values`` (normalized), ``raw``, endpoints, conventions, ``top(k)``, ``save()``.

    Examples
    --------
    >>> import circuitboard as cb
    >>> from tests.unit.tiny_models import tiny_llama
    >>> model, tok = tiny_llama()
    >>> clean = "When Mary and John went to the store, John gave a drink to"
    >>> corrupted = "When Mary and John went to the store, Mary gave a drink to"
    >>> res = cb.patch(model, tok, clean, corrupted, answer=" Mary", wrong=" John")
    >>> res.values.shape  # [layer, position]
    (2, 20)
    >>> round(float(res.values[0, res.first_diff]), 4)  # the swapped token at layer 0: all of it
    1.0
    >>> float(abs(res.values[:, :res.first_diff]).max())  # before the first difference: exactly 0
    0.0
    >>> heads = cb.patch(model, tok, clean, corrupted, answer=" Mary", wrong=" John",
    ...                  site="heads", method="attribution")
    >>> heads.values.shape, heads.top(1)[0]["label"][:2]
    ((2, 4), 'L0')

    Between two images (a ViT: CLS plus patches; classes by id or label):

    >>> import numpy as np
    >>> from tests.unit.tiny_models import tiny_vit
    >>> vit, _ = tiny_vit(channels=1)
    >>> a, b = np.random.default_rng(0).random((2, 8, 8))
    >>> img = cb.patch(vit, None, a, b, answer="class 1", wrong="class 2", site="resid_post")
    >>> img.values.shape, img.tokens["clean"]  # [layer, CLS + 4 patches]
    ((2, 5), ['CLS', '0,0', '0,1', '1,0', '1,1'])
    >>> # the classifier reads CLS only: after the last block, CLS is everything (the
    >>> # patches are 0 up to float32 rounding of differently batched products)
    >>> round(float(img.values[-1, 0]), 4), bool(abs(img.values[-1, 1:]).max() < 1e-5)
    (1.0, True)

    Many pairs, cut into shards (the same bytes on ``engine="processes"`` or ``"ray"``):

    >>> names = [(" Mary", " John"), (" John", " Mary")] * 2
    >>> cl = [f"When{a} and{b} went to the store,{b} gave a drink to" for a, b in names]
    >>> co = [f"When{a} and{b} went to the store,{a} gave a drink to" for a, b in names]
    >>> kw = dict(answer=[a for a, _ in names], wrong=[b for _, b in names], site="heads")
    >>> one = cb.patch(model, tok, cl, co, **kw)
    >>> two = cb.patch(model, tok, cl, co, shards=2, **kw)
    >>> bool((one.values == two.values).all()), two.pair_values.shape
    (True, (4, 2, 4))
    """
    if site == "features" or saes is not None:
        if site != "features":
            raise ValueError(f"saes= goes with site='features'; got site={site!r}.")
        from ._feature_patch import patch_features

        return patch_features(  # type: ignore[return-value]
            model, tokenizer, clean, corrupted, saes=saes, answer=answer, wrong=wrong,
            metric=metric, method=method, direction=direction, batch_size=batch_size or 32,
        )  # fmt: skip
    _check_choice(site, SITES, "site")
    _check_choice(method, METHODS, "method")
    _check_choice(direction, DIRECTIONS, "direction")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int; got {steps!r}.")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")
    from ..scale._spec import ModelSpec  # here: scale drives intervene, not the reverse

    sharded = engine != "serial" or shards is not None or checkpoint is not None
    if sharded or isinstance(model, ModelSpec):
        from ..scale._pairs import patch_sharded

        options = dict(answer=answer, wrong=wrong, metric=metric, site=site, method=method)
        options.update(direction=direction, layers=layers, positions=positions, steps=steps)
        options.update(batch_size=batch_size, compare_exact=compare_exact)
        return patch_sharded(
            model,
            tokenizer,
            clean,
            corrupted,
            options,
            engine=engine,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            shards=shards,
            checkpoint=checkpoint,
            ray_address=ray_address,
            progress=progress,
        )
    runner = Runner(model)
    pairs = _prepare_pairs(tokenizer, clean, corrupted, answer, wrong, metric, runner=runner)
    layer_list, pos_list = patch_layout(pairs, site, layers, positions, runner.n_layers)
    T0 = pairs[0].n_tokens
    t0, f0 = time.perf_counter(), runner.forwards
    results: list[_PairResult] = []
    bar = None
    n_cells = int(np.prod(_Grid(site, layer_list, pos_list, runner.info, T0).shape))
    show = (
        progress
        if progress is not None
        else (method == "exact" and n_cells * T0 * len(pairs) >= PROGRESS_FROM)
    )
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_cells * len(pairs), desc="circuitboard patch", unit="site")
    try:
        for pair in pairs:
            results.append(
                _run_pair(
                    runner,
                    pair,
                    site,
                    layer_list,
                    pos_list,
                    method,
                    direction,
                    steps,
                    batch_size,
                    compare_exact,
                    bar,
                )
            )
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    return _assemble(
        results,
        pairs,
        runner,
        site,
        method,
        direction,
        layer_list,
        pos_list,
        steps,
        {"forwards": runner.forwards - f0, "seconds": seconds},
    )


def _run_pair(
    runner: Runner,
    pair: _Pair,
    site: str,
    layers: list[int],
    positions: list[int] | None,
    method: str,
    direction: str,
    steps: int,
    batch_size: int | None,
    compare_exact: bool,
    bar: Any,
) -> _PairResult:
    T = pair.n_tokens
    grid = _Grid(site, layers, positions, runner.info, T)
    skipped = grid.skipped(pair.first_diff, runner.adapter.causal)
    if method == "attribution":
        raw, m_clean, m_corr = _attribution(runner, pair, grid, direction)
        m_base = m_corr if direction == "denoise" else m_clean
        raw[skipped] = m_base
        reference = None
        if compare_exact:
            src = _sources(runner, pair, grid, direction)
            base = pair.corrupt_ids if direction == "denoise" else pair.clean_ids
            reference, _ = _exact(runner, pair, grid, base, src, m_base, batch_size, None)
        return _PairResult(raw, m_clean, m_corr, skipped, reference, None)
    clean_acts, corr_acts, m_clean, m_corr = _endpoints(runner, pair, grid)
    if direction == "denoise":
        base, base_acts, src, m_base = pair.corrupt_ids, corr_acts, clean_acts, m_corr
    else:
        base, base_acts, src, m_base = pair.clean_ids, clean_acts, corr_acts, m_clean
    tick = bar.update if bar is not None else None
    reference = completeness = None
    bs = batch_size or max(1, 4096 // T)
    if method == "exact":
        raw, skipped = _exact(runner, pair, grid, base, src, m_base, batch_size, tick)
    else:
        raw, sums = _ig(runner, pair, grid, base, base_acts, src, m_base, steps, bs)
        whole = [
            [Edit(Site(grid.kind, layer), "replace", src[Site(grid.kind, layer)])]
            for layer in layers
        ]
        exact_layer = runner.patched(base, whole, pair.metric, batch_size=bs).numpy()
        completeness = sums - (exact_layer - m_base)
    raw[skipped] = m_base
    if method != "exact" and compare_exact:
        reference, _ = _exact(runner, pair, grid, base, src, m_base, batch_size, None)
    return _PairResult(raw, m_clean, m_corr, skipped, reference, completeness)


def _assemble(
    results: list[_PairResult],
    pairs: list[_Pair],
    runner: Runner,
    site: str,
    method: str,
    direction: str,
    layers: list[int],
    positions: list[int] | None,
    steps: int,
    cost: dict[str, float],
) -> Patching:
    norm = [normalize(r.raw, r.clean, r.corrupted) for r in results]
    pair_values = np.stack(norm)
    values = pair_values.mean(0)
    ref = None
    corr = None
    if results[0].reference_raw is not None:
        ref = np.stack([normalize(r.reference_raw, r.clean, r.corrupted) for r in results]).mean(0)
        live = ~np.all(np.stack([r.skipped for r in results]), axis=0)
        corr = _pearson(values[live], ref[live])
    completeness = comp_err = None
    if results[0].completeness is not None:
        completeness = np.mean([r.completeness / (r.clean - r.corrupted) for r in results], axis=0)
        comp_err = float(np.abs(completeness).max())
    p0 = pairs[0]
    notes = [
        "denoise: the corrupted prompt runs with clean activations patched in (is the site "
        "sufficient?)"
        if direction == "denoise"
        else "noise: the clean prompt runs with corrupted activations patched in (is the site "
        "necessary?)",
        "values = (m − m_corrupted) / (m_clean − m_corrupted): clean = 1, corrupted = 0"
        + (" (noise: a site that matters drops below 1)" if direction == "noise" else ""),
    ]
    if method == "attribution":
        notes.append(
            "attribution patching: first-order estimate m_base + (a_source − a_base)·∂m/∂a at "
            "the base run, every site from one forward per prompt and one backward"
        )
    if method == "ig":
        notes.append(
            f"integrated gradients: each layer's sites interpolated together between the two "
            f"runs ({steps} midpoint steps); completeness = Σ layer − exact(whole layer)"
        )
    skipped_all = np.all(np.stack([r.skipped for r in results]), axis=0)
    if runner.adapter.causal and p0.first_diff > 0 and skipped_all.any():
        notes.append(
            f"positions 0–{p0.first_diff - 1} come before the first differing token (position "
            f"{p0.first_diff}, {p0.clean_tokens[p0.first_diff]!r} vs "
            f"{p0.corrupt_tokens[p0.first_diff]!r}): sites there are exactly 0 and were not run"
        )
    if p0.image is not None:
        notes[0] = notes[0].replace("prompt", "image")
        notes.append(
            "image pair: tokens are CLS and the patches (row,col); a ViT has no causal mask, so "
            "every patch and CLS can carry the difference: every cell was run, no prefix shared"
        )
    if site in ("heads", "heads_pos"):
        notes.append("heads: each head's output (attn.hook_z, the input of W_O) is patched")
    info = runner.info
    kv_groups = None
    if site in ATTN_SITES:
        what = {
            "q": "queries (after rotary / query norm)",
            "k": "keys",
            "v": "values",
            "pattern": "attention weights",
        }[site]
        notes.append(
            f"{site}: each head's {what} at every position, as the model's attention function "
            "received them"
        )
    if site in ("k", "v"):
        g = info.n_heads // info.n_kv_heads
        kv_groups = {kv: list(range(kv * g, (kv + 1) * g)) for kv in range(info.n_kv_heads)}
        if g > 1:
            notes.append(
                f"grouped-query attention: {site} is patched per key-value head; KV head g "
                f"serves query heads {g}g..{g}g+{g - 1}"
            )
    m_desc = getattr(p0.metric, "description", getattr(p0.metric, "__name__", "metric"))
    n_heads = info.n_kv_heads if site in ("k", "v") else info.n_heads
    heads = list(range(n_heads)) if site in ("heads", "heads_pos", *ATTN_SITES) else None
    return Patching(
        values=values,
        raw=np.mean([r.raw for r in results], axis=0),
        site=site,
        method=method,
        direction=direction,
        metric=str(m_desc) + (" at CLS" if p0.image is not None else " at the last position"),
        axes=AXES["position"] if site in POSITION_SITES else AXES.get(site, AXES["heads"]),
        layers=layers,
        positions=positions,
        heads=heads,
        tokens={"clean": list(p0.clean_tokens), "corrupted": list(p0.corrupt_tokens)},
        clean_value=float(np.mean([r.clean for r in results])),
        corrupted_value=float(np.mean([r.corrupted for r in results])),
        first_diff=p0.first_diff,
        notes=notes,
        pair_values=pair_values,
        pair_raw=np.stack([r.raw for r in results]),
        pair_clean=np.array([r.clean for r in results]),
        pair_corrupted=np.array([r.corrupted for r in results]),
        reference=ref,
        correlation=corr,
        completeness=completeness,
        completeness_error=comp_err,
        steps=steps if method == "ig" else None,
        model_name=runner.info.model_name,
        kv_groups=kv_groups,
        cost=cost,
        image=p0.image,
        images=p0.pixels,
    )


__all__ = ["DIRECTIONS", "METHODS", "SITES", "patch"]
