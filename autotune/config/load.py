"""Reading a study file: TOML into the dataclasses of :mod:`autotune.config.study_file`, with every check the
file gets from itself alone, before any model is known: each key's type and range, the scheduler names
and options, the searched ranges with the baseline inside them (again on the family's values by
:func:`autotune.config.resolve.resolve`), local weight paths that exist; and the warnings for what is
accepted but probably not meant.

A bad file raises :class:`ConfigError`, whose message names the file, the key path and what was expected,
e.g. ``studies/x.toml: search.steps: expected [low, high] with 1 <= low <= high <= 1000, got [40, 4]``.

Example:
    >>> cfg = load_config("studies/demo.toml")
    >>> cfg.search.steps
    (2, 30)
"""

from __future__ import annotations

import dataclasses
import tomllib
import warnings
from pathlib import Path
from typing import Any

from autotune.config.objectives import BUILT_IN, UNITS, Objective, register
from autotune.config.prompts import call_table, class_tables
from autotune.config.study_file import (
    CustomMetricConfig,
    MetricsConfig,
    ModelConfig,
    RecommendConfig,
    ReportConfig,
    SearchConfig,
    ServingConfig,
    SettingConfig,
    StorageConfig,
    StudyConfig,
)
from autotune.config.tables import (
    WEIGHT_FILES,
    ConfigError,
    ConfigWarning,
    artifacts_location,
    check_range,
    device_expected,
    local_weights,
    one_of,
    read_utf8,
    require,
    section,
)
from autotune.micro import MODELS
from autotune.space import schedulers, variants
from autotune.space.caches import CACHES
from autotune.space.families import FAMILIES

__all__ = ["DTYPES", "RULES", "SAMPLERS", "check_space", "load_config", "parse_config"]

SAMPLERS = ("tpe", "tpe_independent", "gp", "nsga2", "random")
RULES = ("match_baseline",)
DTYPES = ("auto", "float32", "float16", "bfloat16")


def _canonical_scheduler(name: str, where: str) -> str:
    try:
        return schedulers.canonical(name)
    except KeyError:
        raise ConfigError(f"{where}: {schedulers.unknown(name)}") from None


def _check_options(scheduler: str, options: dict[str, Any], where: str) -> None:
    """Variant values must be known, apply to the scheduler, and be one of the variant's choices."""
    if not options:
        return  # nothing to check: the sampler's classes (diffusers, seconds to import) stay unread
    free = {v.name: v for v in schedulers.variants_of(scheduler)}
    for key, value in options.items():
        if key not in free:
            raise ConfigError(
                f"{where}.{key}: not a parameter of {scheduler} (expected one of: {', '.join(free) or 'none'})"
            )
        choices = (*free[key].choices, "ays") if key == "sigmas" else free[key].choices
        one_of(value, choices, f"{where}.{key}")


def _validate_setting(s: SettingConfig, where: str) -> SettingConfig:
    if s.steps is not None and not 1 <= s.steps <= 1000:
        raise ConfigError(f"{where}.steps: expected an integer in 1..1000, got {s.steps}")
    if isinstance(s.guidance, str) and (where != "reference" or s.guidance != "trial"):
        expected = 'a number >= 0 or "trial"' if where == "reference" else "a number >= 0"
        raise ConfigError(f"{where}.guidance: expected {expected}, got {s.guidance!r}")
    if isinstance(s.guidance, float) and s.guidance < 0:
        raise ConfigError(f"{where}.guidance: expected a number >= 0, got {s.guidance:g}")
    if s.scheduler is None:
        if s.options:
            raise ConfigError(f"{where}.options: set {where}.scheduler too: options belong to a scheduler")
        return s
    name = _canonical_scheduler(s.scheduler, f"{where}.scheduler")
    _check_options(name, s.options, f"{where}.options")
    return dataclasses.replace(s, scheduler=name)


