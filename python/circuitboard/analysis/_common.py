"""Helpers shared by the analyses: target-token parsing and the final norm's direction."""

from __future__ import annotations

from typing import Any

import torch

NORMS = ("rmsnorm", "layernorm", "gemma_rmsnorm")
DEFAULT_EPS = 1e-5


def require_info(cap: Any, what: str) -> Any:
    if isinstance(cap, (list, tuple)):
        raise TypeError(
            f"{what} takes one capture; got a {type(cap).__name__} of {len(cap)} (cb.capture "
            "returns one per prompt for a list of prompts). Pass one, e.g. caps[0], or loop: "
            f"[{what}(c, ...) for c in caps]."
        )
    info = getattr(cap, "info", None)
    if info is None:
        raise ValueError(
            f"{what} needs the model's shapes and norm type (cap.info), but this capture has "
            "info=None. Capture with cb.capture(model, tokenizer, prompt)."
        )
    if info.norm not in NORMS:
        raise ValueError(
            f"{what}: unknown final norm {info.norm!r}; expected one of {NORMS}. "
            "The capture adapter for this architecture must name its norm."
        )
    return info


def require_decoder(info: Any, what: str) -> None:
    """Refuse post-norm encoders (BERT): their logits are not the final residual through one
    norm and the unembedding. Pre-norm encoders such as ViT are fine."""
    pre_norm = getattr(info, "pre_norm", None)
    if not (pre_norm if pre_norm is not None else info.causal):
        raise ValueError(
            f"{what} reads logits as the final residual stream through one norm and the "
            f"unembedding, which holds for decoder language models only; {info.model_name!r} "
            f"({info.architecture}) is an encoder whose blocks normalize after each residual "
            "addition and whose prediction head is nonlinear, so its logits are not a sum of "
            "component outputs. Use the attention and neuron views for it, or a causal LM."
        )


def weight(
    cap: Any, name: str, what: str, *, optional: bool = False, dtype: torch.dtype = torch.float64
) -> torch.Tensor | None:
    w = cap.weights.get(name) if getattr(cap, "weights", None) is not None else None
    if w is None:
        if optional:
            return None
        raise KeyError(
            f"{what} needs the weight {name!r}, which this capture does not hold "
            f"(it has {sorted(cap.weights)[:6]} ...). Capture again with cb.capture, which "
            "records the weights analyses need."
        )
    return w.detach().to("cpu", dtype)


def tensor(cap: Any, name: str, what: str, *, optional: bool = False) -> torch.Tensor | None:
    if name in cap.tensors:
        return cap.tensors[name].detach().to("cpu", torch.float64)
    if optional:
        return None
    raise KeyError(
        f"{what} needs {name!r}, which was not captured (captured: {cap.names()[:6]} ...). "
        "Capture again with the default `what=` so every residual, z and MLP output is recorded."
    )


def norm_weight(cap: Any, info: Any, what: str) -> torch.Tensor:
    """The final norm's effective elementwise weight (``1 + w`` for Gemma's norm)."""
    w = weight(cap, "ln_final.w", what, optional=True)
    if w is None:
        w = torch.ones(info.d_model, dtype=torch.float64)
    return 1.0 + w if info.norm == "gemma_rmsnorm" else w


def norm_eps(cap: Any) -> float:
    info = getattr(cap, "info", None)
    for obj, key in ((info, "norm_eps"), (info, "eps")):
        v = getattr(obj, key, None)
        if isinstance(v, (int, float)):
            return float(v)
    w = getattr(cap, "weights", {}) or {}
    if "ln_final.eps" in w:
        return float(w["ln_final.eps"])
    inferred = _infer_eps(cap, info)
    return DEFAULT_EPS if inferred is None else inferred


def _infer_eps(cap: Any, info: Any) -> float | None:
    """The final norm's epsilon from its captured scale: ``1 / scale**2 - mean(x**2)``.

    Float error makes this imprecise exactly when epsilon is negligible next to the
    residual's mean square, so the inferred value is accurate wherever it matters.
    """
    tensors = getattr(cap, "tensors", {})
    name = f"blocks.{info.n_layers - 1}.hook_resid_post" if info is not None else None
    if name not in tensors or "ln_final.hook_scale" not in tensors:
        return None
    x = tensors[name].detach().to("cpu", torch.float64)
    if info.norm == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    ms = (x * x).mean(-1)
    s = tensors["ln_final.hook_scale"].detach().to("cpu", torch.float64).reshape(ms.shape)
    if not bool((s > 0).all()):
        return None
    # Accept TransformerLens' divisor convention too: pick the reading closer to 1/sqrt(ms).
    mult = (
        s
        if float((s * ms.sqrt()).log().abs().median()) < float((ms.sqrt() / s).log().abs().median())
        else 1 / s
    )
    eps = float((1.0 / mult**2 - ms).median())
    return max(eps, 0.0)


