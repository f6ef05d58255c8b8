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
from typing import Any

import torch

from .._threads import one_thread
from ..capture import _memory
from ..capture._attn_interface import InterfaceUnavailable, attention_hooks, interface_status
from ..capture._capture import Capture, ModelInfo
from ..capture._patterns import Patterns
from ..capture._prompts import encode, id_texts, prompt_text
from ..capture._run import _capture_mode, model_info
from ..capture._tokens import decode_incremental
from ..capture.adapters import get_adapter
from ..capture.adapters._base import gather_weights, get_module
from ._feature_sites import merge_clamp
from ._generation import Generation, Sampling
from ._steering import Steering, resolve_steering, steering_hooks
from ._step_capture import _assemble, _prefix_chunk, _StepRecorder


def _continuation_ids(tokenizer: Any, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"text={text!r} produced no tokens.")
    return list(ids)


# One forward per token, each many small ops: on a busy machine two torch threads wait on each
# other at every op's barrier (see circuitboard.patch); on an idle one, two help.
@one_thread(when_busy=True)
def generate(
    model: Any,
    tokenizer: Any,
    prompt: str | list[int] | torch.Tensor,
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
    prompt : str or token ids
        The prompt (special tokens the tokenizer adds, e.g. BOS, are kept), or its token ids
        (a list of ints or a 1-D integer tensor, run as given; ``tokenizer`` may then be None
        and tokens read ``"#<id>"``).
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
    >>> from circuitboard.testing import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> v = torch.zeros(32); v[0] = 1.0
    >>> gen = generate(model, tok, "When Mary", max_new_tokens=2, steer=v, layer=1, scale=4.0)
    >>> gen.steering
    Steering(L1 resid_pre |v|=1 × 4 at all)
    """
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
    ids, texts = encode(tokenizer, prompt, "prompt", info.d_vocab)
    prompt = prompt_text(prompt, texts)
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
    gen_texts = (
        decode_incremental(tokenizer, prompt_ids, gen_ids) if tokenizer else id_texts(None, gen_ids)
    )
    cap = Capture(
        tokens=list(prompt_texts) + gen_texts,
        token_ids=torch.tensor(prompt_ids + gen_ids, dtype=torch.long),
        tensors=tensors,
        logits=torch.cat(logits_parts) if logits_parts else None,
        info=info,
        weights=gather_weights(model, adapter, info),
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
