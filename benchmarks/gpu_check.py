"""One prepared run on a GPU: circuitboard's main calls on real-size models, timed next to
TransformerLens 4's bridge where it applies, with a DLA exactness check; writes
``gpu_check.json`` and ``gpu_check.md``.

    python benchmarks/gpu_check.py                    # on the GPU, into $OUT (or ./gpu_check)
    python benchmarks/gpu_check.py --device cpu --tiny  # the same script, tiny models, seconds

Cases: the default model in float32 and bfloat16, and Gemma-2-2B- and Llama-3.1-8B-shaped
models with random bfloat16 weights built offline from their configs. Steps per case: capture
at 1,024 and 8,192 tokens, exact patching of every head on a pair, EAP-IG, a 64-token
generation with capture, and DLA's sum against the model's own logit difference. It uses
whatever torch and transformers the machine has; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak(device: str) -> float | None:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1024**3
    return None


def timed(device: str, fn: Callable[[], Any]) -> tuple[float, Any, float | None]:
    """Seconds of one call (synchronized), its result and the GPU's peak memory in GiB."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out, _peak(device)


def models(device: str, tiny: bool) -> list[tuple[str, Callable[[], tuple[Any, Any]]]]:
    """(case name, builder of (model, tokenizer)) for each case."""
    import torch

    import circuitboard as cb
    from circuitboard.testing import random_model, tiny_model, tiny_tokenizer

    def default(dtype: Any) -> Callable[[], tuple[Any, Any]]:
        def build() -> tuple[Any, Any]:
            if tiny:
                model, tok = tiny_model("llama")
                return model.to(device=device, dtype=dtype), tok
            model, tok = cb.load_default_model()
            return model.to(device=device, dtype=dtype), tok

        return build

    def shaped(name: str) -> Callable[[], tuple[Any, Any]]:
        def build() -> tuple[Any, Any]:
            small = {"layers": 2, "vocab_size": 384} if tiny else {}
            if tiny:  # same architecture, a few MB
                small.update(hidden_size=64, intermediate_size=128, num_attention_heads=4)
                small.update(num_key_value_heads=2, head_dim=16)
            return random_model(name, device=device, **small), tiny_tokenizer("plain")

        return build

    return [
        ("default model, float32", default(torch.float32)),
        ("default model, bfloat16", default(torch.bfloat16)),
        ("Gemma-2-2B shapes, random bfloat16", shaped("gemma-2-2b")),
        ("Llama-3.1-8B shapes, random bfloat16", shaped("llama-3.1-8b")),
    ]


