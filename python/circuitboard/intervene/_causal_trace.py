"""`causal_trace`: Meng et al. (2022)'s causal tracing — corrupt the subject, restore one state.

The clean run reads the prompt. The corrupted run adds Gaussian noise of ``noise`` × the
embedding's standard deviation to the subject's token embeddings, so the model loses the fact.
Restoring one clean activation in the corrupted run (a hidden state, an MLP output or an
attention output, at one layer — or a window of layers around it — and one position) brings
part of the answer back: that gain, averaged over noise samples, is the site's *indirect
effect*.

How it runs: the corrupted run of every noise sample is computed once, reading its residual
stream at every layer. A restoration then starts at its lowest restored layer from that
sample's corrupted residual (the blocks below are the same as in the corrupted run), so many
restorations share one batched forward through :class:`~circuitboard.intervene.Runner` and the
blocks below a restoration are never recomputed. Positions before the subject's first token are
the same in the clean and corrupted runs of a causal model, so restoring them changes nothing:
they are exactly 0 and not run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..capture.adapters._base import get_module
from ._causal_trace_result import KINDS, CausalTrace
from ._hooks import Edit
from ._metric import token_id
from ._runner import Runner
from ._sites import Site

_SITE = {"hidden": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}
"""Trace kind → the site restored (``hidden`` = the block's output, the residual stream)."""


def subject_positions(tokenizer: Any, prompt: str, subject: str) -> list[int]:
    """Positions of the tokens covering the first occurrence of ``subject`` in ``prompt``.

    Examples
    --------
    >>> from circuitboard.testing import tiny_tokenizer
    >>> tok = tiny_tokenizer()
    >>> pos = subject_positions(tok, "the store opened", "store")
    >>> pos, [tok.decode([tok("the store opened")["input_ids"][i]]) for i in pos]
    ([2, 3, 4], [' s', 'tor', 'e'])
    """
    if not isinstance(subject, str) or not subject.strip():
        raise ValueError(
            f"subject must be a non-empty string of the prompt; got {subject!r}. Pass the words "
            "whose tokens the noise corrupts, e.g. subject='Eiffel Tower'."
        )
    start = prompt.find(subject)
    if start < 0:
        raise ValueError(
            f"subject {subject!r} is not in the prompt {prompt!r}. Pass a subject copied "
            "from the prompt (same spelling and case), e.g. "
            f"subject={prompt.split()[0] if prompt.split() else 'word'!r}."
        )
    end = start + len(subject)
    enc = tokenizer(prompt, return_offsets_mapping=True)
    out = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < end and b > start]
    if not out:
        raise ValueError(
            f"no token of the prompt covers subject {subject!r} (offsets "
            f"{enc['offset_mapping']}); use a tokenizer that reports character offsets."
        )
    return out


def _embed_std(model: Any, adapter: Any) -> float:
    """Standard deviation of the token embeddings the first block reads (over every entry of
    the embedding table; scaled embeddings such as Gemma's included)."""
    emb = get_module(model, adapter.embed)
    std = float(emb.weight.detach().float().std())
    scale = getattr(emb, "embed_scale", None)
    return std * float(scale) if scale is not None else std


