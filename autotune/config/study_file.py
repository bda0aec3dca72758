"""A study file's dataclasses, one per table, with their defaults; :mod:`autotune.config.load` reads
a file into them and checks every key.

Example:
    >>> cfg = load_config("studies/demo.toml")
    >>> cfg.search.steps
    (2, 30)
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.config.objectives import COLLAPSE
from autotune.config.tables import (
    ConfigError,
    ConfigWarning,
)
from autotune.space.caches import CACHES

__all__ = [
    "ConfigError",
    "ConfigWarning",
    "CustomMetricConfig",
    "MetricsConfig",
    "ModelConfig",
    "RecommendConfig",
    "ReportConfig",
    "SearchConfig",
    "ServingConfig",
    "SettingConfig",
    "StorageConfig",
    "StudyConfig",
]


@dataclass(frozen=True)
class ModelConfig:
    id: str = "tiny"  # a hub id, a local diffusers folder, a single .safetensors/.ckpt file, or a shipped model
    family: str = "auto"  # auto | sd | sdxl | sd3 | flux | distilled | distilled_flow
    device: str = "auto"  # auto (CUDA when there is one), cpu, cuda or cuda:N
    dtype: str = "auto"  # auto (float16 on CUDA, float32 on the CPU), float32, float16 or bfloat16
    height: int = 64  # image height in pixels, as production renders it
    width: int = 64  # image width in pixels
    revision: str | None = None  # the hub revision (a branch, tag or commit) to load
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

    steps: tuple[int, int] | None = None  # [low, high] steps searched (unset: the family's default)
    schedulers: tuple[str, ...] | str | None = None  # names, or "all" the model can use
    guidance: tuple[float, float] | None = None  # [low, high] CFG scale searched (unset: the family's default)
    guidance_step: float = 0.5  # CFG searched in increments of this
    guidance_cutoff: tuple[float, float] | None = None  # [low, 1.0]: share of steps with guidance (unset: every step)
    guidance_cutoff_step: float = 0.1  # the cutoff searched in increments of this
    guidance_sigma_low: tuple[float, ...] = ()  # guidance stops at this sigma; searched beside 0 (guided to the end)
    guidance_sigma_high: tuple[float, ...] = ()  # guidance waits above this sigma; searched beside none (from step 1)
    cache: tuple[str, ...] = ()  # caches searched beside none: "first_block", "taylorseer" (transformers), "deepcache"
    cache_threshold: tuple[float, float] | None = None  # [low, high] First Block Cache's threshold (unset: 0.05-0.5)
    cache_threshold_step: float = 0.05  # the threshold searched in increments of this
    cache_interval: tuple[int, int] | None = None  # [low, high] DeepCache's or TaylorSeer's interval (unset: 2-5)
    steps_step: int = 1  # steps searched from low in increments of this
    variants: tuple[str, ...] | str = ("sigmas", "timestep_spacing")  # conditional parameters, or "all"
    sampler: str = "tpe"  # Optuna sampler: tpe (multivariate), tpe_independent, gp, nsga2 or random
    n_trials: int = 30  # settings rendered per class (repeats reused and not counted; the baseline included)
    seeds: tuple[int, ...] = (0, 1)  # replicates of each prompt a trial renders (each image its own noise)
    batch_size: int | str = "auto"  # images per pipeline call; "auto": 16, halved on out-of-memory
    fitted_schedules: bool = False  # search sigmas = "fitted": each class's own timesteps (autotune.model.fit)
    rough_first: bool = False  # render the first seed, the others only when it is not clearly dominated
    prompts_per_trial: int | str = "auto"  # prompts a trial renders (racing adds more); "auto": up to 4
    front_share: float = 0.34  # share of new settings the optimiser picks to map the front (the rest: the decision's)
    seed: int | None = None  # the optimiser's seed (None: a fresh one each run)

    def cache_range(self, name: str) -> tuple[float, float, float]:
        """The low, high and step of the cache ``name``'s one parameter as searched."""
        spec = CACHES[name]
        if self.cache_threshold is not None and spec.param == "threshold":
            return (*self.cache_threshold, self.cache_threshold_step)
        if self.cache_interval is not None and spec.param == "cache_interval":
            return (*self.cache_interval, 1)
        return spec.low, spec.high, spec.step

    def first_prompts(self, n_prompts: int) -> int:
        """How many of a class's prompts (the first ones) every trial renders."""
        return min(n_prompts, 4 if self.prompts_per_trial == "auto" else int(self.prompts_per_trial))


