"""The package's shape: small modules, imports that run one way, a results room without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "autotune"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """autotune modules that ``path`` imports anywhere (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("autotune"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in modules else node.module)
    return out


def test_no_module_is_over_400_lines() -> None:
    sizes = {_module(p): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) <= 400, {m: n for m, n in sizes.items() if n > 400}


def test_no_import_cycle_between_autotune_modules() -> None:
    paths = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: _imports(p, set(paths)) - {m} for m, p in paths.items()}
    assert graph["autotune.study.results"]  # the parser sees imports (a vacuous graph has no cycle)

    def reach(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += graph.get(m, ())
        return seen

    cycles = sorted(m for m in graph if m in reach(m))
    assert not cycles, cycles


def test_rendering_and_validating_import_no_optuna() -> None:
    code = "import sys, autotune.evaluate, autotune.validate, autotune.references; print('optuna' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_reading_a_study_imports_no_torch() -> None:
    code = "import sys, autotune.study.results, autotune.report; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_import_autotune_loads_no_study_machinery_until_used() -> None:
    code = (
        "import sys, autotune; heavy = ('optuna', 'torch', 'sqlalchemy', 'plotly', 'open_clip', 'diffusers'); "
        "print([m for m in heavy if m in sys.modules]); autotune.run_study; print('optuna' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "True"]


def test_pyproject_states_ranges_and_constraints_pin_exactly() -> None:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert [d for d in deps if "==" in d] == []  # installing autotune never replaces a serving torch
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().split() if "==" in line)
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
