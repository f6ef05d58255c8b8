"""`circuitboard` command line: write the standard linked board for a prompt as one HTML file.

    circuitboard report --prompt "When Mary and John went to the store, John gave a drink to" \\
        -o report.html [--model NAME] [--target " Mary" --baseline " John"] [--budget-mb 50]
    circuitboard verify report.html     # recompute the report's checks from its embedded data
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_PROMPT = "When Mary and John went to the store, John gave a drink to"
# The IOI contrast the README shows: the indirect object against the subject.
DEFAULT_CONTRAST = (" Mary", " John")


def _load(name: str | None) -> tuple[Any, Any]:
    if name is None:
        from .models import load_default_model

        return load_default_model()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name)
    model = AutoModelForCausalLM.from_pretrained(name)
    return model.eval(), tok


def top_two(cap: Any) -> tuple[int, int]:
    """Token ids of the model's top prediction after the prompt and its runner-up."""
    import numpy as np

    if cap.logits is None:
        raise ValueError(
            "this capture has no logits, so the top prediction is unknown; pass --target "
            "(and --baseline)."
        )
    last = np.asarray(
        cap.logits[-1].float().cpu() if hasattr(cap.logits, "float") else cap.logits[-1]
    )
    order = np.argsort(-last, kind="stable")
    return int(order[0]), int(order[1])


def _token_text(tok: Any, tid: int) -> str:
    try:
        return tok.decode([tid])
    except Exception:  # a tokenizer without decode: show the id
        return f"#{tid}"


def _tokens_used(cap: Any, target: Any, baseline: Any, log: Any) -> str:
    """The tokens attributed, as ids and text (and a warning on a missing leading space)."""
    import warnings

    from .analysis._attribution import prepare
    from .analysis._common import token_text

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t, b, _ = prepare(cap, target, baseline)
    for w in caught:
        if log:
            print(f"warning: {w.message}", file=log)
    used = f"`{token_text(cap, t)!r}` (token {t})"
    if b is not None:
        used += f" against `{token_text(cap, b)!r}` (token {b})"
    if log:
        print(f"attributing {used.replace('`', '')}", file=log)
    return used + "".join(f"\n\n> warning: {w.message}" for w in caught)


def capture_for_report(model: Any, tok: Any, prompt: str) -> Any:
    """The capture a report is built from: float32, so that the attribution's parts add up
    to the model's logit to the digits its header shows (float16 rounds every term)."""
    import torch

    import circuitboard as cb

    return cb.capture(model, tok, prompt, dtype=torch.float32)


def build_board(
    cap: Any, tok: Any, *, target: Any = None, baseline: Any = None, log: Any = None
) -> tuple[list[Any], dict[str, float]]:
    """The standard board for one capture: attribution, attention, logit lens, neurons.

    Returns the report items (an intro in Markdown, then a :class:`~circuitboard.Board`) and
    the seconds each view took to build. Views whose data the capture lacks are left out
    with a line in the intro.
    """
    import circuitboard as cb

    timings: dict[str, float] = {}
    views: list[Any] = []
    skipped: list[str] = []
    if target is None and cap.prompt == DEFAULT_PROMPT:
        target, baseline = (
            DEFAULT_CONTRAST[0],
            DEFAULT_CONTRAST[1] if baseline is None else baseline,
        )
    if target is None:
        t_id, b_id = top_two(cap)
        target = t_id
        baseline = b_id if baseline is None else baseline
        what = (
            f"the model's top prediction `{_token_text(tok, t_id)!r}` against its runner-up "
            f"`{_token_text(tok, b_id)!r}`"
        )
    else:
        what = _tokens_used(cap, target, baseline, log)

    def add(name: str, make: Any) -> None:
        t0 = time.perf_counter()
        try:
            views.append(make())
        except (ValueError, KeyError) as err:  # the capture lacks what this view needs
            skipped.append(f"{name}: {err}")
            if log:
                print(f"skipped {name}: {err}", file=log)
        timings[name] = time.perf_counter() - t0

    def attribution() -> Any:
        import warnings

        with warnings.catch_warnings():  # already printed with the tokens used
            warnings.simplefilter("ignore", UserWarning)
            return cb.logit_attribution(cap, target=target, baseline=baseline)

    add("attribution", attribution)
    top = top_head(views[0]) if views else None

    def attention() -> Any:
        import warnings

        if top is None:
            return cb.attention(cap)
        # Opens on the head the page points to, so its embedded explanations are that head's.
        with warnings.catch_warnings():  # already printed with the tokens used
            warnings.simplefilter("ignore", UserWarning)
            return cb.attention(cap, layer=top[0], head=top[1], target=target, baseline=baseline)

    add("attention", attention)
    add("logit lens", lambda: cb.logit_lens_view(cap))
    add("neurons", lambda: cb.neurons(cap))
    if not views:
        raise ValueError(
            "none of the views could be built from this capture:\n" + "\n".join(skipped)
        )
    intro = [
        f"**Prompt** ({cap.n_tokens} tokens): `{cap.prompt}`",
        f"**Attribution** of {what}. Click a head in the attribution heatmap to open it in the "
        "attention view; hover a token anywhere to follow it in every view.",
    ]
    if top is not None and any(isinstance(v, cb.AttentionView) for v in views):
        intro.append(
            f"The attention view opens on **L{top[0]}H{top[1]}**, the head with the largest "
            "attribution: click a cell of its pattern to see which components built that score."
        )
    intro += [f"- left out: {s}" for s in skipped]
    board = cb.board(*views)
    if top is not None:
        board.selection = {"layer": top[0], "head": top[1]}  # every view marks it
    return ["\n\n".join(intro), board], timings


