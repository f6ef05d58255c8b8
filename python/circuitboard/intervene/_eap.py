"""Edge attribution patching (EAP) and EAP-IG on a model, and the live evaluator of a Circuit."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._threads import one_thread
from ..capture._prompts import Prompt, encode, id_texts, is_loaded_model, split_prompts
from ..capture._run import model_info
from ..capture.adapters import get_adapter
from ._circuit import EVAL_BYTES, Circuit
from ._edges import EdgeModel, projections_for
from ._graph import Graph
from ._metric import at_index, direction_metric, evaluate, logit_diff, normalize, token_ids
from ._patch_inputs import answers_per_pair
from ._runner import eval_mode

METHODS = ("eap", "eap-ig")


@dataclass
class _Pair:
    clean: torch.Tensor  # [P] token ids
    corrupted: torch.Tensor
    metric: Callable[[torch.Tensor], torch.Tensor]
    positions: list[int] | None  # where the default metric reads the logits
    W_clean: torch.Tensor | None = None  # [U, P, D]
    W_corr: torch.Tensor | None = None
    R_corr: torch.Tensor | None = None  # [V, P, D]
    m_clean: float = 0.0
    m_corr: float = 0.0

    @property
    def start(self) -> int:
        """The first position where clean and corrupted tokens differ."""
        diff = (self.clean != self.corrupted).nonzero()
        return int(diff[0, 0]) if len(diff) else int(self.clean.shape[0])


def _checked(metric: Callable, B: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The shared metric contract (:func:`._metric.evaluate`): the float32 logits at the metric
    position (the last), one value per batch row."""

    def run(logits: torch.Tensor) -> torch.Tensor:
        v = evaluate(metric, logits[:, -1].float())
        if v.shape != (B,):
            raise ValueError(f"metric returned shape {tuple(v.shape)} for {B} rows.")
        return v

    return run


def _as_list(x: Any, name: str) -> list[Prompt]:
    """The prompts of ``x`` (one or a list; each a string or token ids)."""
    return split_prompts(x, name)[0]


def _text(tokenizer: Any, tid: int | tuple[int, ...]) -> Any:
    if not isinstance(tid, int):  # a token set
        return {id_texts(tokenizer, [i])[0] for i in tid}
    return id_texts(tokenizer, [tid])[0]


