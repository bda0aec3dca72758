"""Render a setting for prompts x seeds and score it: the pipeline, the metric models and the
reference images, loaded once per evaluator. Knows nothing of Optuna (validation renders through it too).

Example:
    >>> ev = Evaluator(cfg, cfg.default_storage, device="cpu")
    >>> e = ev.evaluate(Settings.make("euler", 12, 7.5), ["a cat"], seeds=[0, 1])
    >>> e.per_image["clip_score"], e.model_calls
    ([24.1, 23.7], 24)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from autotune.config import ConfigError
from autotune.config.objectives import OBJECTIVES, cost_of, quality
from autotune.config.resolve import ResolvedStudy, reference_setting
from autotune.process import signals_kept
from autotune.space.families import Family
from autotune.space.settings import Settings

__all__ = ["Evaluation", "Evaluator", "Scorer", "in_turn"]

_PROMPTS_AT_A_TIME = 1  # the seed-to-seed references between two looks at the clock (2 images: on a busy
# CPU 4 prompts at 50 steps took 35 s past a deadline)


@dataclass(frozen=True)
class Evaluation:
    """A setting's renders scored: per-image values of every quality metric (prompt-major, seeds
    inner), denoiser calls per image, the images themselves (None where a cache stands in) and the
    seconds per image of each timed serving call (empty: not timed)."""

    per_image: dict[str, list[float]]
    model_calls: float  # per image; a call a cache cut short counts for the share it ran
    images: Any = None
    seconds: list[float] = field(default_factory=list)
    render_seconds: float = 0.0  # device seconds of the quality renders (batched; not the cost objective)
    guided_calls: float | None = None  # of the denoiser calls, those with guidance on (None: not counted)


class Scorer(Protocol):
    """What a study's objective needs: the model family, and a setting's scores on prompts x seeds.
    :class:`Evaluator` renders; the search benchmark stands in a grid of stored scores."""

    @property
    def family(self) -> Family: ...

    @property
    def scheduler_config(self) -> Mapping[str, Any]: ...  # the model's own: what a variant's "default" keeps

    def evaluate(
        self, settings: Settings, prompts: Sequence[str], seeds: Sequence[int], timed: bool = True
    ) -> Evaluation: ...

    def fit_schedule(
        self, settings: Settings, prompts: Sequence[str], seeds: Sequence[int], in_time: Callable[[], bool] = ...
    ) -> tuple[list[int], dict[str, Any]]: ...

    def time(self, settings: Settings, prompt: str, seed: int, repeats: int) -> list[float]: ...


class Evaluator:
    """Pipeline, metric models and reference store, loaded once and owned by this evaluator.

    ``routed`` maps prompts of no study class (validation's held-out ones) to the class whose call
    arguments (its negative prompt) they are served with.
    """

    def __init__(
        self,
        cfg: ResolvedStudy,
        storage_url: str,
        device: str | None,
        *,
        routed: Mapping[str, str] = MappingProxyType({}),
    ) -> None:
        from autotune.model.metrics import load_metric
        from autotune.model.pipeline import Calls, check_calls, load_pipeline
        from autotune.model.references import ReferenceStore

        self.cfg = cfg
        home = str(cfg.directory)
        with signals_kept():  # a Ctrl-C inside a weights read is a stop, not weights that cannot load
            try:
                self.pipeline = load_pipeline(
                    cfg.model, device, cfg.serving.safety_checker, described=cfg.described, calls=Calls.of(cfg, routed)
                )
                check_calls(self.pipeline, cfg)
                dev = self.pipeline.device
                self.metrics = {m: load_metric(m, cfg.metrics, dev, home) for m in quality(cfg.metrics.objectives)}
            except ConfigError as e:
                raise ConfigError(str(e) if str(e).startswith(str(cfg.path)) else f"{cfg.path}: {e}") from None
        self.store = ReferenceStore(storage_url)

    @property
    def family(self) -> Family:
        return self.pipeline.family

    @property
    def scheduler_config(self) -> Mapping[str, Any]:
        return self.pipeline.base_scheduler_config

    @property
    def lpips(self) -> Any:
        """The LPIPS metric when it is an objective (seed-to-seed distance, the convergence check), else None."""
        return self.metrics.get("lpips")

    def references(self, prompts: Sequence[str], seeds: Sequence[int], guidance: float | None = None) -> Any:
        """Reference images (prompt-major) for images rendered at ``guidance`` (see :func:`reference_setting`)."""
        m = self.cfg.model
        setting = reference_setting(self.cfg, guidance)
        return self.store.images(self.pipeline, setting, prompts, seeds, m.height, m.width, self.cfg.search.batch_size)

    def text_encoder(self) -> Any:
        """The study CLIP's text tower (what :class:`autotune.Router` routes by): the scorer's own model
        when CLIP score is an objective, else the ``[metrics]`` CLIP loaded for it."""
        from autotune.weights.clip import load_open_clip, text_encoder

        clip = self.metrics.get("clip_score")
        if clip is not None:
            return text_encoder(clip.model, clip.tokenizer, clip.device)  # type: ignore[attr-defined]
        m = self.cfg.metrics
        model, tokenizer = load_open_clip(m.clip_model, m.clip_pretrained, str(self.cfg.directory))
        return text_encoder(model.to(self.pipeline.device).eval(), tokenizer, self.pipeline.device)

    def seed_lpips(self, prompts: Sequence[str], before: Callable[[], None] = lambda: None) -> float:
        """Mean LPIPS between two seeds' references of each prompt: what "a different image" measures.
        The references render a few prompts at a time, ``before`` called first each time (it may raise)."""
        assert self.lpips is not None, "seed_lpips needs lpips among the objectives"
        seeds = list(self.cfg.search.seeds)
        pair = seeds[:2] if len(seeds) > 1 else [*seeds, max(seeds) + 1]
        for i in range(0, len(prompts), _PROMPTS_AT_A_TIME):  # stored as they render: a later run goes on
            before()
            self.references(prompts[i : i + _PROMPTS_AT_A_TIME], pair)
        refs = self.references(prompts, pair)
        return float(self.lpips(refs[0::2], refs[1::2]).mean())

    def check_reference(self) -> None:
        """Refuse a reference setting that does not converge, naming one that does; checked once per
        reference (skipped when its first image is already stored, i.e. a study has run with it)."""
        from autotune.model.references import check_reference

        cfg, m = self.cfg, self.cfg.model
        ref = reference_setting(cfg)
        prompt, seed = next(iter(cfg.classes.values()))[0], cfg.search.seeds[0]
        if self.lpips is None or self.store.contains(self.pipeline, ref, prompt, seed, m.height, m.width):
            return
        verdict = check_reference(self.pipeline, self.lpips, ref, prompt, seed, m.height, m.width)
        if verdict is not None:
            raise ConfigError(f"{cfg.path}: reference: {verdict} (or pass --no-reference-check)")

    def fit_schedule(
        self,
        settings: Settings,
        prompts: Sequence[str],
        seeds: Sequence[int],
        in_time: Callable[[], bool] = lambda: True,
    ) -> tuple[list[int], dict[str, Any]]:
        """The class's own timesteps for ``settings`` (:func:`autotune.model.fit.fit_timesteps`), fitted on
        the first ``FIT_PROMPTS`` of ``prompts`` x ``seeds`` against the reference and checked on the next
        ones, by LPIPS (by pixels where LPIPS is no objective); ``in_time`` as there."""
        from autotune.model.fit import FIT_PROMPTS, fit_timesteps

        m, n = self.cfg.model, FIT_PROMPTS
        fit, others = list(prompts[:n]), list(prompts[n : 2 * n])
        refs = self.references(fit, seeds, settings.guidance)
        check = (others, self.references(others, seeds, settings.guidance)) if others else None
        lpips = self.lpips
        distance = lpips if lpips is not None else (lambda a, b: ((a - b) ** 2).flatten(1).mean(1))
        return fit_timesteps(
            self.pipeline, settings, fit, seeds, refs, distance, m.height, m.width, self.cfg.search.batch_size,
            check=check, in_time=in_time,
        )  # fmt: skip

    def evaluate(
        self, settings: Settings, prompts: Sequence[str], seeds: Sequence[int], timed: bool = True
    ) -> Evaluation:
        """Render every prompt with every seed and score each image with every quality objective;
        ``timed``: and time the setting as production calls it (``[serving]``), on the first prompt and seed."""
        from autotune.model.render import generate

        cfg, m, serving = self.cfg, self.cfg.model, self.cfg.serving
        render = generate(self.pipeline, settings, prompts, seeds, m.height, m.width, cfg.search.batch_size)
        seconds = []
        if timed and cost_of(cfg.metrics.objectives):
            seconds = self.time(settings, prompts[0], seeds[0], serving.repeats)
        per_image = self.score(render.images, prompts, seeds, settings.guidance)
        return Evaluation(
            per_image, render.model_calls, render.images, seconds, sum(render.seconds), render.guided_calls
        )

    def time(self, settings: Settings, prompt: str, seed: int, repeats: int) -> list[float]:
        """Seconds per image of ``repeats`` production calls of ``settings`` (``[serving]``), nothing scored."""
        from autotune.model.render import time_serving

        m, batch = self.cfg.model, self.cfg.serving.batch_size
        return time_serving(self.pipeline, settings, prompt, seed, m.height, m.width, batch, repeats)

    def score(
        self, images: Any, prompts: Sequence[str], seeds: Sequence[int], guidance: float
    ) -> dict[str, list[float]]:
        """Every quality objective of each image (prompt-major over ``seeds``) rendered at ``guidance``."""
        each = [q for q in prompts for _ in seeds]
        refs = None
        if any(OBJECTIVES[name].reference for name in self.metrics):
            refs = self.references(prompts, seeds, guidance)
        return {name: metric.score(images, each, refs).tolist() for name, metric in self.metrics.items()}


def in_turn(scorer: Scorer, settings: Sequence[Settings], prompt: str, seed: int, repeats: int) -> list[list[float]]:
    """Each of ``settings`` timed ``repeats`` times, one serving call of each in turn: a slow spell of the
    machine (a cold start, another job) falls on all of them alike, which timings taken apart cannot promise."""
    out: list[list[float]] = [[] for _ in settings]
    for _ in range(repeats):
        for seconds, s in zip(out, settings, strict=True):
            seconds += scorer.time(s, prompt, seed, 1)
    return out
