"""TOML tables checked against dataclass annotations: the type machinery behind :mod:`autotune.config`,
and the small rules every input file follows (UTF-8 with or without a byte-order mark, paths relative
to the study file, one-line errors).

Example:
    >>> section(SearchConfig, {"steps": [4, 40]}, "search").steps
    (4, 40)
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

__all__ = [
    "WEIGHT_FILES",
    "ConfigError",
    "ConfigWarning",
    "artifacts_location",
    "check_range",
    "first_line",
    "local_weights",
    "one_of",
    "read_text",
    "read_utf8",
    "section",
    "study_path",
]


WEIGHT_FILES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")  # what a path to weights may end in


class ConfigError(ValueError):
    """A study file (or a command-line value) that cannot be used; the message says why."""


class ConfigWarning(UserWarning):
    """Accepted, but probably not what was meant (the command line prints it as one line)."""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        inner = _type_name(args[0])
        return f"a list of {inner}s" if args[-1] is Ellipsis else f"[{', '.join(map(_type_name, args))}]"
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is dict:
        return "a table"
    return {int: "integer", float: "number", str: "string", bool: "boolean"}[tp]


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in the dataclass's type."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        for option in (a for a in typing.get_args(tp) if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if origin is tuple:
        args = typing.get_args(tp)
        n = None if args[-1] is Ellipsis else len(args)
        if not isinstance(value, list) or (n is not None and len(value) != n):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return tuple(_coerce(v, args[0] if n is None else args[i], where) for i, v in enumerate(value))
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if (tp is int and isinstance(value, bool)) or not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def section(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise ConfigError(f"{where}.{key}: unknown key (expected one of: {', '.join(sorted(names))})")
    return cls(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in raw.items()})


def one_of(value: Any, choices: tuple[Any, ...], where: str) -> None:
    if value not in choices:
        raise ConfigError(f"{where}: expected one of {', '.join(map(str, choices))}, got {value!r}")


def check_range(pair: tuple[float, float] | None, low: float, high: float, where: str) -> None:
    if pair is not None and not (low <= pair[0] <= pair[1] <= high):
        raise ConfigError(f"{where}: expected [low, high] with {low:g} <= low <= high <= {high:g}, got {list(pair)}")


def device_expected(value: str) -> str | None:
    """None for a device autotune takes (auto, cpu, cuda, cuda:N), else what was expected instead."""
    kind = value.split(":")[0]
    if kind in ("auto", "cpu", "cuda") and (":" not in value or (kind == "cuda" and value[5:].isdigit())):
        return None
    return f"expected auto, cpu, cuda or cuda:N, got {value!r}"


def require(ok: bool, where: str, expected: str, got: object) -> None:
    """``where: expected EXPECTED, got GOT`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{where}: expected {expected}, got {got}")


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none), for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def study_path(value: str, home: str) -> Path:
    """A path from the study file, absolute: ``~`` expanded, a relative one from the file's folder ``home``."""
    return (Path(home or ".") / Path(value).expanduser()).resolve()


def local_weights(key: str, value: str, home: str) -> Path | None:
    """``value`` as a path to weights (relative to the study file's folder ``home``), or None for a hub
    id (``org/name``, exactly one slash, nothing of that name beside the study file); a path that
    holds no folder or weights file is refused here, before anything loads."""
    path = study_path(value, home)
    looks_local = value.startswith((".", "/", "~")) or value.count("/") != 1 or value.endswith(WEIGHT_FILES)
    if not (looks_local or path.exists()):
        return None
    if not (path.is_dir() or (path.suffix in WEIGHT_FILES and path.is_file())):
        relative = "" if value == str(path) else f" ({value!r}, relative to the study file)"
        raise ConfigError(f"{key}: no model folder or checkpoint file at {str(path)!r}{relative}")
    return path


def read_text(path: Path, what: str) -> str:
    """A user's text file (``what``: "prompts file", "request log") as UTF-8; what cannot be read is one
    :class:`ConfigError` line naming the file."""
    try:
        return read_utf8(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: expected UTF-8 text, byte {e.start} is not") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {what} ({e.strerror})") from None


def read_utf8(path: Path) -> str:
    """A text file as UTF-8, a byte-order mark at its start dropped (some Windows editors write one).

    Raises what reading raises (``OSError``, ``UnicodeDecodeError``): each caller names its file.
    """
    return path.read_bytes().decode("utf-8-sig")


def artifacts_location(value: str, where: str) -> str:
    """A folder, or ``s3://bucket/prefix``: any other URL is refused in one line naming ``where``."""
    if "://" in value and (not value.startswith("s3://") or not value[5:].strip("/")):
        raise ConfigError(f"{where}: expected a folder or s3://bucket/prefix, got {value!r}")
    return value
