"""The replacement model of an attribution graph: one prompt's forward with attention patterns,
norm scales and MLP multipliers frozen, so the residual stream is linear in its sources.

:func:`freeze` runs the model once (through :func:`circuitboard.capture`) and keeps what the
linear system needs; :meth:`Frozen.backward` pushes batches of gradient rows down the residual
stream and through frozen attention (values and output projections only), calling a reader at
each layer so that edges are read off without ever building a node x node matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..capture.adapters import get_adapter
from ..capture.adapters._base import get_module

# Per family: (MLP input projection, gate projection or None, activation module), relative to
# a block. Gated MLPs (SwiGLU / GeGLU) freeze act(gate) and stay linear in the input
# projection; plain MLPs freeze act(z) / z.
_MLP_PATHS: dict[str, tuple[str, str | None, str]] = {
    "llama": ("mlp.up_proj", "mlp.gate_proj", "mlp.act_fn"),
    "gemma": ("mlp.up_proj", "mlp.gate_proj", "mlp.act_fn"),
    "gpt2": ("mlp.c_fc", None, "mlp.act"),
    "gpt_neox": ("mlp.dense_h_to_4h", None, "mlp.act"),
}


def _linear_in_out(module: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W [d_in, d_out], b [d_out])`` of an ``nn.Linear`` or GPT-2 ``Conv1D``."""
    w = module.weight
    if type(module).__name__ == "Conv1D":  # stores [in, out]
        W = w.detach().float()
    else:
        W = w.detach().float().T
    b = getattr(module, "bias", None)
    b = b.detach().float() if b is not None else torch.zeros(W.shape[1])
    return W.contiguous(), b


@dataclass
class Norm:
    """A norm with its scale frozen: ``N(x) = centre(x) * scale * w + b`` (linear plus ``b``)."""

    scale: torch.Tensor  # [pos, 1]
    w: torch.Tensor  # [d_model], already 1 + w for Gemma
    b: torch.Tensor  # [d_model]
    centred: bool  # LayerNorm subtracts the mean

    def vjp(self, g: torch.Tensor) -> torch.Tensor:
        """Gradient at the norm's input from ``g`` ``[..., pos, d_model]`` at its output (the
        first ``pos`` positions)."""
        y = g * self.scale[: g.shape[-2]] * self.w
        return y - y.mean(-1, keepdim=True) if self.centred else y

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``N(x)`` with the frozen scale, ``x`` ``[pos, d_model]``."""
        c = x - x.mean(-1, keepdim=True) if self.centred else x
        return c * self.scale[: x.shape[0]] * self.w + self.b

    def vjp_at(self, v: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """``vjp`` of one vector per row ``v`` ``[rows, d_model]`` read at positions ``pos``."""
        y = v * self.scale[pos] * self.w
        return y - y.mean(-1, keepdim=True) if self.centred else y


PATTERN_CACHE_BYTES = 256 * 2**20
"""Frozen patterns of all layers are kept whole up to this size; past it (long prompts) each
backward recomputes them from the recorded queries and keys in chunks of query rows, so no
``layers x heads x tokens x tokens`` tensor is held."""

PATTERN_BLOCK_ROWS = 128
"""Query rows per block of :meth:`FrozenPatterns.blocks` (causal: a block reads only the keys
up to its last query)."""


class FrozenPatterns:
    """Every layer's frozen attention pattern, read in blocks of query rows.

    Either all layers kept whole (``dense``, ``[heads, pos, pos]`` each: short prompts) or the
    capture's queries and keys (``source``, a :class:`~circuitboard.capture._patterns.Patterns`
    holding only them) from which each block is recomputed when read: memory linear in tokens.
    """

    def __init__(self, dense: list[torch.Tensor] | None = None, source: Any = None) -> None:
        self.dense, self.source = dense, source

    def blocks(self, layer: int, n: int):
        """Yield ``(a, b, A [heads, b - a, b])``: query rows ``[a, b)`` of the first ``n``
        positions over keys ``[0, b)`` (later keys are zero under causal attention)."""
        if self.dense is not None:
            A = self.dense[layer]
            for a in range(0, n, PATTERN_BLOCK_ROWS):
                b = min(n, a + PATTERN_BLOCK_ROWS)
                yield a, b, A[:, a:b, :b]
            return
        for a, w in self.source.rows(layer, None, slice(0, n), slice(0, n), PATTERN_BLOCK_ROWS):
            b = a + w.shape[1]
            yield a, b, w[:, :, :b]

    def __getitem__(self, layer: int) -> torch.Tensor:
        """Layer ``layer``'s whole pattern ``[heads, pos, pos]`` (tests, small prompts)."""
        if self.dense is not None:
            return self.dense[layer]
        return self.source.pattern(layer)


