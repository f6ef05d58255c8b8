"""The package layering, checked by parsing every module's imports (no import is executed).

Module-level imports point down-stream only (DESIGN.md): models, dictionaries and scale at the
bottom, then capture, then analysis / intervene / training / experiments, then widgets, then
export. A few packages promise more: scale/ runs plans and knows nothing of what they compute,
so it imports nothing of the MI packages, not even inside a function; capture/, dictionaries/
and models/ import nothing above them anywhere (but dictionaries/ reads capture's adapter tables
inside the functions that run a model); views never import torch at module level.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "python" / "circuitboard"

# Down-stream order: a module-level import may point to the same rank or a lower one.
RANK = {
    "models": 0,
    "dictionaries": 0,
    "scale": 0,
    "data": 0,
    "testing": 0,  # tiny models for tests and examples: transformers only
    "capture": 1,
    "analysis": 2,
    "intervene": 2,
    "training": 2,
    "experiments": 2,
    "widgets": 3,
    "export": 4,
}
MI = ("capture", "analysis", "intervene", "dictionaries", "training", "experiments")
VIEWS = ("widgets", "export")
# Packages that import none of these anywhere (module level or inside a function).
NEVER = {
    "scale": (*MI, *VIEWS),
    "capture": ("analysis", "intervene", "scale", "training", "experiments", *VIEWS),
    "dictionaries": (
        "capture",
        "analysis",
        "intervene",
        "scale",
        "training",
        "experiments",
        *VIEWS,
    ),
    "models": (*MI, "scale", *VIEWS),
}
# The one exception to NEVER: training a dictionary runs a model, and the module paths of each
# architecture are capture's adapter tables (names only, no capture machinery), read inside the
# functions that run the model.
DEFERRED_TABLES = {"dictionaries": "circuitboard.capture.adapters"}
# Packages that import none of these at module level (a method may hand over inside itself).
NOT_AT_MODULE_LEVEL = {
    "analysis": VIEWS,
    "intervene": VIEWS,
    "training": VIEWS,
    "experiments": VIEWS,
    "widgets": ("export", "torch"),
}


@dataclass(frozen=True)
class Import:
    module: str  # "circuitboard.capture._tokens" or "torch"
    line: int
    deferred: bool  # inside a function: runs only when called
    type_only: bool  # under `if TYPE_CHECKING:`: never runs


def _target(node: ast.ImportFrom, here: list[str]) -> str:
    """The absolute module an ``ImportFrom`` names (``from ..x import y`` resolved)."""
    if not node.level:
        return node.module or ""
    base = here[: len(here) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(source: str, module: str, is_package: bool) -> list[Import]:
    """Every import statement of ``source`` (the module ``module``), relative ones resolved."""
    here = module.split(".") + ([""] if is_package else [])
    here = here[:-1]  # the package the module lives in
    found: list[Import] = []

    def visit(node: ast.AST, deferred: bool, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            d = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            t = type_only or (
                isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
            )
            if isinstance(child, ast.ImportFrom):
                target = _target(child, here)
                found.append(Import(target, child.lineno, d, t))
                # `from .. import analysis` imports the package analysis itself
                if child.module is None or target == "circuitboard":
                    found.extend(
                        Import(f"{target}.{a.name}", child.lineno, d, t) for a in child.names
                    )
            elif isinstance(child, ast.Import):
                found.extend(Import(a.name, child.lineno, d, t) for a in child.names)
            visit(child, d, t)

    visit(ast.parse(source), False, False)
    return found


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "torch":
        return "torch"
    if parts[0] != "circuitboard" or len(parts) < 2 or parts[1] not in RANK:
        return None
    return parts[1]


def violations(root: Path) -> list[str]:
    """Every import of a module under ``root`` (a ``circuitboard`` folder) that breaks a rule."""
    bad = [
        f"{p.parent.name}/ has no place in the layering: add it to RANK in {Path(__file__).name}"
        for p in sorted(root.glob("*/__init__.py"))
        if p.parent.name not in RANK
    ]
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if len(rel.parts) < 2 or rel.parts[0] not in RANK:
            continue  # the top-level API modules re-export everything, lazily
        pkg = rel.parts[0]
        is_package = path.name == "__init__.py"
        dotted = ".".join(("circuitboard", *rel.with_suffix("").parts))
        dotted = dotted.removesuffix(".__init__")
        for imp in imports_of(path.read_text(encoding="utf-8"), dotted, is_package):
            to = _package_of(imp.module)
            if to is None or to == pkg or imp.type_only:
                continue
            where = f"{rel}:{imp.line} imports {imp.module}"
            if imp.deferred and imp.module.startswith(DEFERRED_TABLES.get(pkg, "\0")):
                continue
            if to in NEVER.get(pkg, ()):
                bad.append(f"{where}: {pkg}/ never imports {to}")
            elif imp.deferred:
                continue
            elif to in NOT_AT_MODULE_LEVEL.get(pkg, ()):
                bad.append(f"{where} at module level: {pkg}/ imports {to} only inside a function")
            elif to != "torch" and RANK[to] > RANK[pkg]:
                bad.append(f"{where} at module level: {to} is up-stream of {pkg}")
    return bad


def test_the_package_keeps_its_layers():
    assert violations(PACKAGE) == []


def test_scale_imports_nothing_of_what_it_runs():
    """The plan protocol and its engines name no MI package, not even inside a function."""
    for path in sorted((PACKAGE / "scale").glob("*.py")):
        dotted = "circuitboard.scale." + path.stem
        names = {i.module for i in imports_of(path.read_text(), dotted, path.stem == "__init__")}
        assert not {n for n in names if _package_of(n) in (*MI, *VIEWS)}, path.name


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "circuitboard"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"scale/_x.py": "def f():\n    from ..intervene import patch\n"}, "scale/ never"),
        ({"scale/_x.py": "import circuitboard.analysis._compare\n"}, "scale/ never"),
        ({"capture/_x.py": "def f():\n    from ..analysis import x\n"}, "capture/ never"),
        ({"dictionaries/_x.py": "from ..capture import capture\n"}, "dictionaries/ never"),
        (
            {"dictionaries/_x.py": "def f():\n    from ..capture._run import capture\n"},
            "dictionaries/ never",
        ),
        ({"analysis/_x.py": "from ..widgets import compare_view\n"}, "inside a function"),
        ({"widgets/_x.py": "import torch\n"}, "inside a function"),
        ({"capture/_x.py": "from .. import intervene\n"}, "capture/ never"),
        ({"widgets/_x.py": "from ..export import report\n"}, "inside a function"),
        ({"analysis/_x.py": "from circuitboard.widgets._view import View\n"}, "function"),
        ({"intervene/sub/_x.py": "from ...widgets import x\n"}, "inside a function"),
        ({"capture/_x.py": "from ..intervene._patch import patch\n"}, "capture/ never"),
    ],
)
def test_a_new_violation_is_caught(tmp_path, files, message):
    bad = violations(_tree(tmp_path, files))
    assert len(bad) == 1 and message in bad[0], bad


def test_a_new_package_must_take_its_place(tmp_path):
    bad = violations(_tree(tmp_path, {"probes/__init__.py": "", "probes/_x.py": ""}))
    assert bad == ["probes/ has no place in the layering: add it to RANK in test_layering.py"]


def test_allowed_imports_pass(tmp_path):
    root = _tree(
        tmp_path,
        {
            "analysis/_x.py": "from ..capture import capture\nfrom ..scale import run_plan\n"
            "def view():\n    from ..widgets import compare_view\n",
            "widgets/_x.py": "from ..analysis import compare\ndef f():\n    import torch\n",
            "export/_x.py": "from ..widgets._view import View\n",
            "capture/_x.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from ..analysis import Comparison\n",
        },
    )
    assert violations(root) == []
