"""Captures for the analysis tests: ``cb.capture`` when it records what DLA needs, else a
small hook-based capture built here from the HF model's own forward (Llama family, GPT-2)."""

from __future__ import annotations

from typing import Any

import torch

from circuitboard.capture import Capture, ModelInfo

NEEDED = (
    "blocks.0.attn.hook_z",
    "blocks.0.mlp.hook_post",
    "blocks.0.hook_resid_pre",
    "ln_final.hook_scale",
)


def capture_for_analysis(model: Any, tok: Any, prompt: str) -> Capture:
    """A float32 capture with z, MLP post, residuals, the final scale and the weights."""
    # Not cb.capture: once the subpackage circuitboard.capture is imported, that attribute
    # of the package is the module, not the function.
    from circuitboard.capture import capture

    try:
        cap = capture(model, tok, prompt, dtype=torch.float32)
    except TypeError:
        cap = capture(model, tok, prompt)
    if all(n in cap.tensors for n in NEEDED) and "unembed.W_U" in cap.weights:
        return cap
    return hand_capture(model, tok, prompt)


def _modules(model: Any) -> dict[str, Any]:
    cfg = model.config
    if cfg.model_type == "gpt2":
        t = model.transformer
        return {
            "layers": list(t.h),
            "o_proj": lambda b: b.attn.c_proj,
            "down": lambda b: b.mlp.c_proj,
            "norm": t.ln_f,
            "pos": t.wpe,
            "conv1d": True,
        }
    m = model.model
    return {
        "layers": list(m.layers),
        "o_proj": lambda b: b.self_attn.o_proj,
        "down": lambda b: b.mlp.down_proj,
        "norm": m.norm,
        "pos": None,
        "conv1d": False,
    }


@torch.no_grad()
def hand_capture(model: Any, tok: Any, prompt: str) -> Capture:
    cfg = model.config
    mods = _modules(model)
    H = cfg.num_attention_heads
    d = cfg.hidden_size
    dh = getattr(cfg, "head_dim", None) or d // H
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    tensors: dict[str, torch.Tensor] = {}
    handles = []

    def save(name: str, use_input: bool):
        def hook(_m, args, out):
            x = args[0] if use_input else (out[0] if isinstance(out, tuple) else out)
            tensors[name] = x[0].detach().float().clone()

        return hook

    try:
        for li, block in enumerate(mods["layers"]):
            handles.append(
                block.register_forward_hook(
                    lambda _m, args, out, li=li: tensors.__setitem__(
                        f"blocks.{li}.hook_resid_post",
                        (out[0] if isinstance(out, tuple) else out)[0].float().clone(),
                    )
                )
            )
            handles.append(
                block.register_forward_pre_hook(
                    lambda _m, args, kwargs, li=li: tensors.__setitem__(
                        f"blocks.{li}.hook_resid_pre",
                        (args[0] if args else kwargs["hidden_states"])[0].float().clone(),
                    ),
                    with_kwargs=True,
                )
            )
            handles.append(
                mods["o_proj"](block).register_forward_hook(save(f"blocks.{li}.attn.hook_z", True))
            )
            handles.append(
                mods["down"](block).register_forward_hook(save(f"blocks.{li}.mlp.hook_post", True))
            )
        handles.append(mods["norm"].register_forward_hook(save("final_in", True)))
        if mods["pos"] is not None:
            handles.append(mods["pos"].register_forward_hook(save("hook_pos_embed", False)))
        out = model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    n = ids.shape[1]
    for li in range(cfg.num_hidden_layers):
        tensors[f"blocks.{li}.attn.hook_z"] = tensors[f"blocks.{li}.attn.hook_z"].reshape(n, H, dh)
    final_in = tensors.pop("final_in")
    norm = mods["norm"]
    eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", None) or 1e-5
    kind = (
        "layernorm"
        if isinstance(norm, torch.nn.LayerNorm)
        else ("gemma_rmsnorm" if "gemma" in cfg.model_type else "rmsnorm")
    )
    x = final_in - final_in.mean(-1, keepdim=True) if kind == "layernorm" else final_in
    tensors["ln_final.hook_scale"] = torch.rsqrt((x * x).mean(-1, keepdim=True) + eps)
    # The last block's output (some models apply the final norm inside the last block's hook).
    tensors[f"blocks.{cfg.num_hidden_layers - 1}.hook_resid_post"] = final_in
    weights: dict[str, torch.Tensor] = {}
    for li, block in enumerate(mods["layers"]):
        o, dn = mods["o_proj"](block), mods["down"](block)
        if mods["conv1d"]:
            weights[f"blocks.{li}.attn.W_O"] = o.weight.reshape(H, dh, d).float()
            weights[f"blocks.{li}.mlp.W_out"] = dn.weight.float()
        else:
            weights[f"blocks.{li}.attn.W_O"] = o.weight.T.reshape(H, dh, d).float()
            weights[f"blocks.{li}.mlp.W_out"] = dn.weight.T.float()
        if o.bias is not None:
            weights[f"blocks.{li}.attn.b_O"] = o.bias.float()
        if dn.bias is not None:
            weights[f"blocks.{li}.mlp.b_out"] = dn.bias.float()
    weights["ln_final.w"] = norm.weight.float()
    if getattr(norm, "bias", None) is not None:
        weights["ln_final.b"] = norm.bias.float()
    head = model.get_output_embeddings()
    weights["unembed.W_U"] = head.weight.T.float()
    if head.bias is not None:
        weights["unembed.b_U"] = head.bias.float()
    info = ModelInfo(
        architecture=cfg.model_type,
        model_name=cfg.model_type,
        n_layers=cfg.num_hidden_layers,
        n_heads=H,
        n_kv_heads=getattr(cfg, "num_key_value_heads", H) or H,
        d_model=d,
        d_head=dh,
        d_mlp=weights["blocks.0.mlp.W_out"].shape[0],
        d_vocab=cfg.vocab_size,
        norm=kind,
        final_logit_softcap=getattr(cfg, "final_logit_softcapping", None),
    )
    return Capture(
        tokens=[tok.decode([i]) for i in ids[0].tolist()],
        token_ids=ids[0],
        tensors=tensors,
        logits=out.logits[0].float(),
        info=info,
        weights=weights,
        prompt=prompt,
        tokenizer=tok,
    )
