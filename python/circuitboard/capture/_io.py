"""Save a :class:`Capture` to one safetensors file and load it back without the model.

Layout: tensors under ``tensors/<name>``, weights under ``weights/<name>``, plus ``token_ids``
and ``logits``; the safetensors metadata key ``"circuitboard"`` holds JSON with
``format_version``, tokens, prompt, ``n_prompt_tokens`` and the :class:`ModelInfo`.

Version 2: attention patterns are not written. A capture whose patterns are computed on demand
stores its ``attn.hook_q`` / ``attn.hook_k`` tensors, and per layer ``attn/<layer>/span`` (and
``attn/<layer>/allowed`` for a mask that is not one key interval per query) with the scaling
and soft-cap in the JSON (``"attention"``); loading rebuilds the same
:class:`~circuitboard.capture._patterns.Patterns`. Version 1 files (stored patterns) load as
they are.

Version 3: ``weights=`` chooses what is stored (``"needed"`` by default, see
:func:`save_capture`); a tied embedding is stored once (``"tied"`` lists the names rebuilt from
``unembed.W_U``); ``"vocab"`` holds every vocabulary entry's text, so a loaded capture names
tokens (``' 5'``, not ``'#37'``) and takes one-token strings as targets without a tokenizer.
Weights de-quantized from a block-quantized file (GGUF Q4_1 / Q8_0, e.g. the default model)
are stored as their blocks under ``packed/<name>/q|d|m`` and rebuilt bit for bit on load
(:mod:`circuitboard.capture._packing`; ``"packed"`` in the JSON says how).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .._files import check_file, decoding, describe_start, not_a
from .._threads import one_thread
from ._capture import FORMAT_VERSION, Capture, ModelInfo
from ._packing import pack, unpack
from ._patterns import LayerSpec, Patterns
from ._vocab import SavedVocab

META_KEY = "circuitboard"
READABLE_VERSIONS = (1, 2, FORMAT_VERSION)


def _plain(t: torch.Tensor) -> torch.Tensor:
    # safetensors refuses views that share storage (tied embeddings, fused qkv slices): copy.
    return t.detach().to("cpu", copy=True).contiguous()


WEIGHTS = (False, "needed", "all")
"""What :meth:`Capture.save` may store of ``cap.weights`` (see :func:`save_capture`)."""

# Weights no analysis of a capture reads: the token embedding (the capture holds hook_embed)
# and the value projection (head outputs are recorded as hook_z, explanations use Q, K, O).
UNREAD = ("embed.W_E", "attn.W_V", "attn.b_V")


def _needed(name: str) -> bool:
    return not any(name == u or name.endswith("." + u) for u in UNREAD)


def _tied(weights: dict[str, torch.Tensor]) -> bool:
    """The unembedding is the embedding transposed, stored once (as ``unembed.W_U``)."""
    w_e, w_u = weights.get("embed.W_E"), weights.get("unembed.W_U")
    if w_e is None or w_u is None or w_e.shape != w_u.T.shape:
        return False
    return w_e.data_ptr() == w_u.data_ptr() or torch.equal(w_e, w_u.T)


def _vocab_texts(cap: Capture) -> list[str] | None:
    """Every vocabulary entry's text (a loaded capture names tokens as the tokenizer did)."""
    tok = cap.tokenizer
    if tok is None or cap.info is None or not hasattr(tok, "batch_decode"):
        return None
    n = min(len(tok), cap.info.d_vocab) if hasattr(tok, "__len__") else cap.info.d_vocab
    try:
        texts = tok.batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False)
    except Exception:  # noqa: BLE001 - a tokenizer that cannot decode single ids: skip
        return None
    return list(texts) + [f"#{i}" for i in range(n, cap.info.d_vocab)]


