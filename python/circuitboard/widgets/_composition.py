"""CompositionView: heads × heads Q/K/V-composition matrices with a threshold, linked to the
other views; a clicked pair can be explained on a captured prompt (``cb.explain_attention``)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import traitlets

from ._codec import encode
from ._view import View

KINDS = ("Q", "K", "V")
N_TERMS = 6  # component pairs listed in a pair's explanation


class CompositionView(View):
    """Composition scores as a heads × heads matrix per kind (writer rows, reader columns).

    A kind picker switches between Q-, K- and V-composition; the threshold slider greys every
    pair below it (it starts at the random baseline plus three standard deviations, so what
    stays coloured is above chance). Hover shows the pair, its score and the baseline.
    Clicking a pair selects the reader head on the link (linked attention views open it); the
    side panel names both heads, selects either on the link, and, when the view was built with
    a capture (``cap=``), explains the reader's attention on that prompt: the terms of
    :func:`circuitboard.explain_attention` at the last query and the key it attends to most
    after the first token (usually an attention sink), with the writer head's share on the
    query and on the key side.

    Parameters
    ----------
    result : CompositionScores
        From :func:`circuitboard.composition_scores`.
    cap : Capture, optional
        A capture of the same model, for the activation-based counterpart of a pair.
    threshold : float, optional
        The initial threshold (default: baseline + 3 standard deviations of the shown kind).
    kind : {"Q", "K", "V"}
        The kind shown first (default "K").

    Examples
    --------
    >>> from circuitboard.testing import tiny_model
    >>> res = cb.composition_scores(tiny_model("llama")[0], baseline_samples=2)
    >>> view = CompositionView(res)
    >>> view.kind, view.n_layers, view.n_heads
    ('K', 2, 4)
    """

    _view = traitlets.Unicode("composition").tag(sync=True)
    kind = traitlets.Unicode("K").tag(sync=True)
    """The composition shown: ``"Q"``, ``"K"`` or ``"V"``."""
    threshold = traitlets.Float(0.0).tag(sync=True)
    """Pairs scoring below this are greyed out."""
    pair = traitlets.List(traitlets.Int()).tag(sync=True)
    """The clicked pair ``[writer layer, writer head, reader layer, reader head]`` (or [])."""
    n_layers = traitlets.Int().tag(sync=True)
    """Layers of the model."""
    n_heads = traitlets.Int().tag(sync=True)
    """Query heads per layer."""
    n_kv_heads = traitlets.Int().tag(sync=True)
    """Key-value heads per layer."""
    baseline = traitlets.Dict().tag(sync=True)
    """Per kind, the mean score of random heads of the same shapes."""
    baseline_std = traitlets.Dict().tag(sync=True)
    """Per kind, the spread of the random scores."""
    notes = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """The result's conventions."""
    explainable = traitlets.Bool(False).tag(sync=True)
    """Whether a pair can be explained on a captured prompt (built with ``cap=``)."""
    prompt_tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """The captured prompt's tokens (empty without ``cap=``)."""
    _scores = traitlets.Dict().tag(sync=True)  # kind -> Encoded float32 [heads, heads]

    _fetchers: ClassVar[dict[str, str]] = {"fetch-pair": "_fetch_pair"}

    def __init__(
        self,
        result: Any,
        *,
        cap: Any = None,
        threshold: float | None = None,
        kind: str = "K",
        **kwargs: Any,
    ) -> None:
        try:
            mats = {k: np.asarray(result.matrix(k), dtype=np.float32) for k in KINDS}
            base, std = dict(result.baseline), dict(result.baseline_std)
        except AttributeError as err:
            raise TypeError(
                "CompositionView needs a CompositionScores result (from cb.composition_scores "
                f"or cb.load_composition_scores); got {type(result).__name__}, which lacks "
                f"{err.name!r}."
            ) from None
        k = str(kind).upper()
        if k not in KINDS:
            raise ValueError(f"kind must be one of 'Q', 'K', 'V'; got {kind!r}.")
        if threshold is None:
            threshold = base[k] + 3 * std[k]
        tokens: list[str] = []
        if cap is not None:
            tokens = [str(t) for t in getattr(cap, "tokens", [])]
        super().__init__(
            kind=k,
            threshold=float(threshold),
            n_layers=int(result.n_layers),
            n_heads=int(result.n_heads),
            n_kv_heads=int(result.n_kv_heads),
            baseline={kk: float(v) for kk, v in base.items()},
            baseline_std={kk: float(v) for kk, v in std.items()},
            notes=[str(n) for n in getattr(result, "notes", [])],
            explainable=cap is not None,
            prompt_tokens=tokens,
            _scores={kk: encode(m, "float32") for kk, m in mats.items()},
            **kwargs,
        )
        self._result = result
        self._cap = cap

    @property
    def result(self) -> Any:
        """The :class:`~circuitboard.analysis.CompositionScores` shown."""
        return self._result

    def explain_pair(
        self,
        writer: tuple[int, int],
        reader: tuple[int, int],
        kind: str | None = None,
        *,
        query: int | None = None,
        key: int | None = None,
    ) -> dict[str, Any]:
        """The activation-based counterpart of a pair on the view's capture: the reader's
        attention score at ``query`` (default: the last position) and ``key`` (default: the
        key it attends to most after the first token, which is usually an attention sink),
        split by :func:`circuitboard.explain_attention`, with the writer head's share of it
        through the query and through the key."""
        if self._cap is None:
            raise ValueError(
                "this composition view has no capture, so it cannot explain a pair on a prompt; "
                "build it with cb.composition_view(scores, cap=cb.capture(model, tok, prompt))."
            )
        from ..analysis import explain_attention
        from ..analysis._explain import _pattern_row

        k = str(kind or self.kind).upper()
        (la, ha), (lb, hb) = writer, reader
        if not la < lb:
            raise ValueError(
                f"writer L{la}H{ha} must be in an earlier layer than reader L{lb}H{hb}."
            )
        n = len(self._cap.tokens)
        query = n - 1 if query is None else int(query) % n
        row = np.asarray(_pattern_row(self._cap, lb, hb, query))
        if key is None:
            key = int(np.argmax(row[1:])) + 1 if query > 0 else 0
        key = int(key)
        ex = explain_attention(self._cap, layer=lb, head=hb, query=query, key=key)
        label = f"L{la}H{ha}"
        q_share = float(ex.query_totals[ex.query_labels.index(label)])
        k_share = float(ex.key_totals[ex.key_labels.index(label)])
        return {
            "writer": [la, ha],
            "reader": [lb, hb],
            "kind": k,
            "query": query,
            "key": key,
            "weight": float(row[key]),
            "score": float(ex.score),
            "writer_query": q_share,
            "writer_key": k_share,
            "terms": ex.top(N_TERMS),
        }

    def _fetch_pair(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        vals = [msg.get(n) for n in ("la", "ha", "lb", "hb")]
        if any(isinstance(v, bool) or not isinstance(v, int) for v in vals):
            raise ValueError(f"a fetch-pair request needs int la, ha, lb, hb; got {vals!r}.")
        la, ha, lb, hb = vals
        return self.explain_pair((la, ha), (lb, hb), msg.get("which")), []


def composition_view(result: Any, **kwargs: Any) -> CompositionView:
    """The :class:`CompositionView` of a :class:`~circuitboard.analysis.CompositionScores`.

    Keywords go to the view (``cap=`` to explain pairs on a prompt, ``threshold=``, ``kind=``,
    ``link=`` to share a selection, ``theme=``).

    Examples
    --------
    >>> scores = cb.composition_scores(model)  # doctest: +SKIP
    >>> cap = cb.capture(model, tok, "When Mary and John went to the store")  # doctest: +SKIP
    >>> cb.board(cb.composition_view(scores, cap=cap), cb.attention(cap))  # doctest: +SKIP
    """
    return CompositionView(result, **kwargs)


__all__ = ["CompositionView", "composition_view"]
