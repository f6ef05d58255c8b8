"""Activation patching on the default model: circuitboard vs TransformerLens 4, same run.

Run: ``python benchmarks/bench_patch.py [--repeat 3] [--tl-repeat 1]`` (CPU; prints Markdown).

- Exact patching of every head's output (270 heads) on an 8-token pair: ``cb.patch(...,
  site="heads")`` against TransformerLens 4's ``patching.get_act_patch_attn_head_out_all_pos``
  through ``TransformerBridge`` (on a second copy of the model: the bridge wraps modules in
  place). Both give the same numbers (checked here, and to 1e-4 in the tests).
- The same with circuitboard's sharing switched off (a plain batched loop), to show what
  starting each patched run at its layer and running the common prefix once (KV cache) buy.
- Attribution patching of every site of a kind, in forward-equivalents: its wall time divided
  by the median time of one plain forward of the prompt.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Any

import numpy as np
import torch

import circuitboard as cb
from circuitboard.intervene import _runner

CLEAN = "When Mary and John left, John gave"
CORRUPT = "When Mary and John left, Mary gave"


def timed(fn: Any, repeat: int) -> tuple[float, list[float], Any]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times, out


def transformer_lens_heads(model_copy: Any, tok: Any, repeat: int) -> tuple[float, np.ndarray]:
    from transformer_lens import patching
    from transformer_lens.model_bridge import TransformerBridge

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        br = TransformerBridge.boot_transformers(
            "SmolLM2-135M-Instruct", hf_model=model_copy, tokenizer=tok
        )
    br.eval()
    a, w = (tok(s, add_special_tokens=False)["input_ids"][0] for s in (" Mary", " John"))
    clean = torch.tensor([tok(CLEAN)["input_ids"]])
    corrupt = torch.tensor([tok(CORRUPT)["input_ids"]])

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[0, -1, a] - logits[0, -1, w]

    def run() -> torch.Tensor:
        with torch.no_grad():
            _, cache = br.run_with_cache(clean)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return patching.get_act_patch_attn_head_out_all_pos(br, corrupt, cache, metric)

    t, _, out = timed(run, repeat)
    return t, out.detach().float().numpy()


def forward_time(model: Any, ids: torch.Tensor, repeat: int = 9) -> float:
    """Median time of one plain forward of the prompt (all logits, as a user would run it)."""
    with torch.no_grad():
        model(input_ids=ids)
        t, _, _ = timed(lambda: model(input_ids=ids, use_cache=False), repeat)
    return t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3, help="runs of each circuitboard timing")
    ap.add_argument("--tl-repeat", type=int, default=1, help="runs of the TransformerLens loop")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, tok = cb.load_default_model()
    kw = dict(answer=" Mary", wrong=" John")
    n_tok = len(tok(CLEAN)["input_ids"])

    t_cb, runs_cb, ours = timed(
        lambda: cb.patch(model, tok, CLEAN, CORRUPT, site="heads", **kw), args.repeat
    )
    # a plain batched loop: same batching, every row from layer 0 and token 0
    orig, orig_prefix = _runner.Runner.patched, _runner.Runner.prefix_cache

    def no_share(self: Any, *a: Any, **k: Any) -> Any:
        k["share_prefix"] = False
        return orig(self, *a, **k)

    _runner.Runner.patched = no_share  # type: ignore[method-assign]
    _runner.Runner.prefix_cache = lambda self, ids, n: None  # type: ignore[method-assign]
    try:
        t_plain, _, plain = timed(
            lambda: cb.patch(model, tok, CLEAN, CORRUPT, site="heads", **kw), args.repeat
        )
    finally:
        _runner.Runner.patched = orig  # type: ignore[method-assign]
        _runner.Runner.prefix_cache = orig_prefix  # type: ignore[method-assign]

    copy, _ = cb.load_default_model()
    t_tl, theirs = transformer_lens_heads(copy, tok, args.tl_repeat)
    del copy
    agree = float(np.abs(theirs - ours.raw).max())
    assert np.allclose(plain.raw, ours.raw, atol=1e-4)

    # Forward-equivalents: each attribution run is timed next to plain forwards (interleaved,
    # so that a change of machine load hits both), medians of each.
    ids = torch.tensor([tok(CORRUPT)["input_ids"]])
    fwd_all: list[float] = []
    rows = []
    for site in ("heads", "resid_pre", "attn_out", "mlp_out", "neurons", "pattern"):
        t_sites, t_fwds, res = [], [], None
        for _ in range(args.repeat):
            t_fwds.append(forward_time(model, ids, 3))
            t = time.perf_counter()
            res = cb.patch(model, tok, CLEAN, CORRUPT, site=site, method="attribution", **kw)
            t_sites.append(time.perf_counter() - t)
            t_fwds.append(forward_time(model, ids, 3))
        t, f = statistics.median(t_sites), statistics.median(t_fwds)
        fwd_all += t_fwds
        rows.append((site, res.values.size, t, t / f, res.cost["forwards"]))
    t_fwd = statistics.median(fwd_all)
    t_at, _, at = timed(
        lambda: cb.patch(
            model, tok, CLEAN, CORRUPT, site="heads", method="attribution", compare_exact=True, **kw
        ),
        1,
    )

    print(
        f"Default model (SmolLM2-135M, float32, CPU), {n_tok}-token pair {CLEAN!r} / "
        f"{CORRUPT!r}, metric logit(' Mary') − logit(' John'). Machine shared with other "
        f"jobs (load average {open('/proc/loadavg').read().split()[0]}); medians of "
        f"{args.repeat} runs for circuitboard, {args.tl_repeat} for TransformerLens.\n"
    )
    print("| exact patching, 270 heads (all positions) | seconds | vs TransformerLens 4 |")
    print("|---|---|---|")
    tl_name = "TransformerLens 4 `get_act_patch_attn_head_out_all_pos` (bridge)"
    print(f"| {tl_name} | {t_tl:.2f} | 1.0× |")
    print(
        f"| circuitboard, plain batched loop (every row from layer 0, token 0) | {t_plain:.2f} | "
        f"{t_tl / t_plain:.1f}× |"
    )
    ours_name = (
        'circuitboard `cb.patch(site="heads")` (rows start at their layer; tokens before the '
        "first difference run once)"
    )
    print(f"| {ours_name} | {t_cb:.2f} | **{t_tl / t_cb:.1f}×** |")
    print(
        f"\nmax |circuitboard − TransformerLens| = {agree:.1e} (raw logit difference); "
        f"circuitboard runs: {', '.join(f'{x:.2f}' for x in runs_cb)} s; "
        f"{ours.cost['forwards']} forwards.\n"
    )
    print(
        "| attribution patching, every site of a kind | sites | seconds | forward-equivalents "
        f"(one forward: median {t_fwd * 1e3:.1f} ms) | passes |"
    )
    print("|---|---|---|---|---|")
    for site, n, t, fe, nf in rows:
        print(f"| {site} | {n} | {t:.3f} | {fe:.1f} | {nf} forward (both prompts) + 1 backward |")
    print(f"\nattribution vs exact on the 270 heads of this pair: r = {at.correlation:.3f}")


if __name__ == "__main__":
    main()
