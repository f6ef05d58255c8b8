"""`generate()`: a generation as a first-class object, captured step by step with the KV cache.

Each forward after the prompt feeds one token and reuses the cache, and the capture hooks
record only that new position (its query's attention row over every key so far), so the
capture costs little over plain ``model.generate``. The rows are assembled into one
:class:`Capture` over prompt + continuation that equals a single forward over those tokens.

Step ``s`` (0-based) is the forward that chose generated token ``s``: it runs at position
``n_prompt + s - 1`` (the last prompt token for ``s = 0``). ``gen.top(k, s)``, the view's
lens / attention / attribution of step ``s`` all read that position.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from ..capture import _memory
from ..capture._attn_interface import InterfaceUnavailable, attention_hooks, interface_status
from ..capture._capture import Capture, ModelInfo
from ..capture._hooks import Recorder
from ..capture._patterns import LayerSpec, Patterns, span_from_allowed
from ..capture._run import _capture_mode, _gather_weights, model_info
from ..capture._tokens import decode_incremental, tokenize
from ..capture.adapters import get_adapter
from ..capture.adapters._base import get_module
from ._feature_sites import merge_clamp
from ._steering import Steering, resolve_steering, steering_hooks

_SAME: Any = object()  # fork(): "keep the parent's value"


class _StepRecorder(Recorder):
    """The capture's recorder, for forwards that see only new positions (KV cache).

    Queries and keys (the attention-interface path) are recorded for the new positions only
    (the key tensor a cached forward hands the kernel holds every position so far: its last
    rows are the new ones), with each new query's allowed keys as ``[lo, hi)`` spans, so the
    pattern of prompt + continuation is recomputed later exactly as for one forward. On the
    eager path, each new query's row of weights over every key so far is kept and padded
    into the full pattern afterwards.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step_specs: dict[int, list[tuple[torch.Tensor, torch.Tensor | None]]] = {}
        self.layer_scaling: dict[int, tuple[float, float | None]] = {}

    def put_pattern(self, name: str, w: torch.Tensor) -> None:
        for r, (idx, n) in enumerate(self.rows):
            self.store[idx][name] = self._copy(w[r, :, :n, :])

    def _qk_recorder(self, layer: int) -> Any:
        p = f"blocks.{layer}.attn."

        def on_qkv(call: Any) -> None:
            ((idx, n),) = self.rows
            q = call.query.transpose(1, 2)[0, -n:]  # [new, heads, d_head]
            k = call.key.transpose(1, 2)[0, -n:]  # the new positions' keys
            self.store[idx][p + "hook_q"] = self._copy(q, q.dtype)
            self.store[idx][p + "hook_k"] = self._copy(k, k.dtype)
            allowed = call.allowed()[0, :, -n:, :]  # [1 or heads, new, keys so far]
            if allowed.shape[0] > 1 and not bool((allowed == allowed[:1]).all()):
                raise InterfaceUnavailable(
                    f"layer {layer} has a different mask per head; circuitboard records one."
                )
            span, dense = span_from_allowed(allowed[0])
            self.step_specs.setdefault(layer, []).append(
                (span, None if dense is None else allowed[0].cpu().clone())
            )
            self.layer_scaling[layer] = (call.scaling, call.softcap)

        return on_qkv

    def full_specs(self, n: int, prefix: dict[int, Any] | None = None) -> dict[int, LayerSpec]:
        """Each layer's :class:`LayerSpec` over all ``n`` positions (``prefix``: the parent's
        specs, whose first rows a fork keeps)."""
        out = {}
        for layer, parts in self.step_specs.items():
            spans = [sp for sp, _ in parts]
            dense_rows = [d for _, d in parts]
            m0 = n - sum(int(sp.shape[0]) for sp in spans)
            old = prefix.get(layer) if prefix else None
            if old is not None and m0:
                spans.insert(0, old.span[:m0])
                dense_rows.insert(0, old.allowed[:m0, :m0] if old.allowed is not None else None)
            span = torch.cat(spans)
            allowed = None
            if any(d is not None for d in dense_rows):  # not one interval per query: dense
                allowed = torch.zeros(n, n, dtype=torch.bool)
                row = 0
                for sp, d in zip(spans, dense_rows, strict=True):
                    k = sp.shape[0]
                    if d is None:
                        cols = torch.arange(n)
                        d = (cols >= sp[:, :1]) & (cols < sp[:, 1:])
                    allowed[row : row + k, : d.shape[1]] = d[:, :n]
                    row += k
            scaling, softcap = self.layer_scaling[layer]
            out[layer] = LayerSpec(scaling, softcap, span, allowed)
        return out


