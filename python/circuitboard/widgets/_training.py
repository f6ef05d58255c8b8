"""TrainingView: loss curves, steps × tensors KPI heatmaps and the probe's heads over training."""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import traitlets

from ._codec import encode
from ._view import View, json_safe

PAIRS = {"act": ("act", "grad"), "param": ("param", "param_grad")}


def _labels_of(run: Any, kind: str) -> list[str]:
    return [lab.split(":", 1)[1] for lab in run.labels if lab.split(":", 1)[0] == kind]


def _kpi_block(run: Any, names: list[str], kind: str) -> np.ndarray:
    """``[steps, categories, len(names), stats]`` float32 (NaN where not recorded)."""
    out = np.full((len(run.steps), len(run.categories), len(names), len(run.stats)), np.nan)
    for j, name in enumerate(names):
        label = f"{kind}:{name}"
        if label in run.labels:
            out[:, :, j] = run.values[:, :, run.labels.index(label)]
    return out.astype(np.float32)


def _on_axis(a: np.ndarray, have: Any, axis: list[int]) -> np.ndarray:
    """``a`` ``[len(have), ...]`` placed on the steps ``axis`` (NaN at steps it lacks)."""
    out = np.full((len(axis), *a.shape[1:]), np.nan, np.float32)
    at = {s: i for i, s in enumerate(axis)}
    out[[at[int(s)] for s in have]] = a
    return out


