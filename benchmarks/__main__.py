"""Run every benchmark module (``bench_*.py``) and print their markdown tables.

    python -m benchmarks              # all of them
    python -m benchmarks attention    # only bench_attention.py (names without the prefix)
    python -m benchmarks --write docs/benchmarks.md   # also record them there (`make bench`)

Each module's ``main()`` runs with its own default arguments; a failing module is reported
and the others still run. The exit status is 1 when any module failed. With ``--write``, each
module's output replaces its section of the file's "Latest run", headed by the date, the core
count and the load average before and after it (numbers mean little without the load).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import io
import os
import re
import sys
import time
import traceback
from pathlib import Path

LATEST = "## Latest run"


class _Tee(io.StringIO):
    """Keeps what a benchmark prints while still printing it."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def write(self, s: str) -> int:
        self.out.write(s)
        return super().write(s)

    def flush(self) -> None:
        self.out.flush()


def _load() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # not available on this platform
        return "unknown"


def record(text: str, name: str, output: str, header: str) -> str:
    """``text`` (a benchmarks page) with module ``name``'s section under "Latest run" replaced
    by ``header`` and ``output``; a new section is added at the end of "Latest run"."""
    if LATEST not in text:
        raise ValueError(f"the benchmarks page has no {LATEST!r} heading; add one to record runs.")
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    section = f"{start}\n### {name}\n\n{header}\n\n{output.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: section, text)
    text = text.replace("Nothing recorded yet on this checkout: run `make bench`.\n\n", "")
    head, rest = text.split(LATEST, 1)
    nxt = re.search(r"^## ", rest, re.M)  # the next top-level section closes "Latest run"
    cut = nxt.start() if nxt else len(rest)
    return head + LATEST + rest[:cut].rstrip("\n") + "\n\n" + section + "\n\n" + rest[cut:]


def modules(selected: list[str]) -> list[str]:
    """Names of the benchmark modules to run, in file-name order."""
    found = sorted(p.stem for p in Path(__file__).resolve().parent.glob("bench_*.py"))
    if not selected:
        return found
    wanted = [s if s.startswith("bench_") else f"bench_{s}" for s in selected]
    unknown = [w for w in wanted if w not in found]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; available: {found}")
    return wanted


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    page = None
    if "--write" in args:
        i = args.index("--write")
        if i + 1 >= len(args):
            raise SystemExit("--write needs a path, e.g. --write docs/benchmarks.md")
        page = Path(args.pop(i + 1))
        args.pop(i)
    names = modules(args)
    failed = []
    for name in names:
        print(f"\n## {name}\n", flush=True)
        t0 = time.perf_counter()
        when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        load0 = _load()
        saved = sys.argv
        sys.argv = [f"benchmarks/{name}.py"]  # each main() parses its own defaults
        tee = _Tee(sys.stdout)
        ok = True
        try:
            with contextlib.redirect_stdout(tee):
                module = importlib.import_module(f"benchmarks.{name}")
                if not hasattr(module, "main"):
                    raise AttributeError(f"benchmarks/{name}.py has no main()")
                module.main()
        except SystemExit as err:
            if err.code not in (0, None):
                failed.append(name)
                ok = False
        except Exception:  # one failing benchmark must not stop the others
            failed.append(name)
            ok = False
            traceback.print_exc()
        finally:
            sys.argv = saved
        seconds = time.perf_counter() - t0
        print(f"\n_{name}: {seconds:.0f} s_", flush=True)
        if page is not None and ok:
            header = (
                f"_Measured {when} on {os.cpu_count()} cores; load average (1/5/15 min) "
                f"{load0} before, {_load()} after; {seconds:.0f} s._"
            )
            text = record(page.read_text(encoding="utf-8"), name, tee.getvalue(), header)
            page.write_text(text, encoding="utf-8")
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