def _assemble(chunks: list[dict[str, torch.Tensor]], n: int) -> dict[str, torch.Tensor]:
    """Concatenate per-forward row blocks along positions; patterns padded to ``[H, n, n]``."""
    out: dict[str, torch.Tensor] = {}
    for name in chunks[0]:
        parts = [c[name] for c in chunks]
        if name.endswith("attn.hook_pattern"):
            parts = [torch.nn.functional.pad(p, (0, n - p.shape[-1])) for p in parts]
            out[name] = torch.cat(parts, dim=1)
        else:
            out[name] = torch.cat(parts, dim=0)
    return out


def _prefix_chunk(cap: Capture, m: int) -> dict[str, torch.Tensor]:
    """The first ``m`` positions of a capture (patterns ``[H, m, m]``): a fork's shared part."""
    out = {}
    for name, t in cap.tensors.items():
        out[name] = t[:, :m, :m] if name.endswith("attn.hook_pattern") else t[:m]
    return out


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. Sampled steps draw from a generator seeded with
    ``(seed, step)``, so a fork draws the same random number as its parent at every step:
    any difference between them comes from the intervention (common random numbers)."""

    do_sample: bool = False
    seed: int | None = None
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    eos: tuple[int, ...] = ()  # suppressed before min_new_tokens
    min_new_tokens: int = 0

    def choose(self, logits: torch.Tensor, step: int) -> int:
        if step < self.min_new_tokens and self.eos:
            logits = logits.clone()
            logits[list(self.eos)] = float("-inf")
        if not self.do_sample:
            return int(logits.argmax())
        x = logits.float().cpu() / self.temperature
        if self.top_k is not None and self.top_k < x.numel():
            kth = x.topk(self.top_k).values[-1]
            x = x.masked_fill(x < kth, float("-inf"))
        if self.top_p is not None and self.top_p < 1.0:
            sorted_x, order = x.sort(descending=True)
            cum = sorted_x.softmax(-1).cumsum(-1)
            drop = cum - sorted_x.softmax(-1) > self.top_p  # keep the token that crosses top_p
            x[order[drop]] = float("-inf")
        g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + step)
        return int(torch.multinomial(x.softmax(-1), 1, generator=g))

    def describe(self) -> str:
        if not self.do_sample:
            return "greedy"
        extra = "".join(
            f", {k}={v}" for k, v in (("top_k", self.top_k), ("top_p", self.top_p)) if v
        )
        return f"sampled (seed={self.seed}, temperature={self.temperature:g}{extra})"


@dataclass(frozen=True, eq=False)
class Generation:
    """A generated continuation with the model's exact activations at every step.

    Attributes
    ----------
    prompt : str
        The prompt.
    text : str
        The continuation only (decoded).
    tokens : list of str
        The generated tokens' texts, one per step (``capture.tokens`` has prompt + these).
    token_ids : list of int
        The generated token ids.
    capture : Capture
        Prompt + continuation, as a single forward over them computes it (float32 by default);
        every view accepts it. ``capture.n_prompt_tokens`` marks where generation starts.
    steering : Steering
        The intervention of the steps this generation computed itself (from ``fork_step`` on).
    sampling : Sampling
        Greedy or sampled, with the seed.
    parent, fork_step : Generation or None, int or None
        For a fork: the generation it shares its first ``fork_step`` tokens with.
    forced : tuple of int
        Steps whose token was given (``fork(text=...)``) instead of chosen.
    steer_added : dict
        ``{layer: [positions, d_model]}`` what the steering added to each steered block's input
        (float32; zero rows where unsteered).

    Examples
    --------
    >>> from tests.unit.tiny_models import tiny_llama
    >>> model, tok = tiny_llama()
    >>> gen = generate(model, tok, "When Mary and John", max_new_tokens=3, stop_at_eos=False)
    >>> len(gen.tokens), gen.capture.n_tokens == gen.capture.n_prompt_tokens + 3
    (3, True)
    >>> gen.top(2, step=0)[0]["label"] == gen.tokens[0]
    True
    """

    prompt: str
    tokens: list[str]
    token_ids: list[int]
    capture: Capture
    steering: Steering
    sampling: Sampling
    parent: Generation | None = None
    fork_step: int | None = None
    forced: tuple[int, ...] = ()
    steer_added: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    _model: Any = field(default=None, repr=False)
    _cache: Any = field(default=None, repr=False)
    _kinds: tuple[str, ...] = ()
    _dtype: Any = None
    _stop_at_eos: bool = True
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)  # prepared analysis inputs

    # -- reading -----------------------------------------------------------------------------
    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def n_prompt(self) -> int:
        return int(self.capture.n_prompt_tokens or 0)

    @property
    def n_steps(self) -> int:
        return len(self.token_ids)

    def _step(self, step: int) -> int:
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"step must be an int; got {step!r}.")
        n = self.n_steps
        if not -n <= step < n:
            raise IndexError(
                f"step={step} is out of range: this generation has {n} steps (0..{n - 1})."
            )
        return step % n

    def position(self, step: int) -> int:
        """The token position whose forward chose generated token ``step``."""
        return self.n_prompt + self._step(step) - 1

    def logits(self, step: int) -> torch.Tensor:
        """``[vocab]`` float32 next-token logits from which token ``step`` was chosen."""
        if self.capture.logits is None:
            raise KeyError("this generation did not record logits (what= left them out).")
        return self.capture.logits[self.position(step)]

    def top(self, k: int = 10, step: int = -1) -> list[dict[str, Any]]:
        """The ``k`` most likely next tokens at ``step`` (temperature 1), most likely first.

        Each entry: ``label`` (token text), ``id``, ``prob``, ``logit``, ``rank`` and ``chosen``
        (whether it is the token this generation took there).
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int; got {k!r}.")
        s = self._step(step)
        lg = self.logits(s)
        probs = lg.softmax(-1)
        p, ids = probs.topk(min(k, probs.numel()))
        tok = self.capture.tokenizer
        chosen = self.token_ids[s]
        return [
            {
                "label": tok.decode([i]) if tok is not None else f"#{i}",
                "id": i,
                "prob": float(pi),
                "logit": float(lg[i]),
                "rank": r,
                "chosen": i == chosen,
            }
            for r, (pi, i) in enumerate(zip(p.tolist(), ids.tolist(), strict=True))
        ]

    def kl(self, other: Generation) -> torch.Tensor:
        """``[steps]`` KL(self ‖ other) between the two next-token distributions at each step
        both have (nats, float64)."""
        n = min(self.n_steps, other.n_steps)
        if self.n_prompt != other.n_prompt:
            raise ValueError("kl() compares generations of the same prompt.")
        a = self.capture.logits[self.n_prompt - 1 : self.n_prompt - 1 + n].double()
        b = other.capture.logits[other.n_prompt - 1 : other.n_prompt - 1 + n].double()
        la, lb = a.log_softmax(-1), b.log_softmax(-1)
        return (la.exp() * (la - lb)).sum(-1).clamp_min(0.0)

    def attribution(self, step: int, baseline: Any = None) -> Any:
        """Direct logit attribution of the token chosen at ``step`` (minus ``baseline``'s).

        An :class:`circuitboard.analysis.Attribution` at :meth:`position` ``(step)``: every
        head, MLP, the embedding and the biases, plus, when steered, ``steer``: what the added
        vectors contribute directly through the frozen final norm. The values sum to the
        model's logit (difference), steered or not.
        """
        return self.attributions([step], baseline)[0]

    def attributions(self, steps: list[int] | None = None, baseline: Any = None) -> list[Any]:
        """:meth:`attribution` of several steps (default all), sharing one preparation."""
        from ..analysis._attribution import Attribution, attribute_positions, prepare

        steps = list(range(self.n_steps)) if steps is None else [self._step(s) for s in steps]
        cap, steer_total = self._attribution_capture()
        out = []
        for s in steps:
            t, b, p = prepare(cap, self.token_ids[s], baseline, self.position(s))
            attr = attribute_positions(cap, t, b, [p])[0]
            if steer_total is None:
                out.append(attr)
                continue
            cols = cap.weights["unembed.W_U"][:, [t] if b is None else [t, b]]
            cols = cols.detach().to("cpu", torch.float64)
            u = cols[:, 0] - (cols[:, 1] if b is not None else 0.0)
            scale = cap.tensors["ln_final.hook_scale"].reshape(cap.n_tokens, -1)[p, 0].double()
            w = cap.weights["ln_final.w"].double()
            w = 1.0 + w if cap.info.norm == "gemma_rmsnorm" else w
            direction = scale * w * u
            if cap.info.norm == "layernorm":
                direction = direction - direction.mean()
            steer_value = float(steer_total[p] @ direction)
            out.append(
                Attribution(
                    labels=[*attr.labels, "steer"],
                    values=torch.cat([attr.values, torch.tensor([steer_value])]),
                    model_value=attr.model_value,
                    target=attr.target,
                    baseline=attr.baseline,
                    pos=attr.pos,
                    n_layers=attr.n_layers,
                    n_heads=attr.n_heads,
                    target_text=attr.target_text,
                    baseline_text=attr.baseline_text,
                    biases=attr.biases,
                    residual_error=attr.residual_error,
                    _neurons=attr._neurons,
                )
            )
        return out

    def _attribution_capture(self) -> tuple[Capture, torch.Tensor | None]:
        """The capture as attribution reads it, made once: the tensors and weights it uses in
        float64 (converted once instead of at every step) and, when steered, the residual
        without what steering added (its direct term is added separately), so the components
        rebuild it exactly. Also returns the steering's total ``[pos, d_model]`` (or None)."""
        if "attribution" in self._memo:
            return self._memo["attribution"]
        cap = self.capture
        L = cap.info.n_layers
        f64 = torch.float64
        used = ("attn.hook_z", "mlp.hook_post")
        tensors = {
            n: (t.detach().to("cpu", f64) if n.endswith(used) else t)
            for n, t in cap.tensors.items()
        }
        for n in (f"blocks.{L - 1}.hook_resid_post", "blocks.0.hook_resid_pre"):
            if n in tensors:
                tensors[n] = tensors[n].detach().to("cpu", f64)
        weights = {
            n: (w.detach().to("cpu", f64) if n.endswith(("W_O", "b_O", "W_out", "b_out")) else w)
            for n, w in cap.weights.items()
        }
        steered = {li: d for li, d in self.steer_added.items() if bool(d.any())}
        total = None
        if steered:
            total = torch.stack(list(steered.values())).sum(0).double()
            # Without the final residual, attribution takes the captured final-norm scale as
            # is and skips its rebuild check, which the steering term (added below) would fail:
            # the components plus that term rebuild the residual (tests check the sum).
            tensors.pop(f"blocks.{L - 1}.hook_resid_post", None)
            if 0 in steered and "blocks.0.hook_resid_pre" in tensors:  # recorded after steering
                first = tensors["blocks.0.hook_resid_pre"]
                tensors["blocks.0.hook_resid_pre"] = first - steered[0].double()
        prepared = Capture(**{**cap.__dict__, "tensors": tensors, "weights": weights})
        self._memo["attribution"] = (prepared, total)
        return prepared, total

    def step_lens(self, k: int = 1, steps: list[int] | None = None) -> dict[str, torch.Tensor]:
        """The logit lens of each step (default all): every layer's residual
        (``hook_resid_post``, normalized with its own scale; the last layer the model's
        output) at the step's :meth:`position`, through the final norm and unembedding.

        Returns ``top_ids`` / ``top_probs`` ``[steps, layers, k]`` and ``chosen_probs``
        ``[steps, layers]`` (the probability of the token each step chose).
        """
        from ..analysis._lens import _norm_params, _normalized, _unembed

        steps = list(range(self.n_steps)) if steps is None else [self._step(s) for s in steps]
        cap, info = self.capture, self.capture.info
        params = _norm_params(cap, info)
        pos = torch.tensor([self.position(s) for s in steps], dtype=torch.long)
        chosen = torch.tensor([self.token_ids[s] for s in steps], dtype=torch.long)
        L = info.n_layers
        # every layer's rows of these positions in one matmul: [layers * steps, vocab]
        y = torch.cat([_normalized(cap, info, li, params)[pos] for li in range(L)])
        logp = _unembed(y, info, params).log_softmax(-1)
        tp, ti = logp.topk(k, dim=-1)
        cp = logp.gather(-1, chosen.repeat(L)[:, None])[:, 0].exp()
        n = len(steps)
        return {
            "top_ids": ti.reshape(L, n, k).transpose(0, 1),
            "top_probs": tp.exp().reshape(L, n, k).transpose(0, 1).float(),
            "chosen_probs": cp.reshape(L, n).T.float(),
        }

    # -- forks -------------------------------------------------------------------------------
    def fork(
        self,
        step: int,
        *,
        steer: Any = _SAME,
        layer: Any = _SAME,
        scale: Any = _SAME,
        positions: Any = _SAME,
        text: str | None = None,
        max_new_tokens: int | None = None,
    ) -> Generation:
        """A new generation sharing the first ``step`` generated tokens, then continuing
        with another intervention (or with ``text`` forced at ``step``).

        The shared part is exact: the same tokens, the same captured numbers and the same KV
        cache (cut at the fork). From step ``step`` on, the forwards use the new ``steer`` /
        ``layer`` / ``scale`` / ``positions`` (each defaults to this generation's value;
        ``steer=None`` removes steering). Positions before the fork keep this generation's
        activations: a fork changes what happens from then on. ``text`` is tokenized after
        the shared tokens and forced token by token before generation resumes. Sampling uses
        the same seed, so a fork with unchanged settings reproduces its parent.

        Examples
        --------
        >>> from tests.unit.tiny_models import tiny_llama
        >>> model, tok = tiny_llama()
        >>> gen = generate(model, tok, "When Mary and John", max_new_tokens=4, stop_at_eos=False)
        >>> alt = gen.fork(2, text=" the")
        >>> alt.token_ids[:2] == gen.token_ids[:2]
        True
        """
        if self._model is None:
            raise ValueError(
                "this generation has no model attached (a loaded copy?); fork "
                "needs the model: generate again with cb.generate."
            )
        n = self.n_steps
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= n:
            raise ValueError(
                f"fork step must be an int in [0, {n}] (the number of generated tokens to "
                f"share); got {step!r}."
            )
        st = self.steering
        layer_arg = None
        if steer is _SAME:
            hooks = dict(st.hooks)
            if layer is not _SAME:
                if len(hooks) != 1:
                    raise ValueError(
                        "layer= alone moves a single-layer steering; this one has "
                        f"{len(hooks)} layers. Pass steer= as well."
                    )
                hooks = {layer: next(iter(hooks.values()))}
            steer_arg: Any = hooks or None
        else:
            steer_arg = steer
            layer_arg = None if layer is _SAME else layer
        new = resolve_steering(
            steer_arg,
            layer_arg,
            st.scale if scale is _SAME else scale,
            st.positions if positions is _SAME else positions,
            n_layers=self.capture.info.n_layers,
            d_model=self.capture.info.d_model,
        )
        forced: list[int] = []
        if text is not None:
            if not isinstance(text, str) or not text:
                raise ValueError(f"text must be a non-empty string; got {text!r}.")
            forced = _continuation_ids(self.capture.tokenizer, text)
        remaining = n - step if max_new_tokens is None else max_new_tokens
        total = step + max(remaining, len(forced))
        return _run(
            self._model,
            self.capture.tokenizer,
            prompt=self.prompt,
            prompt_ids=self.capture.token_ids[: self.n_prompt].tolist(),
            prompt_texts=self.capture.tokens[: self.n_prompt],
            n_steps=total,
            steering=new,
            sampling=self.sampling,
            kinds=self._kinds,
            dtype=self._dtype,
            stop_at_eos=self._stop_at_eos,
            parent=self,
            fork_step=step,
            forced=forced,
        )

    def __repr__(self) -> str:
        what = f"fork of step {self.fork_step}, " if self.parent is not None else ""
        text = self.text if len(self.text) <= 40 else self.text[:40] + "…"
        return (
            f"Generation({what}{self.n_steps} tokens {text!r}, {self.sampling.describe()}, "
            f"steering: {self.steering.description})"
        )


