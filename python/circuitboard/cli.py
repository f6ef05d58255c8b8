"""`circuitboard` command line: write a report for a prompt from the default or any model."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_PROMPT = "When Mary and John went to the store, John gave a drink to"


def _load(name: str | None):
    if name is None:
        from .models import load_default_model

        return load_default_model()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name)
    model = AutoModelForCausalLM.from_pretrained(name)
    return model.eval(), tok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="circuitboard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="write an offline HTML report for a prompt")
    rep.add_argument("--prompt", default=DEFAULT_PROMPT, help="text to run (default: the IOI prompt)")
    rep.add_argument("--model", default=None, help="HF model name or local path (default: SmolLM2-135M)")
    rep.add_argument("-o", "--output", default="report.html", help="output file (default: report.html)")
    rep.add_argument("--title", default=None)
    args = parser.parse_args(argv)

    import circuitboard as cb

    t0 = time.perf_counter()
    model, tok = _load(args.model)
    cap = cb.capture(model, tok, args.prompt)
    title = args.title or f"circuitboard · {cap.info.model_name if cap.info else 'model'}"
    intro = f"**Prompt** ({cap.n_tokens} tokens): `{args.prompt}`"
    out = cb.report(intro, cb.attention(cap), path=Path(args.output), title=title)
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({size:.1f} MB) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
