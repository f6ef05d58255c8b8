"""`capture()`: run a model once and record what the views need (minimal version)."""

from __future__ import annotations

from typing import Any

import torch

from ._capture import Capture, ModelInfo


def _token_texts(tokenizer: Any, ids: list[int]) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


@torch.no_grad()
def capture(model: Any, tokenizer: Any, prompt: str) -> Capture:
    """Run ``model`` on ``prompt`` and record tokens, logits and every attention pattern.

    Examples
    --------
    >>> cap = capture(model, tokenizer, "When Mary and John went to the store")  # doctest: +SKIP
    >>> cap["blocks.0.attn.hook_pattern"].shape  # doctest: +SKIP
    torch.Size([9, 9, 9])
    """
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"prompt must be a non-empty string; got {prompt!r}.")
    enc = tokenizer(prompt, return_tensors="pt")
    ids = enc["input_ids"].to(model.device)
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        out = model(input_ids=ids, output_attentions=True)
    finally:
        model.set_attn_implementation(before)
    cfg = model.config
    tensors = {
        f"blocks.{l}.attn.hook_pattern": a[0].float().cpu() for l, a in enumerate(out.attentions)
    }
    n_heads = cfg.num_attention_heads
    info = ModelInfo(
        architecture=cfg.model_type,
        model_name=getattr(cfg, "_name_or_path", "") or cfg.model_type,
        n_layers=cfg.num_hidden_layers,
        n_heads=n_heads,
        n_kv_heads=getattr(cfg, "num_key_value_heads", n_heads) or n_heads,
        d_model=cfg.hidden_size,
        d_head=getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads,
        d_mlp=getattr(cfg, "intermediate_size", 4 * cfg.hidden_size),
        d_vocab=cfg.vocab_size,
        norm="rmsnorm",
    )
    return Capture(
        tokens=_token_texts(tokenizer, ids[0].tolist()),
        token_ids=ids[0].cpu(),
        tensors=tensors,
        logits=out.logits[0].float().cpu(),
        info=info,
        prompt=prompt,
        tokenizer=tokenizer,
    )
