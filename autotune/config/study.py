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
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.config.objectives import OBJECTIVES
from autotune.config.prompts import call_table, class_tables
from autotune.config.schema import (
    WEIGHT_FILES,
    ConfigError,
    ConfigWarning,
    artifacts_location,
    check_range,
    device_expected,
    one_of,
    read_utf8,
    require,
    section,
)
from autotune.space import schedulers, variants
from autotune.space.families import FAMILIES

__all__ = [
    "ConfigError",
    "ConfigWarning",
    "MetricsConfig",
    "ModelConfig",
    "RecommendConfig",
    "ReportConfig",
    "SearchConfig",
    "ServingConfig",
    "SettingConfig",
    "StorageConfig",
    "StudyConfig",
    "load_config",
]

SAMPLERS = ("tpe", "tpe_independent", "gp", "nsga2", "random")
RULES = ("match_baseline",)
DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class ModelConfig:
    id: str = "tiny"
    family: str = "auto"  # auto | sd | sdxl | sd3 | flux | distilled | distilled_flow
    device: str = "auto"
    dtype: str = "auto"
    height: int = 64
    width: int = 64
    revision: str | None = None
    config: str | None = None  # a single-file checkpoint's component configs: a diffusers folder or hub id
    pipeline: str | None = None  # "package.module:function" that returns the team's own pipeline
    vae: str | None = None  # another VAE: a diffusers folder, hub id or single file
    loras: dict[str, float] = field(default_factory=dict)  # LoRA file (or hub id) -> scale
    home: str = ""  # the study file's folder: relative paths start there (not a study-file key)

    def __hash__(self) -> int:
        return hash((self.id, self.revision, self.config, self.pipeline, self.vae, tuple(self.loras.items())))

    def resolved_device(self, cuda_available: bool) -> str:
        """``device`` with "auto" made concrete: CUDA when there is one, else the CPU."""
        if self.device == "auto":
            return "cuda" if cuda_available else "cpu"
        return self.device

    def additions(self) -> dict[str, Any]:
        """What the study adds to or builds the model with, beyond its id (only what is set)."""
        added = {"config": self.config, "pipeline": self.pipeline, "vae": self.vae, "loras": self.loras}
        return {k: v for k, v in added.items() if v}


@dataclass(frozen=True)
class SearchConfig:
    """The space; ``None`` means "the model family's default" until :func:`resolve` fills it."""

    steps: tuple[int, int] | None = None
    schedulers: tuple[str, ...] | str | None = None  # names, or "all" the model can use
    guidance: tuple[float, float] | None = None
    guidance_step: float = 0.5
    # the share of steps with guidance, searched in steps of guidance_cutoff_step (None: guidance on every step)
    guidance_cutoff: tuple[float, float] | None = None
    guidance_cutoff_step: float = 0.1
    steps_step: int = 1  # steps searched from low in increments of this
    variants: tuple[str, ...] | str = ("sigmas", "timestep_spacing")  # conditional parameters, or "all"
    sampler: str = "tpe"
    n_trials: int = 30
    seeds: tuple[int, ...] = (0, 1)
    batch_size: int | str = "auto"  # images per pipeline call; "auto": 16, halved on out-of-memory
    fitted_schedules: bool = False  # search sigmas = "fitted": each class's own timesteps (autotune.model.fit)
    rough_first: bool = False  # render the first seed, the others only when it is not clearly dominated
    prompts_per_trial: int | str = "auto"  # prompts a trial renders (racing adds more); "auto": up to 4
    front_share: float = 0.34  # share of new settings the optimiser picks to map the front (the rest: the decision's)
    seed: int | None = None  # the optimiser's seed (None: a fresh one each run)

    def first_prompts(self, n_prompts: int) -> int:
        """How many of a class's prompts (the first ones) every trial renders."""
        return min(n_prompts, 4 if self.prompts_per_trial == "auto" else int(self.prompts_per_trial))


@dataclass(frozen=True)
class MetricsConfig:
    objectives: tuple[str, ...] = ("clip_score", "lpips", "seconds")
    clip_model: str = "tiny"
    clip_pretrained: str | None = None
    lpips_net: str = "alex"
    lpips_backbone: str = "random"


@dataclass(frozen=True)
class SettingConfig:
    """A baseline or reference setting; unset fields come from the model family's default."""

    scheduler: str | None = None
    steps: int | None = None
    guidance: float | str | None = None  # reference only: "trial" follows each trial's guidance
    options: dict[str, Any] = field(default_factory=dict)  # variant values, e.g. timestep_spacing = "trailing"


