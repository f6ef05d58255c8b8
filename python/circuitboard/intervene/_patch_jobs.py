"""`patch` over a list of prompt pairs as a plan: one job per run of consecutive pairs.

A job's part is what one process keeps per pair (each pair's metric under every site patch
and its endpoints); parts merge in plan order and the result is assembled by the same code a
single run uses, so every engine gives the same numbers and saved bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..capture._prompts import split_prompts
from ..scale import ModelSpec, Sharding, cut, model_source
from ._pair_jobs import (
    facts_of,
    has_arrays,
    open_metric,
    prompts_of,
    read_npz,
    run_pairs,
    ship_metric,
    write_npz,
)
from ._patch import PROGRESS_FROM
from ._patch_inputs import _PairResult, _prepare_pairs, answers_per_pair, patch_layout
from ._patch_methods import _Grid, _run_pair
from ._patch_result import _assemble
from ._runner import Runner


@dataclass
class PairResults:
    """Per-pair patching results of consecutive pairs (a shard, or several merged)."""

    results: list[Any]  # _PairResult, in pair order
    forwards: int

    def merge(self, other: PairResults) -> PairResults:
        return PairResults(self.results + other.results, self.forwards + other.forwards)

    def save(self, path: Path) -> None:
        rs = self.results
        arrays = {
            "raw": np.stack([r.raw for r in rs]),
            "clean": np.array([r.clean for r in rs], np.float64),
            "corrupted": np.array([r.corrupted for r in rs], np.float64),
            "skipped": np.stack([r.skipped for r in rs]),
        }
        for name in ("reference_raw", "completeness"):
            if getattr(rs[0], name) is not None:
                arrays[name] = np.stack([getattr(r, name) for r in rs])
        write_npz(path, arrays, {"forwards": self.forwards})

    @staticmethod
    def load(path: Path) -> PairResults:
        a, meta = read_npz(path)
        results = [
            _PairResult(
                a["raw"][i],
                float(a["clean"][i]),
                float(a["corrupted"][i]),
                a["skipped"][i],
                a["reference_raw"][i] if "reference_raw" in a else None,
                a["completeness"][i] if "completeness" in a else None,
            )
            for i in range(len(a["clean"]))
        ]
        return PairResults(results, int(meta["forwards"]))


def patch_shard(model: Any, tokenizer: Any, payload: dict[str, Any]) -> PairResults:
    """One shard of a sharded :func:`circuitboard.patch`: its pairs, each run as one run does."""
    o = payload["options"]
    runner = Runner(model)
    metric = open_metric(payload["metric"])
    p = payload
    pairs = _prepare_pairs(
        tokenizer,
        p["clean"],
        p["corrupted"],
        p["answer"],
        p["wrong"],
        metric,
        runner=runner,
        first=p["first"],
    )
    results = [
        _run_pair(
            runner,
            pair,
            o["site"],
            o["layers"],
            o["positions"],
            o["method"],
            o["direction"],
            o["steps"],
            o["batch_size"],
            o["compare_exact"],
            None,
        )
        for pair in pairs
    ]
    return PairResults(results, runner.forwards)


def patch_sharded(
    model: Any,
    tokenizer: Any,
    clean: Any,
    corrupted: Any,
    options: dict[str, Any],
    run: Sharding,
    *,
    progress: bool | None,
) -> Any:
    """:func:`circuitboard.patch` over a list of pairs, cut into shards of consecutive pairs."""
    if any(hasattr(x, "shape") or has_arrays(x) for x in (clean, corrupted)):
        raise ValueError(
            "engine=, shards= and checkpoint= cut lists of text prompt pairs; image pairs run "
            "in this process: leave them out (engine='serial')."
        )
    source = model_source(model, tokenizer, "patch")
    here = not isinstance(source, ModelSpec)
    tok = tokenizer if here else source.load_tokenizer()
    answer, wrong, metric = options["answer"], options["wrong"], options["metric"]
    # Every input is checked here, before a worker starts (the workers repeat it per shard).
    runner = Runner(source.model) if here else None
    pairs = _prepare_pairs(tok, clean, corrupted, answer, wrong, metric, runner=runner)
    n = len(pairs)
    cl, co = prompts_of(clean), prompts_of(corrupted)
    single = split_prompts(clean, "clean")[1]
    answers = answers_per_pair(answer, n, single, "answer")
    wrongs = answers_per_pair(wrong, n, single, "wrong")
    shipped = ship_metric(metric, run.engine, "patch")
    site, method = options["site"], options["method"]
    with run.open(source, __name__, "patch") as eng:
        facts = facts_of(eng, "patch")
        layer_list, pos_list = patch_layout(
            pairs, site, options["layers"], options["positions"], facts["n_layers"]
        )
        run_opts = {
            "site": site,
            "layers": layer_list,
            "positions": pos_list,
            "method": method,
            "direction": options["direction"],
            "steps": options["steps"],
            "batch_size": options["batch_size"],
            "compare_exact": options["compare_exact"],
        }
        groups = cut([1] * n, eng.shards(run.shards))
        T0 = pairs[0].n_tokens
        if progress is None:  # the serial rule: large exact runs
            cells = int(np.prod(_Grid(site, layer_list, pos_list, facts["info"], T0).shape))
            progress = method == "exact" and cells * T0 * n >= PROGRESS_FROM
        merged = run_pairs(
            "patch",
            patch_shard,
            PairResults,
            eng,
            groups,
            (cl, co, answers, wrongs),
            (shipped, metric),
            run_opts,
            run=run,
            progress=progress,
        )
    # What _assemble reads of a Runner: the model's facts and whether it is causal.
    facts_runner = SimpleNamespace(
        info=facts["info"], adapter=SimpleNamespace(causal=facts["causal"])
    )
    # cost: forwards only (they do not depend on the engine); run time is in
    # scale.last_run().seconds, so that saved results are byte-identical across engines.
    return _assemble(
        merged.results,
        pairs,
        facts_runner,
        site,
        method,
        options["direction"],
        layer_list,
        pos_list,
        options["steps"],
        {"forwards": merged.forwards},
    )
