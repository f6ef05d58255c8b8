"""Attribution graphs side by side with circuit-tracer: same model, same transcoders, same prompt.

circuit-tracer (PyPI ``circuit-tracer``, MIT, https://github.com/safety-research/circuit-tracer)
must never enter the project's environment (it pins TransformerLens 2 and nnsight), so it runs
in a throwaway venv that reads torch from the project; each side runs in its own process, so
peak memory is its own::

    /root/.pyenv/versions/3.11.7/bin/python -m venv /tmp/ct-venv
    /tmp/ct-venv/bin/pip install circuit-tracer==0.5.0 "datasets<3" "pyarrow<18"  # not torch
    echo "$PWD/.venv/lib/python3.11/site-packages" > \\
        /tmp/ct-venv/lib/python3.11/site-packages/zz_project_torch.pth
    python -m benchmarks.bench_graph_circuit_tracer [--tokens 128 512 1024] [--rows 256]

What is shared (written by the ``prepare`` stage, from the project's environment):

- the model: the embedded SmolLM2-135M-Instruct, dequantized to float32 and saved as a
  Hugging Face directory, which circuit-tracer loads with its nnsight backend (the
  TransformerLens backend needs a hub name; nnsight reads the local directory);
- transcoders at all 30 layers, TopK 576 -> 4,608 reading ``mlp.hook_in`` and writing
  ``hook_mlp_out``, seeded random weights (cost depends on shapes and k, not on meaning);
  every kept pre-activation is positive, so circuit-tracer's TopK (which keeps the k largest
  values whatever their sign) and ours (ReLU of those) agree;
- the prompts as token ids, starting with ``<|im_start|>``, the special token circuit-tracer
  would prepend itself.

Stages:

1. **exactness** (15 tokens, k=8, every active feature's row, nothing thinned): every edge
   circuit-tracer computes between feature, error and token nodes equals ours. Two conventions
   differ and are reconciled, not hidden: circuit-tracer zeroes features at position 0 (the
   special token), so its position-0 error node holds what our position-0 features and error
   node hold together; its logit nodes are demeaned logits (``logit - mean logit``), ours are
   logits, so logit rows are compared after subtracting our mean-logit row.
2. **cost** (k=32, ``--rows`` feature rows, batch 64, one process per side and length): wall and
   CPU seconds, peak RSS growth during the call, and the size of what each keeps.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

CT_PYTHON = "/tmp/ct-venv/bin/python"
PROMPT = "When Mary and John went to the store, John gave a drink to"
D_SAE = 4608


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def measured(call):
    """``call()``, and its wall and CPU seconds, peak RSS growth (MiB) and the load."""
    rss0 = peak_rss_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    out = call()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return out, {"wall": wall, "cpu": cpu, "rss_growth": peak_rss_mib() - rss0, "load": load()}


# ---------------------------------------------------------------- prepare (project venv)


def prepare(out: Path, sizes: list[int]) -> None:
    """Save the model, two transcoder sets and the prompts' token ids under ``out``."""
    from safetensors.torch import save_file

    import circuitboard as cb
    from benchmarks.bench_graph import long_prompt

    model, tok = cb.load_default_model()
    if not (out / "model" / "config.json").exists():
        model.save_pretrained(out / "model", safe_serialization=True)
        tok.save_pretrained(out / "model")
        # circuit-tracer pins transformers 4, which knows neither transformers 5's tokenizer
        # class name nor its `rope_parameters` (it would fall back to rope_theta 10,000)
        for name, update in (
            ("tokenizer_config.json", lambda c: {"tokenizer_class": "PreTrainedTokenizerFast"}),
            ("config.json", lambda c: {"rope_theta": c["rope_parameters"]["rope_theta"]}),
        ):
            path = out / "model" / name
            cfg = json.loads(path.read_text())
            cfg.update(update(cfg))
            path.write_text(json.dumps(cfg, indent=2))
    L, D = model.config.num_hidden_layers, model.config.hidden_size
    for k in (8, 32):
        gen = torch.Generator().manual_seed(k)
        tensors = {}
        for layer in range(L):
            # circuit-tracer's layout: W_enc and W_dec both [d_transcoder, d_model]
            tensors[f"{layer}.W_enc"] = torch.randn(D_SAE, D, generator=gen) / D**0.5
            tensors[f"{layer}.b_enc"] = torch.zeros(D_SAE)
            tensors[f"{layer}.W_dec"] = torch.randn(D_SAE, D, generator=gen) * 0.05 / D**0.5
            tensors[f"{layer}.b_dec"] = torch.zeros(D)
        save_file(tensors, str(out / f"transcoders_k{k}.safetensors"))
    bos = tok.bos_token_id
    prompts = {"exact": [bos] + tok(PROMPT)["input_ids"]}
    for n in sizes:
        prompts[str(n)] = [bos] + tok(long_prompt(tok, n - 1))["input_ids"][: n - 1]
    (out / "prompts.json").write_text(json.dumps(prompts))


