"""The recorder on Hugging Face models with an adapter: capture names, probes, dropout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitboard as cb
from circuitboard.analysis._head_scores import scores_from_capture
from circuitboard.training import TrainingRecorder
from circuitboard.training._stats import brute_force

from .tiny_models import tiny_gpt2, tiny_llama

TEXT = "the cat sat on the mat and the cat sat on the mat"


def _train(model, tok, steps, rec=None):
    ids = tok(TEXT, return_tensors="pt")["input_ids"].repeat(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for step in range(steps):
        ctx = rec.step(step) if rec is not None else torch.enable_grad()
        with ctx:
            out = model(ids, labels=ids)
            if rec is not None:
                rec.loss(out.loss)
            out.loss.backward()
        opt.step()
        opt.zero_grad()
    return ids


def test_capture_names_and_probe_scores_match_capture(tmp_path):
    model, tok = tiny_llama()
    rec = TrainingRecorder(model, every=1, probes=[TEXT], tokenizer=tok, path=tmp_path / "r.db")
    assert [s.name for s in rec.sites][:3] == [
        "blocks.0.hook_attn_out",
        "blocks.0.hook_mlp_out",
        "blocks.0.hook_resid_post",
    ]
    cap = cb.capture(model, tok, TEXT, dtype=torch.float32)  # the weights of step 0
    ids = tok(TEXT, return_tensors="pt")["input_ids"].repeat(2, 1)
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states[1]  # block 0's output
    _train(model, tok, 1, rec)
    run = rec.close()
    want = scores_from_capture(cap)
    for name in ("induction", "previous_token", "duplicate_token"):
        np.testing.assert_allclose(run.head_scores[name][0], want[name].numpy(), atol=1e-5)
    # the recorded forward ran in train mode; this model has no dropout, so it is the same
    got = run.values[0, 0, run.index("act:blocks.0.hook_resid_post")]
    np.testing.assert_allclose(got, brute_force(hidden), rtol=1e-5)
    assert model.config._attn_implementation == "sdpa"  # the probe's eager switch was undone


def test_capture_name_z_and_close_names():
    model, _ = tiny_llama()
    rec = TrainingRecorder(model, modules=["blocks.1.attn.hook_z", "model.norm"])
    assert [s.name for s in rec.sites] == ["blocks.1.attn.hook_z", "model.norm"]
    with pytest.raises(ValueError, match=r"Close names: \['blocks.1.hook_resid_post'"):
        TrainingRecorder(model, modules=["blocks.1.hook_resid_pst"])


def test_dropout_model_trains_bit_identically_with_the_recorder(tmp_path):
    a, tok = tiny_gpt2()
    b, _ = tiny_gpt2()
    assert a.config.resid_pdrop > 0  # dropout draws random numbers every step
    torch.manual_seed(3)
    _train(a, tok, 6)
    rec = TrainingRecorder(b, every=2, probes=[TEXT], tokenizer=tok, path=tmp_path / "r.db")
    torch.manual_seed(3)
    _train(b, tok, 6, rec)
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), n
    run = rec.close()
    assert run.probe_steps.tolist() == [0, 2, 4]
    assert b.training  # the probes' eval mode was undone
