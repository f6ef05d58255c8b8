"""Held-out metrics of a dictionary: explained variance against the mean, L0, dead fraction,
and the cross-entropy loss recovered when its output is spliced into the model."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from ._activations import _site, run_to_hooks, splice, token_windows
from ._sae import SAE


def _ce(model: Any, windows: torch.Tensor, batch: int) -> float:
    """Mean next-token loss of the predictions made at positions >= 1 (those a splice
    changes; position 0 is never spliced)."""
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for i in range(0, windows.shape[0], batch):
        ids = windows[i : i + batch].to(device)
        logits = model(input_ids=ids, use_cache=False).logits[:, 1:-1].float()
        target = ids[:, 2:]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"
        )
        total += float(loss)
        count += target.numel()
    return total / count


@contextlib.contextmanager
def _replaced(model: Any, sae: SAE, how: str):
    """Positions >= 1 of ``sae.hook_out`` replaced by the dictionary's output (``how=
    "splice"``) or by zeros (``how="zero"``)."""
    stash: dict[str, torch.Tensor] = {}

    def replace(act: torch.Tensor) -> torch.Tensor:
        out = act.clone()
        if how == "zero":
            out[:, 1:] = 0
            return out
        x = stash["x"][:, 1:] if sae.is_transcoder else act[:, 1:]
        f = sae.encode(x)
        out[:, 1:] = sae.decode(f, x if sae.W_skip is not None else None).to(act.dtype)
        return out

    handle = None
    if sae.is_transcoder and how == "splice":
        mod, when, idx = _site(model, sae.hook)
        if when == "pre":

            def pre(m: Any, args: tuple, kwargs: dict) -> None:
                stash["x"] = args[0] if args else next(iter(kwargs.values()))

            handle = mod.register_forward_pre_hook(pre, with_kwargs=True)
        else:

            def post(m: Any, args: tuple, out: Any) -> None:
                stash["x"] = out[idx or 0] if isinstance(out, tuple) else out

            handle = mod.register_forward_hook(post)
    try:
        with splice(model, sae.hook_out, replace):
            yield
    finally:
        if handle is not None:
            handle.remove()


@torch.no_grad()
def evaluate_sae(
    model: Any,
    tokenizer: Any,
    sae: SAE | Sequence[SAE],
    texts: Sequence[str],
    *,
    tokens: int = 8192,
    seq_len: int = 128,
    batch: int = 8,
    ce: bool = True,
) -> Any:
    """Held-out metrics of one dictionary (a dict) or several (a list of dicts).

    * ``explained_variance``: ``1 − Σ‖y − ŷ‖² / Σ‖y − ȳ‖²`` with ``ȳ`` the held-out **mean**
      (against zero it would read higher); ``fvu`` is ``1 −`` that.
    * ``l0``: active features per token; ``dead_fraction``: features never active on these
      tokens.
    * ``ce_recovered``: ``(CE_zero − CE_spliced) / (CE_zero − CE_clean)``, where the
      dictionary's output replaces the activation at ``hook_out`` (``spliced``) or zeros do
      (``zero``), at every position but the first, on the same windows.

    Each window's first token is left out of every metric (a dictionary is not trained on it).

    Examples
    --------
    >>> import circuitboard as cb
    >>> model, tok = cb.load_default_model()  # doctest: +SKIP
    >>> saes = cb.load_default_saes()  # doctest: +SKIP
    >>> cb.evaluate_sae(model, tok, saes[0], cb.load_corpus("eval"), tokens=2048)  # doctest: +SKIP
    {'explained_variance': 0.8..., 'l0': 32.0, 'dead_fraction': 0.0..., 'ce_recovered': 0.9...}
    """
    saes = [sae] if isinstance(sae, SAE) else list(sae)
    windows = token_windows(
        tokenizer, list(texts), seq_len, max_windows=-(-tokens // (seq_len - 1))
    )
    reads = sorted({s.hook for s in saes} | {s.hook_out for s in saes})
    for s in saes:
        s.check_fits(model)
    sums = [dict(se=0.0, n=0, l0=0.0) for _ in saes]
    ys: list[list[torch.Tensor]] = [[] for _ in saes]
    fired = [torch.zeros(s.d_sae, dtype=torch.bool) for s in saes]
    for i in range(0, windows.shape[0], batch):
        acts = run_to_hooks(model, windows[i : i + batch], reads)
        for j, s in enumerate(saes):
            x = acts[s.hook].to(s.device)
            y = acts[s.hook_out].to(s.device)
            f = s.encode(x)
            y_hat = s.decode(f, x if s.W_skip is not None else None).float()
            sums[j]["se"] += float((y - y_hat).pow(2).sum())
            sums[j]["n"] += y.shape[0]
            sums[j]["l0"] += float((f > 0).sum())
            fired[j] |= (f > 0).any(0).cpu()
            ys[j].append(y.cpu())
    clean = _ce(model, windows, batch) if ce else None
    results = []
    for j, s in enumerate(saes):
        y = torch.cat(ys[j])
        var = float((y - y.mean(0)).pow(2).sum())
        ev = 1.0 - sums[j]["se"] / var
        r: dict[str, Any] = {
            "hook": s.hook,
            "hook_out": s.hook_out,
            "explained_variance": ev,
            "fvu": 1.0 - ev,
            "l0": sums[j]["l0"] / sums[j]["n"],
            "dead_fraction": float((~fired[j]).float().mean()),
            "tokens": sums[j]["n"],
        }
        if ce:
            with _replaced(model, s, "splice"):
                spliced = _ce(model, windows, batch)
            with _replaced(model, s, "zero"):
                zero = _ce(model, windows, batch)
            r.update(
                ce_clean=clean,
                ce_spliced=spliced,
                ce_zero=zero,
                ce_recovered=(zero - spliced) / (zero - clean) if zero != clean else float("nan"),
            )
        results.append(r)
    return results[0] if isinstance(sae, SAE) else results