def _continuation_ids(tokenizer: Any, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"text={text!r} produced no tokens.")
    return list(ids)


def generate(
    model: Any,
    tokenizer: Any,
    prompt: str,
    *,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    seed: int | None = None,
    steer: Any = None,
    layer: int | None = None,
    scale: float = 1.0,
    positions: Any = "all",
    what: Any = None,
    dtype: torch.dtype | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_at_eos: bool = True,
    min_new_tokens: int = 0,
    max_memory: Any = "8GiB",
    clamp: Any = None,
) -> Generation:
    """Generate a continuation, optionally steered, capturing every step with the KV cache.

    Parameters
    ----------
    model, tokenizer
        A causal Hugging Face model of a supported family and its tokenizer.
    prompt : str
        The prompt (special tokens the tokenizer adds, e.g. BOS, are kept).
    max_new_tokens : int
        Tokens to generate (fewer when the model emits its end-of-sequence token and
        ``stop_at_eos``).
    do_sample, seed, temperature, top_k, top_p
        Greedy by default. Sampling draws step ``s`` from a generator seeded with
        ``(seed, s)``: the same seed gives the same text, and forks share the random numbers.
        Without a seed one is drawn and recorded in ``gen.sampling``.
    steer
        A ``[d_model]`` vector (``cb.steering_vector``, ``cmp.direction``) added to the input of
        block ``layer`` (``blocks.{layer}.hook_resid_pre``) times ``scale``; a
        ``{layer: vector}`` mapping; or a callable ``fn(resid [batch, pos, d_model],
        positions [pos]) -> resid or None`` (its change is multiplied by ``scale``).
    layer, scale
        Where and how strongly to steer (a steering vector remembers its layer).
    positions
        ``"all"`` (every position, prompt included), ``"new"`` (every forward that chooses a
        token: the last prompt position and the generated ones; the rest of the prompt is read
        unsteered), or a list of absolute token positions. Steering position 0 of a model
        with an attention sink there (SmolLM2's first token has a residual norm ~20× the
        others) tends to break the model rather than steer it: prefer ``"new"``.
    what, dtype
        What to capture (as :func:`circuitboard.capture`; default its default kinds) and the
        storage dtype (default float32: the exact numbers).
    stop_at_eos
        Stop after the end-of-sequence token.
    min_new_tokens
        Never choose the end-of-sequence token before this many tokens (as transformers'
        ``min_new_tokens``; the recorded logits are the model's, unchanged).
    max_memory
        Refuse up front when the capture would exceed this (see :func:`circuitboard.capture`).
    clamp
        ``{(sae, feature): value}``: set dictionary features to values at the steered
        positions, delta-clamped (the residual gets ``decode(clamped) − decode(original)``, so
        the dictionary's error stays; a feature clamped to its own value changes nothing). For
        dictionaries on the residual stream; see :mod:`circuitboard.intervene._feature_sites`.

    Returns
    -------
    Generation
        ``.text``, ``.tokens``, ``.capture``, ``.top(k, step)``, ``.fork(step, ...)``.

    Notes
    -----
    The model runs in eval mode under ``torch.no_grad()``, with eager attention while
    patterns are captured. Steering hooks and capture hooks are removed after every call,
    also when a hook or the forward raises (KeyboardInterrupt included).

    Examples
    --------
    >>> from tests.unit.tiny_models import tiny_llama
    >>> model, tok = tiny_llama()
    >>> v = torch.zeros(32); v[0] = 1.0
    >>> gen = generate(model, tok, "When Mary", max_new_tokens=2, steer=v, layer=1, scale=4.0)
    >>> gen.steering
    Steering(L1 resid_pre |v|=1 × 4 at all)
    """
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"prompt must be a non-empty string; got {prompt!r}.")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise TypeError(f"max_new_tokens must be an int >= 1; got {max_new_tokens!r}.")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens}.")
    adapter = get_adapter(model)
    if not adapter.causal:
        raise ValueError(
            f"cb.generate needs a causal language model; {adapter.name} is a bidirectional "
            "encoder. Use cb.capture on it instead."
        )
    info = model_info(model, adapter)
    steer, layer = merge_clamp(steer, layer, clamp, info.n_layers, info.d_model)
    steering = resolve_steering(
        steer, layer, scale, positions, n_layers=info.n_layers, d_model=info.d_model
    )
    if not isinstance(do_sample, bool):
        raise TypeError(f"do_sample must be True or False; got {do_sample!r}.")
    if do_sample and seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None; got {seed!r}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature!r}.")
    if (
        isinstance(min_new_tokens, bool)
        or not isinstance(min_new_tokens, int)
        or min_new_tokens < 0
    ):
        raise ValueError(f"min_new_tokens must be an int >= 0; got {min_new_tokens!r}.")
    sampling = Sampling(
        do_sample,
        seed,
        float(temperature),
        top_k,
        top_p,
        tuple(sorted(_eos_ids(model, tokenizer))) if min_new_tokens else (),
        min_new_tokens,
    )
    ids, texts = tokenize(tokenizer, prompt)
    if not ids:
        raise ValueError(f"the tokenizer produced no tokens for prompt {prompt!r}.")
    kinds = _memory.parse_what(what)
    dtype = torch.float32 if dtype is None else dtype
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos and len(ids) + max_new_tokens > max_pos:
        raise ValueError(
            f"the prompt has {len(ids)} tokens and max_new_tokens={max_new_tokens}: "
            f"{len(ids) + max_new_tokens} positions, beyond the model's context "
            f"(max_position_embeddings={max_pos}). Lower max_new_tokens to at most "
            f"{max(max_pos - len(ids), 0)} or shorten the prompt."
        )
    est = _memory.estimate(
        info,
        [len(ids) + max_new_tokens],
        info.n_layers,
        kinds,
        dtype,
        has_pos_embed=adapter.pos_embed is not None,
    )
    _memory.check(est, max_memory, 1, info.n_layers)
    return _run(
        model,
        tokenizer,
        prompt=prompt,
        prompt_ids=ids,
        prompt_texts=texts,
        n_steps=max_new_tokens,
        steering=steering,
        sampling=sampling,
        kinds=kinds,
        dtype=dtype,
        stop_at_eos=stop_at_eos,
    )


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}