def check_space(
    s: SearchConfig,
    steps: tuple[int, int] | None,
    guidance: tuple[float, float] | None,
    baseline_steps: int | None,
    baseline_guidance: float | str | None,
) -> None:
    """The searched ranges and the baseline inside them (the baseline is always a point of the space), the
    guidance cutoff's range and the guidance interval's ends. Checked on what the file states when it loads
    (a value it leaves to the model's family is None there), and again on the family's values once the model
    is known."""
    if steps is not None and (steps[1] - steps[0]) % s.steps_step:
        raise ConfigError(f"search.steps_step: expected a divisor of {steps[1]} - {steps[0]}, got {s.steps_step}")
    if (
        steps is not None
        and baseline_steps is not None
        and (not steps[0] <= baseline_steps <= steps[1] or (baseline_steps - steps[0]) % s.steps_step)
    ):
        raise ConfigError(
            f"baseline.steps: expected a value inside search.steps {list(steps)} in steps of {s.steps_step}, "
            f"got {baseline_steps}"
        )
    if guidance is not None and isinstance(baseline_guidance, int | float):
        on_grid = (baseline_guidance - guidance[0]) / s.guidance_step
        if not guidance[0] <= baseline_guidance <= guidance[1] or abs(on_grid - round(on_grid)) > 1e-6:
            raise ConfigError(
                f"baseline.guidance: expected a value inside search.guidance {list(guidance)} in steps of "
                f"{s.guidance_step:g}, got {baseline_guidance:g}"
            )
    if s.guidance_cutoff is not None:
        check_range(s.guidance_cutoff, 0.05, 1, "search.guidance_cutoff")
        on_grid = (1 - s.guidance_cutoff[0]) / s.guidance_cutoff_step if s.guidance_cutoff_step > 0 else 0.5
        if s.guidance_cutoff[1] != 1 or abs(on_grid - round(on_grid)) > 1e-6:
            raise ConfigError(
                f"search.guidance_cutoff: expected [low, 1.0] with 1 - low a multiple of guidance_cutoff_step "
                f"({s.guidance_cutoff_step:g}), so that guidance on every step stays in the space; got "
                f"{list(s.guidance_cutoff)}"
            )
    low, high = s.guidance_sigma_low, s.guidance_sigma_high
    for name, values in (("guidance_sigma_low", low), ("guidance_sigma_high", high)):
        if any(v <= 0 for v in values) or len(set(values)) < len(values):
            raise ConfigError(f"search.{name}: expected distinct noise levels above 0, got {list(values)}")
    if low and high and max(low) >= min(high):
        raise ConfigError(
            f"search.guidance_sigma_low: expected every value below each of search.guidance_sigma_high "
            f"{list(high)} (an interval guides somewhere), got {list(low)}"
        )

    for name in s.cache:
        if name not in CACHES:
            raise ConfigError(f"search.cache: expected a list of {', '.join(CACHES)}, got {name!r}")
    if s.cache_threshold is not None:
        check_range(s.cache_threshold, 0.0, 1.0, "search.cache_threshold")
    if s.cache_interval is not None:
        check_range(s.cache_interval, 1, 50, "search.cache_interval")


