"""GenerationView: a generation's timeline with a scrubber, per-step internals, forks as rows."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import traitlets

from ._codec import encode, to_numpy
from ._link import Link
from ._validate import displayable, index_in
from ._view import View, pack


class _Strings:
    """Distinct token texts shared by every row (each cell stores an index)."""

    def __init__(self, strings: list[str] | None = None) -> None:
        self.items: list[str] = list(strings or [])
        self.index = {s: i for i, s in enumerate(self.items)}

    def of(self, text: str) -> int:
        text = displayable(text)
        if text not in self.index:
            self.index[text] = len(self.items)
            self.items.append(text)
        return self.index[text]


def _decode(tok: Any, i: int) -> str:
    return displayable(tok.decode([int(i)]) if tok is not None else f"#{int(i)}")


def _short_steering(st: Any) -> str:
    """``L10 ×2 new`` for a vector, ``L3 fn() ×1 all`` for a hook: the full text is the tip."""
    if not st.active:
        return "no steering"
    parts = [f"L{li}" + (" fn()" if callable(h) else "") for li, h in st.hooks.items()]
    where = (
        st.positions if isinstance(st.positions, str) else "pos " + ",".join(map(str, st.positions))
    )
    return f"{'+'.join(parts)} ×{st.scale:g} {where}"


def _label(gen: Any, short: bool = True) -> str:
    st = gen.steering
    steer = _short_steering(st) if short else (st.description if st.active else "no steering")
    if gen.parent is None:
        return f"base · {steer}"
    text = f"fork @{gen.fork_step} · {steer}"
    if gen.forced:
        forced = "".join(gen.tokens[s] for s in gen.forced)
        text += f" · forced {forced!r}"
    return text


def _row(gen: Any, base: Any, k: int, strings: _Strings) -> dict[str, Any]:
    """What the timeline shows of one generation (tokens, top-k, KL), as plain arrays; each
    step's internals are computed when the view asks for them (``fetch-step``)."""
    S = gen.n_steps
    top_index = np.zeros((S, k), dtype=np.float32)
    top_prob = np.zeros((S, k), dtype=np.float32)
    chosen_prob = np.zeros(S, dtype=np.float32)
    for s in range(S):
        top = gen.top(k, s)
        for j, t in enumerate(top):
            top_index[s, j] = strings.of(t["label"])
            top_prob[s, j] = t["prob"]
    logits = to_numpy(gen.capture.logits).astype(np.float64)
    for s in range(S):
        row = logits[gen.position(s)]
        p = np.exp(row - row.max())
        chosen_prob[s] = p[gen.token_ids[s]] / p.sum()
    out: dict[str, Any] = {
        "label": displayable(_label(gen)),
        "title": displayable(f"{_label(gen, short=False)} · {gen.sampling.describe()}"),
        "tokens": [displayable(t) for t in gen.tokens],
        "fork_step": gen.fork_step,
        "forced": list(gen.forced),
        "n_steps": S,
        "steered": bool(gen.steering.active),
        "diff": [bool(s >= base.n_steps or gen.token_ids[s] != base.token_ids[s]) for s in range(S)]
        if gen is not base
        else [False] * S,
        "_top_index": encode(top_index, "float32"),
        "_top_prob": encode(top_prob, "float32"),
        "_chosen_prob": encode(chosen_prob, "float32"),
    }
    kl = to_numpy(base.kl(gen)) if gen is not base else None
    out["_kl"] = encode(kl, "float32") if kl is not None else None
    return out


