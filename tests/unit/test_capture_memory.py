"""Capture memory grows with tokens, not tokens squared: a 4,096-token capture's peak RSS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from circuitboard.capture._patterns import CHUNK_BYTES

ROOT = Path(__file__).resolve().parents[2]

# Runs in a fresh process, so ru_maxrss is this capture's peak and nothing else's.
SCRIPT = textwrap.dedent(
    """
    import json, resource, torch
    from transformers import LlamaConfig, LlamaForCausalLM
    import circuitboard as cb
    from circuitboard.analysis._head_scores import scores_from_capture
    from tests.unit.tiny_models import tiny_tokenizer

    N = 4096
    cfg = LlamaConfig(vocab_size=384, hidden_size=256, intermediate_size=512,
                      num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                      max_position_embeddings=N + 64, attn_implementation="sdpa",
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    tok = tiny_tokenizer("bos")
    text = "When Mary and John went to the store, John gave a drink to Mary. " * 200
    prompt = text[: tok(text, return_offsets_mapping=True)["offset_mapping"][N][0]]
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.zeros(N, N).sum()  # warm the allocator like the capture will, before the baseline
    base = rss()
    cap = cb.capture(model, tok, prompt, what="all", dtype=torch.float16)
    after_capture = rss()
    scores = scores_from_capture(cap, layers=[3])  # read one layer's 8 heads in blocks
    overview = cap.pattern_overview(3, head=0, size=256)
    stored = sum(t.numel() * t.element_size() for t in cap.tensors.values())
    ok = bool(torch.isfinite(scores["induction"]).all()) and overview.shape[0] == 256
    print(json.dumps({"n": cap.n_tokens, "base": base, "capture": after_capture, "read": rss(),
                      "stored": stored + cap.logits.numel() * 4, "path": cap.info.attention_path,
                      "ok": ok}))
    """
)


def test_capture_at_4096_tokens_stays_under_its_memory_bound():
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'python'}{os.pathsep}{ROOT}",
        "OMP_NUM_THREADS": "1",
    }
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["n"] == 4096 and r["path"] == "interface" and r["ok"]
    eager_patterns = 4 * 8 * 4096**2 * 2  # what storing float16 patterns would take: 1 GiB
    # The stated bound: the capture adds at most its stored bytes plus 256 MiB of transients
    # (one layer's activations in the forward), far below the T^2 patterns alone.
    bound = r["stored"] + 256 * 2**20
    assert r["capture"] - r["base"] <= bound, r
    assert bound < eager_patterns / 2
    # reading a layer's patterns in blocks (scores, an overview) adds a few CHUNK_BYTES of
    # temporaries, at most 192 MiB; one [heads, n, n] float32 layer alone would be 512 MiB
    assert r["read"] - r["capture"] <= 6 * CHUNK_BYTES, r
    assert 6 * CHUNK_BYTES < 8 * 4096**2 * 4