@dataclass(frozen=True)
class RecommendConfig:
    """``[recommend]``: the non-inferiority rule (see :mod:`autotune.decision`) and its render budget."""

    rule: str = "match_baseline"
    clip_tolerance_sd: float = 0.5  # x the baseline's seed-to-seed standard deviation of CLIP score
    clip_tolerance: float | None = None  # CLIP points instead (overrides clip_tolerance_sd)
    lpips_tolerance: float = 0.1  # x the seed-to-seed LPIPS (two seeds of one prompt)
    stochastic: bool = False  # ancestral/SDE samplers may be recommended (judged against seed-to-seed LPIPS)
    clip_collapse: float = 10.0  # an image this many CLIP tolerances worse than the baseline's has collapsed
    lpips_collapse: float = 5.0  # ... LPIPS tolerances further from the reference (5 x 0.1: half a seed-to-seed)
    broken_share: float = 0.03  # collapsed share of images, minus the baseline's, allowed (one-sided 95 % bound)
    finalists: int = 3  # candidates that passed the search confirmed on fresh seeds, at most, per class
    confirm_seeds: tuple[int, ...] = (1000, 1001, 1002, 1003)
    confirm_prompts: int = 8  # prompts confirmation renders (those the search reaches last)
    race_seeds: int = 8  # seeds racing may add once every prompt is in
    race_budget: int = 2048  # images rendered for racing in all, per class (baseline's included)


@dataclass(frozen=True)
class ServingConfig:
    """``[serving]``: how production calls the pipeline, which is what the cost objective times."""

    batch_size: int = 1  # images per production call
    repeats: int = 3  # timed calls per setting (after an untimed warm-up of the shape); the median counts
    safety_checker: bool = False  # load the model's safety checker (a cost per image that blanks some)


@dataclass(frozen=True)
class ReportConfig:
    """``[report]``: what the study keeps for looking at in the morning."""

    images: bool = True  # upload every trial's images as Optuna artifacts (dashboard, report)


@dataclass(frozen=True)
class StorageConfig:
    """``[storage]``: where the trial images go (the trials themselves: ``--storage``)."""

    artifacts: str | None = None  # a folder (relative to the study file) or s3://bucket/prefix; None: NAME/artifacts


@dataclass(frozen=True)
class StudyConfig:
    """Everything a study file says, checked, names canonical; model-family defaults still unset
    (``None``) until :func:`resolve` turns it into a :class:`ResolvedStudy`."""

    name: str
    path: Path
    classes: dict[str, tuple[str, ...]]
    model: ModelConfig = field(default_factory=ModelConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    baseline: SettingConfig = field(default_factory=SettingConfig)
    reference: SettingConfig = field(default_factory=SettingConfig)
    recommend: RecommendConfig = field(default_factory=RecommendConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    call: dict[str, Any] = field(default_factory=dict)  # [call]: fixed pipeline-call arguments of production
    negative_prompts: dict[str, str] = field(default_factory=dict)  # class -> its own negative prompt

    def call_for(self, class_name: str | None) -> dict[str, Any]:
        """What production passes to every call for this class besides the searched arguments."""
        out = dict(self.call)
        if class_name in self.negative_prompts:
            out["negative_prompt"] = self.negative_prompts[class_name]
        return out

    @property
    def directory(self) -> Path:
        """Folder of the study file: the database and outputs live beside it (``path`` is as the user
        typed it, so every message names the file the same way)."""
        return self.path.parent

    @property
    def output_dir(self) -> Path:
        return self.directory / self.name

    @property
    def artifact_dir(self) -> Path:
        """The default home of the trial images (Optuna artifacts), beside the outputs."""
        return self.output_dir / "artifacts"

    @property
    def artifacts(self) -> str:
        """Where the trial images live: ``s3://bucket/prefix``, or a folder's absolute path."""
        where = self.storage.artifacts
        if where is not None and where.startswith("s3://"):
            return where.rstrip("/")
        return str((self.directory / where).resolve() if where else self.artifact_dir.resolve())

    @property
    def default_storage(self) -> str:
        return f"sqlite:///{self.directory.resolve() / (self.name + '.db')}"


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
    for name in met.objectives:
        one_of(name, tuple(OBJECTIVES), "metrics.objectives")
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
    for key, low in (("finalists", 1), ("race_seeds", 0), ("race_budget", 0), ("confirm_prompts", 1)):
        require(getattr(rec, key) >= low, f"recommend.{key}", f"an integer >= {low}", getattr(rec, key))
    if len(set(rec.confirm_seeds)) < 2 or set(rec.confirm_seeds) & set(s.seeds) or min(rec.confirm_seeds) < 0:
        raise ConfigError(
            f"recommend.confirm_seeds: expected at least two distinct integers >= 0 that search.seeds does not "
            f"use, got {list(rec.confirm_seeds)}"
        )
    for key in ("batch_size", "repeats"):
        require(getattr(cfg.serving, key) >= 1, f"serving.{key}", "an integer >= 1", getattr(cfg.serving, key))
    return dataclasses.replace(
        cfg,
        search=dataclasses.replace(s, schedulers=names),
        baseline=_validate_setting(cfg.baseline, "baseline"),
        reference=_validate_setting(cfg.reference, "reference"),
    )


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
    classes, negatives = class_tables(raw.get("classes"))
    cfg = StudyConfig(
        name=name,
        path=path,
        classes=classes,
        call=call_table(raw.get("call", {})),
        negative_prompts=negatives,
        **sections,
    )
    return _validate(cfg)


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
