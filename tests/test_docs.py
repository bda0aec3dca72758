"""The docs agree with the code: the generated reference is current, the README stays short, and
every relative link in the README and docs/ leads to a file that exists."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_reference_is_what_the_code_generates() -> None:
    generate = runpy.run_path(str(ROOT / "docs" / "generate.py"))
    stored = (ROOT / "docs" / "reference.md").read_text()
    assert stored == generate["render"](), "docs/reference.md is stale: run `python docs/generate.py`"


def test_the_reference_names_every_study_file_key_and_cli_flag() -> None:
    """Not vacuous: the page holds keys and flags as the code spells them, with a meaning each."""
    text = (ROOT / "docs" / "reference.md").read_text()
    for needle in ("| `n_trials` | `30` |", "| `finalists` | `3` |", "### `[metrics.custom.NAME]`", "| `--timeout` |"):
        assert needle in text, needle
    rows = [r for r in text.splitlines() if r.startswith("| `")]
    empty = [r for r in rows if r.rstrip().endswith("|  |")]
    assert len(rows) > 80 and not empty, empty


def test_the_readme_is_short_and_every_link_leads_somewhere() -> None:
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 250
    pages = [readme, *sorted((ROOT / "docs").rglob("*.md"))]
    assert len(pages) >= 8
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def _commands(text: str) -> list[str]:
    """Every `autotune ...` command line in the fenced code blocks of a page, its comment and prompt cut."""
    out = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():  # continued lines joined
            line = re.sub(r"^\$ |^\.venv/bin/", "", line.strip())
            if line.startswith("autotune ") and "import autotune" not in line:
                out.append(re.split(r"\s+#|\s*[|>]\s", line)[0].strip())
    return out


def test_every_autotune_command_in_the_readme_and_docs_is_one_the_cli_takes() -> None:
    """Parsed as the CLI parses them (not run: most need a finished study or a GPU), so a renamed or
    newly required flag cannot leave a page behind: `classes suggest` without its `--out` is refused."""
    import shlex

    import pytest

    from autotune.cli import _parser

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    commands = [(p.relative_to(ROOT), c) for p in pages for c in _commands(p.read_text())]
    assert len(commands) > 20 and any("classes suggest" in c for _, c in commands)
    refused = []
    for page, command in commands:
        try:
            _parser().parse_args(shlex.split(command)[1:])
        except (SystemExit, Exception) as e:  # every way argparse refuses
            refused.append(f"{page}: {command} ({type(e).__name__}: {e})")
    assert not refused, "\n".join(refused)
    with pytest.raises(SystemExit):
        _parser().parse_args(["classes", "suggest", "prompts.txt", "--k", "4"])