class GenerationView(View):
    """A generation's timeline: scrub the steps, see each step's internals, compare forks.

    Rows are generations of the same prompt (the first is the base; forks follow, their
    tokens that differ from the base highlighted, with a strip of the per-step KL divergence
    between the base's and their next-token distributions). For the selected step: the top-k
    next-token distribution, the logit lens of that step (every layer's top token), the
    chosen head's attention from that step's query and the direct logit attribution of the
    chosen token. Selecting a step selects its query position as the shared token
    (``n_prompt + step - 1``), so linked views over ``gen.capture`` follow; the head is the
    link's ``layer`` / ``head``.

    Build it with :func:`circuitboard.generation_view`; add forks with :meth:`add` or
    :meth:`fork`.

    Examples
    --------
    >>> gen = cb.generate(model, tok, "My favourite pet is a", max_new_tokens=8)  # doctest: +SKIP
    >>> view = cb.GenerationView(gen)  # doctest: +SKIP
    >>> view.fork(2, text=" dog")  # a fork made from Python appears as a new row  # doctest: +SKIP
    """

    _view = traitlets.Unicode("generation").tag(sync=True)
    prompt_tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """The prompt's token texts."""
    n_prompt = traitlets.Int(0).tag(sync=True)
    """Prompt tokens (step ``s`` is the forward at position ``n_prompt + s - 1``)."""
    n_layers = traitlets.Int(0).tag(sync=True)
    n_heads = traitlets.Int(0).tag(sync=True)
    k = traitlets.Int(10).tag(sync=True)
    """Next-token candidates shown per step."""
    step = traitlets.Int(0).tag(sync=True)
    """The selected step (0-based generated token)."""
    row = traitlets.Int(0).tag(sync=True)
    """The selected row (0: the base generation)."""
    has_pattern = traitlets.Bool(True).tag(sync=True)
    _rows = traitlets.List(traitlets.Dict()).tag(sync=True)  # per generation, see _row()
    _strings = traitlets.List(traitlets.Unicode()).tag(sync=True)  # token texts, by index

    _fetchers: ClassVar[dict[str, str]] = {"fetch-step": "_fetch_step"}

    def __init__(
        self, gen: Any, *forks: Any, k: int = 10, link: Link | None = None, **kwargs: Any
    ) -> None:
        if not hasattr(gen, "fork") or not hasattr(gen, "capture"):
            raise TypeError(
                f"GenerationView needs a Generation (from cb.generate); got {type(gen).__name__}."
            )
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int; got {k!r}.")
        cap = gen.capture
        self._gens: list[Any] = []
        self._str = _Strings()
        super().__init__(
            prompt_tokens=[displayable(t) for t in cap.tokens[: gen.n_prompt]],
            n_prompt=gen.n_prompt,
            n_layers=cap.info.n_layers,
            n_heads=cap.info.n_heads,
            k=k,
            has_pattern=bool(cap.layers("attn.hook_pattern")),
            link=link,
            **kwargs,
        )
        self.add(gen, *forks)

    @property
    def generations(self) -> list[Any]:
        """The generations shown, one per row (the base first)."""
        return list(self._gens)

    def add(self, *gens: Any) -> None:
        """Show more generations (forks of the base, or other runs of the same prompt)."""
        rows = list(self._rows)
        for g in gens:
            if not hasattr(g, "capture") or not hasattr(g, "token_ids"):
                raise TypeError(f"add() takes Generations; got {type(g).__name__}.")
            if self._gens:
                base = self._gens[0]
                same = g.capture.token_ids[: g.n_prompt].tolist()
                if (
                    g.n_prompt != base.n_prompt
                    or same != base.capture.token_ids[: base.n_prompt].tolist()
                ):
                    raise ValueError(
                        "every row must continue the same prompt as the base generation; "
                        f"got {g.prompt!r} vs {base.prompt!r}."
                    )
            base = self._gens[0] if self._gens else g
            rows.append(_row(g, base, self.k, self._str))
            self._gens.append(g)
        with self.hold_sync():
            self._strings = list(self._str.items)
            self._rows = rows

    def fork(self, step: int, **kwargs: Any) -> Any:
        """Fork the base generation at ``step`` (see ``Generation.fork``) and show it as a row."""
        new = self._gens[0].fork(step, **kwargs)
        self.add(new)
        return new

    def _fetch_step(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        """One step's internals: logit lens, every head's attention row, the attribution."""
        r = index_in("row", msg.get("row"), len(self._gens))
        gen = self._gens[r]
        s = index_in("step", msg.get("step"), gen.n_steps)
        cap = gen.capture
        q = gen.position(s)
        tok = cap.tokenizer
        fields: dict[str, Any] = {"row": r, "step": s, "query": q}
        try:
            lens = gen.step_lens(k=1, steps=[s])
        except KeyError as err:
            fields["lens_error"] = str(err)
        else:
            fields["lens_tokens"] = [_decode(tok, i) for i in to_numpy(lens["top_ids"])[0, :, 0]]
            fields["lens_prob"] = encode(to_numpy(lens["top_probs"])[0, :, 0], "float32")
            fields["lens_chosen"] = encode(to_numpy(lens["chosen_probs"])[0], "float32")
        layers = cap.layers("attn.hook_pattern")
        if layers:
            # one query row per layer, computed alone from the recorded queries and keys
            rows = np.stack(
                [
                    to_numpy(cap.pattern(li, None, slice(q, q + 1), slice(0, q + 1))[:, 0])
                    for li in layers
                ]
            )  # [L, H, q + 1]
            fields["attention"] = encode(rows, lo=0.0, hi=1.0)
        try:
            attr = gen.attribution(s)
        except (KeyError, ValueError) as err:  # not captured, or no exact split (soft-capping)
            fields["dla_error"] = str(err)
        else:
            fields["dla_labels"] = list(attr.labels)
            fields["dla"] = encode(to_numpy(attr.values), "float32")
            fields["dla_model"] = float(attr.model_value)
        return pack(**fields)

    def export_requests(self, budget_bytes: int) -> list[dict[str, Any]]:
        reqs, used = [], 0
        for r, g in enumerate(self._gens):
            for s in range(g.n_steps):
                attn = self.n_layers * self.n_heads * (g.position(s) + 1) if self.has_pattern else 0
                used += attn + 8 * self.n_layers * (self.n_heads + 4) + 64 * self.n_layers
                if used > budget_bytes // 2:
                    return reqs
                reqs.append({"kind": "fetch-step", "row": r, "step": s})
        return reqs

    def export_notes(self, budget_bytes: int) -> list[str]:
        total = sum(g.n_steps for g in self._gens)
        n = len(self.export_requests(budget_bytes))
        if n < total:
            return [f"the internals of {n} of {total} steps are embedded (report budget)."]
        return []


def generation_view(
    gen: Any, *forks: Any, k: int = 10, link: Link | None = None, **kwargs: Any
) -> GenerationView:
    """Timeline view of a generation and its forks (see :class:`GenerationView`).

    Examples
    --------
    >>> gen = cb.generate(model, tok, "My favourite pet is a", max_new_tokens=12)  # doctest: +SKIP
    >>> v = cb.steering_vector(model, tok, ["my cat"], ["my dog"], layer=10)  # doctest: +SKIP
    >>> view = cb.generation_view(gen, gen.fork(0, steer=v, scale=2))  # doctest: +SKIP
    >>> view.fork(3, steer=v, scale=-2)  # a new row, live  # doctest: +SKIP
    """
    return GenerationView(gen, *forks, k=k, link=link, **kwargs)
