"""`capture()`: run a Hugging Face model on prompts and record what the views need."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from . import _memory
from ._attn_interface import InterfaceUnavailable, attention_hooks, interface_status
from ._capture import Capture, ModelInfo
from ._hooks import Recorder
from ._patterns import Patterns
from ._prompts import Prompt, encode, id_texts, prompt_text, split_prompts
from ._saes import SaeHooks, sae_hook
from ._tokens import decode_incremental
from .adapters import Adapter, get_adapter
from .adapters._base import check_placement, execution_device, gather_weights, get_module

DEFAULT_MAX_MEMORY = "8GiB"
BATCH_TOKENS = 4096  # padded tokens per forward pass, whatever batch_size says
PROGRESS_FROM = 16  # show a progress bar from this many prompts on


def model_info(model: Any, adapter: Adapter) -> ModelInfo:
    """The :class:`ModelInfo` of a Hugging Face model served by ``adapter``."""
    cfg = model.config
    dims = adapter.dims(cfg)
    return ModelInfo(
        architecture=adapter.name,
        model_name=getattr(cfg, "_name_or_path", "") or cfg.model_type,
        norm=adapter.norm,
        causal=adapter.causal,
        source=json.dumps(getattr(cfg, "circuitboard_source", None) or {}, sort_keys=True),
        pre_norm=adapter.pre_norm,
        compute_dtype=compute_dtype(get_module(model, adapter.embed)),
        **dims,
        **attention_info(model, adapter),
    )


def compute_dtype(module: Any) -> str | None:
    """The dtype ``module`` computes in, from its first floating-point parameter (an image
    model's embedding is a container: patch projection, class token, positions), e.g.
    ``"bfloat16"``; None when it has none."""
    for p in module.parameters():
        if p.is_floating_point():
            return str(p.dtype).removeprefix("torch.")
    return None


def attention_info(model: Any, adapter: Adapter) -> dict[str, Any]:
    """How each attention module scores: its scaling, sliding window, soft-cap, query/key
    norms and rotary function, read from the modules themselves (``ModelInfo`` fields)."""
    import sys

    attns = [
        get_module(adapter.block(model, li), adapter.block_attn)
        for li in range(adapter.n_blocks(model))
    ]
    scales = [getattr(a, "scaling", None) for a in attns]
    rotary = None
    if adapter.rotary:
        owner = sys.modules.get(type(attns[0]).__module__)
        if callable(getattr(owner, adapter.rotary, None)):
            rotary = f"{type(attns[0]).__module__}.{adapter.rotary}"
    softcap = getattr(attns[0], "attn_logit_softcapping", None)
    return {
        "rotary_fn": rotary,
        "attn_scales": None if None in scales else tuple(float(s) for s in scales),
        "attn_windows": tuple(getattr(a, "sliding_window", None) for a in attns),
        "attn_softcap": float(softcap) if softcap else None,
        "qk_norm": any(hasattr(a, "q_norm") or hasattr(a, "k_norm") for a in attns),
    }


def _parse_layers(layers: Any, n_layers: int) -> list[int]:
    if layers is None:
        return list(range(n_layers))
    items = [layers] if isinstance(layers, int) else list(layers)
    out: list[int] = []
    for layer in items:
        ok = isinstance(layer, int) and not isinstance(layer, bool)
        if not ok or not -n_layers <= layer < n_layers:
            last = n_layers - 1
            raise ValueError(
                f"layers= got {layer!r}; the model has {n_layers} layers, so use ints in "
                f"[0, {last}] (negative counts from the end), e.g. layers=[0, {last}]."
            )
        out.append(layer % n_layers)
    return sorted(set(out))


def _parse_saes(saes: Any, splice: bool, keep_error: bool) -> list[Any]:
    """``saes=`` as a list (one dictionary, a list, or a dict of them)."""
    if keep_error and not splice:
        raise ValueError(
            "keep_error=True only matters with splice=True (without splicing the model's output "
            "is already its own); pass splice=True, keep_error=True."
        )
    if saes is None:
        if splice:
            raise ValueError("splice=True needs dictionaries: pass saes=[...] as well.")
        return []
    if isinstance(saes, dict):
        return list(saes.values())
    if isinstance(saes, list | tuple):
        return list(saes)
    return [saes]


def _parse_prompts(prompts: Any) -> tuple[list[Prompt], bool]:
    return split_prompts(prompts, "prompts")


@contextlib.contextmanager
def _capture_mode(model: Any, eager: bool) -> Iterator[None]:
    """Eval mode, and eager attention when asked; both restored on exit, also on errors."""
    was_training = model.training
    before = getattr(model.config, "_attn_implementation", None)
    switch = eager and before not in (None, "eager")
    try:
        model.eval()
        if switch:
            model.set_attn_implementation("eager")
        yield
    finally:
        if switch:
            model.set_attn_implementation(before)
        model.train(was_training)


def _batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Prompt indices grouped by similar length (longest first) to keep padding small."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[list[int]] = []
    for i in order:
        if (
            out
            and len(out[-1]) < batch_size
            and (len(out[-1]) + 1) * lengths[out[-1][0]] <= max(BATCH_TOKENS, lengths[out[-1][0]])
        ):
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _forward(
    model: Any,
    rec: Recorder,
    batch: list[int],
    ids_list: list[list[int]],
    lengths: list[int],
    kinds: tuple[str, ...],
    device: Any,
    logits_out: list[torch.Tensor | None],
) -> None:
    """One right-padded forward pass of the prompts ``batch``; logits copied per prompt."""
    n_max = lengths[batch[0]]
    x = torch.zeros(len(batch), n_max, dtype=torch.long)
    mask = torch.zeros(len(batch), n_max, dtype=torch.long)
    for r, i in enumerate(batch):
        x[r, : lengths[i]] = torch.tensor(ids_list[i])
        mask[r, : lengths[i]] = 1
    rec.rows = [(i, lengths[i]) for i in batch]
    x, mask = x.to(device), mask.to(device)
    out = model(input_ids=x, attention_mask=mask, use_cache=False)
    if "logits" in kinds:
        logits = out.logits if hasattr(out, "logits") else out[0]
        whole = len(batch) == 1 and logits.device.type == "cpu"
        for r, i in enumerate(batch):
            lg = logits[r, : lengths[i]].detach()
            # a view would keep the whole padded batch alive: copy unless whole
            logits_out[i] = lg.to("cpu", torch.float32, copy=not whole)
    del out


def _generate(
    model: Any, tokenizer: Any, ids: list[int], device: Any, max_new_tokens: int, kwargs: dict
) -> list[int]:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    opts = {"do_sample": False, "max_new_tokens": max_new_tokens, "pad_token_id": pad}
    opts.update(kwargs)
    x = torch.tensor([ids], device=device)
    with torch.no_grad(), _capture_mode(model, eager=False):  # eval mode: no dropout
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), **opts)
    return out[0, len(ids) :].tolist()


def record(
    model: Any,
    adapter: Adapter,
    info: ModelInfo,
    layer_list: list[int],
    kinds: tuple[str, ...],
    dtype: torch.dtype,
    n_items: int,
    batches: list[list[int]],
    forward: Callable[[Recorder, list[int]], None],
    bar: Any = None,
    saes: Sequence[Any] = (),
    splice: bool = False,
    keep_error: bool = False,
) -> tuple[Recorder, ModelInfo]:
    """Run ``forward(rec, batch)`` for every batch with the capture hooks installed.

    Queries and keys go through the attention interface where the model's attention calls it
    (patterns then come on demand); otherwise the model is switched to eager attention for the
    capture and patterns are stored. Returns the recorder and ``info`` with the kernel and path
    used. Hooks are removed and the model restored also when a forward raises.
    """
    qk_ok, qk_kernel = interface_status(model) if "pattern" in kinds else (False, "")
    # GPT-Neo's attention bypasses the interface: its q/k are read off the projections instead
    by_modules = "pattern" in kinds and not qk_ok and adapter.module_qk is not None
    blocks = [adapter.block(model, i) for i in range(adapter.n_blocks(model))]

    def run(qk: bool) -> Recorder:
        with torch.no_grad(), _capture_mode(model, eager="pattern" in kinds and not qk):
            rec = Recorder(model, adapter, info, layer_list, kinds, n_items, dtype, qk=qk)
            try:
                if saes:  # after the recorder's hooks: the hooked tensor is recorded unspliced
                    SaeHooks(model, adapter, rec, saes, splice=splice, keep_error=keep_error)
                hooks = (
                    attention_hooks(model, rec.attention_hooks(), blocks=blocks)
                    if qk and not by_modules
                    else None
                )
                with hooks or contextlib.nullcontext() as session:
                    for batch in batches:
                        forward(rec, batch)
                        if session is not None and not set(layer_list) <= session.seen:
                            missing = sorted(set(layer_list) - session.seen)
                            raise InterfaceUnavailable(
                                f"the attention of layers {missing} did not call the attention "
                                "interface"
                            )
                        if bar is not None:
                            bar.update(len(batch))
            finally:
                rec.close()
        return rec

    path, kernel = "eager", getattr(model.config, "_attn_implementation", None)
    if "pattern" in kinds and qk_ok:
        try:
            rec = run(qk=True)
            path = "interface"
        except InterfaceUnavailable as e:  # the model's attention cannot go through it
            path = f"eager (the attention interface was not usable: {e})"
            if bar is not None:
                bar.reset()
            rec = run(qk=False)
    elif by_modules:  # q/k off the projections; the model's own kernel runs
        rec = run(qk=True)
        path = "modules (q/k projections; the attention bypasses the attention interface)"
    else:
        if "pattern" in kinds:
            path = f"eager (the attention interface was not usable: {qk_kernel})"
        rec = run(qk=False)
    if "pattern" in kinds and not by_modules:
        kernel = qk_kernel if path == "interface" else "eager"
    return rec, dataclasses.replace(info, attn_implementation=kernel, attention_path=path)


def capture(
    model: Any,
    tokenizer: Any,
    prompts: str | Sequence[int] | Sequence[str | Sequence[int]] | torch.Tensor,
    *,
    layers: int | Sequence[int] | None = None,
    what: str | Sequence[str] | None = None,
    dtype: torch.dtype = torch.float16,
    max_memory: int | float | str | None = DEFAULT_MAX_MEMORY,
    batch_size: int = 8,
    max_new_tokens: int = 0,
    generate_kwargs: dict[str, Any] | None = None,
    progress: bool | None = None,
    saes: Any = None,
    splice: bool = False,
    keep_error: bool = False,
) -> Capture | list[Capture]:
    """Run ``model`` on ``prompts`` and record activations under TransformerLens names.

    Parameters
    ----------
    model
        A Hugging Face ``transformers`` model with its head (``AutoModelForCausalLM``; BERT:
        ``AutoModelForMaskedLM``) of a supported family (``cb.supported_architectures()``:
        GPT-2, GPT-Neo, GPT-J, GPT-NeoX, Llama / Mistral / Qwen2 / Qwen3, Phi, Phi-3, StableLM,
        Gemma 1-3, OLMo 2, Mixtral / Qwen-MoE / OLMoE, BERT); other decoder-only models go
        through a fallback that infers and proves their layout (with a warning) or refuses
        saying why. Models loaded with ``device_map="auto"`` work; everything recorded is
        gathered to CPU.
    tokenizer
        Its tokenizer. Token texts are exact slices of the prompt (character offsets of a fast
        tokenizer; see :mod:`circuitboard.capture._tokens`), so they join back to the prompt;
        special tokens the tokenizer adds (BOS) are kept. May be None when every prompt is
        token ids: tokens then read ``"#<id>"``.
    prompts
        One prompt (returns one :class:`Capture`) or a list (returns a list, same order). A
        prompt is a string or token ids: a list of ints or a 1-D integer tensor, run as given
        (no BOS added), with texts decoded by the tokenizer; a 2-D integer tensor
        ``[prompts, tokens]`` is a list of prompts.
    layers
        Layer indices to record (negative counts from the end); default all.
    what
        Kinds to record: ``"embed"`` (``hook_embed``, ``hook_pos_embed``), ``"resid_pre"``,
        ``"pattern"`` (``attn.hook_pattern``, recomputed on demand from the recorded
        ``attn.hook_q`` / ``attn.hook_k``; see Notes), ``"z"`` (``attn.hook_z``, the per-head
        input of the output projection), ``"attn_out"``, ``"resid_mid"``, ``"mlp_post"``
        (``mlp.hook_post``, the input of the MLP's down projection), ``"mlp_out"``,
        ``"resid_post"``, ``"scale"`` (``ln_final.hook_scale``), ``"logits"``,
        ``"norm_scales"`` (``blocks.{l}.ln1.hook_scale`` / ``ln2``, and ``ln1_post`` /
        ``ln2_post`` where a block normalizes its sublayers' outputs), ``"rotary"``
        (``hook_rot_cos`` / ``hook_rot_sin``, the rotary embedding the attention received);
        or ``"all"``.
        TransformerLens hook names (``"attn.hook_pattern"``) are accepted too. Default:
        everything except ``attn_out`` and ``mlp_out``.
    dtype
        Storage dtype of activations (default float16, on CPU). Norm scales, the rotary
        embedding and ``logits`` are always float32. Use ``torch.float32`` for exactness checks.
    max_memory
        Refuse (ValueError, before running anything) when the estimated storage exceeds this:
        bytes or a string like ``"8GiB"``; ``None`` for no limit.
    batch_size
        Prompts per forward pass (similar lengths are batched together, right-padded with an
        attention mask; at most ~4,096 padded tokens per pass).
    max_new_tokens
        Let the model generate this many tokens first (greedy unless ``generate_kwargs`` say
        otherwise; causal models only), then record prompt and generated tokens together in
        one pass: the capture shows what the model computed at every step of the generation.
        ``cap.n_prompt_tokens`` marks where the generated tokens start.
    generate_kwargs
        Extra arguments for ``model.generate``.
    progress
        Show a tqdm progress bar; default: from 16 prompts on.
    saes
        Dictionaries (``cb.SAE``, transcoders, SAELens objects; one or a list) to run on the
        activations they read. Each one's input, sparse feature activations, reconstruction
        and error are stored next to its hook, e.g.
        ``blocks.12.hook_resid_post.sae.hook_sae_acts_post`` (see
        :mod:`circuitboard.capture._saes`); ``cap.saes`` maps hooks to the dictionaries.
    splice
        Run the model with each dictionary's reconstruction in place of the activation it
        reads (default False: dictionaries only read, the model's output is its own).
    keep_error
        With ``splice=True``, add the error term back (reconstruction + error), so the output
        is the model's own again while gradients and edits can go through the features.

    Returns
    -------
    Capture or list of Capture
        Per prompt, no batch dimension: tokens, token ids, float32 logits ``[pos, vocab]``,
        the tensors, :class:`ModelInfo` and the weights as views of the model's parameters.

    Notes
    -----
    The model runs in eval mode under ``torch.no_grad()``. Attention patterns are not stored:
    the ``"pattern"`` kind records, through a function registered with transformers' attention
    interface (:mod:`circuitboard.capture._attn_interface`), the queries and keys each layer
    really used (``blocks.{l}.attn.hook_q`` ``[pos, heads, d_head]`` and ``hook_k``
    ``[pos, kv_heads, d_head]``, after rotary embeddings and query/key norms, in the model's
    dtype whatever ``dtype`` says) with the layer's scaling, soft-cap and mask, while the kernel
    the model was loaded with (``sdpa``; ``eager`` if loaded so) computes the output.
    ``cap["blocks.{l}.attn.hook_pattern"]`` and :meth:`Capture.pattern` recompute the weights
    from them on demand, equal to eager attention's; storage grows linearly with tokens. A model
    whose attention does not go through the interface is switched to eager attention for the
    capture and its patterns are stored as before; ``cap.info.attention_path`` says which path
    was used and ``cap.info.attn_implementation`` which kernel computed the outputs. Hooks are
    always removed and the attention implementation and training mode restored, also when the
    forward raises. The numbers are the model's own: nothing is re-implemented.

    For a model too large for local hardware, run it remotely with nnsight's NDIF backend
    (``nnsight.LanguageModel(name).trace(prompt, remote=True)``), save the same modules'
    inputs/outputs this function records (see the adapter for the module paths) and build a
    :class:`Capture` from them, as :func:`circuitboard.from_transformer_lens` does from a cache.

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> cap = capture(model, tok, "When Mary and John went to the store")
    >>> cap["blocks.0.attn.hook_pattern"].shape[0], cap.tokens[:2]
    (4, ['<s>', 'Whe'])
    >>> caps = capture(model, tok, ["a b", "the store"], layers=[-1], what=["pattern", "logits"])
    >>> caps[1].names()
    ['blocks.1.attn.hook_q', 'blocks.1.attn.hook_k', 'blocks.1.attn.hook_pattern']
    >>> caps[1].info.attention_path, caps[1].info.attn_implementation
    ('interface', 'sdpa')
    """
    adapter = get_adapter(model)
    if adapter.modality == "image":
        from ._images import capture_images

        return capture_images(
            model,
            tokenizer,
            prompts,
            adapter=adapter,
            layers=layers,
            what=what,
            dtype=dtype,
            max_memory=max_memory,
            batch_size=batch_size,
        )
    items, single = _parse_prompts(prompts)
    info = model_info(model, adapter)
    n_blocks = adapter.n_blocks(model)
    layer_list = _parse_layers(layers, n_blocks)
    kinds = _memory.parse_what(what)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0; got {max_new_tokens!r}.")
    if max_new_tokens and not adapter.causal:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} needs a causal language model; {adapter.name} is a "
            "bidirectional encoder. Capture the prompt alone (max_new_tokens=0)."
        )
    _memory.parse_bytes(max_memory)  # validate early
    sae_list = _parse_saes(saes, splice, keep_error)
    check_placement(model)
    device = execution_device(get_module(model, adapter.embed))

    # Tokenize (and generate) first, so the memory estimate sees the final lengths.
    ids_list: list[list[int]] = []
    texts_list: list[list[str]] = []
    n_prompt: list[int] = []
    for i, p in enumerate(items):
        ids, texts = encode(tokenizer, p, f"prompts[{i}]" if not single else "prompt", info.d_vocab)
        n_prompt.append(len(ids))
        ids_list.append(ids)
        texts_list.append(texts)
    lengths = [len(i) + max_new_tokens for i in ids_list]
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos and max(lengths) > max_pos:
        raise ValueError(
            f"a prompt has {max(lengths)} tokens (with generated ones), more than the model's "
            f"max_position_embeddings={max_pos}. Shorten the prompt or lower max_new_tokens."
        )
    qk_ok, _ = interface_status(model) if "pattern" in kinds else (False, "")
    by_modules = "pattern" in kinds and not qk_ok and adapter.module_qk is not None
    model_dtype = get_module(model, adapter.embed).weight.dtype
    est = _memory.estimate(
        info,
        lengths,
        len(layer_list),
        kinds,
        dtype,
        has_pos_embed=adapter.pos_embed is not None,
        qk_dtype=model_dtype if qk_ok or by_modules else None,
    )
    if "logits" in kinds:  # held while the forward runs, not stored
        batch = max(max(lengths), min(sum(lengths), BATCH_TOKENS))
        est["forward (transient)"] = _memory.forward_bytes(info, batch, model_dtype)
    _memory.check(est, max_memory, len(items), len(layer_list))

    show = progress if progress is not None else len(items) >= PROGRESS_FROM
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="circuitboard capture", unit="prompt")

    logits_out: list[torch.Tensor | None] = [None] * len(items)

    try:
        if max_new_tokens:
            for i, ids in enumerate(ids_list):
                gen_kw = generate_kwargs or {}
                new = _generate(model, tokenizer, ids, device, max_new_tokens, gen_kw)
                more = decode_incremental(tokenizer, ids, new) if tokenizer else id_texts(None, new)
                texts_list[i] = texts_list[i] + more
                ids_list[i] = ids + new
        lengths = [len(i) for i in ids_list]
        rec, info = record(
            model,
            adapter,
            info,
            layer_list,
            kinds,
            dtype,
            len(items),
            _batches(lengths, batch_size),
            lambda rec, batch: _forward(
                model, rec, batch, ids_list, lengths, kinds, device, logits_out
            ),
            bar,
            saes=sae_list,
            splice=splice,
            keep_error=keep_error,
        )
    finally:
        if bar is not None:
            bar.close()

    weights = gather_weights(model, adapter, info)
    caps = [
        Capture(
            tokens=texts_list[i],
            token_ids=torch.tensor(ids_list[i], dtype=torch.long),
            tensors=rec.store[i],
            logits=logits_out[i],
            info=info,
            weights=weights,
            prompt=prompt_text(items[i], texts_list[i][: n_prompt[i]]),
            tokenizer=tokenizer,
            n_prompt_tokens=n_prompt[i],
            patterns=Patterns(rec.store[i], rec.specs[i]) if rec.qk else None,
            saes={sae_hook(s): s for s in sae_list},
        )
        for i in range(len(items))
    ]
    return caps[0] if single else caps