def token_id(cap: Any, target: Any, name: str) -> int:
    """A single token id from an int, a 0-d tensor or a string that is exactly one token."""
    if hasattr(target, "item") and getattr(target, "numel", lambda: 1)() == 1:
        target = target.item()
    if isinstance(target, bool):
        raise TypeError(f"{name} must be a token string or id; got a bool.")
    d_vocab = cap.info.d_vocab if getattr(cap, "info", None) is not None else None
    if isinstance(target, int):
        if target < 0 or (d_vocab is not None and target >= d_vocab):
            raise IndexError(
                f"{name}={target} is not a token id: the vocabulary has {d_vocab} tokens."
            )
        return target
    if isinstance(target, str):
        tok = getattr(cap, "tokenizer", None)
        if tok is None:
            raise ValueError(
                f"{name}={target!r} is a string but this capture has no tokenizer; pass the token "
                "id instead (tokenizer.encode(text, add_special_tokens=False)[0])."
            )
        ids = tok.encode(target, add_special_tokens=False)
        if not ids and target:  # a saved capture's vocabulary: no entry has this text
            raise ValueError(
                f"{name}={target!r} is no token of this capture's vocabulary; pass the token id."
            )
        if len(ids) != 1:
            pieces = [tok.decode([i]) for i in ids]
            raise ValueError(
                f"{name}={target!r} is {len(ids)} tokens {pieces}, expected exactly one. "
                "Mind the leading space (' Mary' vs 'Mary'), or pass a token id."
            )
        return int(ids[0])
    raise TypeError(f"{name} must be a token string or an int id; got {type(target).__name__}.")


TokenSet = tuple[int, ...]
"""A target that is a set of tokens: its value is the mean of their logits."""


def target_ids(cap: Any, target: Any, name: str) -> int | TokenSet:
    """A token id (see :func:`token_id`), or for a list / tuple / set of tokens the sorted
    tuple of their distinct ids: a set target, valued as the mean of its tokens' logits."""
    if isinstance(target, list | tuple | set | frozenset) and not (
        hasattr(target, "shape") or isinstance(target, str)
    ):
        items = sorted(target, key=repr) if isinstance(target, set | frozenset) else list(target)
        if not items:
            raise ValueError(
                f"{name}=[] is an empty token set; give one token or several ([' 4', ' 5'])."
            )
        ids = sorted({token_id(cap, x, f"{name}[{i}]") for i, x in enumerate(items)})
        return ids[0] if len(ids) == 1 else tuple(ids)
    return token_id(cap, target, name)


def as_id_list(t: int | TokenSet | None) -> list[int]:
    """The ids of a target: ``[]`` for None, ``[t]`` for one token, the set's ids."""
    return [] if t is None else [t] if isinstance(t, int) else list(t)


def spacing_warning(cap: Any, given: Any, tid: int, pos: int, name: str) -> str | None:
    """A warning when ``given`` (a string without a leading space) is not the token the model
    would predict: the same word with a leading space is one token and ranks higher at ``pos``.
    """
    tok = getattr(cap, "tokenizer", None)
    if not isinstance(given, str) or given[:1].isspace() or tok is None:
        return None
    if getattr(cap, "image", None) is not None:  # class labels, not words: no spacing
        return None
    spaced = tok.encode(" " + given, add_special_tokens=False)
    if len(spaced) != 1 or spaced[0] == tid:
        return None
    alt = int(spaced[0])
    logits = getattr(cap, "logits", None)
    if logits is not None:
        row = logits[pos]
        a, b = float(row[tid]), float(row[alt])
        if a >= b:
            return None
        ranks = f" (logit {b:.2f} vs {a:.2f} at position {pos})"
    else:
        ranks = ""
    return (
        f"{name}={given!r} is the token {token_text(cap, tid)!r} (id {tid}) with no leading "
        f"space; the model predicts {token_text(cap, alt)!r} (id {alt}) more strongly here"
        f"{ranks}. Pass {(' ' + given)!r} to attribute the word as the model would write it."
    )


def token_text(cap: Any, tid: int | TokenSet) -> str:
    """The text of a token (``"#<id>"`` without a tokenizer); a set's texts, ``"{' 4', ' 5'}"``;
    a direction's name."""
    if hasattr(tid, "vector"):  # a cb.Direction
        return str(tid.name)
    if not isinstance(tid, int):
        return "{" + ", ".join(repr(token_text(cap, i)) for i in tid) + "}"
    tok = getattr(cap, "tokenizer", None)
    return tok.decode([tid]) if tok is not None else f"#{tid}"


def position(pos: Any, n: int) -> int:
    if isinstance(pos, bool) or not isinstance(pos, int):
        raise TypeError(f"pos must be an int position; got {type(pos).__name__}.")
    p = pos + n if pos < 0 else pos
    if not 0 <= p < n:
        raise IndexError(
            f"pos={pos} is out of range for a {n}-token prompt (0..{n - 1} or -{n}..-1)."
        )
    return p


def precision(cap: Any) -> tuple[str, float]:
    """``(dtype, eps)``: the least precise of the dtype the model computed in and the dtype the
    capture stores activations in, with that dtype's machine epsilon. Decompositions are summed
    in float64, so how closely their parts can rebuild the model's own value is set by this.

    Examples
    --------
    >>> from types import SimpleNamespace as NS
    >>> cap = NS(info=NS(compute_dtype="bfloat16"), tensors={"x": torch.zeros(1)})
    >>> precision(cap)
    ('bfloat16', 0.0078125)
    """
    compute = getattr(getattr(cap, "info", None), "compute_dtype", None)
    dtypes = {t.dtype for t in cap.tensors.values()}
    if isinstance(getattr(torch, compute or "", None), torch.dtype):
        dtypes.add(getattr(torch, compute))
    floats = [d for d in dtypes if d.is_floating_point] or [torch.float32]
    low = max(floats, key=lambda d: torch.finfo(d).eps)
    return str(low).removeprefix("torch."), float(torch.finfo(low).eps)
