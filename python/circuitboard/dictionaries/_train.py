"""``train_sae``: dictionaries trained on a model's activations, streamed through a shuffled
buffer of bounded size; several dictionaries share one forward; deterministic and resumable.

The data order is a pure function of the seed: texts are shuffled, tokenized into windows,
cut into buffers of ``buffer_tokens``; each buffer is one stopped forward, shuffled by a
generator seeded from ``(seed, epoch, buffer)``. A checkpoint therefore needs only the
parameters, Adam's state and the position: resuming recomputes the buffer it stopped in.
Later epochs (``epochs > 1``) reuse the activations kept from the first, in float16.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ._activations import run_to_hooks, token_windows
from ._hooknames import to_capture_name
from ._step import Spec, Trainee

TRAIN_KINDS = ("topk", "batchtopk", "jumprelu")


def _lr_for(d_sae: int) -> float:
    # Gao et al. (2024): the best learning rate falls as 1/sqrt(latents) (2e-4 at 2^14)
    return 2e-4 / math.sqrt(d_sae / 2**14)


def _schedule(step: int, total: int, lr: float) -> float:
    """Linear warm-up over the first 1% of steps, linear decay to 0 over the last 20%."""
    warm = max(1, total // 100)
    if step < warm:
        return lr * (step + 1) / warm
    decay_from = int(total * 0.8)
    if step >= decay_from:
        return lr * max(0.0, (total - step) / max(1, total - decay_from))
    return lr


def _gen(seed: int, epoch: int, buffer: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 10_007 + buffer)


def train_sae(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    hook: str | Sequence[str],
    d_sae: int,
    k: int = 32,
    kind: str = "topk",
    tokens: int = 100_000,
    transcoder_out: str | Sequence[str | None] | None = None,
    skip: bool = False,
    epochs: int = 1,
    seed: int = 0,
    lr: float | None = None,
    batch_size: int = 4096,
    buffer_tokens: int = 65_536,
    seq_len: int = 128,
    forward_batch: int = 16,
    dead_tokens: int | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 50,
    max_steps: int | None = None,
    threads: int | None = None,
    sink_ratio: float | None = 5.0,
) -> Any:
    """Train sparse autoencoders (or transcoders) on ``model``'s activations at ``hook``.

    Parameters
    ----------
    model, tokenizer : a Hugging Face causal LM and its tokenizer (on CPU or CUDA).
    texts : training texts (e.g. ``cb.load_corpus("train")``); shuffled with ``seed``.
    hook : a capture name (``"blocks.6.hook_resid_post"``), or a list of them: one dictionary
        each, all fed by the same forward, which stops after the last layer needed.
    d_sae, k, kind : features, active features per token, and ``"topk"``, ``"batchtopk"``
        (which infers as a JumpReLU with the threshold it learns) or ``"jumprelu"`` (a
        threshold per feature, learned with straight-through pseudo-derivatives and an L0
        penalty whose coefficient adapts so that the mean L0 settles at ``k``).
    tokens : training tokens per epoch (each window's first token is left out: it carries the
        attention-sink outlier).
    transcoder_out : for a transcoder, the capture name it predicts (e.g.
        ``"blocks.6.hook_mlp_out"`` with ``hook="blocks.6.mlp.hook_in"``); a list matches a
        list of hooks (None entries are SAEs). ``skip``: transcoders get a skip matrix.
    epochs : passes over the same tokens (the first pass's activations are kept in float16).
    seed : everything random (text order, buffers, initialisation) follows it.
    lr : Adam's learning rate; default ``2e-4 / sqrt(d_sae / 2**14)`` (Gao et al. 2024),
        warmed up over 1% of steps and decayed to 0 over the last 20%.
    batch_size, buffer_tokens, seq_len, forward_batch : tokens per step; tokens per shuffled
        buffer (memory: ``buffer_tokens × d × 4`` bytes per hook); window length; windows per
        forward.
    dead_tokens : a feature silent for this many tokens is dead and trained by AuxK
        (default: a quarter of the training tokens, at most 10M).
    progress : a tqdm bar with live FVU, L0 and dead fraction.
    checkpoint, checkpoint_every : a folder to save to every so many steps and resume from
        (safetensors + JSON; nothing is pickled).
    max_steps : stop after this many steps (the run can be resumed from its checkpoint).
    threads : torch threads while training (default: 1 while the machine is busy, else as is).
    sink_ratio : leave out of training the tokens whose norm at a hook read is over this many
        times the buffer's median (attention sinks: a window cut from a token stream can put
        the sink at position 1-3, and a few such rows can hold most of the variance of deep
        layers, so an MSE-trained dictionary would spend itself on them). ``None`` keeps all.

    Returns
    -------
    The trained :class:`SAE` (a list for a list of hooks); ``sae.metadata["training"]`` holds
    the settings and the last steps' FVU, L0 and dead fraction. Held-out metrics come from
    :func:`evaluate_sae`.

    Examples
    --------
    >>> import circuitboard as cb
    >>> model, tok = cb.load_default_model()  # doctest: +SKIP
    >>> sae = cb.train_sae(model, tok, cb.load_corpus(), hook="blocks.6.hook_resid_post",
    ...                    d_sae=4608, k=32, tokens=200_000)  # doctest: +SKIP
    >>> metrics = cb.evaluate_sae(model, tok, sae, cb.load_corpus("eval"))  # doctest: +SKIP
    >>> metrics["explained_variance"]  # doctest: +SKIP
    0.8...
    """
    hooks = [hook] if isinstance(hook, str) else list(hook)
    single = isinstance(hook, str)
    outs = (
        [transcoder_out] * len(hooks)
        if transcoder_out is None or isinstance(transcoder_out, str)
        else list(transcoder_out)
    )
    if len(outs) != len(hooks):
        raise ValueError(
            f"transcoder_out has {len(outs)} entries for {len(hooks)} hooks; give one per hook "
            "(None for an SAE)."
        )
    if kind not in TRAIN_KINDS:
        raise ValueError(
            f"train_sae trains kind 'topk', 'batchtopk' or 'jumprelu'; got {kind!r}. A plain "
            "ReLU dictionary is not trained here: 'jumprelu' with a small k is its sparse form."
        )
    for name, v in (("d_sae", d_sae), ("k", k), ("tokens", tokens), ("epochs", epochs)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int; got {v!r}.")
    if k > d_sae:
        raise ValueError(f"k={k} exceeds d_sae={d_sae}; pick k < d_sae (typically 16-64).")
    if batch_size > buffer_tokens:
        raise ValueError(f"batch_size={batch_size} exceeds buffer_tokens={buffer_tokens}.")
    hooks = [to_capture_name(h) for h in hooks]
    outs = [None if o is None else to_capture_name(o, output=True) for o in outs]
    reads = sorted(set(hooks) | {o for o in outs if o is not None})

    from .._threads import busy

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads or (1 if busy() else old_threads))
    try:
        return _run(
            model, tokenizer, list(texts), hooks, outs, reads, single=single, d_sae=d_sae, k=k,
            kind=kind, tokens=tokens, skip=skip, epochs=epochs, seed=seed, lr=lr,
            batch_size=batch_size, buffer_tokens=buffer_tokens, seq_len=seq_len,
            forward_batch=forward_batch, dead_tokens=dead_tokens, progress=progress,
            sink_ratio=sink_ratio,
            checkpoint=None if checkpoint is None else Path(checkpoint),
            checkpoint_every=checkpoint_every, max_steps=max_steps,
        )  # fmt: skip
    finally:
        torch.set_num_threads(old_threads)


def fit_sae(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    d_sae: int,
    k: int = 32,
    kind: str = "topk",
    hook: str | None = None,
    hook_out: str | None = None,
    skip: bool = False,
    epochs: int = 1,
    seed: int = 0,
    lr: float | None = None,
    batch_size: int = 4096,
    buffer_tokens: int = 65_536,
    dead_tokens: int | None = None,
    progress: bool = False,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 50,
    max_steps: int | None = None,
    threads: int | None = None,
) -> Any:
    """Train one dictionary on activations you already have: ``x [n, d_in]`` (and, for a
    transcoder, targets ``y [n, d_out]``). Same training as :func:`train_sae` (shuffled
    buffers of ``buffer_tokens`` rows, AuxK, unit-norm decoder, deterministic, resumable).

    Examples
    --------
    >>> import torch
    >>> from circuitboard.dictionaries import fit_sae
    >>> x = torch.randn(4096, 16)
    >>> sae = fit_sae(x, d_sae=64, k=4, batch_size=512, buffer_tokens=2048, seed=0)
    >>> sae.kind, sae.d_sae, sae.metadata["training"]["steps"]
    ('topk', 64, 8)
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        raise ValueError(
            f"x must be a 2-D tensor [n_tokens, d_in]; got {getattr(x, 'shape', type(x))}. "
            "Flatten batch and positions first: x.reshape(-1, x.shape[-1])."
        )
    if y is not None and (y.ndim != 2 or y.shape[0] != x.shape[0]):
        raise ValueError(f"y must be [n_tokens={x.shape[0]}, d_out]; got {tuple(y.shape)}.")
    if kind not in TRAIN_KINDS:
        raise ValueError(f"fit_sae trains kind 'topk', 'batchtopk' or 'jumprelu'; got {kind!r}.")
    if not isinstance(k, int) or not 1 <= k <= d_sae:
        raise ValueError(f"k must be an int in [1, d_sae={d_sae}]; got {k!r}.")
    if batch_size > buffer_tokens:
        raise ValueError(f"batch_size={batch_size} exceeds buffer_tokens={buffer_tokens}.")
    sizes = [min(buffer_tokens, x.shape[0] - i) for i in range(0, x.shape[0], buffer_tokens)]
    keys = [("x", "y" if y is not None else "x")]

    def fetch(bi: int) -> dict[str, torch.Tensor]:
        sl = slice(bi * buffer_tokens, bi * buffer_tokens + sizes[bi])
        out = {"x": x[sl].float()}
        if y is not None:
            out["y"] = y[sl].float()
        return out

    from .._threads import busy

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads or (1 if busy() else old_threads))
    try:
        return _fit(
            fetch, sizes, [hook], [hook_out], ["x", "y"] if y is not None else ["x"],
            keep=False, single=True, model_name=None, keys=keys, d_sae=d_sae, k=k, kind=kind,
            device=x.device,
            skip=skip, epochs=epochs, seed=seed, lr=lr, batch_size=batch_size,
            dead_tokens=dead_tokens, progress=progress,
            checkpoint=None if checkpoint is None else Path(checkpoint),
            checkpoint_every=checkpoint_every, max_steps=max_steps,
        )  # fmt: skip
    finally:
        torch.set_num_threads(old_threads)