# ---------------------------------------------------------------- circuitboard side


def run_circuitboard(out: Path, name: str, k: int, rows: int, exact: bool) -> None:
    from safetensors.torch import load_file

    import circuitboard as cb
    from circuitboard.dictionaries import SAE, TranscoderSet

    model, tok = cb.load_default_model()
    L, D = model.config.num_hidden_layers, model.config.hidden_size
    w = load_file(str(out / f"transcoders_k{k}.safetensors"))
    ts = TranscoderSet(
        [
            SAE(
                D,
                D_SAE,
                d_out=D,
                kind="topk",
                k=k,
                hook=f"blocks.{i}.mlp.hook_in",
                hook_out=f"blocks.{i}.hook_mlp_out",
                W_enc=w[f"{i}.W_enc"].T.contiguous(),
                b_enc=w[f"{i}.b_enc"],
                W_dec=w[f"{i}.W_dec"],
                b_dec=w[f"{i}.b_dec"],
            )
            for i in range(L)
        ]
    )
    ids = json.loads((out / "prompts.json").read_text())[name]
    kw = dict(
        basis=ts,
        max_nodes=rows,
        head_loadings=0,
        progress=False,
        max_memory=None,
        batch_size=64,
        min_edge_share=0.0 if exact else 1e-4,
    )
    g, result = measured(lambda: cb.attribution_graph(model, tok, ids, **kw))
    result |= {
        "tokens": len(ids),
        "rows": int(g.stats.get("rows", rows)),
        "batch": 64,
        "stored_edges": int(len(g.edge_weight)),
        "kept_bytes": int(g.edge_src.nbytes + g.edge_dst.nbytes + g.edge_weight.nbytes),
    }
    if exact:
        V = model.config.vocab_size
        mean = cb.attribution_graph(
            model, tok, ids, target=cb.Direction(torch.full((V,), 1.0 / V)), **kw
        )
        np.savez(
            out / "cb_exact.npz",
            **{f"g_{f}": getattr(g, f) for f in GRAPH_FIELDS},
            **{f"m_{f}": getattr(mean, f) for f in GRAPH_FIELDS},
            logit_ids=np.asarray(g.stats["logit_token_ids"]),
        )
    print(json.dumps(result), flush=True)


GRAPH_FIELDS = (
    "node_kind",
    "node_layer",
    "node_pos",
    "node_index",
    "node_activation",
    "edge_src",
    "edge_dst",
    "edge_weight",
    "logit_labels",
)


# ---------------------------------------------------------------- circuit-tracer side (its venv)


def run_circuit_tracer(
    out: Path, name: str, k: int, rows: int, exact: bool, batch: int = 64
) -> None:
    from circuit_tracer import attribute
    from circuit_tracer.replacement_model.replacement_model_nnsight import NNSightReplacementModel
    from circuit_tracer.transcoder.activation_functions import TopK
    from circuit_tracer.transcoder.single_layer_transcoder import (
        SingleLayerTranscoder,
        TranscoderSet,
    )
    from safetensors.torch import load_file

    w = load_file(str(out / f"transcoders_k{k}.safetensors"))
    L = 1 + max(int(key.split(".")[0]) for key in w)
    D = w["0.W_enc"].shape[1]
    tcs = {}
    for i in range(L):
        t = SingleLayerTranscoder(D, D_SAE, TopK(k), i, device="cpu", dtype=torch.float32)
        with torch.no_grad():
            for p in ("W_enc", "b_enc", "W_dec", "b_dec"):
                getattr(t, p).copy_(w[f"{i}.{p}"])
        tcs[i] = t
    ts = TranscoderSet(tcs, feature_input_hook="mlp.hook_in", feature_output_hook="hook_mlp_out")
    model = NNSightReplacementModel.from_pretrained_and_transcoders(
        str(out / "model"), ts, device=torch.device("cpu"), dtype=torch.float32
    )
    ids = json.loads((out / "prompts.json").read_text())[name]
    g, result = measured(
        lambda: attribute(ids, model, batch_size=batch, max_feature_nodes=rows, verbose=False)
    )
    adj = g.adjacency_matrix
    result |= {
        "tokens": len(ids),
        "rows": int(len(g.selected_features)),
        "batch": batch,
        "stored_edges": int(adj.numel()),
        "kept_bytes": int(adj.numel() * adj.element_size()),
    }
    if exact:
        np.savez(
            out / "ct_exact.npz",
            adjacency=adj.numpy(),
            active_features=g.active_features.numpy(),
            activation_values=g.activation_values.numpy(),
            selected_features=g.selected_features.numpy(),
            logit_targets=np.asarray([int(t.vocab_idx) for t in g.logit_targets]),
        )
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------- comparison


