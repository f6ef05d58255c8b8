"""`Generation`: a generation as a first-class object (tokens, per-step logits, the capture over
prompt + continuation), with its lens, attributions and forks; `Sampling` says how tokens were
chosen."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..capture._capture import Capture
from ._steering import Steering, resolve_steering

_SAME: Any = object()  # fork(): "keep the parent's value"


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
    >>> from circuitboard.testing import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> gen = cb.generate(model, tok, "When Mary and John", max_new_tokens=3, stop_at_eos=False)
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

    def attribution(self, step: int, baseline: Any = None, *, target: Any = None) -> Any:
        """Direct logit attribution of the token chosen at ``step`` (minus ``baseline``'s), or
        of ``target`` there: another token, a token set, or ``cb.Direction(v)`` (a logit or
        residual-stream direction, no baseline).

        An :class:`circuitboard.analysis.Attribution` at :meth:`position` ``(step)``: every
        head, MLP, the embedding and the biases, plus, when steered, ``steer``: what the added
        vectors contribute directly through the frozen final norm. The values sum to the
        model's logit (difference), steered or not.
        """
        return self.attributions([step], baseline, target=target)[0]

    def attributions(
        self, steps: list[int] | None = None, baseline: Any = None, *, target: Any = None
    ) -> list[Any]:
        """:meth:`attribution` of several steps (default all), sharing one preparation."""
        from ..analysis._attribution import Attribution, attribute_positions, prepare, readout

        steps = list(range(self.n_steps)) if steps is None else [self._step(s) for s in steps]
        cap, steer_total = self._attribution_capture()
        out = []
        for s in steps:
            chosen = self.token_ids[s] if target is None else target
            t, b, p = prepare(cap, chosen, baseline, self.position(s))
            final = None
            if steer_total is not None and getattr(t, "space", None) == "resid":
                # the prepared capture drops the steered final residual; the value reads it
                L = cap.info.n_layers
                final = self.capture.tensors[f"blocks.{L - 1}.hook_resid_post"].double()
            attr = attribute_positions(cap, t, b, [p], final=final)[0]
            if steer_total is None:
                out.append(attr)
                continue
            if getattr(t, "space", None) == "resid":  # a residual direction: read as it is
                u = t.vector
            else:
                u = readout(cap.weights["unembed.W_U"].detach().to("cpu", torch.float64), t, b)
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
        >>> from circuitboard.testing import tiny_model
        >>> model, tok = tiny_model("llama")
        >>> gen = cb.generate(model, tok, "When Mary and John", max_new_tokens=4, stop_at_eos=False)
        >>> alt = gen.fork(2, text=" the")
        >>> alt.token_ids[:2] == gen.token_ids[:2]
        True
        """
        from ._generate import _continuation_ids, _run  # which builds Generations: not above

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
