"""Render a setting for prompts x seeds and score it: the pipeline, the metric models and the
reference images, loaded once per process. Knows nothing of Optuna (validation renders through it too).

Example:
    >>> ev = Evaluator(cfg, cfg.default_storage, device="cpu")
    >>> e = ev.evaluate(Settings.make("euler", 12, 7.5), ["a cat"], seeds=[0, 1])
    >>> e.per_image["clip_score"], e.model_calls
    ([24.1, 23.7], 24)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from autotune.config import ConfigError
from autotune.families import Family, ResolvedStudy
from autotune.space import Settings, reference_setting

__all__ = ["Evaluation", "Evaluator", "Scorer"]


@dataclass(frozen=True)
class Evaluation:
    """A setting's renders scored: per-image values of every quality metric (prompt-major, seeds
    inner), denoiser calls per image, the images themselves (None where a cache stands in) and the
    seconds per image of each timed serving call (empty: not timed)."""

    per_image: dict[str, list[float]]
    model_calls: int
    images: Any = None
    seconds: list[float] = field(default_factory=list)
    render_seconds: float = 0.0  # device seconds of the quality renders (batched; not the cost objective)


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


class Evaluator:
    """Pipeline, metric models and reference store: loaded once per process, shared by classes."""

    def __init__(self, cfg: ResolvedStudy, storage_url: str, device: str | None) -> None:
        from autotune.metrics.clip_score import ClipScore
        from autotune.metrics.lpips_distance import Lpips
        from autotune.pipeline import configure_calls, load_pipeline
        from autotune.references import ReferenceStore

        self.cfg = cfg
        m, home = cfg.metrics, str(cfg.directory)
        try:
            self.pipeline = load_pipeline(cfg.model, device, cfg.serving.safety_checker)
            configure_calls(self.pipeline, cfg)
            dev = self.pipeline.device
            self.clip = ClipScore(m.clip_model, m.clip_pretrained, dev, home)  # scores; embeds prompts for the router
            self.lpips = Lpips(m.lpips_net, m.lpips_backbone, dev, home) if "lpips" in m.objectives else None
        except ConfigError as e:
            raise ConfigError(str(e) if str(e).startswith(str(cfg.path)) else f"{cfg.path}: {e}") from None
        self.store = ReferenceStore(storage_url)

    @property
    def family(self) -> Family:
        return self.pipeline.family

    @property
    def scheduler_config(self) -> Mapping[str, Any]:
        return self.pipeline.base_scheduler_config

    def references(self, prompts: Sequence[str], seeds: Sequence[int], guidance: float | None = None) -> Any:
        """Reference images (prompt-major) for images rendered at ``guidance`` (see :func:`reference_setting`)."""
        m = self.cfg.model
        setting = reference_setting(self.cfg, guidance)
        return self.store.images(self.pipeline, setting, prompts, seeds, m.height, m.width, self.cfg.search.batch_size)

    def router_embedding(self, prompts: Sequence[str]) -> dict[str, Any]:
        """The class's centroid in the study CLIP's text space (what :class:`autotune.Router` routes by)."""
        from autotune.router import class_embedding, text_encoder

        return class_embedding(text_encoder(self.clip.model, self.clip.tokenizer, self.clip.device), list(prompts))

    def seed_lpips(self, prompts: Sequence[str]) -> float:
        """Mean LPIPS between two seeds' references of each prompt: what "a different image" measures."""
        assert self.lpips is not None, "seed_lpips needs lpips among the objectives"
        seeds = list(self.cfg.search.seeds)
        pair = seeds[:2] if len(seeds) > 1 else [*seeds, max(seeds) + 1]
        refs = self.references(prompts, pair)
        return float(self.lpips(refs[0::2], refs[1::2]).mean())

    def check_reference(self) -> None:
        """Refuse a reference setting that does not converge, naming one that does; checked once per
        reference (skipped when its first image is already stored, i.e. a study has run with it)."""
        from autotune.references import check_reference

        cfg, m = self.cfg, self.cfg.model
        ref = reference_setting(cfg)
        prompt, seed = next(iter(cfg.classes.values()))[0], cfg.search.seeds[0]
        if self.lpips is None or self.store.contains(self.pipeline, ref, prompt, seed, m.height, m.width):
            return
        verdict = check_reference(self.pipeline, self.lpips, ref, prompt, seed, m.height, m.width)
        if verdict is not None:
            raise ConfigError(f"{cfg.path}: reference: {verdict} (or pass --no-reference-check)")

    def evaluate(
        self, settings: Settings, prompts: Sequence[str], seeds: Sequence[int], timed: bool = True
    ) -> Evaluation:
        """Render every prompt with every seed and score each image with every quality objective;
        ``timed``: and time the setting as production calls it (``[serving]``), on the first prompt and seed."""
        from autotune.pipeline import generate, time_serving

        cfg, m, serving = self.cfg, self.cfg.model, self.cfg.serving
        render = generate(self.pipeline, settings, prompts, seeds, m.height, m.width, cfg.search.batch_size)
        seconds = []
        if timed and "seconds" in cfg.metrics.objectives:
            seconds = time_serving(
                self.pipeline, settings, prompts[0], seeds[0], m.height, m.width, serving.batch_size, serving.repeats
            )
        per_image: dict[str, list[float]] = {}
        if "clip_score" in cfg.metrics.objectives:
            per_image["clip_score"] = self.clip(render.images, [q for q in prompts for _ in seeds]).tolist()
        if self.lpips is not None:
            refs = self.references(prompts, seeds, settings.guidance)
            per_image["lpips"] = self.lpips(render.images, refs).tolist()
        return Evaluation(per_image, render.model_calls, render.images, seconds, sum(render.seconds))