def _run(model, tokenizer, texts, hooks, outs, reads, *, single, **o) -> Any:  # noqa: ANN001
    sink_ratio = o.pop("sink_ratio")
    seed, seq_len = o["seed"], o["seq_len"]
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    per_window = seq_len - 1
    n_windows = math.ceil(o["tokens"] / per_window)
    windows = token_windows(tokenizer, [texts[i] for i in order], seq_len, max_windows=n_windows)
    if windows.shape[0] < n_windows:
        raise ValueError(
            f"the texts hold {windows.shape[0] * per_window} training tokens; tokens="
            f"{o['tokens']} asked for more. Pass more texts or fewer tokens."
        )
    per_buffer = max(1, o["buffer_tokens"] // per_window)
    buffers = [windows[i : i + per_buffer] for i in range(0, n_windows, per_buffer)]
    keep = o["epochs"] > 1

    def fetch(bi: int) -> dict[str, torch.Tensor]:
        buf = buffers[bi]
        got: dict[str, list[torch.Tensor]] = {h: [] for h in reads}
        for i in range(0, buf.shape[0], o["forward_batch"]):
            for h, a in run_to_hooks(model, buf[i : i + o["forward_batch"]], reads).items():
                got[h].append(a.cpu())
        out = {h: torch.cat(v) for h, v in got.items()}
        if sink_ratio is not None:
            sink = sink_rows(out, sink_ratio)
            dropped[bi] = int(sink.sum())
            out = {h: v[~sink] for h, v in out.items()}
        if keep:  # later epochs see float16 activations: make the first see the same
            out = {h: v.half().float() for h, v in out.items()}
        return out

    sizes = [b.shape[0] * per_window for b in buffers]
    dropped: dict[int, int] = {}
    name = getattr(getattr(model, "config", None), "_name_or_path", None)
    device = next(model.parameters()).device  # train where the model runs (CUDA or CPU)
    saes = _fit(
        fetch, sizes, hooks, outs, reads, keep=keep, single=single, model_name=name,
        device=device, **o,
    )  # fmt: skip
    for sae in [saes] if single else saes:
        sae.metadata["training"]["sink_rows_dropped"] = sum(dropped.values())
    return saes


def sink_rows(acts: dict[str, torch.Tensor], ratio: float) -> torch.Tensor:
    """``[n]`` rows whose norm at any of ``acts``' hooks is over ``ratio`` times that hook's
    median norm (attention sinks)."""
    sink = None
    for v in acts.values():
        norm = v.float().norm(dim=-1)
        over = norm > ratio * norm.median()
        sink = over if sink is None else sink | over
    return sink


def _fit(fetch, sizes, hooks, outs, reads, *, keep, single, model_name, **o) -> Any:  # noqa: ANN001
    """The training loop over buffers ``fetch(i)`` of ``sizes[i]`` tokens (kept in float16
    for later epochs when ``keep``, else fetched again)."""
    seed, B = o["seed"], o["batch_size"]
    steps_per = [math.ceil(n / B) for n in sizes]
    total = sum(steps_per) * o["epochs"]
    store: dict[str, list[torch.Tensor]] = {h: [] for h in reads}
    buffers = range(len(sizes))
    ckpt = o["checkpoint"]
    state = _read_checkpoint(ckpt) if ckpt is not None else None
    trainees: list[Trainee] | None = None
    pos = (0, 0, 0)  # epoch, buffer, step within buffer
    step = 0
    if state is not None:
        pos, step = tuple(state["info"]["pos"]), state["info"]["step"]

    def make(first: dict[str, torch.Tensor]) -> list[Trainee]:
        ts = []
        for j, (h, ho) in enumerate(zip(hooks, outs, strict=True)):
            key_in, key_out = o.get("keys", [(h, ho or h)] * len(hooks))[j]
            x, y = first[key_in], first[key_out]
            d_sae = o["d_sae"]
            spec = Spec(
                hook=h, hook_out=ho or h, d_in=x.shape[1], d_out=y.shape[1], d_sae=d_sae,
                kind=o["kind"], k=o["k"], skip=bool(o["skip"] and key_out != key_in),
                lr=o["lr"] or _lr_for(d_sae), transcoder=key_out != key_in,
                dead_tokens=o["dead_tokens"] or min(10_000_000, max(B, total * B // 4)),
                key_in=key_in, key_out=key_out,
            )  # fmt: skip
            ts.append(
                Trainee(spec, x[: B * 4], y[: B * 4], seed=seed + 7919 * j, device=o.get("device"))
            )
        return ts

    bar = None
    if o["progress"]:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=step, desc="train_sae", unit="step")
    history: list[list[dict[str, float]]] = []
    nxt = pos
    t0 = time.perf_counter()
    try:
        for epoch in range(o["epochs"]):
            if epoch < pos[0] and not keep:
                continue
            for bi in buffers:
                if (epoch, bi) < pos[:2] and not (keep and epoch == 0):
                    continue
                if epoch == 0 or not keep:
                    acts = fetch(bi)
                    if keep:
                        for h in reads:
                            store[h].append(acts[h].half())
                else:
                    acts = {h: store[h][bi].float() for h in reads}
                if trainees is None:
                    first = acts if (epoch, bi) == (0, 0) else fetch(0)
                    trainees = make(first)
                    if state is not None:
                        for j, t in enumerate(trainees):
                            t.load_state(f"d{j}", state["tensors"], state["info"]["trainees"][j])
                if (epoch, bi) < pos[:2]:
                    continue  # the buffer only refills the store
                n_tok = next(iter(acts.values())).shape[0]
                perm = torch.randperm(n_tok, generator=_gen(seed, epoch, bi))
                for si in range(steps_per[bi]):
                    if (epoch, bi) == pos[:2] and si < pos[2]:
                        continue
                    if o["max_steps"] is not None and step >= o["max_steps"]:
                        raise _Pause
                    idx = perm[si * B : (si + 1) * B]
                    if idx.numel() == 0:  # a buffer that lost rows (sinks) ends early
                        continue
                    lr_now = None
                    stats = []
                    for t in trainees:
                        lr_now = _schedule(step, total, t.spec.lr)
                        x = acts[t.spec.key_in][idx]
                        y = acts[t.spec.key_out][idx]
                        stats.append(t.step(x, y, lr_now))
                    step += 1
                    history.append(stats)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(
                            fvu=f"{sum(s['fvu'] for s in stats) / len(stats):.3f}",
                            l0=f"{stats[0]['l0']:.1f}",
                            dead=f"{max(s['dead'] for s in stats):.1%}",
                        )
                    nxt = (epoch, bi, si + 1)
                    if ckpt is not None and step % o["checkpoint_every"] == 0:
                        _write_checkpoint(ckpt, trainees, nxt, step)
    except _Pause:
        if ckpt is not None and trainees is not None:
            _write_checkpoint(ckpt, trainees, nxt, step)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t0
    if trainees is None:
        raise RuntimeError("no training step ran (max_steps=0?).")
    saes = []
    for j, t in enumerate(trainees):
        tail = history[-50:]
        meta = {
            "training": {
                "tokens": sum(sizes), "epochs": o["epochs"], "steps": step, "total_steps": total,
                "batch_size": B, "lr": t.spec.lr, "seed": seed, "k": t.spec.k, "kind": t.spec.kind,
                "seq_len": o.get("seq_len"), "dead_tokens": t.spec.dead_tokens,
                "seconds": round(elapsed, 1), "finished": step >= total,
                "last_fvu": sum(h[j]["fvu"] for h in tail) / max(1, len(tail)),
                "last_l0": sum(h[j]["l0"] for h in tail) / max(1, len(tail)),
                "last_dead": tail[-1][j]["dead"] if tail else None,
            },
            "model": model_name,
        }  # fmt: skip
        saes.append(t.to_sae(metadata=meta))
    return saes[0] if single else saes


class _Pause(Exception):
    """max_steps reached: checkpoint and return what was trained so far."""


def _write_checkpoint(folder: Path, trainees: list[Trainee], pos: tuple, step: int) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    infos = []
    for j, t in enumerate(trainees):
        ts, info = t.state(f"d{j}")
        tensors.update(ts)
        infos.append(info)
    tmp = folder / "state.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
    tmp.replace(folder / "state.safetensors")
    info = {"pos": list(pos), "step": step, "trainees": infos}
    (folder / "state.json").write_text(json.dumps(info), encoding="utf-8")


def _read_checkpoint(folder: Path) -> dict[str, Any] | None:
    if not (folder / "state.json").is_file():
        return None
    from safetensors.torch import load_file

    info = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    return {"info": info, "tensors": load_file(str(folder / "state.safetensors"))}