def _per_pair(value: Any, n: int, name: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries for {n} prompt pairs.")
        return list(value)
    return [value] * n


def _prepare(
    model: Any,
    tokenizer: Any,
    clean: Any,
    corrupted: Any,
    answer: Any,
    wrong: Any,
    metric: Any,
    em: EdgeModel,
    info: Any,
    first: int = 0,
) -> tuple[list[_Pair], str, dict[str, Any], list[str], list[str]]:
    """Tokenized pairs with their metrics; ``first``: the index of the first pair in the whole
    list (a shard's pairs are numbered as the user numbers them in errors)."""
    cl, co = _as_list(clean, "clean"), _as_list(corrupted, "corrupted")
    if len(cl) != len(co):
        raise ValueError(
            f"{len(cl)} clean prompts but {len(co)} corrupted ones; pass one corrupted prompt "
            "per clean prompt."
        )
    single = split_prompts(clean, "clean")[1]
    answers = answers_per_pair(answer, len(cl), single, "answer")
    wrongs = answers_per_pair(wrong, len(cl), single, "wrong")
    metrics = _per_pair(metric, len(cl), "metric")
    pairs: list[_Pair] = []
    saved: dict[str, Any] = {"pairs": [], "answer": [], "wrong": [], "custom_metric": False}
    first_tokens: tuple[list[str], list[str]] = ([], [])
    name = ""
    for i, (a, b) in enumerate(zip(cl, co, strict=True)):
        d_vocab = getattr(info, "d_vocab", None)
        ia, ta = encode(tokenizer, a, f"clean prompt {first + i}", d_vocab)
        ib, tb = encode(tokenizer, b, f"corrupted prompt {first + i}", d_vocab)
        if len(ia) != len(ib):
            raise ValueError(
                f"pair {first + i}: the clean prompt has {len(ia)} tokens and the corrupted one "
                f"{len(ib)}; edges are compared position by position, so both must have the same "
                f"length. clean: {ta}; corrupted: {tb}. Pick a corrupted prompt with matching "
                "token boundaries (e.g. swap a name for another one-token name)."
            )
        if i == 0:
            first_tokens = (ta, tb)
        x = torch.tensor(ia, device=em.device)
        y = torch.tensor(ib, device=em.device)
        along = direction_metric(answers[i], wrongs[i], info.d_model, info.d_vocab, "answer")
        if metrics[i] is None and along is not None:
            metrics[i] = along  # logits · v: a metric like any other (saved as custom)
        if metrics[i] is not None:
            if not callable(metrics[i]):
                raise TypeError(
                    f"metric must be a callable (logits -> [batch]); got {metrics[i]!r}."
                )
            m = at_index(metrics[i], first + i)  # a per-example metric gets the pair's index
            pairs.append(_Pair(x, y, m, [len(ia) - 1]))
            saved["custom_metric"] = True
            name = getattr(m, "__name__", "custom")
            continue
        if answers[i] is None or wrongs[i] is None:
            with torch.no_grad():
                out = model(input_ids=torch.stack([x, y]), use_cache=False)
                top = out.logits[:, -1].argmax(-1).tolist()
            ans = top[0] if answers[i] is None else token_ids(tokenizer, answers[i], "answer")
            wr = top[1] if wrongs[i] is None else token_ids(tokenizer, wrongs[i], "wrong")
        else:
            ans = token_ids(tokenizer, answers[i], "answer")
            wr = token_ids(tokenizer, wrongs[i], "wrong")
        if ans == wr:
            raise ValueError(
                f"pair {first + i}: answer and wrong are the same token "
                f"({_text(tokenizer, ans)!r}); pass wrong= (e.g. the name the corrupted "
                "prompt points to)."
            )
        pairs.append(_Pair(x, y, logit_diff(ans, wr), [len(ia) - 1]))
        saved["answer"].append(ans)
        saved["wrong"].append(wr)
        if i == 0:
            name = (
                f"logit diff {_text(tokenizer, ans)!r} − {_text(tokenizer, wr)!r} "
                "at the last position"
            )
        saved["pairs"].append([a, b])
    if saved["custom_metric"]:
        saved["pairs"] = [[a, b] for a, b in zip(cl, co, strict=True)]
    if len(pairs) > 1:
        name += f", mean over {len(pairs)} pairs"
    return pairs, name, saved, first_tokens[0], first_tokens[1]


class _Live:
    """What a Circuit needs to evaluate itself: the hooked model and each pair's runs."""

    def __init__(self, em: EdgeModel, pairs: list[_Pair]) -> None:
        self.em, self.pairs = em, pairs
        self.m_clean = float(np.mean([p.m_clean for p in pairs]))
        self.m_corr = float(np.mean([p.m_corr for p in pairs]))

    def record(self) -> None:
        for p in self.pairs:
            ids = torch.stack([p.clean, p.corrupted])
            W, R, m = self.em.record(ids, _checked(p.metric, 2), p.positions)
            p.W_clean, p.W_corr, p.R_corr = W[0], W[1], R[1]
            p.m_clean, p.m_corr = float(m[0]), float(m[1])
        self.m_clean = float(np.mean([p.m_clean for p in self.pairs]))
        self.m_corr = float(np.mean([p.m_corr for p in self.pairs]))

    def check_gap(self) -> float:
        normalize(self.m_clean, self.m_clean, self.m_corr)  # refuses a vanishing gap, clearly
        return self.m_clean - self.m_corr

    def evaluate(self, masks: np.ndarray) -> np.ndarray:
        self.check_gap()
        em = self.em
        N = masks.shape[0]
        total = np.zeros(N)
        with eval_mode(em.model):
            for p in self.pairs:
                P = p.clean.shape[0]
                per_row = 3 * em.U * P * em.D * 4
                B = max(1, min(N, EVAL_BYTES // per_row))
                for s in range(0, N, B):
                    keep = torch.from_numpy(masks[s : s + B])
                    vals = em.ablate(
                        p.clean,
                        keep,
                        p.W_corr,
                        p.R_corr,
                        _checked(p.metric, keep.shape[0]),
                        p.positions,
                        start=p.start,
                    )
                    total[s : s + B] += vals.cpu().numpy()
        return normalize(total / len(self.pairs), self.m_clean, self.m_corr)


# Many batched forwards: on a busy 2-core machine two torch threads wait on each other at
# every op's barrier (oversubscription), 3-8x slower than one; on an idle machine two help.
@one_thread(when_busy=True)
def circuit(
    model: Any,
    tokenizer: Any,
    clean: str | Sequence[str],
    corrupted: str | Sequence[str],
    *,
    answer: Any = None,
    wrong: Any = None,
    metric: Callable[[torch.Tensor], torch.Tensor] | None = None,
    method: str = "eap-ig",
    steps: int = 5,
    nodes: str = "heads",
    progress: bool | None = None,
    engine: str = "serial",
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    shards: int | None = None,
    checkpoint: Any = None,
    ray_address: str | None = None,
    reference: Sequence[str] | None = None,
    seed: int = 0,
) -> Circuit:
    """Score every edge of the model's graph for one behaviour (noising), ready to evaluate.

    Parameters
    ----------
    model, tokenizer
        A causal Hugging Face model with its head (GPT-2, Llama / SmolLM2 / Mistral / Qwen,
        Pythia, Gemma) and its tokenizer. Grouped-query attention is supported: key and value
        inputs belong to KV heads (``L5KV0.k``), and ``circuit.inputs`` says which query heads
        each serves.
    clean, corrupted
        A prompt pair, or lists of pairs (scores are averaged). Each pair must have the same
        number of tokens.
    answer, wrong
        One-token strings or ids (per pair, or one for all): the metric is the logit
        difference ``answer − wrong`` at the last position. Default: the clean prompt's top
        prediction and the corrupted prompt's.
    metric
        Instead: a callable of the float32 logits at the last position, ``[vocab] -> scalar``
        (or batched ``[..., vocab] -> [...]`` like :func:`circuitboard.intervene.logit_diff`),
        roughly linear in the logits (logit differences, log-probabilities), differentiable.
    method
        ``"eap"``: one forward on each prompt and one backward. ``"eap-ig"`` (default):
        integrated gradients on the input embeddings, ``steps`` interpolated runs (midpoint
        rule) batched into one forward and one backward.
    nodes
        ``"heads"`` (a node per attention head; q inputs per head, k/v inputs per KV head) or
        ``"layers"`` (a node per attention layer).
    progress
        Show a tqdm bar over prompt pairs (default: from 4 pairs on).
    engine
        Where the pairs run: ``"serial"`` (this process), ``"processes"`` (a pool of local
        processes, each with its own model) or ``"ray"`` (Ray actors; ``pip install
        "circuitboard[ray]"``). Every engine runs the same plan: consecutive pairs form
        ``shards``; each shard sums its pairs' edge scores in float64, and the shard sums are
        added in plan order, so every engine gives the same scores (and saved bytes) for the
        same shards, and any shard count agrees with one pass to float64 rounding (~1e-16).
        A custom ``metric`` travels to the workers pickled by value (cloudpickle).
    workers, gpus_per_worker, shards, checkpoint, ray_address
        As for :func:`circuitboard.compare`: worker count, GPUs per worker, pieces of work
        (default one for ``"serial"``, four per worker otherwise), a folder from which an
        interrupted run resumes, and the Ray cluster to join. Pass a
        :class:`circuitboard.ModelSpec` as ``model`` (``tokenizer=None``) so that each worker
        loads its own model.

    reference, seed
        ``corrupted="resample"``: each clean prompt is paired with a reference prompt of its
        token length drawn with ``seed`` (the scores average over those pairs).

    Returns
    -------
    Circuit
        Edge scores (share of the clean − corrupted gap each edge carries; positive helps the
        answer), live evaluation on the model (``evaluate``, ``faithfulness``). Scored on
        workers from a loaded model, it evaluates on that model here (recording each pair's
        corrupted run on first use); from a ``ModelSpec``, attach a model first:
        ``c.attach(model, tokenizer)``.

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> import circuitboard as cb
    >>> model, tok = tiny_model("llama")
    >>> c = cb.circuit(model, tok, "1 2 3 4 5 6 7 8", "9 8 7 6 5 4 3 2", steps=8)
    >>> c.n_edges, c.top(1)[0]["label"].count("→")
    (82, 1)
    >>> abs(c.completeness - 1) < 0.1
    True

    Many pairs, cut into shards (the same numbers on ``engine="processes"`` or ``"ray"``):

    >>> pairs = ["1 2 3 4 5 6 7 8", "2 3 4 5 6 7 8 9", "3 4 5 6 7 8 9 1", "4 5 6 7 8 9 1 2"]
    >>> corrupt = ["9 8 7 6 5 4 3 2", "8 7 6 5 4 3 2 1", "7 6 5 4 3 2 1 9", "6 5 4 3 2 1 9 8"]
    >>> one = cb.circuit(model, tok, pairs, corrupt, method="eap", progress=False)
    >>> two = cb.circuit(model, tok, pairs, corrupt, method="eap", shards=2, progress=False)
    >>> bool(np.nanmax(abs(one.scores - two.scores)) < 1e-6), two.n_pairs
    (True, 4)
    >>> round(two.evaluate(two.n_edges), 4)  # evaluates on the model given
    1.0
    """
    if isinstance(corrupted, str) and corrupted in ("mean", "resample"):  # issue 29
        if corrupted == "mean":
            raise ValueError(
                "circuit() corrupts each edge with another run's activations, and a mean over "
                "prompts is no run; use corrupted='resample' with reference= prompts, or "
                "cb.patch(..., corrupted='mean', direction='noise') for per-site necessity."
            )
        from ._patch_distribution import _draws, _references

        refs = _references(reference)
        clean = [clean] if isinstance(clean, str) else list(clean)
        corrupted = [refs[j] for j in _draws(tokenizer, clean, refs, seed)]
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int; got {steps!r}.")
    if nodes not in ("heads", "layers"):
        raise ValueError(
            f"nodes must be 'heads' (one node per attention head) or 'layers' (one node per "
            f"attention layer); got {nodes!r}."
        )
    if (
        engine != "serial"
        or shards is not None
        or checkpoint is not None
        or (tokenizer is None and not is_loaded_model(model))
    ):
        from ..scale import Sharding
        from ._circuit_jobs import circuit_sharded

        options = dict(answer=answer, wrong=wrong, metric=metric, method=method, steps=steps)
        return circuit_sharded(
            model,
            tokenizer,
            clean,
            corrupted,
            {**options, "nodes": nodes},
            Sharding(engine, workers, gpus_per_worker, shards, checkpoint, ray_address),
            progress=progress,
        )
    em, info, graph = edge_model(model, nodes)
    with eval_mode(model):
        pairs, name, saved, toks, ctoks = _prepare(
            model, tokenizer, clean, corrupted, answer, wrong, metric, em, info
        )
        live = _Live(em, pairs)
        show = progress if progress is not None else len(pairs) >= 4
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(pairs), desc="circuitboard circuit", unit="pair")
        try:
            raw = score_pairs(em, graph, pairs, method, steps, bar)
        finally:
            if bar is not None:
                bar.close()
    c = finish_circuit(
        raw.cpu().numpy(),
        [p.m_clean for p in pairs],
        [p.m_corr for p in pairs],
        graph=graph,
        method=method,
        steps=steps,
        name=name,
        tokens=toks,
        corrupted_tokens=ctoks,
        model_name=info.model_name,
        saved=saved,
    )
    live.m_clean, live.m_corr = c.clean_value, c.corrupted_value
    for p in pairs:  # only the corrupted run is needed to evaluate
        p.W_clean = None
    c._live = live
    return c


def edge_model(model: Any, nodes: str) -> tuple[EdgeModel, Any, Graph]:
    """The hooked model of ``model``'s graph (``nodes="heads"`` or ``"layers"``)."""
    adapter = get_adapter(model)
    projections_for(adapter)
    info = model_info(model, adapter)
    graph = Graph.build(
        info.n_layers,
        info.n_heads,
        info.n_kv_heads,
        nodes=nodes,
        parallel=bool(info.parallel_attn_mlp),
    )
    return EdgeModel(model, adapter, info, graph), info, graph


def score_pairs(
    em: EdgeModel, graph: Graph, pairs: list[_Pair], method: str, steps: int, bar: Any
) -> torch.Tensor:
    """Σ over ``pairs`` (in order, float64) of ``(out_u(clean) − out_u(corrupted)) · ∂m/∂in_v``
    ``[writers, readers]``; records each pair's runs and endpoints on the way."""
    raw = torch.zeros(len(graph.writers), len(graph.readers), device=em.device, dtype=torch.float64)
    for p in pairs:
        ids = torch.stack([p.clean, p.corrupted])
        W, R, m = em.record(ids, _checked(p.metric, 2), p.positions)
        p.W_clean, p.W_corr, p.R_corr = W[0], W[1], R[1]
        p.m_clean, p.m_corr = float(m[0]), float(m[1])
        if method == "eap":
            G, _ = em.gradients(p.clean[None], _checked(p.metric, 1), p.positions)
        else:
            alpha = torch.arange(steps, device=em.device, dtype=torch.float32) + 0.5
            alpha = (alpha / steps)[:, None, None]
            e0, e1 = p.W_corr[0], p.W_clean[0]
            emb = e0[None] + alpha * (e1 - e0)[None]
            G, _ = em.gradients(
                p.clean[None].expand(steps, -1),
                _checked(p.metric, steps),
                p.positions,
                embed=emb,
            )
            G = G / steps
        dW = (p.W_clean - p.W_corr).reshape(len(graph.writers), -1)
        raw += dW.double() @ G.reshape(len(graph.readers), -1).double().T
        if bar is not None:
            bar.update(1)
    return raw


def finish_circuit(
    raw: np.ndarray,
    m_clean: list[float],
    m_corr: list[float],
    *,
    graph: Graph | None = None,
    graph_shape: list[Any] | None = None,
    method: str,
    steps: int,
    name: str,
    tokens: list[str],
    corrupted_tokens: list[str],
    model_name: str,
    saved: dict[str, Any],
) -> Circuit:
    """The :class:`Circuit` of summed edge scores ``raw`` over ``len(m_clean)`` pairs: the mean
    score over pairs as a share of the mean clean − corrupted gap (no model attached)."""
    if graph is None:
        n_layers, n_heads, n_kv_heads, nodes, parallel = graph_shape
        graph = Graph.build(n_layers, n_heads, n_kv_heads, nodes=nodes, parallel=parallel)
    clean_value, corr_value = float(np.mean(m_clean)), float(np.mean(m_corr))
    normalize(clean_value, clean_value, corr_value)  # refuses a vanishing gap, clearly
    gap = clean_value - corr_value
    scores = (raw / len(m_clean)) / gap
    scores = np.where(graph.valid, scores, np.nan).astype(np.float32)
    return Circuit(
        graph=graph,
        scores=scores,
        method=method,
        steps=steps if method == "eap-ig" else 1,
        metric=name,
        clean_value=clean_value,
        corrupted_value=corr_value,
        tokens=tokens,
        corrupted_tokens=corrupted_tokens,
        model_name=model_name,
        n_pairs=len(m_clean),
        prompts=saved,
    )


def attach(
    c: Circuit,
    model: Any,
    tokenizer: Any,
    *,
    clean: Any = None,
    corrupted: Any = None,
    metric: Any = None,
) -> Circuit:
    """Give a loaded circuit its model back so that it evaluates live again."""
    saved = c.prompts or {}
    if clean is None or corrupted is None:
        if not saved.get("pairs"):
            raise ValueError(
                "this circuit file does not hold its prompts; pass clean= and corrupted=."
            )
        clean = [a for a, _ in saved["pairs"]]
        corrupted = [b for _, b in saved["pairs"]]
    if saved.get("custom_metric") and metric is None:
        raise ValueError(
            "this circuit was scored with a custom metric, which a file cannot hold; pass the "
            "same callable: cb.load_circuit(path, model, tokenizer, metric=my_metric)."
        )
    adapter = get_adapter(model)
    info = model_info(model, adapter)
    g = c.graph
    if (info.n_layers, info.n_heads, info.n_kv_heads) != (g.n_layers, g.n_heads, g.n_kv_heads):
        raise ValueError(
            f"the circuit's graph has {g.n_layers} layers × {g.n_heads} heads ({g.n_kv_heads} KV) "
            f"but the model has {info.n_layers} × {info.n_heads} ({info.n_kv_heads}); pass the "
            "model the circuit was computed on."
        )
    em = EdgeModel(model, adapter, info, g)
    answers = saved.get("answer") or None
    wrongs = saved.get("wrong") or None
    with eval_mode(model):
        pairs, *_ = _prepare(model, tokenizer, clean, corrupted, answers, wrongs, metric, em, info)
        live = _Live(em, pairs)
        live.record()
    c._live = live
    return c