def _validate(cfg: StudyConfig) -> StudyConfig:
    """Checks that need no model; :func:`resolve` does the rest once the model family is known."""
    m, s, met, rec = cfg.model, cfg.search, cfg.metrics, cfg.recommend
    if expected := device_expected(m.device):
        raise ConfigError(f"model.device: {expected}")
    one_of(m.dtype, DTYPES, "model.dtype")
    one_of(m.family, ("auto", *FAMILIES), "model.family")
    for path, scale in m.loras.items():
        if isinstance(scale, bool) or not isinstance(scale, int | float):
            raise ConfigError(f"model.loras.{path}: expected a scale (a number, 1.0 as trained), got {scale!r}")
    if m.config is not None and m.pipeline is not None:
        raise ConfigError("model.config: not with model.pipeline (the function builds the pipeline itself)")
    shipped = m.id in MODELS or m.id.startswith("tiny") or m.pipeline is not None
    weights = {"model.id": None if shipped else m.id, "model.config": m.config, "model.vae": m.vae}
    for key, value in {**weights, **{f"model.loras.{p}": p for p in m.loras}}.items():
        if value is not None:
            local_weights(key, value, m.home)  # a local path that is not there: refused before anything loads
    for key in ("height", "width"):
        value = getattr(m, key)
        if value < 8 or value % 8:
            raise ConfigError(f"model.{key}: expected a positive multiple of 8, got {value}")
    if cfg.storage.artifacts is not None:
        artifacts_location(cfg.storage.artifacts, "storage.artifacts")
    check_range(s.steps, 1, 1000, "search.steps")
    check_range(s.guidance, 0, 100, "search.guidance")
    require(s.guidance_step > 0, "search.guidance_step", "a number > 0", f"{s.guidance_step:g}")
    require(s.steps_step >= 1, "search.steps_step", "an integer >= 1", s.steps_step)
    names = s.schedulers
    if isinstance(names, str) and names != "all":
        raise ConfigError(f'search.schedulers: expected a list of scheduler names or "all", got {names!r}')
    if isinstance(names, tuple):
        if not names:
            raise ConfigError("search.schedulers: expected at least one scheduler name, got []")
        names = tuple(dict.fromkeys(_canonical_scheduler(n, "search.schedulers") for n in names))
    wanted = s.variants
    if isinstance(wanted, str) and wanted != "all":
        raise ConfigError(f'search.variants: expected a list of parameter names or "all", got {wanted!r}')
    for v in wanted if isinstance(wanted, tuple) else ():
        one_of(v, tuple(variants.VARIANTS), "search.variants")
    one_of(s.sampler, SAMPLERS, "search.sampler")
    require(s.n_trials >= 1, "search.n_trials", "an integer >= 1", s.n_trials)
    if not s.seeds or len(set(s.seeds)) != len(s.seeds) or min(s.seeds) < 0:
        raise ConfigError(f"search.seeds: expected distinct integers >= 0, at least one, got {list(s.seeds)}")
    if s.batch_size != "auto" and (isinstance(s.batch_size, str) or s.batch_size < 1):
        raise ConfigError(f'search.batch_size: expected "auto" or an integer >= 1, got {s.batch_size!r}')
    if s.prompts_per_trial != "auto" and (isinstance(s.prompts_per_trial, str) or s.prompts_per_trial < 1):
        raise ConfigError(f'search.prompts_per_trial: expected "auto" or an integer >= 1, got {s.prompts_per_trial!r}')
    require(0 <= s.front_share <= 1, "search.front_share", "a number in 0..1", f"{s.front_share:g}")
    if not met.objectives or len(set(met.objectives)) != len(met.objectives):
        raise ConfigError(f"metrics.objectives: expected distinct metric names, got {list(met.objectives)}")
    met = _custom_metrics(met)
    for name in met.objectives:
        one_of(name, (*BUILT_IN, *met.custom), "metrics.objectives")
    one_of(met.lpips_net, ("alex", "vgg", "squeeze"), "metrics.lpips_net")
    if met.lpips_backbone not in ("random", "pretrained") and not met.lpips_backbone.endswith(WEIGHT_FILES):
        raise ConfigError(
            "metrics.lpips_backbone: expected random, pretrained or a torchvision weights file "
            f"({', '.join(WEIGHT_FILES)}), got {met.lpips_backbone!r}"
        )
    one_of(rec.rule, RULES, "recommend.rule")
    for key in ("clip_collapse", "lpips_collapse"):
        require(getattr(rec, key) > 1, f"recommend.{key}", "a number of tolerances > 1", f"{getattr(rec, key):g}")
    require(0 <= rec.broken_share < 1, "recommend.broken_share", "a share >= 0 and < 1", f"{rec.broken_share:g}")
    for key in ("clip_tolerance", "clip_tolerance_sd", "lpips_tolerance"):
        require((x := getattr(rec, key) or 0) >= 0, f"recommend.{key}", "a number >= 0", f"{x:g}")
    at_least = (("finalists", 1), ("race_seeds", 0), ("race_budget", 0), ("confirm_prompts", 1), ("holdout_seed", 0))
    for key, low in at_least:
        require(getattr(rec, key) >= low, f"recommend.{key}", f"an integer >= {low}", getattr(rec, key))
    if len(set(rec.confirm_seeds)) < 2 or set(rec.confirm_seeds) & set(s.seeds) or min(rec.confirm_seeds) < 0:
        raise ConfigError(
            f"recommend.confirm_seeds: expected at least two distinct integers >= 0 that search.seeds does not "
            f"use, got {list(rec.confirm_seeds)}"
        )
    check_space(s, s.steps, s.guidance, cfg.baseline.steps, cfg.baseline.guidance)
    for key in ("batch_size", "repeats"):
        require(getattr(cfg.serving, key) >= 1, f"serving.{key}", "an integer >= 1", getattr(cfg.serving, key))
    return dataclasses.replace(
        cfg,
        search=dataclasses.replace(s, schedulers=names),
        metrics=met,
        baseline=_validate_setting(cfg.baseline, "baseline"),
        reference=_validate_setting(cfg.reference, "reference"),
    )


