"""Patching between two images on the default vision model: circuitboard vs TransformerLens 4.

Run: ``python benchmarks/bench_vision.py [--repeat 5]`` (CPU; prints Markdown).

A held-out 3 and 8 of scikit-learn's digits on ``cb.load_default_vision_model()`` (a 4-layer
ViT, CLS + 16 patches), metric ``logit('3') − logit('8')`` at CLS: exact patching of the
residual stream at every layer × position and of every head's output, by ``cb.patch`` and by
TransformerLens 4's ``patching.get_act_patch_resid_pre`` /
``get_act_patch_attn_head_out_all_pos`` through its ViT ``TransformerBridge`` (on a second
copy of the model: the bridge wraps modules in place), in the same run; medians of
``--repeat`` runs each. The values are compared cell by cell. TransformerLens sizes its
position axis from the input's last dimension, which for pixel input is the image width (16),
not the 17 tokens, so its residual-stream result has no column for the last patch; the table
says so.
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
from circuitboard.capture._images import pixel_batch
from circuitboard.models import digits


def timed(fn: Any, repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5, help="runs of each timing")
    args = ap.parse_args()
    from transformer_lens import patching
    from transformer_lens.model_bridge import TransformerBridge

    model, _ = cb.load_default_vision_model()
    copy, _ = cb.load_default_vision_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_transformers("vit-digits", hf_model=copy)
    bridge.eval()
    _, _, x, y = digits()
    three, eight = x[np.flatnonzero(y == 3)[0]], x[np.flatnonzero(y == 8)[0]]
    clean, corrupt = (pixel_batch(copy, None, img[None]) for img in (three, eight))

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[0, 3] - logits[0, 8]

    rows = []
    for site, fn in (
        ("resid_pre", patching.get_act_patch_resid_pre),
        ("heads", patching.get_act_patch_attn_head_out_all_pos),
    ):

        def theirs(fn: Any = fn) -> np.ndarray:
            with torch.no_grad():
                _, cache = bridge.run_with_cache(clean)
                return fn(bridge, corrupt, cache, metric).numpy()

        def ours(site: str = site) -> Any:
            return cb.patch(model, None, three, eight, answer="3", wrong="8", site=site)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_tl, tl = timed(theirs, args.repeat)
        t_cb, res = timed(ours, args.repeat)
        n = tl.shape[-1]
        agree = float(np.abs(tl - res.raw[..., :n]).max())
        rows.append((site, res.raw.shape, tl.shape, t_tl, t_cb, agree, res.cost["forwards"]))

    print(
        "Default vision model (4-layer ViT trained on digits, float32, CPU), a held-out 3 "
        "(clean) and 8 (corrupted), metric logit('3') − logit('8') at CLS. Machine shared "
        f"with other jobs (load average {open('/proc/loadavg').read().split()[0]}); medians of "
        f"{args.repeat} runs each, both in this run.\n"
    )
    print(
        "| exact patching | circuitboard cells | TransformerLens 4 cells | TransformerLens 4 s "
        "| circuitboard s | speed-up | max abs difference (shared cells) | circuitboard forwards |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for site, ours_shape, tl_shape, t_tl, t_cb, agree, fwd in rows:
        print(
            f"| {site} | {'×'.join(map(str, ours_shape))} | {'×'.join(map(str, tl_shape))} | "
            f"{t_tl:.3f} | {t_cb:.3f} | **{t_tl / t_cb:.1f}×** | {agree:.1e} | {fwd} |"
        )
    print(
        "\nTransformerLens 4's per-position result has 16 columns for 17 positions (CLS + 16 "
        "patches): it takes the position count from the input's last dimension, the image "
        "width for pixel input, so the last patch (3,3) is never patched."
    )


if __name__ == "__main__":
    main()