def compare_exact(out: Path) -> dict:
    """Max |difference| between circuit-tracer's edges and ours on the nodes both have."""
    cb_ = np.load(out / "cb_exact.npz", allow_pickle=True)
    ct = np.load(out / "ct_exact.npz")
    adj = ct["adjacency"].astype(np.float64)
    feats = ct["active_features"]  # [n, 3]: layer, pos, feature
    sel = ct["selected_features"]
    n_feat = len(sel)
    n_pos = int(cb_["g_node_pos"].max()) + 1
    L = int(cb_["g_node_layer"][cb_["g_node_kind"] != 3].max()) + 1

    kind, layer, pos, index = (cb_[f"g_node_{f}"] for f in ("kind", "layer", "pos", "index"))
    # our node kinds: 0 token, 1 basis, 2 error, 3 logit
    ours_feature = {
        (int(layer[i]), int(pos[i]), int(index[i])): i for i in np.flatnonzero(kind == 1)
    }
    ours_error = {(int(layer[i]), int(pos[i])): i for i in np.flatnonzero(kind == 2)}
    ours_token = {int(pos[i]): i for i in np.flatnonzero(kind == 0)}

    # circuit-tracer's columns: selected features, errors [L, P], tokens [P], logits
    col_to_ours: list[list[int]] = []
    for f in sel:  # a feature with no influence on the logits is not a node of ours: 0
        key = tuple(int(x) for x in feats[f])
        col_to_ours.append([ours_feature[key]] if key in ours_feature else [])
    pos0_mlp = []  # circuit-tracer zeroes features AND error at position 0: no edges from there
    for ly in range(L):
        for p in range(n_pos):
            group = [ours_error[(ly, p)]]
            if p == 0:
                group += [i for (a, b, _), i in ours_feature.items() if a == ly and b == 0]
                pos0_mlp.append(len(col_to_ours))
            col_to_ours.append(group)
    for p in range(n_pos):
        col_to_ours.append([ours_token[p]])
    n_src = len(col_to_ours)
    compared = np.ones(n_src, dtype=bool)
    compared[pos0_mlp] = False

    def dense(prefix: str) -> dict[int, np.ndarray]:
        """Our rows as {destination node: weights over all our sources}."""
        src, dst, wt = (cb_[f"{prefix}_edge_{f}"] for f in ("src", "dst", "weight"))
        rows: dict[int, np.ndarray] = {}
        n = len(cb_[f"{prefix}_node_kind"])
        for d in np.unique(dst):
            r = np.zeros(n)
            m = dst == d
            np.add.at(r, src[m], wt[m])
            rows[int(d)] = r
        return rows

    ours = dense("g")
    mean_rows = dense("m")
    mean_logit = [i for i in range(len(cb_["m_node_kind"])) if cb_["m_node_kind"][i] == 3][0]

    def project(r: np.ndarray) -> np.ndarray:
        return np.array([r[g].sum() for g in col_to_ours])

    diffs, scales, skipped, left_out = [], [], 0, []

    def differ(mine: np.ndarray, theirs: np.ndarray) -> float:
        left_out.append(np.abs(mine[~compared]).sum() / max(np.abs(mine).sum(), 1e-30))
        scales.append(np.abs(theirs).max())
        return float(np.abs(mine - theirs)[compared].max())

    for j, f in enumerate(sel):  # feature rows
        key = tuple(int(x) for x in feats[f])
        if key not in ours_feature:
            skipped += 1
            continue
        mine = project(ours[ours_feature[key]])
        diffs.append(differ(mine, adj[j, :n_src]))
    # logit rows: circuit-tracer's are its last rows, in the order of its targets
    ct_ids = [int(t) for t in ct["logit_targets"]]
    our_logit = dict(
        zip((int(t) for t in cb_["logit_ids"]), np.flatnonzero(kind == 3), strict=True)
    )
    m_row = project(mean_rows[mean_logit])
    logit_diffs = []
    for j, token in enumerate(ct_ids):
        mine = project(ours[int(our_logit[token])]) - m_row
        logit_diffs.append(differ(mine, adj[adj.shape[0] - len(ct_ids) + j, :n_src]))
    return {
        "feature_rows": n_feat - skipped,
        "ct_rows_without_influence": skipped,
        "sources": n_src,
        "max_abs_diff_features": float(max(diffs)),
        "max_abs_diff_logits": float(max(logit_diffs)) if logit_diffs else float("nan"),
        "largest_edge": float(max(scales)),
        "ours_features_at_pos0": int(sum(1 for (a, b, _) in ours_feature if b == 0)),
        "pos0_mlp_share_of_row_median": float(np.median(left_out)),
        "pos0_mlp_share_of_row_max": float(np.max(left_out)),
    }


