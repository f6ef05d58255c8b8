"""Run every benchmark module (``bench_*.py``) and print their markdown tables.

    python -m benchmarks              # all of them
    python -m benchmarks attention    # only bench_attention.py (names without the prefix)

Each module's ``main()`` runs with its own default arguments; a failing module is reported
and the others still run. The exit status is 1 when any module failed.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path


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
    names = modules(list(sys.argv[1:] if argv is None else argv))
    failed = []
    for name in names:
        print(f"\n## {name}\n", flush=True)
        t0 = time.perf_counter()
        saved = sys.argv
        sys.argv = [f"benchmarks/{name}.py"]  # each main() parses its own defaults
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            if not hasattr(module, "main"):
                raise AttributeError(f"benchmarks/{name}.py has no main()")
            module.main()
        except SystemExit as err:
            if err.code not in (0, None):
                failed.append(name)
        except Exception:  # one failing benchmark must not stop the others
            failed.append(name)
            traceback.print_exc()
        finally:
            sys.argv = saved
        print(f"\n_{name}: {time.perf_counter() - t0:.0f} s_", flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