class TrainingView(View):
    """A training run over its steps: loss per category, KPI heatmaps, heads of the probe.

    - loss curves per category (two trials overlaid when ``other`` is given);
    - with ``other``, the two trials' heatmaps side by side in two columns on one step axis;
    - a colour bar under the heatmaps (each row has its own range: hovering a row gives its
      numbers), under the head scores and under the pattern;
    - activations and their gradients (or parameters and theirs) side by side, as steps ×
      tensors heatmaps of one KPI for one category, or the difference of two categories;
      each row is scaled to its own range (a difference to its own largest magnitude);
    - a step scrubber that moves a cursor over every panel and reads the values out;
    - the module tree as the heatmaps' row list (indented by dotted path), or with
      ``navigator="graph"`` also as a data-flow graph (recorded tensors as nodes, edges from
      autograd's graph of one forward, :func:`~circuitboard.training.record_dataflow`),
      each node coloured by the KPI at the scrubbed step; a node click selects its row;
    - the probe batch's head scores over probe steps; clicking a (step, head) cell shows that
      head's attention pattern at that step and selects its layer and head on the link, so a
      linked attention view follows;
    - with ``correlation=`` (a :class:`~circuitboard.training.KpiCorrelation`), the top KPIs
      listed; clicking one picks its KPI and highlights its heatmap row.

    Everything is in the page, so the view works offline in reports.

    Parameters
    ----------
    run : TrainingRun
    other : TrainingRun, optional
        A second trial (e.g. another architecture): its loss curves are drawn dashed with the
        first's, and its heatmaps in a second column beside the first, on one shared step
        axis (the union of both trials' steps; a step one trial lacks is grey in it).
    stat, category, minus, kind, score : initial choices (``minus`` = a category to subtract)
    correlation : KpiCorrelation, optional
    tokens : list of str, optional — the probe's token texts (default: its ids)
    dataflow : DataFlow, optional
        Which recorded tensors feed which (default: the run's, when recorded).
    navigator : ``"list"`` or ``"graph"`` (needs a data flow)

    Examples
    --------
    >>> import torch, circuitboard as cb
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())
    >>> rec = cb.TrainingRecorder(model, every=1)
    >>> for step in range(2):
    ...     with rec.step(step):
    ...         loss = model(torch.ones(4, 3)).sum()
    ...         rec.loss(loss)
    ...         loss.backward()
    >>> view = TrainingView(rec.close())
    >>> view.steps, view.names
    ([0, 1], ['0', '1'])
    """

    _view = traitlets.Unicode("training").tag(sync=True)
    trial = traitlets.Unicode().tag(sync=True)
    """The trial's name."""
    steps = traitlets.List(traitlets.Int()).tag(sync=True)
    """Recorded steps (the heatmaps' columns)."""
    categories = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """Categories (``all`` first)."""
    stats = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """KPI names."""
    names = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """Module names of the activation heatmaps' rows."""
    param_names = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """Parameter names of the parameter heatmaps' rows."""
    stat = traitlets.Unicode("norm").tag(sync=True)
    """The KPI shown."""
    category = traitlets.Unicode("all").tag(sync=True)
    """The category shown."""
    minus = traitlets.Unicode("").tag(sync=True)
    """A category subtracted from ``category`` ("" for none)."""
    kind = traitlets.Unicode("act").tag(sync=True)
    """``act`` (activations | their gradients) or ``param`` (parameters | their gradients)."""
    step_index = traitlets.Int(0).tag(sync=True)
    """The scrubber's position (an index into ``steps``)."""
    probe_steps = traitlets.List(traitlets.Int()).tag(sync=True)
    """Steps where the probe batch ran."""
    score_names = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """Head scores available (induction, previous_token, duplicate_token)."""
    score = traitlets.Unicode("induction").tag(sync=True)
    """The head score shown."""
    probe_tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """Token texts of the probe's first row."""
    picked = traitlets.Dict().tag(sync=True)
    """The (probe step index, layer, head) whose pattern is shown: ``{"p", "layer", "head"}``."""
    trial_b = traitlets.Unicode("").tag(sync=True)
    """The second trial's name ("" when there is none)."""
    correlations = traitlets.List(traitlets.Dict()).tag(sync=True)
    """Top rows of a KpiCorrelation (label, r, lag), when given."""
    highlight = traitlets.Unicode("").tag(sync=True)
    """A tensor label (``kind:name``) whose heatmap row is outlined."""
    navigator = traitlets.Unicode("list").tag(sync=True)
    """``list`` (the module tree as the heatmaps' row list) or ``graph`` (also the data-flow
    graph of the recorded tensors)."""
    graph_nodes = traitlets.List(traitlets.Int()).tag(sync=True)
    """Indices into ``names`` of the data-flow graph's nodes (empty: no data flow)."""
    graph_edges = traitlets.List(traitlets.List(traitlets.Int())).tag(sync=True)
    """``[source, target]`` indices into ``names``: data flows source → target."""
    _kpis = traitlets.Dict().tag(sync=True)  # per kind: encoded float32 [S, C, N, K]
    _loss = traitlets.Dict().tag(sync=True)  # encoded float32 [S, C]
    _kpis_b = traitlets.Dict().tag(sync=True)
    _loss_b = traitlets.Dict().tag(sync=True)
    _steps_b = traitlets.List(traitlets.Int()).tag(sync=True)
    _scores = traitlets.Dict().tag(sync=True)  # encoded float32 [scores, P, L, H]
    _patterns = traitlets.Dict().tag(sync=True)  # encoded uint8 [P, L, H, T, T] (probe row 0)

    def __init__(
        self,
        run: Any,
        *,
        other: Any = None,
        stat: str = "norm",
        category: str = "all",
        minus: str = "",
        kind: str = "act",
        score: str = "induction",
        correlation: Any = None,
        tokens: list[str] | None = None,
        dataflow: Any = None,
        navigator: str = "list",
        **kwargs: Any,
    ) -> None:
        try:
            cats, stats = list(run.categories), list(run.stats)
            list(run.labels)
        except AttributeError as err:
            raise TypeError(
                "TrainingView needs a TrainingRun (from TrainingRecorder.close(), "
                f"cb.load_training_run or cb.from_checkpoints); got {type(run).__name__}, "
                f"which lacks {err.name!r}."
            ) from None
        for what, value, allowed in (
            ("stat", stat, stats),
            ("category", category, cats),
            ("minus", minus, ["", *cats]),
            ("kind", kind, list(PAIRS)),
        ):
            if value not in allowed:
                raise ValueError(f"{what}={value!r} is not in this run; choose from {allowed}.")
        names, pnames = _labels_of(run, "act"), _labels_of(run, "param")
        for n in _labels_of(run, "grad"):
            if n not in names:
                names.append(n)
        for n in _labels_of(run, "param_grad"):
            if n not in pnames:
                pnames.append(n)
        if other is not None:  # another architecture may have tensors this one lacks
            for k, have in (("act", names), ("grad", names), ("param", pnames)):
                have += [n for n in _labels_of(other, k) if n not in have]
            pnames += [n for n in _labels_of(other, "param_grad") if n not in pnames]
        graph_nodes, graph_edges = _graph_of(run, dataflow, names, navigator)
        kpis = self._kpis_of(run, names, pnames)
        loss = run.loss.astype(np.float32)
        steps = [int(s) for s in run.steps]
        state: dict[str, Any] = {}
        if other is not None:
            # one step axis for both trials (the union of their steps; NaN where a trial has
            # no record), so the two columns line up step by step
            steps = sorted({*steps, *(int(s) for s in other.steps)})
            kpis = {k: _on_axis(v, run.steps, steps) for k, v in kpis.items()}
            loss = _on_axis(loss, run.steps, steps)
            oc = list(other.categories)
            kb = {
                k: _on_axis(v, other.steps, steps)
                for k, v in self._kpis_of(other, names, pnames).items()
            }
            # the other trial's categories reindexed to this run's (NaN where it has none)
            idx = [oc.index(c) if c in oc else -1 for c in cats]
            for key, arr in kb.items():
                full = np.full(arr.shape[:1] + (len(cats),) + arr.shape[2:], np.nan, np.float32)
                for i, j in enumerate(idx):
                    if j >= 0:
                        full[:, i] = arr[:, j]
                kb[key] = full
            lb = np.full((len(other.steps), len(cats)), np.nan, np.float32)
            for i, j in enumerate(idx):
                if j >= 0:
                    lb[:, i] = other.loss[:, j]
            lb = _on_axis(lb, other.steps, steps)
            state.update(
                trial_b=str(other.trial),
                _kpis_b={k: encode(v, "float32") for k, v in kb.items()},
                _loss_b=encode(lb, "float32"),
                _steps_b=steps,
            )
        score_names = [
            s for s in ("induction", "previous_token", "duplicate_token") if s in run.head_scores
        ]
        if score_names:
            scores = np.stack([run.head_scores[s] for s in score_names]).astype(np.float32)
            state["_scores"] = encode(scores, "float32")
        if run.patterns is not None and len(run.probe_steps):
            state["_patterns"] = encode(run.patterns[:, 0], "uint8", lo=0, hi=255)
        if run.probe_tokens is not None:
            toks = tokens or [str(int(t)) for t in run.probe_tokens[0]]
            state["probe_tokens"] = [str(t) for t in toks]
        if correlation is not None:
            state["correlations"] = json_safe(correlation.top(12))
        super().__init__(
            trial=str(run.trial),
            steps=steps,
            categories=cats,
            stats=stats,
            names=names,
            param_names=pnames,
            stat=stat,
            category=category,
            minus=minus,
            kind=kind,
            step_index=max(len(steps) - 1, 0),
            probe_steps=[int(s) for s in run.probe_steps],
            navigator=navigator,
            graph_nodes=graph_nodes,
            graph_edges=graph_edges,
            score_names=score_names,
            score=score if score in score_names else (score_names[0] if score_names else ""),
            _kpis={k: encode(v, "float32") for k, v in kpis.items()},
            _loss=encode(loss, "float32"),
            **state,
            **kwargs,
        )
        self._run = run

    @staticmethod
    def _kpis_of(run: Any, names: list[str], pnames: list[str]) -> dict[str, np.ndarray]:
        return {
            "act": _kpi_block(run, names, "act"),
            "grad": _kpi_block(run, names, "grad"),
            "param": _kpi_block(run, pnames, "param"),
            "param_grad": _kpi_block(run, pnames, "param_grad"),
        }

    @property
    def run(self) -> Any:
        """The :class:`~circuitboard.training.TrainingRun` shown."""
        return self._run

    def pick(self, step: int, layer: int, head: int) -> None:
        """Show ``head`` of ``layer`` at the probe step ``step`` (as a click on its cell)."""
        if step not in self.probe_steps:
            raise ValueError(f"step {step} is not a probe step; probe steps: {self.probe_steps}.")
        self.picked = {"p": self.probe_steps.index(step), "layer": int(layer), "head": int(head)}
        self.selection = {"layer": int(layer), "head": int(head)}

    def attention_view(self, step: int | None = None, *, follow: bool = True, **kwargs: Any) -> Any:
        """An :class:`AttentionView` of the probe's first row at probe step ``step`` (default:
        the picked step, else the last), on this view's link: clicking a (step, head) cell
        here selects that head there, and with ``follow=True`` (with a kernel) also shows
        the probe's patterns at the clicked step. In a report (no kernel) it follows the
        clicked step too: the report embeds the probe steps' patterns (uint8, one in every k
        steps when they do not all fit its budget; the report says so).

        Examples
        --------
        >>> attn = view.attention_view(320)  # doctest: +SKIP
        >>> cb.board(view, attn)  # doctest: +SKIP
        """
        from ._attention import AttentionView

        run = self._run
        if run.patterns is None:
            raise ValueError(
                "this run has no probe patterns; record with probes=... (token ids of a fixed "
                "batch) to see attention patterns over training."
            )
        if step is None:
            p = self.picked.get("p", len(self.probe_steps) - 1)
        elif step in self.probe_steps:
            p = self.probe_steps.index(step)
        else:
            raise ValueError(f"step {step} is not a probe step; probe steps: {self.probe_steps}.")
        kwargs.setdefault("link", self.link)
        kwargs.setdefault("layer", self.picked.get("layer", 0))
        kwargs.setdefault("head", self.picked.get("head", 0))
        attn = AttentionView(_probe_pattern(run, p), list(self.probe_tokens), **kwargs)
        if follow:
            # a report has no kernel: it embeds the probe steps' patterns (thinned to fit its
            # budget) and the page switches them when a (step, head) cell is clicked
            attn.follow_frames(
                self,
                lambda i: _probe_pattern(run, i),
                list(self.probe_steps),
                trait="picked",
                key="p",
                frame=p,
            )
            ref = weakref.ref(attn)

            def show_step(change: dict[str, Any]) -> None:
                view, new = ref(), change["new"]
                if view is None:
                    self.unobserve(show_step, names="picked")
                elif new.get("p") is not None:
                    view.set_attention(
                        _probe_pattern(run, int(new["p"])),
                        layer=new.get("layer"),
                        head=new.get("head"),
                    )
                    view._frame = int(new["p"])

            self.observe(show_step, names="picked")
        return attn