def _window(layer: int, width: int, n_layers: int) -> list[int]:
    """Layers restored around ``layer`` (Meng et al.: ``layer − w//2 .. layer + ⌈w/2⌉ − 1``)."""
    lo = max(0, layer - width // 2)
    hi = min(n_layers, layer - (-width // 2))
    return list(range(lo, hi))


def _probability(answer: int) -> Any:
    def metric(logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float(), -1)[..., answer]

    metric.batched = True  # type: ignore[attr-defined]
    return metric


class _Tracer:
    """The clean run, the corrupted runs (one per noise sample) and restorations of both."""

    def __init__(
        self,
        model: Any,
        ids: torch.Tensor,
        subject: list[int],
        answer: int,
        noise: float,
        samples: int,
        seed: int,
        batch_size: int | None,
    ) -> None:
        self.runner = r = Runner(model)
        self.ids, self.subject, self.batch_size = ids, subject, batch_size
        self.metric = _probability(answer)
        L, T = r.n_layers, len(ids)
        self.n_layers, self.n_tokens = L, T
        self.embed_std = _embed_std(model, r.adapter)
        self.noise_std = noise * self.embed_std
        gen = torch.Generator().manual_seed(seed)
        d = r.info.d_model
        self.noise = torch.randn(samples, len(subject), d, generator=gen) * self.noise_std
        sites = [Site(_SITE[k], layer) for k in KINDS for layer in range(L)]
        clean, logits = r.read(ids, sites)
        self.clean = {(s.kind, s.layer): v for s, v in clean.items()}
        self.clean_value = float(self.metric(logits[None])[0])
        # Every sample's corrupted run in one forward, reading each block's input.
        reads = [Edit(Site("resid_pre", layer), op="read") for layer in range(L)]
        noisy = [
            Edit(Site("embed", 0, pos=tuple(subject)), "add", self.noise[s], rows=s)
            for s in range(samples)
        ]
        lg = r.logits(ids.expand(samples, T), [*noisy, *reads])
        self.corrupted_resid = [e.activation for e in reads]  # [samples, T, d] per layer
        self.corrupted = self.metric(lg).cpu().numpy().astype(np.float64)

    def restore(self, restorations: Sequence[Sequence[Site]]) -> np.ndarray:
        """The metric with each set of clean sites restored ``[len(restorations), samples]``."""
        S = len(self.noise)
        runs = []
        for sites in restorations:
            start = min(s.layer for s in sites)
            for sample in range(S):
                run = [
                    Edit(Site("resid_pre", start), "replace", self.corrupted_resid[start][sample])
                ]
                for s in sites:
                    clean = self.clean[(s.kind, s.layer)]
                    value = clean if s.pos is None else clean[list(s.positions(self.n_tokens))]
                    run.append(Edit(s, "replace", value))
                runs.append(run)
        out = self.runner.patched(self.ids, runs, self.metric, batch_size=self.batch_size)
        return out.numpy().astype(np.float64).reshape(len(restorations), S)


def _setup(
    model: Any, tokenizer: Any, prompt: str, subject: str, answer: Any, noise: float, samples: int
) -> tuple[torch.Tensor, list[int], int]:
    from ..capture.adapters import get_adapter

    adapter = get_adapter(model)
    if adapter.modality != "text" or not adapter.causal:
        raise ValueError(
            f"causal_trace() needs a causal language model (the answer is the next token); got "
            f"a {adapter.name!r} model ({adapter.modality}, causal={adapter.causal}). Use a "
            "decoder such as the default model (cb.load_default_model())."
        )
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"prompt must be a non-empty string; got {prompt!r}.")
    if not isinstance(noise, int | float) or isinstance(noise, bool) or noise < 0:
        raise ValueError(
            f"noise must be a number ≥ 0 (multiples of the embedding std; Meng et al. use 3); "
            f"got {noise!r}."
        )
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ValueError(
            f"samples must be a positive int (noise draws to average); got {samples!r}."
        )
    subj = subject_positions(tokenizer, prompt, subject)
    ids = torch.tensor(tokenizer(prompt)["input_ids"])
    if answer is None:
        with torch.no_grad():
            answer = int(Runner(model).logits(ids)[0].argmax())
    return ids, subj, token_id(tokenizer, answer)


def restoration_effect(
    model: Any,
    tokenizer: Any,
    prompt: str,
    *,
    subject: str,
    restore: Sequence[Site],
    answer: str | int | None = None,
    noise: float = 3.0,
    samples: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """The answer's probability when the clean values of every site in ``restore`` are put back
    into the subject-corrupted run together (one restoration of :func:`causal_trace`).

    Returns ``{"clean", "corrupted", "restored", "effect", "normalized"}`` (means over the noise
    samples; ``effect = restored − corrupted``, ``normalized = effect / (clean − corrupted)``).

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> every = [Site("resid_post", 1)]  # the last block's output at every position
    >>> r = restoration_effect(model, tok, "the store opened the", subject="store",
    ...                        restore=every, samples=2)
    >>> round(r["normalized"], 4)
    1.0
    """
    ids, subj, ans = _setup(model, tokenizer, prompt, subject, answer, noise, samples)
    tr = _Tracer(model, ids, subj, ans, noise, samples, seed, None)
    sites = [s if s.kind in _SITE.values() else None for s in restore]
    if not restore or None in sites:
        raise ValueError(
            f"restore must be a non-empty list of Site('resid_post' | 'mlp_out' | 'attn_out', "
            f"layer, pos=...); got {list(restore)!r}."
        )
    restored = float(tr.restore([list(restore)])[0].mean())
    corrupted = float(tr.corrupted.mean())
    total = tr.clean_value - corrupted
    return {
        "clean": tr.clean_value,
        "corrupted": corrupted,
        "restored": restored,
        "effect": restored - corrupted,
        "normalized": (restored - corrupted) / total if abs(total) > 1e-12 else float("nan"),
    }


def causal_trace(
    model: Any,
    tokenizer: Any,
    prompt: str,
    *,
    subject: str,
    answer: str | int | None = None,
    noise: float = 3.0,
    samples: int = 10,
    windows: tuple[int, int] = (1, 10),
    kinds: Sequence[str] = KINDS,
    seed: int = 0,
    batch_size: int | None = None,
) -> CausalTrace:
    """Causal tracing (Meng et al. 2022): which hidden states, MLPs and attention layers carry
    a fact from the subject to the answer.

    Parameters
    ----------
    model, tokenizer
        A Hugging Face causal LM served by a capture adapter, and its tokenizer.
    prompt
        The factual prompt, e.g. ``"The Eiffel Tower is located in the city of"``.
    subject
        Words of the prompt whose token embeddings are corrupted (first occurrence).
    answer
        The answer token (one-token string or id); default: the clean run's top prediction.
        The metric is its probability at the last position, as in the paper.
    noise
        Noise scale in multiples of the embedding's standard deviation (over the whole token
        embedding table). ``0`` makes the corrupted run equal the clean one.
    samples, seed
        Noise draws averaged over, and the seed of the draws.
    windows
        ``(hidden, mlp_and_attn)``: how many consecutive layers one restoration puts back,
        centred on its layer as in the paper (``1``: the layer alone). The paper uses 1 for
        hidden states and 10 for MLP and attention outputs.
    kinds
        Which of ``("hidden", "mlp", "attn")`` to trace (all by default).
    batch_size
        Rows per forward (default: about 4,096 tokens).

    Returns
    -------
    CausalTrace
        ``values[kind, layer, position]``: the indirect effect (restored probability minus the
        corrupted one, mean over samples); ``normalized`` divides it by the total effect.

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> tr = causal_trace(model, tok, "the store opened the", subject="store", samples=2)
    >>> tr.values.shape[:2], round(float(tr.normalized[0, -1, -1]), 4)
    ((3, 2), 1.0)
    >>> res = cb.causal_trace(model, tok, "The Eiffel Tower is in the city of",
    ...                       subject="Eiffel Tower")  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}; got {list(kinds)!r}.")
    ok = (
        isinstance(windows, tuple | list)
        and len(windows) == 2
        and all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in windows)
    )
    if not ok:
        raise ValueError(
            f"windows must be (hidden, mlp_and_attn) layer counts ≥ 1, e.g. (1, 10); got "
            f"{windows!r}."
        )
    ids, subj, ans = _setup(model, tokenizer, prompt, subject, answer, noise, samples)
    tr = _Tracer(model, ids, subj, ans, noise, samples, seed, batch_size)
    L, T, first = tr.n_layers, tr.n_tokens, subj[0]
    kinds = tuple(k for k in KINDS if k in kinds)
    width = {"hidden": windows[0], "mlp": windows[1], "attn": windows[1]}
    cells = [(k, layer, p) for k in kinds for layer in range(L) for p in range(first, T)]
    restorations = [
        [Site(_SITE[k], j, pos=p) for j in _window(layer, width[k], L)] for k, layer, p in cells
    ]
    restored = tr.restore(restorations)  # [cells, samples]
    per_sample = np.zeros((samples, len(kinds), L, T))
    for (k, layer, p), row in zip(cells, restored - tr.corrupted[None], strict=True):
        per_sample[:, kinds.index(k), layer, p] = row
    total = tr.clean_value - float(tr.corrupted.mean())
    values = per_sample.mean(0)
    normalized = values / total if abs(total) > 1e-9 else np.full_like(values, np.nan)
    tokens = [tokenizer.decode([int(i)]) for i in ids]
    notes = [
        f"noise: N(0, ({noise} × embedding std {tr.embed_std:.4g})²) added to the "
        f"embeddings of {[tokens[i] for i in subj]} (positions {subj}), {samples} draws, "
        f"seed {seed}",
        f"windows: hidden {width['hidden']}, mlp/attn {width['mlp']} layers centred on the layer",
        f"positions before the subject ({first}) are identical in both runs: effect exactly 0,"
        " not run",
    ]
    if abs(total) <= 1e-9:
        notes.append("clean and corrupted probabilities are equal: normalized is NaN")
    return CausalTrace(
        values=values,
        normalized=normalized,
        sample_values=per_sample,
        kinds=kinds,
        tokens=tokens,
        subject=subj,
        answer=tokenizer.decode([ans]),
        answer_id=ans,
        clean_value=tr.clean_value,
        corrupted_value=float(tr.corrupted.mean()),
        sample_corrupted=tr.corrupted,
        noise=float(noise),
        noise_std=float(tr.noise_std),
        samples=samples,
        seed=seed,
        windows=(int(windows[0]), int(windows[1])),
        prompt=prompt,
        model_name=str(getattr(model.config, "_name_or_path", "") or model.config.model_type),
        notes=notes,
        cost={"runs": float(len(cells) * samples), "seconds": time.perf_counter() - t0},
    )


__all__ = ["causal_trace", "restoration_effect", "subject_positions"]
