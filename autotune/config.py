"""Study files: TOML read with ``tomllib`` into dataclasses, every key checked.

A bad file raises :class:`ConfigError`, whose message names the file, the key path and
what was expected, e.g. ``studies/x.toml: search.steps: expected [low, high] with
1 <= low <= high <= 1000, got [40, 4]``.

Example:
    >>> cfg = load_config("studies/demo.toml")
    >>> cfg.search.steps
    (4, 40)
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune import schedulers
from autotune.metrics import METRICS

__all__ = [
    "ConfigError",
    "MetricsConfig",
    "ModelConfig",
    "RecommendConfig",
    "SearchConfig",
    "SettingConfig",
    "StudyConfig",
    "load_config",
]

SAMPLERS = ("tpe", "nsga2", "random")
RULES = ("match_baseline",)
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "float16", "bfloat16")


class ConfigError(ValueError):
    """A study file (or a command-line value) that cannot be used; the message says why."""


@dataclass(frozen=True)
class ModelConfig:
    id: str = "tiny"
    device: str = "auto"
    dtype: str = "auto"
    height: int = 64
    width: int = 64
    revision: str | None = None


@dataclass(frozen=True)
class SearchConfig:
    steps: tuple[int, int] = (4, 40)
    schedulers: tuple[str, ...] = ("euler", "dpmpp_2m", "dpmpp_2m_karras", "unipc", "ddim")
    guidance: tuple[float, float] = (1.0, 9.0)
    guidance_step: float = 0.5
    sampler: str = "tpe"
    n_trials: int = 30
    seeds: tuple[int, ...] = (0, 1)
    batch_size: int = 8


@dataclass(frozen=True)
class MetricsConfig:
    objectives: tuple[str, ...] = ("clip_score", "lpips", "seconds")
    clip_model: str = "tiny"
    clip_pretrained: str | None = None
    lpips_net: str = "alex"
    lpips_backbone: str = "random"


@dataclass(frozen=True)
class SettingConfig:
    scheduler: str = "dpmpp_2m_karras"
    steps: int = 30
    guidance: float = 7.5


@dataclass(frozen=True)
class RecommendConfig:
    rule: str = "match_baseline"
    clip_tolerance: float = 0.5
    lpips_tolerance: float = 0.1


@dataclass(frozen=True)
class StudyConfig:
    """Everything a study file says, resolved: defaults filled, names canonical."""

    name: str
    path: Path
    classes: dict[str, tuple[str, ...]]
    model: ModelConfig = field(default_factory=ModelConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    baseline: SettingConfig = field(default_factory=SettingConfig)
    reference: SettingConfig = field(default_factory=lambda: SettingConfig(steps=100))
    recommend: RecommendConfig = field(default_factory=RecommendConfig)

    @property
    def directory(self) -> Path:
        """Folder of the study file: the database and outputs live beside it."""
        return self.path.parent

    @property
    def output_dir(self) -> Path:
        return self.directory / self.name

    @property
    def default_storage(self) -> str:
        return f"sqlite:///{self.directory / (self.name + '.db')}"


_SECTIONS = {
    "model": ModelConfig,
    "search": SearchConfig,
    "metrics": MetricsConfig,
    "baseline": SettingConfig,
    "reference": SettingConfig,
    "recommend": RecommendConfig,
}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        inner = _type_name(args[0])
        return f"a list of {inner}s" if args[-1] is Ellipsis else f"[{', '.join(map(_type_name, args))}]"
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    return {int: "integer", float: "number", str: "string", bool: "boolean"}[tp]


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in the dataclass's type."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(value, options[0], where)
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


def _section(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise ConfigError(f"{where}.{key}: unknown key (expected one of: {', '.join(sorted(names))})")
    return cls(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in raw.items()})


def _one_of(value: str, choices: tuple[str, ...], where: str) -> None:
    if value not in choices:
        raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")


def _check_range(pair: tuple[float, float], low: float, high: float, where: str) -> None:
    if not (low <= pair[0] <= pair[1] <= high):
        raise ConfigError(f"{where}: expected [low, high] with {low:g} <= low <= high <= {high:g}, got {list(pair)}")


def _canonical_scheduler(name: str, where: str) -> str:
    try:
        return schedulers.canonical(name)
    except KeyError:
        known = ", ".join(schedulers.names())
        raise ConfigError(f"{where}: unknown scheduler {name!r} (expected one of: {known})") from None


def _validate_setting(s: SettingConfig, where: str) -> SettingConfig:
    if not 1 <= s.steps <= 1000:
        raise ConfigError(f"{where}.steps: expected an integer in 1..1000, got {s.steps}")
    if s.guidance < 0:
        raise ConfigError(f"{where}.guidance: expected a number >= 0, got {s.guidance:g}")
    return dataclasses.replace(s, scheduler=_canonical_scheduler(s.scheduler, f"{where}.scheduler"))


def _validate(cfg: StudyConfig) -> StudyConfig:
    m, s, met, rec = cfg.model, cfg.search, cfg.metrics, cfg.recommend
    device_kind = m.device.split(":")[0]
    if device_kind not in DEVICES or (":" in m.device and (device_kind != "cuda" or not m.device[5:].isdigit())):
        raise ConfigError(f"model.device: expected auto, cpu, cuda or cuda:N, got {m.device!r}")
    _one_of(m.dtype, DTYPES, "model.dtype")
    for key in ("height", "width"):
        value = getattr(m, key)
        if value < 8 or value % 8:
            raise ConfigError(f"model.{key}: expected a positive multiple of 8, got {value}")
    _check_range(s.steps, 1, 1000, "search.steps")
    _check_range(s.guidance, 0, 100, "search.guidance")
    if s.guidance_step <= 0:
        raise ConfigError(f"search.guidance_step: expected a number > 0, got {s.guidance_step:g}")
    if not s.schedulers:
        raise ConfigError("search.schedulers: expected at least one scheduler name, got []")
    names = tuple(dict.fromkeys(_canonical_scheduler(n, "search.schedulers") for n in s.schedulers))
    _one_of(s.sampler, SAMPLERS, "search.sampler")
    if s.n_trials < 1:
        raise ConfigError(f"search.n_trials: expected an integer >= 1, got {s.n_trials}")
    if not s.seeds or len(set(s.seeds)) != len(s.seeds) or min(s.seeds) < 0:
        raise ConfigError(f"search.seeds: expected distinct integers >= 0, at least one, got {list(s.seeds)}")
    if s.batch_size < 1:
        raise ConfigError(f"search.batch_size: expected an integer >= 1, got {s.batch_size}")
    if not met.objectives or len(set(met.objectives)) != len(met.objectives):
        raise ConfigError(f"metrics.objectives: expected distinct metric names, got {list(met.objectives)}")
    for name in met.objectives:
        _one_of(name, tuple(METRICS), "metrics.objectives")
    _one_of(met.lpips_net, ("alex", "vgg", "squeeze"), "metrics.lpips_net")
    _one_of(met.lpips_backbone, ("random", "pretrained"), "metrics.lpips_backbone")
    _one_of(rec.rule, RULES, "recommend.rule")
    for key in ("clip_tolerance", "lpips_tolerance"):
        if getattr(rec, key) < 0:
            raise ConfigError(f"recommend.{key}: expected a number >= 0, got {getattr(rec, key):g}")
    baseline = _validate_setting(cfg.baseline, "baseline")
    reference = _validate_setting(cfg.reference, "reference")
    if not s.steps[0] <= baseline.steps <= s.steps[1]:
        raise ConfigError(f"baseline.steps: expected a value inside search.steps {list(s.steps)}, got {baseline.steps}")
    if not s.guidance[0] <= baseline.guidance <= s.guidance[1]:
        raise ConfigError(
            f"baseline.guidance: expected a value inside search.guidance {list(s.guidance)}, got {baseline.guidance:g}"
        )
    if baseline.scheduler not in names:  # the baseline is always a point of the space
        names = (*names, baseline.scheduler)
    return dataclasses.replace(
        cfg, search=dataclasses.replace(s, schedulers=names), baseline=baseline, reference=reference
    )


def _classes(raw: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("classes: expected at least one [classes.NAME] table with prompts = [...]")
    out = {}
    for name, table in raw.items():
        where = f"classes.{name}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table with prompts = [...], got {table!r}")
        for key in table:
            if key != "prompts":
                raise ConfigError(f"{where}.{key}: unknown key (expected: prompts)")
        prompts = table.get("prompts")
        if not isinstance(prompts, list) or not prompts:
            raise ConfigError(f"{where}.prompts: expected a non-empty list of strings, got {prompts!r}")
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise ConfigError(f"{where}.prompts[{i}]: expected a non-empty string, got {p!r}")
        if not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{where}: expected a class name of letters, digits, '_' or '-', got {name!r}")
        out[name] = tuple(prompts)
    return out


def parse_config(raw: dict[str, Any], path: Path) -> StudyConfig:
    """Build a validated :class:`StudyConfig` from an already-parsed TOML table."""
    known = {"name", "classes", *_SECTIONS}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{key}: unknown key (expected one of: {', '.join(sorted(known))})")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"name: expected a name of letters, digits, '_' or '-', got {name!r}")
    sections = {key: _section(cls, raw[key], key) for key, cls in _SECTIONS.items() if key in raw}
    if "reference" in raw and "steps" not in raw["reference"]:
        sections["reference"] = dataclasses.replace(sections["reference"], steps=100)
    cfg = StudyConfig(name=name, path=path, classes=_classes(raw.get("classes")), **sections)
    return _validate(cfg)


def load_config(path: str | Path) -> StudyConfig:
    """Read and validate a study file; raise :class:`ConfigError` naming the file and key."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
        return parse_config(raw, path.resolve())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such study file") from None
    except (IsADirectoryError, PermissionError) as e:
        raise ConfigError(f"{path}: cannot read the study file ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: expected UTF-8 text, the file is not") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