@dataclass(frozen=True)
class CustomMetricConfig:
    """``[metrics.custom.NAME]``: a team's own quality metric (a preference model, an aesthetic predictor,
    an in-house classifier), judged image by image against the baseline like CLIP. ``score`` names a
    class built as ``Class(device=..., **options)`` whose ``score(images, prompts, references)`` returns
    one number per image (``images``: a float tensor N x 3 x H x W in 0..1)."""

    score: str = ""  # "package.module:Class" (the study file's folder is searched first) or "file.py:Class"
    higher_is_better: bool = True  # its direction: false where lower is better (a distance, an error rate)
    tolerance: float = 0.0  # how much worse than the baseline a setting may be, in `unit`
    unit: str = "absolute"  # "absolute" (the metric's own units) or "seed_sd" (x the baseline's seed-to-seed SD)
    collapse: float = COLLAPSE  # an image this many tolerances worse than the baseline's has collapsed
    reference: bool = False  # scored against the high-step reference image (passed as `references`)
    aggregate: str = "mean"  # "mean" or "median" of a trial's per-image values (its Optuna objective)
    title: str = ""  # what the report's axes say ("": the name)
    options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the class


@dataclass(frozen=True)
class MetricsConfig:
    objectives: tuple[str, ...] = ("clip_score", "lpips", "seconds")  # a custom metric joins them at the end
    clip_model: str = "tiny"  # open_clip model name, "local-dir:FOLDER", or a shipped one (glyphs, micro; tiny: random)
    clip_pretrained: str | None = None  # open_clip pretrained tag (cached or downloadable) or a weights file
    lpips_net: str = "alex"  # LPIPS trunk: alex, vgg or squeeze
    lpips_backbone: str = "random"  # random (offline, labelled so), pretrained, or a torchvision weights file
    custom: dict[str, CustomMetricConfig] = field(default_factory=dict)  # name -> [metrics.custom.NAME]


@dataclass(frozen=True)
class SettingConfig:
    """A baseline or reference setting; unset fields come from the model family's default."""

    scheduler: str | None = None  # a scheduler name (`autotune schedulers` lists them)
    steps: int | None = None  # denoising steps
    guidance: float | str | None = None  # CFG scale; reference only: "trial" follows each trial's guidance
    options: dict[str, Any] = field(default_factory=dict)  # variant values, e.g. timestep_spacing = "trailing"


@dataclass(frozen=True)
class RecommendConfig:
    """``[recommend]``: the non-inferiority rule (see :mod:`autotune.decision`) and its render budget."""

    rule: str = "match_baseline"  # the cheapest setting no worse than the baseline beyond the tolerances
    clip_tolerance_sd: float = 0.5  # x the baseline's seed-to-seed standard deviation of CLIP score
    clip_tolerance: float | None = None  # CLIP points instead (overrides clip_tolerance_sd)
    lpips_tolerance: float = 0.1  # x the seed-to-seed LPIPS (two seeds of one prompt)
    stochastic: bool = False  # ancestral/SDE samplers may be recommended (judged against seed-to-seed LPIPS)
    clip_collapse: float = COLLAPSE  # an image this many CLIP tolerances worse than the baseline's has collapsed
    lpips_collapse: float = 5.0  # ... LPIPS tolerances further from the reference (5 x 0.1: half a seed-to-seed)
    broken_share: float = 0.05  # share of images that collapse where the baseline's do not, allowed (exact bound)
    finalists: int = 3  # candidates a class confirms on fresh seeds, at most; each spends 5 % / finalists of the error
    confirm_seeds: tuple[int, ...] = tuple(range(1000, 1016))  # image numbers confirmation renders (fresh noises)
    confirm_prompts: int = 8  # prompts held out of the search for confirmation (at most half the class)
    holdout_seed: int | None = 0  # draws which prompts are held out (never a trial's first prompts_per_trial)
    race_seeds: int = 8  # seeds racing may add once every prompt is in
    race_budget: int = 2048  # images search racing renders in all, per class (the baseline's too; not confirmations')


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
    traffic: dict[str, float] = field(default_factory=dict)  # class -> its share of requests (all or none)

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
    def run_first(self) -> str:
        """The hint for a study not run yet, its path quoted to paste into a shell."""
        return f"run `autotune study {shlex.quote(str(self.path))}` first"

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