def run_side(
    side: str,
    out: Path,
    name: str,
    k: int,
    rows: int,
    exact: bool,
    max_rss_gib: float = 12.0,
    batch: int = 64,
) -> dict:
    python = sys.executable if side == "cb" else CT_PYTHON
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if side == "ct":
        env.pop("PYTHONPATH", None)
    cmd = [python, __file__, "--stage", side, "--dir", str(out), "--name", name]
    cmd += ["--k", str(k), "--rows", str(rows), "--batch", str(batch)]
    cmd += ["--exact"] if exact else []
    root = Path(__file__).parents[1]
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr, text=True, cwd=root)
        peak = 0.0
        while proc.poll() is None:  # a shared machine: stop a side before it swaps
            peak = max(peak, rss_gib(proc.pid))
            if peak > max_rss_gib:
                proc.kill()
                proc.wait()
                return {"error": f"stopped at {peak:.1f} GiB resident (--max-rss-gib)"}
            time.sleep(0.2)
        stdout.seek(0), stderr.seek(0)
        out_text, err_text = stdout.read(), stderr.read()
    lines = [ln for ln in out_text.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        return {"error": (err_text or out_text)[-1500:]}
    return json.loads(lines[-1])


def rss_gib(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    kib = next((int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS")), 0)
    return kib / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--stage", default="all", choices=("all", "prepare", "cb", "ct", "exact", "cost")
    )
    ap.add_argument("--dir", default="/tmp/cb_ct")
    ap.add_argument("--tokens", type=int, nargs="*", default=[128, 512, 1024])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--name", default="exact")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--exact", action="store_true")
    ap.add_argument("--max-rss-gib", type=float, default=12.0)
    ap.add_argument("--sides", nargs="*", default=["cb", "ct"], choices=("cb", "ct"))
    ap.add_argument(
        "--batch",
        type=int,
        nargs="*",
        default=[64],
        help="circuit-tracer's batch sizes to run (it runs its forward on that many copies of "
        "the prompt and keeps the autograd graph, so its memory grows with batch x tokens²); "
        "circuitboard always runs 64 rows per pass",
    )
    args = ap.parse_args()
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(os.environ.get("CB_THREADS", "2")))
    if args.stage == "prepare":
        prepare(out, args.tokens)
        return
    if args.stage == "cb":
        run_circuitboard(out, args.name, args.k, args.rows, args.exact)
        return
    if args.stage == "ct":
        run_circuit_tracer(out, args.name, args.k, args.rows, args.exact, args.batch[0])
        return
    if args.stage in ("all", "prepare"):
        prepare(out, args.tokens)
    if args.stage in ("all", "exact"):
        every = 10**6  # every active feature's row
        for side in ("cb", "ct"):
            r = run_side(side, out, "exact", 8, every, True)
            print(side, "exactness run:", r, flush=True)
        print("exactness:", compare_exact(out), flush=True)
    if args.stage in ("all", "cost"):
        print(f"\nTranscoders TopK k=32 at all 30 layers, {args.rows} feature rows\n")
        print(
            "| tokens | side | rows per pass | wall s | CPU s | peak RSS growth MiB | "
            "edges kept | bytes | load |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        runs = [("cb", 64)] * ("cb" in args.sides) + [("ct", b) for b in args.batch] * (
            "ct" in args.sides
        )
        for n in args.tokens:
            for side, batch in runs:
                who = "circuitboard" if side == "cb" else "circuit-tracer"
                r = run_side(side, out, str(n), 32, args.rows, False, args.max_rss_gib, batch)
                if "error" in r:
                    print(f"| {n} | {who} | {batch} | {r['error'][-300:]!r} |", flush=True)
                    continue
                print(
                    f"| {r['tokens']} | {who} | {batch} | {r['wall']:.1f} | {r['cpu']:.1f} | "
                    f"{r['rss_growth']:.0f} | {r['stored_edges']:,} | "
                    f"{r['kept_bytes'] / 2**20:.1f} MiB | {r['load']} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