def _prompt(tok: Any, n: int) -> str:
    """About ``n`` tokens of plain text (every word is at least one token)."""
    base = "the cat sat on a mat and then it ran to the door of the old house".split()
    text = " ".join(base * (n // len(base) + 1))
    return tok.decode(tok(text)["input_ids"][:n])


def _tl_bridge(model: Any, tok: Any) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TransformerBridge.boot_transformers(
            model.config.name_or_path or "model", hf_model=model, tokenizer=tok
        )


def check_case(
    name: str, build: Callable, device: str, lengths: list[int], tl: bool, gen_tokens: int = 64
) -> dict:
    import torch

    import circuitboard as cb

    row: dict[str, Any] = {"case": name}
    model, tok = build()
    row["params_b"] = sum(p.numel() for p in model.parameters()) / 1e9
    row["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    with torch.no_grad():
        a, b = (
            model(tok(s, return_tensors="pt").input_ids.to(device)).logits[0, -1]
            for s in (CLEAN, CORRUPTED)
        )
    diff = (a - b).float()[: len(tok)]  # a random model's vocabulary outgrows the tokenizer
    kw = {"answer": int(diff.argmax()), "wrong": int(diff.argmin())}
    steps: dict[str, Callable[[], Any]] = {}
    for n in lengths:
        prompt = _prompt(tok, n)
        steps[f"capture {n} tokens"] = lambda p=prompt: cb.capture(
            model, tok, p, dtype=torch.bfloat16, max_memory=None
        )
    steps["patch every head"] = lambda: cb.patch(model, tok, CLEAN, CORRUPTED, site="heads", **kw)
    steps["EAP-IG"] = lambda: cb.circuit(model, tok, CLEAN, CORRUPTED, method="eap-ig", **kw)
    steps[f"generate {gen_tokens} tokens with capture"] = lambda: cb.generate(
        model, tok, CLEAN, max_new_tokens=gen_tokens, stop_at_eos=False
    )
    for step, fn in steps.items():
        try:
            seconds, _, peak = timed(device, fn)
            row[step] = {"s": round(seconds, 3), "peak_gib": peak}
        except Exception as e:  # noqa: BLE001 - one failing step must not hide the others
            row[step] = {"error": f"{type(e).__name__}: {e}"[:300]}
            traceback.print_exc()
    cap = cb.capture(model, tok, CLEAN, dtype=torch.float32)
    attr = cb.direct_logit_attribution(cap, kw["answer"], kw["wrong"], softcap="pre")
    err = abs(float(attr.values.double().sum()) - attr.model_value)
    row["dla"] = {
        "model": attr.model_value,
        "error": err,
        "tolerance": attr.tolerance,
        "dtype": attr.dtype,
        "exact": err <= attr.tolerance,
    }
    if tl:
        row["transformer_lens"] = tl_steps(model, tok, device, lengths, kw)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


def tl_steps(model: Any, tok: Any, device: str, lengths: list[int], kw: dict) -> dict:
    """The same steps through TransformerLens 4's bridge, where it runs."""
    import torch

    out: dict[str, Any] = {}
    try:
        br = _tl_bridge(model, tok)
    except Exception as e:  # noqa: BLE001
        return {"error": f"bridge: {type(e).__name__}: {e}"[:300]}
    for n in lengths:
        ids = tok(_prompt(tok, n), return_tensors="pt").input_ids.to(device)
        try:
            with torch.no_grad():
                seconds, _, peak = timed(device, lambda i=ids: br.run_with_cache(i))
            out[f"capture {n} tokens"] = {"s": round(seconds, 3), "peak_gib": peak}
        except Exception as e:  # noqa: BLE001
            out[f"capture {n} tokens"] = {"error": f"{type(e).__name__}: {e}"[:300]}
    try:
        from transformer_lens import patching

        clean, corr = (tok(s, return_tensors="pt").input_ids.to(device) for s in (CLEAN, CORRUPTED))

        def metric(logits: torch.Tensor) -> torch.Tensor:
            return logits[0, -1, kw["answer"]] - logits[0, -1, kw["wrong"]]

        def run() -> Any:
            with torch.no_grad():
                _, cache = br.run_with_cache(clean)
                return patching.get_act_patch_attn_head_out_all_pos(br, corr, cache, metric)

        seconds, _, peak = timed(device, run)
        out["patch every head"] = {"s": round(seconds, 3), "peak_gib": peak}
    except Exception as e:  # noqa: BLE001
        out["patch every head"] = {"error": f"{type(e).__name__}: {e}"[:300]}
    return out


def markdown(rows: list[dict], device_name: str) -> str:
    steps = [
        k for k in rows[0] if isinstance(rows[0][k], dict) and k not in ("dla", "transformer_lens")
    ]
    lines = [
        f"Device: {device_name}. Times in seconds (peak GPU memory in GiB); TransformerLens 4's "
        "bridge in brackets where it ran.",
        "",
        "| case | " + " | ".join(steps) + " | DLA sum − model (tolerance) |",
        "|---" * (len(steps) + 2) + "|",
    ]
    for r in rows:
        cells = []
        for s in steps:
            v, theirs = r[s], (r.get("transformer_lens") or {}).get(s)
            cell = (
                "error"
                if "error" in v
                else f"{v['s']:.2f}"
                + (f" ({v['peak_gib']:.1f} GiB)" if v.get("peak_gib") is not None else "")
            )
            if theirs and "s" in theirs:
                cell += f" [TL {theirs['s']:.2f}]"
            cells.append(cell)
        d = r["dla"]
        exact = "✓" if d["exact"] else "✗"
        cells.append(f"{exact} {d['error']:.2g} ({d['tolerance']:.2g}, {d['dtype']})")
        lines.append(
            f"| {r['case']} ({r['params_b']:.2f}B, {r['dtype']}) | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny models and prompts (CPU check)")
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_check"))
    parser.add_argument("--no-tl", action="store_true", help="skip TransformerLens' bridge")
    parser.add_argument("--cases", type=int, default=None, help="only the first N cases")
    parser.add_argument("--gen-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run with --device cpu --tiny to check the script.")
    lengths = [32, 64] if args.tiny else [1024, 8192]
    device_name = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()
    )
    rows = []
    for name, build in models(args.device, args.tiny)[: args.cases]:
        print(f"== {name}", flush=True)
        row = check_case(name, build, args.device, lengths, not args.no_tl, args.gen_tokens)
        rows.append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "device": device_name,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "rows": rows,
    }
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    (out / "gpu_check.md").write_text(markdown(rows, device_name))
    print(markdown(rows, device_name))
    return result


if __name__ == "__main__":
    main()
