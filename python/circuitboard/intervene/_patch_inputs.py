"""The inputs of `patch`: site names, prompt (or image) pairs and their metric, the layers and
positions to run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..capture._prompts import encode, id_texts, split_prompts
from ._metric import Metric, at_index, direction_metric, logit_diff, token_ids
from ._runner import Runner

POSITION_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
ATTN_SITES = ("q", "k", "v", "pattern")
SITES = (*POSITION_SITES, "heads", "heads_pos", *ATTN_SITES, "neurons")
"""Site names :func:`patch` accepts."""
METHODS = ("exact", "attribution", "ig")
DIRECTIONS = ("denoise", "noise")


@dataclass(frozen=True)
class _Pair:
    clean_ids: torch.Tensor
    corrupt_ids: torch.Tensor
    clean_tokens: list[str]
    corrupt_tokens: list[str]
    first_diff: int
    metric: Metric
    pixels: np.ndarray | None = None  # image pairs: [2 (clean, corrupted), C, H, W] in [0, 1]
    image: dict[str, Any] | None = None  # image pairs: {"grid": [rows, cols], "patch": side}

    @property
    def n_tokens(self) -> int:
        """Positions per run: tokens, or CLS plus the patches of an image."""
        return len(self.clean_tokens)


@dataclass
class _PairResult:
    raw: np.ndarray
    clean: float
    corrupted: float
    skipped: np.ndarray  # bool mask of cells not run (exactly 0)
    reference_raw: np.ndarray | None = None
    completeness: np.ndarray | None = None  # per layer, raw units


def _as_list(x: Any, n: int, what: str, pairs: str = "prompt pairs") -> list[Any]:
    if isinstance(x, list | tuple):
        if len(x) != n:
            raise ValueError(f"{what} has {len(x)} entries for {n} {pairs}; give one each.")
        return list(x)
    return [x] * n


def answers_per_pair(x: Any, n: int, single: bool, what: str) -> list[Any]:
    """One answer per pair. An answer is a token, or a token set (a list: its mean logit).
    With one pair a list is that pair's set; with several, a list/tuple gives one answer per
    pair (each a token or a list) and a ``set`` is one token set shared by every pair."""
    if single and isinstance(x, list | tuple):
        return [x]
    if isinstance(x, set | frozenset):
        return [x] * n
    return _as_list(x, n, what)


def _logit_text(tokenizer: Any, ids: int | tuple[int, ...]) -> str:
    if isinstance(ids, int):
        return f"logit({id_texts(tokenizer, [ids])[0]!r})"
    texts = ", ".join(repr(id_texts(tokenizer, [i])[0]) for i in ids)
    return f"mean logit({{{texts}}})"


def _check_choice(value: Any, options: Sequence[str], what: str) -> None:
    if value not in options:
        raise ValueError(f"unknown {what} {value!r}; use one of {', '.join(options)}.")


def _prepare_pairs(
    tokenizer: Any,
    clean: Any,
    corrupted: Any,
    answer: Any,
    wrong: Any,
    metric: Any,
    runner: Runner | None = None,
    *,
    first: int = 0,
) -> list[_Pair]:
    """Tokenized pairs with their metrics; ``first``: the index of the first pair in the whole
    list (a shard's pairs are numbered as the user numbers them; a per-example metric
    ``metric(logits, index)`` gets that index)."""
    if runner is not None and runner.image:
        return _prepare_image_pairs(runner, tokenizer, clean, corrupted, answer, wrong, metric)
    d_vocab = runner.info.d_vocab if runner is not None else None
    cl, single = split_prompts(clean, "clean")
    co, single_b = split_prompts(corrupted, "corrupted")
    if single != single_b:
        raise ValueError(
            "clean and corrupted must both be one prompt (a string or token ids) or both lists "
            f"of prompts (pairs); got {type(clean).__name__} and {type(corrupted).__name__}."
        )
    if not cl or len(cl) != len(co):
        raise ValueError(
            f"clean has {len(cl)} prompts and corrupted {len(co)}; give the same (>= 1) number."
        )
    if metric is None and answer is None:
        raise ValueError(
            "give answer= (and usually wrong=) for the default logit-difference metric, or a "
            "metric= callable of the logits at the last position."
        )
    if metric is not None and not callable(metric):
        raise ValueError(f"metric must be a callable of the logits; got {type(metric).__name__}.")
    answers = answers_per_pair(answer, len(cl), single, "answer")
    wrongs = answers_per_pair(wrong, len(cl), single, "wrong")
    pairs = []
    for i, (a, b) in enumerate(zip(cl, co, strict=True)):
        ia, ta = encode(tokenizer, a, f"clean prompt {first + i}", d_vocab)
        ib, tb = encode(tokenizer, b, f"corrupted prompt {first + i}", d_vocab)
        diff = next((j for j, (x, y) in enumerate(zip(ia, ib, strict=False)) if x != y), None)
        if len(ia) != len(ib):
            j = diff if diff is not None else min(len(ia), len(ib))
            ta_j = repr(ta[j]) if j < len(ta) else "(end)"
            tb_j = repr(tb[j]) if j < len(tb) else "(end)"
            raise ValueError(
                f"pair {first + i}: clean has {len(ia)} tokens and corrupted has {len(ib)}; "
                f"patching needs equal lengths. They first differ at position {j}: clean {ta_j} "
                f"vs corrupted {tb_j}. Choose a corruption with the same number of tokens (e.g. "
                "swap names that are one token each)."
            )
        info = runner.info if runner is not None else None
        along = direction_metric(
            answers[i], wrongs[i], getattr(info, "d_model", None), d_vocab, "answer"
        )
        if metric is not None:
            m = at_index(metric, first + i)
        elif along is not None:
            m = along
        else:
            aid = token_ids(tokenizer, answers[i], "answer")
            wid = token_ids(tokenizer, wrongs[i], "wrong") if wrongs[i] is not None else None
            m = logit_diff(aid, wid)
            at = _logit_text(tokenizer, aid)
            m.description = f"{at} − {_logit_text(tokenizer, wid)}" if wid is not None else at
        pairs.append(
            _Pair(
                torch.tensor(ia),
                torch.tensor(ib),
                ta,
                tb,
                diff if diff is not None else len(ia),
                m,
            )
        )
    return pairs


def _prepare_image_pairs(
    runner: Runner, processor: Any, clean: Any, corrupted: Any, answer: Any, wrong: Any, metric: Any
) -> list[_Pair]:
    """Image pairs (see :mod:`._image_pairs`): pixels where text pairs hold token ids. A ViT
    has no causal mask, so every position can differ: ``first_diff`` is 0, nothing is skipped.
    """
    from ._image_pairs import image_pairs

    out = []
    for p in image_pairs(runner.model, processor, clean, corrupted, answer, wrong, metric):
        out.append(
            _Pair(
                p["clean"],
                p["corrupted"],
                list(p["tokens"]),
                list(p["tokens"]),
                0,
                p["metric"],
                pixels=p["pixels"],
                image={"grid": list(p["grid"]), "patch": p["patch"]},
            )
        )
    return out


def _parse_layers(layers: Any, n_layers: int) -> list[int]:
    if layers is None:
        return list(range(n_layers))
    items = [layers] if isinstance(layers, int) else list(layers)
    out = []
    for layer in items:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ValueError(f"layers= must be ints; got {layer!r}.")
        if not -n_layers <= layer < n_layers:
            raise ValueError(
                f"layers= got {layer}; the model has {n_layers} layers (0..{n_layers - 1})."
            )
        out.append(layer % n_layers)
    return sorted(set(out))


def _parse_positions(positions: Any, n_tokens: int) -> list[int]:
    if positions is None:
        return list(range(n_tokens))
    items = [positions] if isinstance(positions, int) else list(positions)
    out = []
    for p in items:
        if isinstance(p, bool) or not isinstance(p, int) or not -n_tokens <= p < n_tokens:
            raise ValueError(
                f"positions= got {p!r}; the prompts have {n_tokens} tokens, so use ints in "
                f"[0, {n_tokens - 1}] (negative counts from the end)."
            )
        out.append(p % n_tokens)
    return sorted(set(out))


def patch_layout(
    pairs: list[_Pair], site: str, layers: Any, positions: Any, n_layers: int
) -> tuple[list[int], list[int] | None]:
    """The layers and positions :func:`patch` patches (sharded runs resolve them the same way,
    so every shard patches the cells one run would)."""
    lengths = {p.n_tokens for p in pairs}
    if site in (*POSITION_SITES, "heads_pos") and len(lengths) > 1:
        raise ValueError(
            f"site={site!r} averages per position, but the pairs have different lengths "
            f"{sorted(lengths)}; use pairs of one length (the same template) or a per-head site "
            "(site='heads')."
        )
    layer_list = _parse_layers(layers, n_layers)
    T0 = pairs[0].n_tokens
    if site in ("heads", *ATTN_SITES):
        if positions is not None:
            raise ValueError(
                f"site={site!r} patches every position; use site='heads_pos' for per-position "
                "head outputs."
            )
        return layer_list, None
    if site == "neurons":
        return layer_list, None if positions is None else _parse_positions(positions, T0)
    return layer_list, _parse_positions(positions, T0)