def _custom_metrics(met: MetricsConfig) -> MetricsConfig:
    """Each ``[metrics.custom.NAME]`` checked, registered as an objective row and added to the objectives
    (at the end, where ``objectives`` does not name it); its class is imported only when a study renders."""
    custom = {}
    for name, raw in met.custom.items():
        where = f"metrics.custom.{name}"
        if name in BUILT_IN or not name.replace("_", "").isalnum() or not name[0].isalpha():
            why = "a built-in metric's" if name in BUILT_IN else "not a name of letters, digits and '_'"
            raise ConfigError(f"{where}: expected a new metric name, got {name!r} ({why})")
        c = raw if isinstance(raw, CustomMetricConfig) else section(CustomMetricConfig, raw, where)
        module, _, cls = c.score.partition(":")
        require(bool(module and cls.isidentifier()), f"{where}.score", '"package.module:Class" or "file.py:Class"',
                repr(c.score))  # fmt: skip
        one_of(c.unit, ("absolute", "seed_sd"), f"{where}.unit")
        one_of(c.aggregate, ("mean", "median"), f"{where}.aggregate")
        require(c.tolerance >= 0, f"{where}.tolerance", f"a number >= 0 ({UNITS[c.unit]})", f"{c.tolerance:g}")
        require(c.collapse > 1, f"{where}.collapse", "a number of tolerances > 1", f"{c.collapse:g}")
        custom[name] = c
        register(Objective(
            name, c.higher_is_better, c.aggregate, c.title or name, c.score, c.reference, unit=c.unit,
            tolerance=c.tolerance, collapse=c.collapse, options=dict(c.options), custom=True,
        ))  # fmt: skip
    objectives = (*met.objectives, *(n for n in custom if n not in met.objectives))
    return dataclasses.replace(met, custom=custom, objectives=objectives)


def _warn_sizes(cfg: StudyConfig, raw: dict[str, Any]) -> None:
    """A stated panel size larger than a class: accepted (the class's prompts are all used), said once."""
    for table, key in (("search", "prompts_per_trial"), ("recommend", "confirm_prompts")):
        stated = raw.get(table, {}).get(key)
        small = {c: len(p) for c, p in cfg.classes.items() if isinstance(stated, int) and len(p) < stated}
        if small:
            warnings.warn(
                f"{table}.{key}: {stated} is more than the prompts of "
                f"{', '.join(f'classes.{c} ({n})' for c, n in small.items())}: it uses all of them",
                ConfigWarning,
                stacklevel=2,
            )


_SECTIONS = {
    "model": ModelConfig,
    "search": SearchConfig,
    "metrics": MetricsConfig,
    "baseline": SettingConfig,
    "reference": SettingConfig,
    "recommend": RecommendConfig,
    "serving": ServingConfig,
    "report": ReportConfig,
    "storage": StorageConfig,
}


def parse_config(raw: dict[str, Any], path: Path) -> StudyConfig:
    """Build a validated :class:`StudyConfig` from an already-parsed TOML table."""
    known = {"name", "classes", "call", *_SECTIONS}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{key}: unknown key (expected one of: {', '.join(sorted(known))})")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"name: expected a name of letters, digits, '_' or '-', got {name!r}")
    if "home" in raw.get("model", {}):
        raise ConfigError("model.home: unknown key (paths in [model] are relative to the study file)")
    sections = {key: section(cls, raw[key], key) for key, cls in _SECTIONS.items() if key in raw}
    sections["model"] = dataclasses.replace(sections.get("model", ModelConfig()), home=str(path.parent.resolve()))
    classes, negatives, traffic = class_tables(raw.get("classes"))
    cfg = StudyConfig(
        name=name,
        path=path,
        classes=classes,
        call=call_table(raw.get("call", {})),
        negative_prompts=negatives,
        traffic=traffic,
        **sections,
    )
    cfg = _validate(cfg)
    _warn_sizes(cfg, raw)
    return cfg


def load_config(path: str | Path) -> StudyConfig:
    """Read and validate a study file; raise :class:`ConfigError` naming the file and key."""
    path = Path(path)
    try:
        raw = tomllib.loads(read_utf8(path))
        return parse_config(raw, path)
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