def _run(
    model: Any,
    tokenizer: Any,
    *,
    prompt: str,
    prompt_ids: list[int],
    prompt_texts: list[str],
    n_steps: int,
    steering: Steering,
    sampling: Sampling,
    kinds: tuple[str, ...],
    dtype: Any,
    stop_at_eos: bool,
    parent: Generation | None = None,
    fork_step: int = 0,
    forced: list[int] | None = None,
) -> Generation:
    """The generation loop (fresh or from a fork point): one forward per new token."""

    adapter = get_adapter(model)
    info: ModelInfo = model_info(model, adapter)
    n_prompt = len(prompt_ids)
    device = get_module(model, adapter.embed).weight.device
    eos = _eos_ids(model, tokenizer) if stop_at_eos else set()
    forced = list(forced or [])
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos and n_prompt + n_steps > max_pos:
        raise ValueError(
            f"{n_prompt} prompt tokens + {n_steps} steps exceed the model's context "
            f"(max_position_embeddings={max_pos}); ask for fewer tokens."
        )

    qk_ok, qk_kernel = interface_status(model) if "pattern" in kinds else (False, "")
    path, kernel = "eager", getattr(model.config, "_attn_implementation", None)

    def run(qk: bool) -> tuple:
        """The generation loop, recording queries/keys through the interface (qk) or eager."""
        return _loop(
            model, adapter, info, device, prompt_ids, n_steps, steering, sampling, kinds,
            dtype, eos, parent, fork_step, list(forced), qk=qk,
        )  # fmt: skip

    if "pattern" in kinds and qk_ok:
        try:
            state = run(qk=True)
            path, kernel = "interface", qk_kernel
        except InterfaceUnavailable as e:  # the model's attention cannot go through it
            path, kernel = f"eager (the attention interface was not usable: {e})", "eager"
            state = None
    else:
        state = None
        if "pattern" in kinds:
            path, kernel = f"eager (the attention interface was not usable: {qk_kernel})", "eager"
    if state is None:
        state = run(qk=False)
    gen_ids, chunks, logits_parts, added, cache, specs = state
    info = dataclasses.replace(info, attn_implementation=kernel, attention_path=path)
    n_forced = len(forced)

    n_total = n_prompt + len(gen_ids)
    tensors = _assemble(chunks, n_total)
    patterns = Patterns(tensors, specs) if specs else None
    gen_texts = decode_incremental(tokenizer, prompt_ids, gen_ids)
    cap = Capture(
        tokens=list(prompt_texts) + gen_texts,
        token_ids=torch.tensor(prompt_ids + gen_ids, dtype=torch.long),
        tensors=tensors,
        logits=torch.cat(logits_parts) if logits_parts else None,
        info=info,
        weights=_gather_weights(model, adapter, info),
        prompt=prompt,
        tokenizer=tokenizer,
        n_prompt_tokens=n_prompt,
        patterns=patterns,
    )
    forced_steps = tuple(range(fork_step, min(fork_step + n_forced, len(gen_ids))))
    return Generation(
        prompt=prompt,
        tokens=gen_texts,
        token_ids=gen_ids,
        capture=cap,
        steering=steering,
        sampling=sampling,
        parent=parent,
        fork_step=fork_step if parent is not None else None,
        forced=forced_steps,
        steer_added=added,
        _model=model,
        _cache=cache,
        _kinds=kinds,
        _dtype=dtype,
        _stop_at_eos=stop_at_eos,
    )


