"""Writes docs/reference.md from the code: every study-file key (its default and meaning, from the
dataclasses of autotune/config/study_file.py and the comment on each field) and every CLI flag (from
argparse). `python docs/generate.py` rewrites it; tests/test_docs.py fails when the two disagree.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "reference.md"


def field_comments(cls: type) -> dict[str, str]:
    """The comment after each field of a dataclass in its source (continued on following comment lines)."""
    import inspect

    source = inspect.getsource(inspect.getmodule(cls))  # type: ignore[arg-type]
    lines = source.splitlines()
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    out = {}
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            text = lines[stmt.end_lineno - 1]
            comment = text.split("  # ", 1)[1].strip() if "  # " in text else ""
            out[stmt.target.id] = comment
    return out


def _default(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        value = list(value)
    return str(value).replace("'", '"').replace("True", "true").replace("False", "false")


def _markdown(text: str) -> str:
    """A docstring's reStructuredText roles and double backticks as Markdown code."""
    import re

    return re.sub(r":\w+:`([^`]+)`", r"`\1`", text).replace("``", "`")


def tables() -> list[tuple[str, type, str]]:
    from autotune.config.load import _SECTIONS
    from autotune.config.study_file import CustomMetricConfig

    out = [(f"[{name}]", cls, (cls.__doc__ or "").split("\n\n")[0]) for name, cls in _SECTIONS.items()]
    out.insert(3, ("[metrics.custom.NAME]", CustomMetricConfig, (CustomMetricConfig.__doc__ or "").split("\n\n")[0]))
    return out


def study_keys() -> list[str]:
    lines = [
        "## Study-file keys",
        "",
        "Top level: `name` (the study's name; default: the file's stem), `[classes.NAME]` (`prompts`, a list of",
        "strings, required; `negative_prompt`, optional; `traffic`, the class's share of requests, on every",
        "class or none, summing to at most 1: the fleet's saving weighs the classes by it) and `[call]` (fixed",
        "keyword arguments of every pipeline call). Every other key, by table, with its default:",
        "",
    ]
    for title, cls, doc in tables():
        comments = field_comments(cls)
        lines += [f"### `{title}`", ""]
        if doc and not doc.startswith(cls.__name__):
            lines += [_markdown(" ".join(doc.split())), ""]
        lines += ["| key | default | meaning |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            if title == "[model]" and f.name == "home":
                continue  # set from the study file's folder, not a key
            meaning = comments.get(f.name, "").replace("|", "\\|")
            lines.append(f"| `{f.name}` | `{_default(f)}` | {meaning} |")
        lines.append("")
    return lines


def cli_flags() -> list[str]:
    from autotune.cli import _parser

    lines = ["## Command-line flags", ""]
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))

    def walk(name: str, p: argparse.ArgumentParser, help_text: str) -> None:
        nested = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            for child, cp in nested[0].choices.items():
                walk(f"{name} {child}", cp, next((c.help for c in nested[0]._choices_actions if c.dest == child), ""))
            return
        lines.extend(
            [f"### `autotune {name}`", "", help_text or "", "", "| flag | default | meaning |", "|---|---|---|"]
        )
        for a in p._actions:
            if isinstance(a, argparse._HelpAction) or a.help == argparse.SUPPRESS:
                continue
            flag = ", ".join(a.option_strings) if a.option_strings else a.metavar or a.dest.upper()
            default = "" if a.default in (None, False, argparse.SUPPRESS) or not a.option_strings else f"`{a.default}`"
            meaning = (a.help or "").replace("|", "\\|") % {"default": a.default} if a.help else ""
            if a.choices and not isinstance(a, argparse._SubParsersAction):
                meaning += f" (one of: {', '.join(map(str, a.choices))})"
            lines.append(f"| `{flag}` | {default} | {meaning} |")
        lines.append("")

    for name, p in sub.choices.items():
        walk(name, p, next((c.help for c in sub._choices_actions if c.dest == name), ""))
    return lines


def render() -> str:
    head = [
        "# Reference",
        "",
        "Generated from the code by `python docs/generate.py` (tests/test_docs.py fails when this page and",
        "the code disagree). What the keys mean in practice: [the study file](study-file.md),",
        "[the decision](decision.md).",
        "",
    ]
    return "\n".join([*head, *study_keys(), *cli_flags()]).rstrip() + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    OUT.write_text(render())
    print(f"wrote {OUT.relative_to(ROOT)}")
