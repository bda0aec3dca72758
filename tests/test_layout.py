"""The package's shape: small modules, imports that run one way, a results room without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import Counter
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


def _graph() -> dict[str, set[str]]:
    paths = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: _imports(p, set(paths)) - {m} for m, p in paths.items()}
    assert graph["autotune.results.reader"]  # the parser sees imports (a vacuous graph has no cycle)
    return graph


def _reach(graph: dict[str, set[str]], start: str, skip: frozenset[str] = frozenset()) -> set[str]:
    seen: set[str] = set()
    todo = [m for m in graph[start] if m not in skip]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += [n for n in graph.get(m, ()) if n not in skip]
    return seen


def test_no_import_cycle_between_autotune_modules() -> None:
    graph = _graph()
    cycles = sorted(m for m in graph if m in _reach(graph, m))
    assert not cycles, cycles


def test_the_read_side_reaches_the_model_side_only_through_the_reports_grid() -> None:
    graph = _graph()
    grid = frozenset({"autotune.report.grid"})
    read = [
        m for m in graph if m.startswith(("autotune.results", "autotune.report", "autotune.serving")) and m not in grid
    ]
    assert "autotune.report.html" in read and "autotune.model.render" in _reach(graph, "autotune.report.grid")
    leaks = {m: sorted(n for n in _reach(graph, m, grid) if n.startswith("autotune.model")) for m in read}
    assert not {m: n for m, n in leaks.items() if n}, leaks


# The floors, bottom first: a module imports only from its own folder and from folders on lower floors.
FLOORS = [
    {"process", "testing", "noise", "records"},
    {"micro"},
    {"space"},
    {"config"},
    {"decision", "files"},
    {"store", "weights"},  # Optuna's storage, fingerprints, artifacts, references; the CLIP loaders
    {"results", "model"},  # the read side; rendering and scoring
    {"study"},
    {"report", "serving"},
    {"validate"},
    {"parity"},
    {"arguments"},
    {"cli", "autotune"},
]
FLOOR = {folder: i for i, floor in enumerate(FLOORS) for folder in floor}


def _folder(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_every_import_runs_down_a_floor() -> None:
    graph = _graph()
    folders = {_folder(m) for m in graph}
    assert folders == set(FLOOR), folders ^ set(FLOOR)  # a new folder is given its floor here
    up = sorted(
        f"{m} -> {n}"
        for m, ns in graph.items()
        for n in ns
        if _folder(m) != _folder(n) and FLOOR[_folder(n)] >= FLOOR[_folder(m)]
    )
    assert not up, up
    assert "autotune.store.reference_table" in graph["autotune.model.references"]  # the graph sees folders


def _loaded(code: str) -> list[str]:
    """The heavy packages a fresh interpreter has loaded after ``code``."""
    heavy = ("optuna", "torch", "diffusers", "open_clip", "plotly", "sqlalchemy")
    probe = f"import sys\n{code}\nprint([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return list(eval(out.stdout.strip().splitlines()[-1]))


def test_rendering_and_validating_import_no_optuna() -> None:
    assert "optuna" not in _loaded("import autotune.model.evaluate, autotune.validate, autotune.model.references")


def test_reading_a_study_imports_neither_torch_nor_optuna() -> None:
    loaded = _loaded("import autotune.results.reader, autotune.results.recommendations_file, autotune.report.table")
    assert "torch" not in loaded and "optuna" not in loaded


def test_help_and_export_load_neither_optuna_nor_torch() -> None:
    for argv in (["--help"], ["export", "--help"], ["recommend", "--help"]):
        code = f"from autotune.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
        loaded = _loaded(code)
        assert "optuna" not in loaded and "torch" not in loaded, (argv, loaded)


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


def test_no_two_modules_share_a_file_name() -> None:
    """A newcomer reading ``schema.py`` or ``references.py`` in a traceback knows which one it is."""
    names = Counter(p.name for p in (ROOT / "autotune").rglob("*.py") if p.name != "__init__.py")
    assert not [n for n, c in names.items() if c > 1]


def test_optunas_private_api_is_used_in_store_alone() -> None:
    """``_storage``, ``_trial_id``, ``_study_id``: one module (store/optuna_api.py) to fix when Optuna moves them."""
    import re

    private = re.compile(r"\._(storage|trial_id|study_id)\b")
    outside = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in sorted(PACKAGE.rglob("*.py"))
        if "store" not in p.relative_to(PACKAGE).parts
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if private.search(line)
    ]
    assert not outside, outside
