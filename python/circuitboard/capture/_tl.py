"""Build :class:`Capture` objects from a TransformerLens run (``ActivationCache``).

Works with TransformerLens 4's ``TransformerBridge`` (which wraps a Hugging Face model) and
with a classic ``HookedTransformer``. Cache names already follow circuitboard's; two things are
converted: the norm scales ``ln_final.hook_scale`` / ``blocks.{l}.ln1.hook_scale`` / ``ln2``
(TransformerLens stores the divisor ``sqrt(var + eps)``, circuitboard the multiplier, its
reciprocal), the bridge's ``rotary_emb.hook_cos`` / ``hook_sin`` (``hook_rot_cos`` /
``hook_rot_sin`` here) and the batch dimension (removed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from ._capture import Capture, ModelInfo
from ._tokens import decode_incremental

_KEEP = re.compile(
    r"^(hook_embed|hook_pos_embed|ln_final\.hook_scale|"
    r"blocks\.\d+\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|hook_mlp_out|"
    r"attn\.hook_pattern|attn\.hook_z|mlp\.hook_post|ln[12](_post)?\.hook_scale)|"
    r"rotary_emb\.hook_(cos|sin))$"
)
_RENAME = {"rotary_emb.hook_cos": "hook_rot_cos", "rotary_emb.hook_sin": "hook_rot_sin"}
_NORMS = {"LN": "layernorm", "LNPre": "layernorm", "RMS": "rmsnorm", "RMSPre": "rmsnorm"}


def _info(model: Any, hf: Any) -> tuple[ModelInfo, Any]:
    cfg = model.cfg
    adapter = None
    if hf is not None:
        from .adapters import _REGISTRY

        adapter = _REGISTRY.get(getattr(hf.config, "model_type", None))
        if adapter is not None:  # a wrapped HF model we know: the same info as cb.capture
            from ._run import model_info

            return model_info(hf, adapter), adapter
    norm = _NORMS.get(getattr(cfg, "normalization_type", None) or "LN", "layernorm")
    if norm == "rmsnorm" and getattr(cfg, "rmsnorm_uses_offset", False):
        norm = "gemma_rmsnorm"
    cap = getattr(cfg, "output_logits_soft_cap", -1.0)
    n_heads = cfg.n_heads
    info = ModelInfo(
        architecture=adapter.name
        if adapter
        else (getattr(cfg, "original_architecture", None) or "transformer_lens"),
        model_name=(getattr(hf.config, "_name_or_path", "") if hf is not None else "")
        or getattr(cfg, "model_name", "")
        or "transformer_lens",
        n_layers=cfg.n_layers,
        n_heads=n_heads,
        n_kv_heads=getattr(cfg, "n_key_value_heads", None) or n_heads,
        d_model=cfg.d_model,
        d_head=cfg.d_head,
        d_mlp=cfg.d_mlp or 0,
        d_vocab=cfg.d_vocab,
        norm=norm,
        causal=getattr(cfg, "attention_dir", "causal") == "causal",
        final_logit_softcap=float(cap) if cap and cap > 0 else None,
        parallel_attn_mlp=bool(getattr(cfg, "parallel_attn_mlp", False)),
    )
    return info, adapter


def _tl_weights(model: Any, info: ModelInfo) -> dict[str, torch.Tensor]:
    """Weights of a HookedTransformer (or any object with TransformerLens attributes)."""
    out: dict[str, torch.Tensor] = {}

    def put(key: str, obj: Any, *names: str) -> None:
        for n in names:
            v = getattr(obj, n, None)
            if isinstance(v, torch.Tensor):
                out[key] = v.detach()
                return

    for layer in range(info.n_layers):
        blk, p = model.blocks[layer], f"blocks.{layer}."
        put(p + "attn.W_O", blk.attn, "W_O")
        put(p + "attn.b_O", blk.attn, "b_O")
        for n in "QKV":
            put(p + f"attn.W_{n}", blk.attn, f"_W_{n}", f"W_{n}")
            put(p + f"attn.b_{n}", blk.attn, f"_b_{n}", f"b_{n}")
        if hasattr(blk, "mlp"):
            put(p + "mlp.W_out", blk.mlp, "W_out")
            put(p + "mlp.b_out", blk.mlp, "b_out")
    put("embed.W_E", model.embed, "W_E")
    if hasattr(model, "pos_embed"):
        put("pos_embed.W_pos", model.pos_embed, "W_pos")
    put("unembed.W_U", model.unembed, "W_U")
    put("unembed.b_U", model.unembed, "b_U")
    ln = getattr(model, "ln_final", None)
    put("ln_final.w", ln, "w")
    put("ln_final.b", ln, "b")
    if "ln_final.w" not in out:  # LNPre / folded: the norm has no parameters
        out["ln_final.w"] = torch.ones(info.d_model)
    if "ln_final.b" not in out:
        out["ln_final.b"] = torch.zeros(info.d_model)
    return out


def from_transformer_lens(
    cache: Mapping[str, torch.Tensor],
    model: Any,
    tokens: Any,
    *,
    logits: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float16,
    prompt: str | None = None,
) -> Capture | list[Capture]:
    """Turn a TransformerLens ``ActivationCache`` into circuitboard capture(s).

    Parameters
    ----------
    cache
        From ``model.run_with_cache(tokens)`` (a ``TransformerBridge`` or ``HookedTransformer``),
        with or without a batch dimension. Names circuitboard knows are kept (``hook_embed``,
        ``hook_pos_embed``, ``blocks.{l}.hook_resid_pre/mid/post``, ``hook_attn_out``,
        ``hook_mlp_out``, ``attn.hook_pattern``, ``attn.hook_z``, ``mlp.hook_post``,
        ``ln_final.hook_scale``); the rest are dropped.
    model
        The ``TransformerBridge`` or ``HookedTransformer`` that made the cache (for shapes,
        tokenizer and weights).
    tokens
        The token ids that were run: ``[pos]`` or ``[batch, pos]`` (no padding: every row of a
        batch is taken whole). One row gives one :class:`Capture`, more rows a list.
    logits
        The logits ``run_with_cache`` returned; without them the cache's ``hook_unembed`` is
        used when present (soft-capped as the model does).
    dtype
        Storage dtype of activations (float16 by default, as :func:`capture`).
    prompt
        The prompt text, kept as ``cap.prompt``.

    Notes
    -----
    Token texts come from incremental decoding, so they join back to ``tokenizer.decode``.
    Weights: for a ``TransformerBridge`` around a model circuitboard has an adapter for, the
    same parameter views :func:`capture` gives; otherwise TransformerLens' own ``W_O``,
    ``W_out``, ``W_U``, ... (a ``HookedTransformer`` may have folded norms into them).

    Examples
    --------
    >>> logits, cache = bridge.run_with_cache(tokens)  # doctest: +SKIP
    >>> cap = cb.from_transformer_lens(cache, bridge, tokens, logits=logits)  # doctest: +SKIP
    >>> cb.attention(cap)  # doctest: +SKIP
    """
    if not hasattr(model, "cfg") or not hasattr(model, "blocks"):
        raise ValueError(
            "from_transformer_lens needs the TransformerLens model that made the cache "
            f"(a TransformerBridge or HookedTransformer); got {type(model).__name__}. "
            "For a Hugging Face model use cb.capture(model, tokenizer, prompt)."
        )
    if not isinstance(cache, Mapping) and not hasattr(cache, "keys"):
        raise ValueError(
            f"cache must be an ActivationCache or a dict of tensors; got {type(cache).__name__}."
        )
    tok_t = torch.as_tensor(tokens).detach().cpu().long()
    if tok_t.dim() == 1:
        tok_t = tok_t[None]
    if tok_t.dim() != 2:
        raise ValueError(f"tokens must be [pos] or [batch, pos]; got shape {tuple(tok_t.shape)}.")
    B, n = tok_t.shape
    single = B == 1
    hf = getattr(model, "original_model", None)
    info, adapter = _info(model, hf)

    names = [k for k in cache.keys() if _KEEP.match(k)]
    if not names:
        raise ValueError(
            "the cache has none of the hook names circuitboard reads (e.g. "
            "'blocks.0.attn.hook_pattern', 'blocks.0.hook_resid_post'). Run "
            "model.run_with_cache(tokens) without a names_filter, or include those names."
        )
    if logits is None:
        for key in ("hook_unembed", "unembed.hook_out"):
            if key in cache.keys():
                logits = cache[key]
                if info.final_logit_softcap:
                    c = info.final_logit_softcap
                    logits = torch.tanh(logits / c) * c
                break

    tokenizer = getattr(model, "tokenizer", None)
    has_batch = getattr(cache, "has_batch_dim", True)
    if hf is not None and adapter is not None:
        from .adapters._base import norm_weights

        weights = {k: v.detach() for k, v in adapter.weights(hf, adapter, info).items()}
        weights.update({k: v.detach() for k, v in norm_weights(hf, adapter, info).items()})
    else:
        weights = _tl_weights(model, info)

    caps = []
    for b in range(B):
        tensors: dict[str, torch.Tensor] = {}
        for k in names:
            t = cache[k]
            if has_batch:
                t = t[min(b, t.shape[0] - 1)]  # rotary embeddings may come with batch 1
            t = t.detach()
            if k.endswith("hook_scale"):
                tensors[k] = (1.0 / t.float()).cpu()
            elif k in _RENAME:
                tensors[_RENAME[k]] = t.to("cpu", torch.float32, copy=True)
            else:
                tensors[k] = t.to("cpu", dtype, copy=True)
        ids = tok_t[b]
        texts = (
            decode_incremental(tokenizer, [], ids.tolist())
            if tokenizer is not None
            else [str(i) for i in ids.tolist()]
        )
        lg = None
        if logits is not None:
            lg = logits[b] if logits.dim() == 3 else logits
            lg = lg.detach().float().cpu()
        caps.append(
            Capture(
                tokens=texts,
                token_ids=ids,
                tensors=tensors,
                logits=lg,
                info=info,
                weights=weights,
                prompt=prompt,
                tokenizer=tokenizer,
                n_prompt_tokens=n,
            )
        )
    return caps[0] if single else caps