@dataclass
class Frozen:
    """Everything the linear replacement system of one prompt needs (float32, CPU)."""

    model_name: str
    architecture: str
    tokens: list[str]
    token_ids: torch.Tensor  # [pos]
    parallel: bool
    embed: torch.Tensor  # [pos, d_model]: what each token node writes (embedding + position)
    ln1: list[Norm]
    ln2: list[Norm]
    ln_final: Norm
    patterns: FrozenPatterns  # [heads, query, key] per layer, read in blocks
    W_V: list[torch.Tensor]  # [kv_heads, d_model, d_head]
    W_O: list[torch.Tensor]  # [heads, d_head, d_model]
    attn_const: list[torch.Tensor]  # [d_model]: attention output with every source at zero
    W_in: list[torch.Tensor]  # [d_model, d_mlp]: the MLP input projection (up for gated MLPs)
    b_in: list[torch.Tensor]  # [d_mlp]
    # [pos, d_mlp] per layer, for the neuron basis only (None for transcoders): the frozen
    # multiplier (act = mult * (N2(x) W_in + b_in)) and the neurons' activations
    mult: list[torch.Tensor] | None
    act: list[torch.Tensor] | None
    W_out: list[torch.Tensor]  # [d_mlp, d_model]
    b_out: list[torch.Tensor]  # [d_model]
    W_U: torch.Tensor  # [d_model, vocab]
    b_U: torch.Tensor  # [vocab]
    logits: torch.Tensor  # [vocab] at the last position, from the model itself
    mlp_out: list[torch.Tensor] | None = None  # [pos, d_model], kept for transcoder error nodes
    mlp_in_resid: list[torch.Tensor] | None = None  # [pos, d_model]: the residual the MLP reads

    @property
    def n_layers(self) -> int:
        return len(self.W_O)

    @property
    def n_pos(self) -> int:
        return int(self.embed.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.embed.shape[1])

    @property
    def n_heads(self) -> int:
        return int(self.W_O[0].shape[0])

    @property
    def d_mlp(self) -> int:
        return int(self.W_out[0].shape[0])

    def mlp_in_norm(self, layer: int) -> Norm:
        return self.ln2[layer]

    # -- seeds: the gradient a target node puts on the residual stream ------------------------
    def logit_seed(self, direction: Any) -> torch.Tensor:
        """``[d_model]`` gradient at the final residual (last position) of ``x -> logits @ d``
        (``d`` a vocabulary vector), or of ``x -> final_norm(x) @ r`` for a residual-stream
        ``cb.Direction`` ``r``."""
        pos = torch.tensor([self.n_pos - 1])
        return self.ln_final.vjp_at(self._unembed_input(direction)[None], pos)[0]

    def logit_bias(self, direction: Any) -> float:
        """The part of the target that no source writes (the final norm's bias, and for a
        vocabulary direction the unembedding's)."""
        out = float(self.ln_final.b @ self._unembed_input(direction))
        return out if _residual(direction) else out + float(self.b_U @ direction)

    def _unembed_input(self, direction: Any) -> torch.Tensor:
        """The target read on the unembedding's input: ``W_U @ d``, or ``r`` itself."""
        if _residual(direction):
            return direction.vector.to(self.W_U.dtype)
        return self.W_U @ direction

    def neuron_seeds(
        self, layer: int, pos: torch.Tensor, neuron: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Seeds ``[rows, d_model]`` at the MLP input of ``layer`` and each neuron's own bias
        ``mult * (N2(0) W_in + b_in)`` ``[rows]``."""
        m = self.mult[layer][pos, neuron]  # [rows]
        w = self.W_in[layer][:, neuron].T  # [rows, d_model]
        norm = self.ln2[layer]
        seeds = norm.vjp_at(m[:, None] * w, pos)
        own = m * (w @ norm.b + self.b_in[layer][neuron])
        return seeds, own

    # -- the backward pass through the frozen system -------------------------------------------
    def _pattern_t_matmul(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """``A^T x`` per head for ``x`` ``[heads, n, cols]`` (queries along dim 1): ``[heads, n
        keys, cols]``, summed over blocks of query rows (never a pattern copy per row)."""
        out = torch.zeros_like(x)
        for a, b, A in self.patterns.blocks(layer, x.shape[1]):
            out[:, :b].baddbmm_(A.transpose(1, 2), x[:, a:b])
        return out

    def attn_vjp(self, layer: int, g: torch.Tensor) -> torch.Tensor:
        """Gradient at the attention input (the residual) from ``g`` ``[rows, pos, d_model]`` at
        the attention output, with the pattern frozen (the first ``pos`` positions: causal
        attention never moves gradient to later ones)."""
        R, n, D = g.shape
        W_O = self.W_O[layer]
        H, dh, _ = W_O.shape
        KV = self.W_V[layer].shape[0]
        gz = torch.matmul(g, W_O.reshape(H * dh, D).T)  # [rows, pos, heads * d_head]
        x = gz.view(R, n, H, dh).permute(2, 1, 0, 3).reshape(H, n, R * dh)
        del gz
        gv = self._pattern_t_matmul(layer, x).view(KV, H // KV, n, R, dh).sum(1)
        del x
        gv = gv.permute(2, 1, 0, 3).reshape(R, n, KV * dh)  # [rows, key, kv_heads * d_head]
        gu = torch.matmul(gv, self._wv_flat(layer))  # [rows, pos, d_model]
        return self.ln1[layer].vjp(gu)

    def _wv_flat(self, layer: int) -> torch.Tensor:
        """``W_V`` as ``[kv_heads * d_head, d_model]`` (cached)."""
        cache = self.__dict__.setdefault("_wv_cache", {})
        if layer not in cache:
            W_V = self.W_V[layer]
            cache[layer] = W_V.permute(0, 2, 1).reshape(-1, W_V.shape[1]).contiguous()
        return cache[layer]

    def head_vjp(self, layer: int, g: torch.Tensor) -> torch.Tensor:
        """Per-head parts of :meth:`attn_vjp`: ``[rows, heads, pos, d_model]`` summing to it."""
        R, n, _ = g.shape
        W_O, W_V = self.W_O[layer], self.W_V[layer]
        H, dh, _ = W_O.shape
        KV = W_V.shape[0]
        gz = torch.einsum("bqd,hed->hqbe", g, W_O).reshape(H, n, R * dh)
        gv = self._pattern_t_matmul(layer, gz).view(H, n, R, dh).permute(2, 0, 1, 3)
        group = torch.arange(H) // (H // KV)
        gu = torch.einsum("bhke,hde->bhkd", gv, W_V[group])
        return self.ln1[layer].vjp(gu)

    def backward(
        self,
        final_seed: torch.Tensor | Seeds | None,
        in_seeds: dict[int, torch.Tensor | Seeds],
        read_mlp: Callable[[int, torch.Tensor], None],
        read_embed: Callable[[torch.Tensor], None],
        post_seeds: dict[int, torch.Tensor] | None = None,
        n_pos: int | None = None,
        mlp_bias: Callable[[int], torch.Tensor] | None = None,
        n_rows: int | None = None,
    ) -> torch.Tensor:
        """Run rows of gradient down the frozen system; returns each row's bias part.

        ``final_seed`` sits at the final residual, ``in_seeds[l]`` at the MLP input of layer
        ``l`` (targets inside that layer): dense ``[rows, pos, d_model]`` or :class:`Seeds`
        (one vector per target, so a batch over many layers holds no ``rows x pos x d_model``
        buffer per layer). ``read_mlp(l, g)`` receives the gradient where layer ``l``'s MLP
        writes, ``read_embed(g)`` the one at the embedding. MLPs pass no gradient: their
        outputs are nodes (or error nodes), not paths. ``post_seeds[l]`` sit at the residual
        after layer ``l`` (``-1``: the embedding). With ``n_pos`` only the first ``n_pos``
        positions are carried (enough for targets there: causal attention moves gradient only
        to earlier positions); seeds then have ``n_pos`` positions too.
        """
        post_seeds = post_seeds or {}
        if n_rows is None:
            some = [final_seed, *in_seeds.values(), *post_seeds.values()]
            n_rows = next(
                len(x) if isinstance(x, torch.Tensor) else x.n_rows for x in some if x is not None
            )
        g = torch.zeros(n_rows, n_pos or self.n_pos, self.d_model)
        # whether any seed has entered yet: layers above every target are skipped (a flag, not
        # a reduction over g at every layer)
        live = final_seed is not None
        if live:
            _add_seed(g, final_seed)
        bias = torch.zeros(n_rows)
        for layer in range(self.n_layers - 1, -1, -1):
            if layer in post_seeds:
                g += post_seeds[layer]
                live = True
            if live:
                read_mlp(layer, g)
                bias += g.sum(1) @ (self.b_out[layer] if mlp_bias is None else mlp_bias(layer))
            seed = in_seeds.get(layer)
            if self.parallel:  # attention and MLP both read resid_pre
                if live:
                    bias += g.sum(1) @ self.attn_const[layer]
                    g += self.attn_vjp(layer, g)
                if seed is not None:
                    _add_seed(g, seed)
                    live = True
            else:
                if seed is not None:
                    _add_seed(g, seed)
                    live = True
                if live:
                    bias += g.sum(1) @ self.attn_const[layer]
                    g += self.attn_vjp(layer, g)
        if -1 in post_seeds:
            g += post_seeds[-1]
        read_embed(g)
        return bias


@dataclass
class Seeds:
    """One seed vector per target row: ``vec[i]`` at row ``row[i]``, position ``pos[i]``."""

    n_rows: int
    row: torch.Tensor  # [k] long
    pos: torch.Tensor  # [k] long
    vec: torch.Tensor  # [k, d_model]


def _add_seed(g: torch.Tensor, seed: torch.Tensor | Seeds) -> None:
    """Add ``seed`` into ``g`` ``[rows, pos, d_model]`` in place."""
    if isinstance(seed, Seeds):
        g.index_put_((seed.row, seed.pos), seed.vec, accumulate=True)
    else:
        g += seed


def _attn_const(W_V: torch.Tensor, b_V: torch.Tensor, W_O: torch.Tensor, b_O, ln_b) -> torch.Tensor:
    """What attention writes when every source is zero: pattern rows sum to one, so each head
    writes ``(N1(0) W_V + b_V) W_O`` whatever it attends to."""
    H, KV = W_O.shape[0], W_V.shape[0]
    v0 = torch.einsum("d,gde->ge", ln_b, W_V) + b_V  # [kv, d_head]
    v0 = v0[torch.arange(H) // (H // KV)]
    return torch.einsum("he,hed->d", v0, W_O) + b_O


def supported_for_graphs(adapter: Any) -> str | None:
    """None when attribution graphs support this adapter, else the reason."""
    if adapter.name not in _MLP_PATHS:
        return (
            f"attribution graphs support the families {sorted(_MLP_PATHS)}; this model is "
            f"{adapter.name!r}"
        )
    if adapter.post_norms is not None:
        return f"{adapter.name!r} normalizes sublayer outputs (post-norms), not supported yet"
    if adapter.moe is not None:
        return "mixture-of-experts MLPs have no fixed neuron basis"
    return None


def freeze(
    model: Any,
    tokenizer: Any,
    prompt: str,
    *,
    keep_mlp_out: bool = False,
    neurons: bool = True,
    pattern_cache_bytes: int = PATTERN_CACHE_BYTES,
) -> Frozen:
    """Run ``model`` on ``prompt`` once and freeze its replacement system.

    ``keep_mlp_out`` keeps each MLP's output (transcoder error nodes); ``neurons=False`` keeps
    no per-neuron multipliers or activations (a transcoder basis needs none: ``2 L P d_mlp``
    floats saved). Patterns past ``pattern_cache_bytes`` in all are recomputed when read.
    """
    from ..capture import capture

    adapter = get_adapter(model)
    why = supported_for_graphs(adapter)
    if why is not None:
        raise ValueError(
            f"{why}. Use a Llama/Mistral/Qwen2, Gemma 1, GPT-2 or GPT-NeoX model, or add the "
            "family to circuitboard.intervene._graph_frozen._MLP_PATHS."
        )
    up_path, gate_path, act_path = _MLP_PATHS[adapter.name]
    n_layers = adapter.n_blocks(model)
    mults: dict[int, torch.Tensor] = {}
    handles = []

    def grab(layer: int) -> Callable[..., None]:
        def hook(mod: Any, args: tuple, out: torch.Tensor) -> None:
            x, y = args[0][0].detach().float(), out[0].detach().float()
            if gate_path is not None:
                mults[layer] = y  # act(gate): the gated MLP is linear in up_proj(x)
            else:  # act(z) / z, with act'(0) where z is exactly 0
                safe = torch.where(x == 0, torch.ones_like(x), x)
                mults[layer] = torch.where(x == 0, torch.full_like(x, 0.5), y / safe)

        return hook

    for layer in range(n_layers if neurons else 0):
        act_mod = get_module(adapter.block(model, layer), act_path)
        handles.append(act_mod.register_forward_hook(grab(layer)))
    what = ["resid_pre", "resid_mid", "pattern", "scale", "logits", "norm_scales"]
    if neurons:
        what.append("mlp_post")
    if keep_mlp_out:
        what.append("mlp_out")
    try:
        cap = capture(model, tokenizer, prompt, what=what, dtype=torch.float32, max_memory=None)
    finally:
        for h in handles:
            h.remove()
    info = cap.info
    W = cap.weights
    gemma = info.norm == "gemma_rmsnorm"
    centred = info.norm == "layernorm"

    def norm(prefix: str, scale: torch.Tensor) -> Norm:
        w = W[prefix + ".w"].detach().float()
        b = W.get(prefix + ".b")
        b = b.detach().float() if b is not None else torch.zeros_like(w)
        return Norm(scale.float(), (1 + w) if gemma else w, b, centred)

    P = len(cap.tokens)
    n_heads = int(W["blocks.0.attn.W_O"].shape[0])
    dense = 4 * n_layers * n_heads * P * P <= pattern_cache_bytes or cap.patterns is None
    fr_ln1, fr_ln2, pats, W_V, W_O, consts, W_in, b_in, W_out, b_out, acts = ([] for _ in range(11))
    for layer in range(n_layers):
        p = f"blocks.{layer}."
        ln1 = norm(p + "ln1", cap[p + "ln1.hook_scale"])
        ln2_name = "ln2" if p + "ln2.hook_scale" in cap else "ln1"
        ln2 = norm(p + ln2_name, cap[p + f"{ln2_name}.hook_scale"])
        fr_ln1.append(ln1)
        fr_ln2.append(ln2)
        if dense:
            pats.append(cap[p + "attn.hook_pattern"].float().contiguous())
        wv = W[p + "attn.W_V"].detach().float()
        wo = W[p + "attn.W_O"].detach().float()
        W_V.append(wv.contiguous())
        W_O.append(wo.contiguous())
        consts.append(
            _attn_const(
                wv, W[p + "attn.b_V"].detach().float(), wo, W[p + "attn.b_O"].float(), ln1.b
            )
        )
        blk = adapter.block(model, layer)
        wi, bi = _linear_in_out(get_module(blk, up_path))
        W_in.append(wi)
        b_in.append(bi)
        W_out.append(W[p + "mlp.W_out"].detach().float().contiguous())
        b_out.append(W[p + "mlp.b_out"].detach().float())
        if neurons:
            acts.append(cap[p + "mlp.hook_post"].float())
    reads = "hook_resid_pre" if info.parallel_attn_mlp else "hook_resid_mid"
    mlp_in_resid = [cap[f"blocks.{i}.{reads}"].float() for i in range(n_layers)]
    mult = [mults[layer][:P] for layer in range(n_layers)] if neurons else None
    if dense:
        patterns = FrozenPatterns(dense=pats)
    else:  # keep only the queries and keys (not the whole capture) to recompute blocks from
        from ..capture._patterns import Patterns

        qk = {n: t for n, t in cap.tensors.items() if n.endswith((".hook_q", ".hook_k"))}
        patterns = FrozenPatterns(source=Patterns(qk, cap.patterns.specs, cache_bytes=0))
    embed = cap["blocks.0.hook_resid_pre"].float()
    final = norm("ln_final", cap["ln_final.hook_scale"])
    with torch.no_grad():
        W_U = W["unembed.W_U"].detach().float()
        b_U = W["unembed.b_U"].detach().float()
    return Frozen(
        model_name=info.model_name,
        architecture=adapter.name,
        tokens=list(cap.tokens),
        token_ids=cap.token_ids.clone(),
        parallel=bool(info.parallel_attn_mlp),
        embed=embed,
        ln1=fr_ln1,
        ln2=fr_ln2,
        ln_final=final,
        patterns=patterns,
        W_V=W_V,
        W_O=W_O,
        attn_const=consts,
        W_in=W_in,
        b_in=b_in,
        mult=mult,
        act=acts if neurons else None,
        W_out=W_out,
        b_out=b_out,
        W_U=W_U,
        b_U=b_U,
        logits=cap.logits[-1].float().clone(),  # not a view: the capture's [pos, vocab] goes
        mlp_out=[cap[f"blocks.{i}.hook_mlp_out"].float() for i in range(n_layers)]
        if keep_mlp_out
        else None,
        mlp_in_resid=mlp_in_resid,
    )


def _residual(direction: Any) -> bool:
    """Whether a graph target is a residual-stream ``cb.Direction`` (else a vocabulary vector)."""
    return getattr(direction, "space", None) == "resid"