def top_head(attribution_view: Any) -> tuple[int, int] | None:
    """(layer, head) of the largest |attribution| in an attribution view, else None."""
    import numpy as np

    heads = getattr(attribution_view, "_head_values", None)
    if heads is None or not np.size(heads):
        return None
    layer, head = np.unravel_index(int(np.argmax(np.abs(heads))), np.shape(heads))
    return int(layer), int(head)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="circuitboard", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser(
        "report",
        help="write an offline HTML report (attribution, attention, logit lens, neurons, linked)",
    )
    rep.add_argument(
        "--prompt", default=DEFAULT_PROMPT, help="text to run (default: the IOI prompt)"
    )
    rep.add_argument(
        "--model", default=None, help="HF model name or local path (default: SmolLM2-135M)"
    )
    rep.add_argument(
        "-o", "--output", default="report.html", help="output file (default: report.html)"
    )
    rep.add_argument("--title", default=None, help="page title (default: model and prompt)")
    rep.add_argument(
        "--target",
        default=None,
        help="answer token to attribute, e.g. ' Mary' (mind the leading space; default: ' Mary' "
        "for the default prompt, else the top prediction)",
    )
    rep.add_argument(
        "--baseline",
        default=None,
        help="token to compare against, e.g. ' John' (default: ' John' for the default prompt, "
        "else the runner-up)",
    )
    rep.add_argument(
        "--budget-mb",
        type=float,
        default=50.0,
        help="largest file size in MB; lossy reductions are listed in the page",
    )
    ver = sub.add_parser(
        "verify",
        help="recompute a report's checks from its embedded data (exit 1 when any fails)",
    )
    ver.add_argument("reports", nargs="+", help="report .html files written by circuitboard")
    ver.add_argument(
        "--strict",
        action="store_true",
        help="also fail a report none of whose views carries a check",
    )
    args = parser.parse_args(argv)
    if args.command == "verify":
        return _verify(args.reports, strict=args.strict)

    import circuitboard as cb

    t0 = time.perf_counter()
    model, tok = _load(args.model)
    t_load = time.perf_counter() - t0
    cap = capture_for_report(model, tok, args.prompt)
    t_cap = time.perf_counter() - t0 - t_load
    items, timings = build_board(
        cap, tok, target=args.target, baseline=args.baseline, log=sys.stderr
    )
    name = cap.info.model_name if getattr(cap, "info", None) else (args.model or "model")
    title = args.title or f"circuitboard · {name}"
    t1 = time.perf_counter()
    try:
        out = cb.report(
            *items, path=Path(args.output), title=title, budget_bytes=int(args.budget_mb * 1e6)
        )
    except ValueError as err:
        print(f"circuitboard: {err}", file=sys.stderr)
        return 2
    t_rep = time.perf_counter() - t1
    views = ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s "
        f"(load {t_load:.1f}s, capture {t_cap:.1f}s, {views}, write {t_rep:.1f}s)",
        file=sys.stderr,
    )
    return 0


def _verify(paths: list[str], *, strict: bool = False) -> int:
    from .export import verify_report

    failed = 0
    for path in paths:
        if not Path(path).is_file():
            print(f"circuitboard verify: {path}: no such file", file=sys.stderr)
            failed += 1
            continue
        result = verify_report(path, strict=strict)
        print(result.summary())
        failed += not result.ok
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