def _loop(
    model: Any,
    adapter: Any,
    info: ModelInfo,
    device: Any,
    prompt_ids: list[int],
    n_steps: int,
    steering: Steering,
    sampling: Sampling,
    kinds: tuple[str, ...],
    dtype: Any,
    eos: set[int],
    parent: Generation | None,
    fork_step: int,
    forced: list[int],
    *,
    qk: bool,
) -> tuple:
    """Run the forwards: the prompt (or, for a fork, its last shared token) then one token at a
    time with the KV cache. ``qk``: record queries and keys through the attention interface
    (patterns on demand) instead of eager attention weights."""
    from transformers import DynamicCache

    n_prompt = len(prompt_ids)
    chunks: list[dict[str, torch.Tensor]] = []
    logits_parts: list[torch.Tensor] = []
    prefix_added: dict[int, torch.Tensor] = {}
    prefix_specs: dict[int, Any] = {}
    if parent is None:
        gen_ids: list[int] = []
        feed = list(prompt_ids)
        offset = 0
        cache = DynamicCache(config=model.config)
    else:
        # Keep positions [0, m) from the parent, exactly; re-run position m (the last shared
        # token) under the new intervention: its output chooses the first new token.
        gen_ids = list(parent.token_ids[:fork_step])
        m = n_prompt + fork_step - 1
        feed = [(prompt_ids + gen_ids)[m]]
        offset = m
        if m > 0:
            chunks.append(_prefix_chunk(parent.capture, m))
            if parent.capture.logits is not None:
                logits_parts.append(parent.capture.logits[:m])
            cache = copy.deepcopy(parent._cache)
            extra = cache.get_seq_length() - m
            if extra > 0:
                cache.crop(-extra)  # negative: drop that many (every transformers version)
        else:
            cache = DynamicCache(config=model.config)
        prefix_added = {li: t[:m] for li, t in parent.steer_added.items()}
        if parent.capture.patterns is not None:
            prefix_specs = parent.capture.patterns.specs
        if qk and m > 0 and parent.capture.patterns is None:
            raise InterfaceUnavailable("the parent generation recorded eager patterns")

    blocks = [adapter.block(model, i) for i in range(info.n_layers)]
    layers = list(range(info.n_layers))
    with torch.no_grad(), _capture_mode(model, eager="pattern" in kinds and not qk):
        with steering_hooks(model, adapter, steering) as steer_hooks:
            steer_hooks.n_prompt = n_prompt
            rec = _StepRecorder(model, adapter, info, layers, kinds, 1, dtype, qk=qk)
            try:
                hooks = attention_hooks(model, rec.attention_hooks(), blocks=blocks) if qk else None
                with hooks or contextlib.nullcontext() as session:
                    while True:
                        steer_hooks.offset = offset
                        steer_hooks.before(len(feed))
                        rec.rows = [(0, len(feed))]
                        x = torch.tensor([feed], device=device)
                        out = model(input_ids=x, cache=cache, use_cache=True)  # cache grows
                        if session is not None and not set(layers) <= session.seen:
                            missing = sorted(set(layers) - session.seen)
                            raise InterfaceUnavailable(
                                f"the attention of layers {missing} did not call the interface"
                            )
                        lg = out.logits[0].detach().to("cpu", torch.float32)
                        if "logits" in kinds:
                            logits_parts.append(lg)
                        chunks.append(rec.store[0])
                        rec.store[0] = {}
                        offset += len(feed)
                        if len(gen_ids) >= n_steps or (gen_ids and gen_ids[-1] in eos):
                            break  # the last token has run too: the capture covers it
                        s = len(gen_ids)
                        nxt = forced.pop(0) if forced else sampling.choose(lg[-1], s)
                        gen_ids.append(nxt)
                        feed = [nxt]
            finally:
                rec.close()
            n_new = offset - (n_prompt + fork_step - 1 if parent is not None else 0)
            m0 = offset - n_new
            added: dict[int, torch.Tensor] = {}
            for li in sorted(set(prefix_added) | set(steering.hooks)):
                head = prefix_added.get(li, torch.zeros(m0, info.d_model))
                tail = steer_hooks.added(li) if li in steering.hooks else torch.zeros(0)
                if tail.numel() == 0:
                    tail = torch.zeros(n_new, info.d_model)
                added[li] = torch.cat([head, tail])
    specs = rec.full_specs(offset, prefix_specs) if qk else {}
    return gen_ids, chunks, logits_parts, added, cache, specs
