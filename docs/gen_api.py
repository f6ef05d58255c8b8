"""Write docs/reference.md: one section per public name of ``circuitboard.__all__``.

The page is generated (and git-ignored) so it can never fall behind the package: every name in
``__all__`` gets a mkdocstrings block pointing at the object where it is really defined (many
public names are lazy re-exports, which a static reader such as griffe cannot follow).

    python docs/gen_api.py && mkdocs build --strict      # or: make docs
"""

from __future__ import annotations

import inspect
import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))

import circuitboard  # noqa: E402


def where(name: str) -> str:
    """Dotted path of the object behind ``circuitboard.<name>``, at its definition."""
    obj = getattr(circuitboard, name)
    if isinstance(obj, types.ModuleType):  # the capture package is callable as capture()
        obj = getattr(obj, name)
    module = inspect.getmodule(obj)
    return f"{module.__name__}.{obj.__qualname__}"


def page() -> str:
    lines = [
        "# API reference",
        "",
        "Every public name of `circuitboard` (`import circuitboard as cb`), generated from the",
        "docstrings. The examples marked to run are executed by the test suite (doctest) on tiny",
        "models built from configs; the rest need the default model (`cb.load_default_model()`).",
        "",
    ]
    for name in sorted(circuitboard.__all__, key=str.lower):
        lines += [
            f"## `cb.{name}`",
            "",
            f"::: {where(name)}",
            "    options:",
            "      show_root_heading: false",
            "      heading_level: 3",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    out = HERE / "reference.md"
    out.write_text(page(), encoding="utf-8")
    print(f"wrote {out.relative_to(HERE.parent)} ({len(circuitboard.__all__)} names)")