NAVIGATORS = ("list", "graph")


def _graph_of(
    run: Any, flow: Any, names: list[str], navigator: str
) -> tuple[list[int], list[list[int]]]:
    """The data-flow graph on the activation rows: node and ``[source, target]`` indices into
    ``names``; tensors of the flow that the run did not record are left out."""
    if navigator not in NAVIGATORS:
        raise ValueError(f"navigator={navigator!r}; choose from {list(NAVIGATORS)}.")
    if flow is None:
        flow = getattr(run, "dataflow", None)
    elif isinstance(flow, dict):
        from ..training._flow import DataFlow

        flow = DataFlow.from_json(flow)
    if flow is None:
        if navigator == "graph":
            raise ValueError(
                "navigator='graph' needs the data flow between the recorded tensors; record it "
                "once with circuitboard.training.record_dataflow(rec, batch) before training, "
                "or pass dataflow=circuitboard.training.dataflow(model, batch)."
            )
        return [], []
    try:
        nodes, edges = list(flow.nodes), list(flow.edges)
    except AttributeError:
        raise TypeError(
            f"dataflow must be a circuitboard.training.DataFlow; got {type(flow).__name__}."
        ) from None
    at = {n: i for i, n in enumerate(names)}
    return (
        [at[n] for n in nodes if n in at],
        [[at[a], at[b]] for a, b in edges if a in at and b in at],
    )


def _probe_pattern(run: Any, p: int) -> np.ndarray:
    """Patterns ``[layers, heads, q, k]`` of the probe's first row at probe step index ``p``."""
    return run.patterns[p, 0].astype(np.float32) / 255.0


def training_view(run: Any, other: Any = None, **kwargs: Any) -> TrainingView:
    """The :class:`TrainingView` of a :class:`~circuitboard.training.TrainingRun`.

    ``other`` is a second trial shown beside it; keywords go to the view (``stat=``,
    ``category=``, ``minus=``, ``kind=``, ``correlation=``, ``link=``, ``theme=``).

    Examples
    --------
    >>> run = cb.load_training_run("training_dynamics.sqlite")  # doctest: +SKIP
    >>> cb.training_view(run, category="repeated", minus="first period")  # doctest: +SKIP
    """
    return TrainingView(run, other=other, **kwargs)


__all__ = ["TrainingView", "training_view"]
