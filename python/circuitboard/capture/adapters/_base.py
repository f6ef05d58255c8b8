"""The `Adapter` record: where one architecture family keeps the modules a capture hooks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

NORMS = ("layernorm", "rmsnorm", "gemma_rmsnorm")


def get_module(root: Any, path: str) -> Any:
    """Follow a dotted attribute path (``"model.layers"``); ``""`` is ``root`` itself."""
    mod = root
    for part in filter(None, path.split(".")):
        mod = mod[int(part)] if part.isdigit() else getattr(mod, part)
    return mod


def execution_device(module: Any) -> torch.device:
    """Where ``module`` computes: accelerate's execution device when it dispatched the model
    (offloaded weights sit on the meta device between forwards, so their ``.device`` says
    nothing), else the device of its first real parameter, else the CPU.

    Examples
    --------
    >>> execution_device(torch.nn.Linear(2, 2))
    device(type='cpu')
    >>> execution_device(torch.nn.Linear(2, 2, device="meta"))
    device(type='cpu')
    """
    for mod in module.modules():  # the module's own hook first, then its first submodule's
        found = getattr(getattr(mod, "_hf_hook", None), "execution_device", None)
        if found is not None:
            return torch.device("cuda", found) if isinstance(found, int) else torch.device(found)
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def check_placement(model: Any) -> None:
    """Refuse a model whose parameters sit on several devices (or on the meta device) without
    accelerate's dispatch hooks to move activations between them: its forward would fail (or
    run on placeholders) somewhere deep inside, and analyses could not read its weights.

    Examples
    --------
    >>> check_placement(torch.nn.Linear(2, 2))
    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2, device="meta"))
    >>> check_placement(m)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: the model's parameters sit on cpu and meta ...
    """
    devices = {str(p.device) for p in model.parameters()}
    if len(devices) < 2 and "meta" not in devices:
        return
    if any(hasattr(m, "_hf_hook") for m in model.modules()):
        return  # dispatched by accelerate: its hooks move weights and activations
    where = " and ".join(sorted(devices))
    raise ValueError(
        f"the model's parameters sit on {where} with nothing to move activations between them "
        "(meta parameters hold no weights at all). Load it with "
        "from_pretrained(..., device_map='auto', max_memory={...}) so accelerate dispatches it "
        "(layers on several GPUs, the CPU or disk all work), or move it whole with "
        "model.to(device)."
    )


def cfg_get(config: Any, *names: str, default: Any = None) -> Any:
    """The first of ``names`` that the config sets to a non-None value."""
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def zeros_like_bias(n: int, ref: torch.Tensor) -> torch.Tensor:
    """An all-zero bias (a fresh tensor, not a view) for a projection that has none."""
    return torch.zeros(n, dtype=ref.dtype, device=ref.device)


def bias(module: Any, n: int) -> torch.Tensor:
    """``module.bias``, or zeros of length ``n`` when the module has none."""
    b = getattr(module, "bias", None)
    return b if b is not None else zeros_like_bias(n, module.weight)


@dataclass(frozen=True)
class MoE:
    """Where a mixture-of-experts MLP keeps its router and experts (paths relative to a block).

    ``experts`` is transformers' fused experts module (``gate_up_proj`` ``[E, 2 * d_expert,
    d_model]`` and ``down_proj`` ``[E, d_model, d_expert]`` 3-D parameters, called as
    ``experts(hidden, top_k_index, top_k_weights)``). ``shared`` / ``shared_gate`` name Qwen-MoE's
    always-on shared expert (a dense MLP) and its sigmoid gate.
    """

    router: str = "mlp.gate"
    experts: str = "mlp.experts"
    shared: str | None = None
    shared_gate: str | None = None


@dataclass(frozen=True)
class ModuleQK:
    """Queries and keys read off the projection modules, for attention that bypasses
    transformers' attention interface but applies nothing between the projections and the
    scores except the head split (no rotary: GPT-Neo). Paths are relative to a block.

    ``window(config, layer)``: the layer's local window (keys ``i - w < j <= i``), or None for
    causal attention over every earlier token.
    """

    q: str
    k: str
    scaling: float
    window: Callable[[Any, int], int | None] = field(default=lambda config, layer: None)


@dataclass(frozen=True)
class Adapter:
    """What circuitboard needs to know about one architecture family.

    All module paths are attribute paths; ``blocks`` is relative to the model, the
    ``block_*`` paths are relative to one block, the rest relative to the model.

    Parameters
    ----------
    name
        Adapter name, stored as ``ModelInfo.architecture``.
    model_types
        ``config.model_type`` values this adapter serves.
    blocks
        The ``ModuleList`` of transformer blocks, e.g. ``"model.layers"``.
    block_attn
        The attention module; it must return ``(output, weights)`` (weights non-None under
        eager attention), as every ``transformers`` attention class does.
    block_o_proj
        The attention's output projection; its *input* is ``attn.hook_z``.
    block_mlp_down
        The MLP's output (down) projection; its *input* is ``mlp.hook_post``.
    block_mid
        A module whose *input* is ``hook_resid_mid`` (the norm before the MLP). ``None`` for
        parallel attention + MLP blocks: then ``resid_mid = resid_pre + attn_out``.
    block_attn_out / block_mlp_out
        Modules whose *output* is what attention / the MLP add to the residual stream
        (``hook_attn_out`` / ``hook_mlp_out``); a ``(path, index)`` tuple picks an element of a
        tuple output.
    embed / pos_embed
        Token and (learned) position embedding modules (``hook_embed`` / ``hook_pos_embed``).
    final_norm / unembed
        The final norm (``ln_final``) and the unembedding (``lm_head``).
    norm
        ``"layernorm"``, ``"rmsnorm"`` or ``"gemma_rmsnorm"`` (multiplies by ``1 + w``).
    weights
        ``weights(model, adapter, info) -> dict`` of TransformerLens-named parameter views.
    dims
        ``dims(config) -> dict`` with ``n_layers, n_heads, n_kv_heads, d_model, d_head, d_mlp,
        d_vocab`` and optionally ``final_logit_softcap, parallel_attn_mlp``.
    causal
        False for bidirectional encoders (BERT, ViT).
    modality
        ``"text"`` (token ids in) or ``"image"`` (pixel values in; tokens are patches).
    pre_norm
        False for blocks that normalize *after* the residual addition (BERT): their residual
        stream is not a sum of component writes, so attribution refuses them.
    post_norms
        ``(attn_norm, mlp_norm)`` paths (relative to a block) of norms applied to the attention
        / MLP output before the residual add (OLMo 2, Gemma 2). Capture records their frozen
        multipliers as ``blocks.{l}.ln1_post.hook_scale`` / ``ln2_post.hook_scale`` and their
        weights as ``blocks.{l}.ln1_post.w`` / ``ln2_post.w``, so attribution stays exact.
    moe
        A :class:`MoE` record for mixture-of-experts MLPs (Mixtral, Qwen-MoE, OLMoE).
    for_config
        ``for_config(adapter, config) -> Adapter``: the variant serving this config (e.g.
        StableLM with or without parallel residual); ``None``: the adapter as it is.
    supports
        What works for this family: ``{"capture", "dla", "patching", "explanation"}`` mapped to
        ``True`` or to the reason it does not (listed by ``cb.supported_architectures()``).
    block_norms
        ``(name, path)`` of the norms inside a block whose scale a capture records as
        ``blocks.{l}.{name}.hook_scale`` (TransformerLens names: ``ln1`` before attention,
        ``ln2`` before the MLP, ``ln1_post`` / ``ln2_post`` for norms on a sublayer's output),
        with their weights as ``blocks.{l}.{name}.w`` / ``.b``.
    rotary
        Name of the function the family's attention module applies rotary embeddings with
        (``apply_rotary_pos_emb(q, k, cos, sin)`` in its ``transformers`` module), or ``None``
        without rotary embeddings. Explanations of attention scores call it, never a copy.
    """

    name: str
    model_types: tuple[str, ...]
    blocks: str
    block_attn: str
    block_o_proj: str
    block_mlp_down: str
    block_mid: str | None
    block_attn_out: tuple[str, int | None]
    block_mlp_out: tuple[str, int | None]
    embed: str
    final_norm: str
    unembed: str
    norm: str
    weights: Callable[[Any, Adapter, Any], dict[str, torch.Tensor]]
    dims: Callable[[Any], dict[str, Any]]
    pos_embed: str | None = None
    causal: bool = True
    modality: str = "text"
    pre_norm: bool = True
    head: Callable[[Any, torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    """Optional ``head(model, resid) -> logits`` when the unembedding is more than
    final norm + ``unembed`` (BERT's MLM transform); used by tests and the logit lens."""
    post_norms: tuple[str, str] | None = None
    moe: MoE | None = None
    for_config: Callable[[Adapter, Any], Adapter] | None = field(default=None, repr=False)
    supports: dict[str, Any] = field(default_factory=dict, repr=False)
    final_norm_eps: float | None = None
    """The final norm's epsilon when the module keeps it in code (OLMo's parameter-free
    LayerNorm); None: read from the module (``eps`` / ``variance_epsilon``)."""
    module_qk: ModuleQK | None = None
    """Record ``attn.hook_q`` / ``hook_k`` from projection modules when the attention does not
    dispatch through transformers' attention interface (GPT-Neo); patterns are then recomputed
    on demand as for every other model."""
    notes: str = ""
    block_norms: tuple[tuple[str, str], ...] = ()
    rotary: str | None = None

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(
                f"Adapter {self.name!r}: norm must be one of {NORMS}; got {self.norm!r}."
            )

    def block(self, model: Any, layer: int) -> Any:
        return get_module(model, self.blocks)[layer]

    def n_blocks(self, model: Any) -> int:
        return len(get_module(model, self.blocks))

    def logits_from_resid(
        self, model: Any, resid: torch.Tensor, softcap: float | None = None
    ) -> torch.Tensor:
        """Apply the model's own final norm and unembedding (and soft-cap) to a residual."""
        if self.head is not None:
            return self.head(model, resid)
        logits = get_module(model, self.unembed)(get_module(model, self.final_norm)(resid))
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits


def linear_weights(
    model: Any,
    adapter: Adapter,
    info: Any,
    *,
    q: str,
    k: str,
    v: str,
    o: str,
    down: str | None,
) -> dict[str, torch.Tensor]:
    """TransformerLens-named views of ``nn.Linear`` projections (Llama, Mistral, Qwen2, Gemma).

    ``down=None`` leaves out the MLP (mixture-of-experts layers name their experts' weights)."""
    H, KV, dh, D = info.n_heads, info.n_kv_heads, info.d_head, info.d_model
    out: dict[str, torch.Tensor] = {}
    for layer in range(info.n_layers):
        blk = adapter.block(model, layer)
        p = f"blocks.{layer}."
        for name, path, heads in (("Q", q, H), ("K", k, KV), ("V", v, KV)):
            lin = get_module(blk, path)
            out[p + f"attn.W_{name}"] = lin.weight.view(heads, dh, D).transpose(1, 2)
            out[p + f"attn.b_{name}"] = bias(lin, heads * dh).view(heads, dh)
        lin_o = get_module(blk, o)
        out[p + "attn.W_O"] = lin_o.weight.T.view(H, dh, D)
        out[p + "attn.b_O"] = bias(lin_o, D)
        if down is None:
            continue
        lin_d = get_module(blk, down)
        out[p + "mlp.W_out"] = lin_d.weight.T
        out[p + "mlp.b_out"] = bias(lin_d, D)
    return out


def common_weights(model: Any, adapter: Adapter, info: Any) -> dict[str, torch.Tensor]:
    """Embedding, final norm and unembedding views shared by every family."""
    emb = get_module(model, adapter.embed)
    norm = get_module(model, adapter.final_norm)
    lm = get_module(model, adapter.unembed)
    D = info.d_model
    w = norm.weight
    out = {
        "embed.W_E": emb.weight,
        "ln_final.w": w,
        "ln_final.b": bias(norm, D),
        "unembed.W_U": lm.weight.T,
        "unembed.b_U": bias(lm, lm.weight.shape[0]),
    }
    if adapter.pos_embed:
        out["pos_embed.W_pos"] = get_module(model, adapter.pos_embed).weight
    return out


def post_norm_weights(model: Any, adapter: Adapter, info: Any) -> dict[str, torch.Tensor]:
    """``blocks.{l}.ln1_post.w`` / ``ln2_post.w``: weights of the norms on sublayer outputs."""
    out: dict[str, torch.Tensor] = {}
    if adapter.post_norms is None:
        return out
    for layer in range(info.n_layers):
        blk = adapter.block(model, layer)
        for name, path in zip(("ln1_post", "ln2_post"), adapter.post_norms, strict=True):
            out[f"blocks.{layer}.{name}.w"] = get_module(blk, path).weight
    return out


QK_NORMS = ("q_norm", "k_norm")
"""Attribute names of query / key norms inside an attention module (Qwen3, OLMo 2, OLMoE,
Gemma 3); capture records their frozen multipliers as ``blocks.{l}.attn.q_norm.hook_scale``."""


def qk_norm_weights(model: Any, adapter: Adapter, info: Any) -> dict[str, torch.Tensor]:
    """``blocks.{l}.attn.q_norm.w`` / ``k_norm.w`` where the attention has query/key norms
    (Gemma-style norms multiply by ``1 + w``, as ``info.norm`` says)."""
    out: dict[str, torch.Tensor] = {}
    for layer in range(info.n_layers):
        attn = get_module(adapter.block(model, layer), adapter.block_attn)
        for name in QK_NORMS:
            w = getattr(getattr(attn, name, None), "weight", None)
            if isinstance(w, torch.Tensor):
                out[f"blocks.{layer}.attn.{name}.w"] = w
    return out


def norm_weights(model: Any, adapter: Adapter, info: Any) -> dict[str, torch.Tensor]:
    """``blocks.{l}.{name}.w`` / ``.b`` views of the norms named in ``adapter.block_norms``
    (absent biases are zeros; Gemma's norms multiply by ``1 + w``, as ``info.norm`` says)."""
    out: dict[str, torch.Tensor] = {}
    for layer in range(info.n_layers):
        blk = adapter.block(model, layer)
        for name, path in adapter.block_norms:
            mod = get_module(blk, path)
            out[f"blocks.{layer}.{name}.w"] = mod.weight
            out[f"blocks.{layer}.{name}.b"] = bias(mod, mod.weight.shape[0])
    return out


def gather_weights(model: Any, adapter: Adapter, info: Any) -> dict[str, torch.Tensor]:
    """Every weight analyses read (the adapter's and the norms'), as parameter views; layers
    offloaded by accelerate (``device_map`` with "disk"/"cpu" offload keeps them on the meta
    device between forwards) are loaded through accelerate and copied to CPU."""
    weights = {k: v.detach() for k, v in _all_weights(model, adapter, info).items()}
    meta = [k for k, v in weights.items() if v.is_meta]
    if not meta:
        return weights
    from accelerate.utils import align_module_device, has_offloaded_params

    with contextlib.ExitStack() as stack:
        for mod in model.modules():
            if has_offloaded_params(mod):
                stack.enter_context(align_module_device(mod, torch.device("cpu")))
        fresh = _all_weights(model, adapter, info)
        for k in meta:
            weights[k] = fresh[k].detach().to("cpu", copy=True)
    return weights


def _all_weights(model: Any, adapter: Adapter, info: Any) -> dict[str, torch.Tensor]:
    return {**adapter.weights(model, adapter, info), **norm_weights(model, adapter, info)}
