"""cb.patch agrees with TransformerLens 4's transformer_lens.patching through TransformerBridge."""

from __future__ import annotations

import warnings

import pytest
import torch

import circuitboard as cb
from tests.unit.tiny_models import tiny_smollm

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    pytest.importorskip("transformer_lens")
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    model, tok = tiny_smollm()
    folder = tmp_path_factory.mktemp("tok")  # TransformerLens reloads the tokenizer by path
    tok.save_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        br = TransformerBridge.boot_transformers("tiny-smollm", hf_model=model, tokenizer=tok)
    br.eval()
    # the bridge wraps the model's modules in place: circuitboard patches its own fresh copy
    return br, tiny_smollm()[0], tok


@pytest.mark.parametrize(
    ("site", "tl_name"),
    [
        ("resid_pre", "get_act_patch_resid_pre"),
        ("resid_mid", "get_act_patch_resid_mid"),
        ("attn_out", "get_act_patch_attn_out"),
        ("mlp_out", "get_act_patch_mlp_out"),
        ("heads", "get_act_patch_attn_head_out_all_pos"),
        ("heads_pos", "get_act_patch_attn_head_out_by_pos"),
        ("q", "get_act_patch_attn_head_q_all_pos"),
        ("k", "get_act_patch_attn_head_k_all_pos"),
        ("v", "get_act_patch_attn_head_v_all_pos"),
        ("pattern", "get_act_patch_attn_head_pattern_all_pos"),
    ],
)
def test_agrees_with_transformer_lens(bridge, site, tl_name):
    from transformer_lens import patching

    br, model, tok = bridge
    a = tok(" Mary", add_special_tokens=False)["input_ids"][0]
    w = tok(" John", add_special_tokens=False)["input_ids"][0]
    clean = torch.tensor([tok(CLEAN)["input_ids"]])
    corrupt = torch.tensor([tok(CORRUPT)["input_ids"]])

    def metric(logits):
        return logits[0, -1, a] - logits[0, -1, w]

    with torch.no_grad():
        _, clean_cache = br.run_with_cache(clean)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = getattr(patching, tl_name)(br, corrupt, clean_cache, metric)
    ours = cb.patch(model, tok, CLEAN, CORRUPT, answer=" Mary", wrong=" John", site=site)
    theirs = theirs.detach().float().numpy()
    assert theirs.shape == ours.raw.shape, (theirs.shape, ours.raw.shape)
    assert abs(theirs - ours.raw).max() < 1e-4