# Block packing is many small element-wise passes: on a busy 2-core machine 2 threads made a
# load 9x slower (22.7 s vs 2.7 s, load average 18).
@one_thread(when_busy=True)
def save_capture(cap: Capture, path: str | Path, *, weights: bool | str = "needed") -> None:
    """Write ``cap`` to ``path`` (see the module docstring); ``cap.save(path)`` calls this.

    ``weights``: ``"needed"`` (default) stores the weights analyses of the loaded capture read
    (all but the token embedding and the value projection); ``"all"`` every weight; ``False``
    none. A tied unembedding (``unembed.W_U`` = ``embed.W_E`` transposed) is stored once.
    """
    from safetensors.torch import save_file

    if weights is True:
        weights = "all"
    if weights not in WEIGHTS:
        raise ValueError(
            f"weights={weights!r}; use 'needed' (the weights analyses read, the default), "
            "'all' (every weight, e.g. to rebuild the model's computations) or False (none)."
        )
    data: dict[str, torch.Tensor] = {"token_ids": _plain(cap.token_ids)}
    if cap.logits is not None:
        data["logits"] = _plain(cap.logits)
    sparse: dict[str, list[int]] = {}  # dictionary features: indices and values, not dense
    for k, v in cap.tensors.items():
        if v.is_sparse:
            v = v.coalesce()
            data[f"sparse/{k}/indices"] = _plain(v.indices())
            data[f"sparse/{k}/values"] = _plain(v.values())
            sparse[k] = list(v.shape)
        else:
            data["tensors/" + k] = _plain(v)
    kept = {k: v for k, v in cap.weights.items() if weights == "all" or (weights and _needed(k))}
    tied = "unembed.W_U" in kept and _tied(cap.weights)  # W_E comes back from W_U for free
    if tied:
        kept.pop("embed.W_E", None)
    packed: dict[str, dict] = {}
    for k, v in kept.items():
        found = pack(v)
        if found is None:
            data["weights/" + k] = _plain(v)
            continue
        parts, packed[k] = found
        for part, t in parts.items():
            data[f"packed/{k}/{part}"] = _plain(t)
    attention: dict[str, dict] = {}
    if cap.patterns is not None:
        for layer, spec in cap.patterns.specs.items():
            data[f"attn/{layer}/span"] = _plain(spec.span)
            if spec.allowed is not None:
                data[f"attn/{layer}/allowed"] = _plain(spec.allowed)
            attention[str(layer)] = spec.to_meta()
    meta = {
        "format_version": FORMAT_VERSION,
        "tokens": list(cap.tokens),
        "prompt": cap.prompt,
        "n_prompt_tokens": cap.n_prompt_tokens,
        "info": cap.info.to_dict() if cap.info is not None else None,
        "names": [k for k in cap.tensors if k not in sparse],
        "sparse": sparse,
        "weight_names": [k for k in kept if k not in packed],
        "packed": packed,
        "tied": ["embed.W_E"] if tied else [],
        "vocab": _vocab_texts(cap),
        "attention": attention,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(data, str(path), metadata={META_KEY: json.dumps(meta)})


@one_thread(when_busy=True)
def load_capture(path: str | Path, *, device: str = "cpu") -> Capture:
    """Open a capture written by :meth:`Capture.save`; no model or tokenizer needed.

    Examples
    --------
    >>> import tempfile, os
    >>> pattern = {"blocks.0.attn.hook_pattern": torch.ones(1, 2, 2)}
    >>> cap = Capture(["a", "b"], torch.tensor([1, 2]), pattern)
    >>> path = os.path.join(tempfile.mkdtemp(), "cap.safetensors")
    >>> cap.save(path)
    >>> load_capture(path).names()
    ['blocks.0.attn.hook_pattern']
    """
    from safetensors import safe_open

    writer = "cap.save(path)"
    path = check_file(path, "capture", writer)
    try:
        f = safe_open(str(path), framework="pt", device=device)
    except Exception:  # noqa: BLE001 - not a safetensors file at all
        found = f"not a safetensors file: {describe_start(path)}"
        raise not_a(path, "capture", found, writer) from None
    with f, decoding(path, "capture", writer):
        raw = (f.metadata() or {}).get(META_KEY)
        if raw is None:
            found = f"a safetensors file without {META_KEY!r} metadata"
            raise not_a(path, "capture", found, writer)
        meta = json.loads(raw)
        version = meta.get("format_version")
        if version not in READABLE_VERSIONS:
            hint = (
                "it was written by a newer circuitboard: upgrade (pip install -U circuitboard)"
                if isinstance(version, int) and version > FORMAT_VERSION
                else "re-capture it with this version (cb.capture(...).save(path))"
            )
            raise not_a(
                path,
                "capture",
                f"it has capture format version {version!r}; this circuitboard reads "
                f"version {FORMAT_VERSION}. To open it, {hint}",
                writer,
            )
        keys = set(f.keys())
        try:
            tensors = {n: f.get_tensor("tensors/" + n) for n in meta["names"]}
            for n, shape in (meta.get("sparse") or {}).items():
                indices, values = (
                    f.get_tensor(f"sparse/{n}/indices"),
                    f.get_tensor(f"sparse/{n}/values"),
                )
                tensors[n] = torch.sparse_coo_tensor(indices, values, shape, check_invariants=True)
            weights = {n: f.get_tensor("weights/" + n) for n in meta["weight_names"]}
            for n, how in (meta.get("packed") or {}).items():
                names = [p for p in "qdm" if f"packed/{n}/{p}" in keys]
                parts = {p: f.get_tensor(f"packed/{n}/{p}") for p in names}
                weights[n] = unpack(parts, how)
            if "embed.W_E" in (meta.get("tied") or []):  # stored once, as the unembedding
                weights["embed.W_E"] = weights["unembed.W_U"].T
            logits = f.get_tensor("logits") if "logits" in keys else None
            token_ids = f.get_tensor("token_ids")
            specs = {
                int(layer): LayerSpec(
                    scaling=float(m["scaling"]),
                    softcap=m.get("softcap"),
                    span=f.get_tensor(f"attn/{layer}/span"),
                    allowed=f.get_tensor(f"attn/{layer}/allowed") if m.get("dense") else None,
                )
                for layer, m in (meta.get("attention") or {}).items()
            }
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            found = f"a tensor it names cannot be read: {type(e).__name__}: {e}"
            raise not_a(path, "capture", found, writer) from None
    with decoding(path, "capture", writer):
        info = ModelInfo(**meta["info"]) if meta.get("info") else None
        vocab = SavedVocab(meta["vocab"]) if meta.get("vocab") else None
    return Capture(
        tokens=list(meta["tokens"]),
        token_ids=token_ids,
        tensors=tensors,
        logits=logits,
        info=info,
        weights=weights,
        prompt=meta.get("prompt"),
        tokenizer=vocab,
        n_prompt_tokens=meta.get("n_prompt_tokens"),
        patterns=Patterns(tensors, specs) if specs else None,
    )
