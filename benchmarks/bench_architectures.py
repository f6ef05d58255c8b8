"""Capture cost on the newer architectures, side by side with TransformerLens 4's bridge.

Randomly initialized mid-size models built from configs (no download): a Mixtral (8 experts,
top-2) and a Phi-3 (fused projections), 4 layers, d_model 512. For one prompt length, median
wall time of a plain forward (the model's SDPA kernel), of ``cb.capture(..., what="all")``
(everything, every expert's neurons included, float16 storage) and of a ``TransformerBridge``
``run_with_cache`` (every hook) of an identical twin; ratios within the same run. Also the
one-off cost of the proven fallback (layout inference + proof) on a StarCoder2 of the same size.

    python benchmarks/bench_architectures.py [--repeats 5] [--tokens 512]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import torch

import circuitboard as cb

SIZE = {
    "vocab_size": 384,
    "hidden_size": 512,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 4096,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
EXTRA = {"mixtral": {"num_local_experts": 8, "num_experts_per_tok": 2}, "phi3": {}}


def _model(model_type: str, **extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(model_type, **SIZE, **extra, attn_implementation="sdpa")
    model = AutoModelForCausalLM.from_config(cfg).eval()
    model.config.architectures = [type(model).__name__]
    return model


def _median(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _bridge(model, tok):
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as folder:
        tok.save_pretrained(folder)
        tl_tok = AutoTokenizer.from_pretrained(folder)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return TransformerBridge.boot_transformers("bench", hf_model=model, tokenizer=tl_tok)


def main() -> None:
    from tests.unit.tiny_models import tiny_tokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=512)
    args = ap.parse_args()
    tok = tiny_tokenizer("plain")
    ids = torch.randint(
        3, SIZE["vocab_size"], (1, args.tokens), generator=torch.Generator().manual_seed(0)
    )
    prompt = tok.decode(ids[0])
    ids = torch.tensor([tok(prompt)["input_ids"][: args.tokens]])
    prompt = tok.decode(ids[0])
    print(
        f"{ids.shape[1]} tokens, {args.repeats} runs, medians; {torch.get_num_threads()} threads\n"
    )
    print("| model | plain forward | cb.capture(all) | TL bridge run_with_cache "
          "| capture / forward | capture / TL |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for name, extra in EXTRA.items():
        model, twin = _model(name, **extra), _model(name, **extra)
        bridge = _bridge(twin, tok)
        with torch.no_grad():
            plain = _median(lambda m=model: m(ids, use_cache=False), args.repeats)
        ours = _median(lambda m=model: cb.capture(m, tok, prompt, what="all"), args.repeats)
        with torch.no_grad():
            tl = _median(lambda b=bridge: b.run_with_cache(ids), args.repeats)
        print(f"| {name} | {plain * 1e3:.0f} ms | {ours * 1e3:.0f} ms | {tl * 1e3:.0f} ms "
              f"| {ours / plain:.2f}× | {ours / tl:.2f}× |")  # fmt: skip
    from circuitboard.capture.adapters._fallback import _CACHE, infer_adapter

    fresh = _model("starcoder2")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cb.CircuitboardWarning)
        infer_adapter(fresh)
    once = time.perf_counter() - t0
    _CACHE.pop(fresh, None)
    print(f"\nfallback (infer + prove) on a StarCoder2 of the same size: {once * 1e3:.0f} ms once")


if __name__ == "__main__":
    main()
