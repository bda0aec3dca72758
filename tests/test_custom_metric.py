"""A team's own quality metric as one study-file entry, judged like CLIP; and the contract every
registered metric keeps (as diffusers' ``PipelineTesterMixin`` holds each pipeline to one)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

from autotune.config import ConfigError, MetricsConfig, load_config
from autotune.config.objectives import BUILT_IN, OBJECTIVES, quality
from autotune.model.metrics import load_metric

PROMPTS = ["a cat on a mat", "a red boat", "an old lighthouse", "a bowl of fruit"]


class PixelDistance:
    """The test's own metric: mean absolute pixel difference to the high-step reference (lower is better)."""

    def __init__(self, device: str = "cpu", scale: float = 1.0) -> None:
        self.device, self.scale = device, scale

    def score(self, images: torch.Tensor, prompts: Sequence[str], references: torch.Tensor | None) -> list[float]:
        assert references is not None and references.shape == images.shape and len(prompts) == len(images)
        return (self.scale * (images - references).abs().mean(dim=(1, 2, 3))).tolist()


CUSTOM = """
[metrics.custom.pixel_distance]
score = "tests.test_custom_metric:PixelDistance"
higher_is_better = false
tolerance = 0.0
reference = true
options = {{ scale = {scale} }}
"""
LENIENT = "clip_tolerance = 1000.0\nlpips_tolerance = 1000.0\n"  # the built-in metrics let everything pass


def _file(study_file: Callable[..., Path], name: str, custom: bool) -> Path:
    classes = f"[classes.portrait]\nprompts = {json.dumps(PROMPTS)}\n"
    path = study_file(name=name, n_trials=2, classes=classes, extra=CUSTOM.format(scale=1.0) if custom else "")
    text = (
        path.read_text().replace("[recommend]", f"[recommend]\n{LENIENT}").replace("[search]\n", "[search]\nseed = 0\n")
    )
    path.write_text(text.replace("race_budget = 0", "race_budget = 16"))
    return path


@pytest.fixture
def registered(tmp_path: Path) -> list[str]:
    """Every quality metric: autotune's own and the one a study file declares (registered as it loads)."""
    path = tmp_path / "contract.toml"
    path.write_text('[classes.a]\nprompts = ["x"]\n' + CUSTOM.format(scale=2.0))
    load_config(path)
    return quality(tuple(OBJECTIVES))


def test_every_registered_metric_keeps_the_contract(registered: list[str]) -> None:
    """One finite number per image, the same each time, independent of the batch it came in."""
    assert set(BUILT_IN) - {"seconds"} < set(registered) and "pixel_distance" in registered
    torch.manual_seed(0)
    images, refs = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    for name in registered:
        metric = load_metric(name, MetricsConfig(), "cpu", "")
        ref = refs if OBJECTIVES[name].reference else None
        values = torch.as_tensor(metric.score(images, PROMPTS, ref), dtype=torch.float64)
        assert values.shape == (4,) and torch.isfinite(values).all(), name
        again = torch.as_tensor(metric.score(images, PROMPTS, ref), dtype=torch.float64)
        assert torch.allclose(values, again), name
        order = [2, 0, 3, 1]
        shuffled = metric.score(images[order], [PROMPTS[i] for i in order], ref[order] if ref is not None else None)
        assert torch.allclose(torch.as_tensor(shuffled, dtype=torch.float64), values[order], atol=1e-4), name
        alone = metric.score(images[:1], PROMPTS[:1], ref[:1] if ref is not None else None)
        assert float(torch.as_tensor(alone)[0]) == pytest.approx(float(values[0]), abs=1e-4), name
    assert OBJECTIVES["pixel_distance"].options == {"scale": 2.0}


@pytest.mark.slow
def test_a_metric_defined_in_the_test_changes_the_recommendation(
    study_file: Callable[..., Path], seconds_by_evaluations: None
) -> None:
    """With CLIP and LPIPS letting everything pass, the cheapest setting is recommended; the same study
    with the test's pixel distance (no worse than the baseline's, tolerance 0) recommends another, and
    says which metric failed, in the table, the JSON and the fingerprint. No autotune code is edited."""
    from autotune.report.table import format_table, write_all
    from autotune.study.run import run_study

    picks, cfgs = {}, {}
    for name, custom in (("plain", False), ("own", True)):
        cfg = load_config(_file(study_file, name, custom))
        run_study(cfg, n_trials=1, progress=False, decide=False)  # the baseline first, then a 2-step euler
        import optuna

        from autotune.store.versions import study_name

        study = optuna.load_study(study_name=study_name(cfg, "portrait"), storage=cfg.default_storage)
        study.enqueue_trial({"scheduler": "euler", "steps": 2, "guidance": 1.0})
        outcomes = run_study(cfg, progress=False)
        rec = outcomes["portrait"].recommendation
        assert rec is not None
        picks[name], cfgs[name] = rec, (cfg, outcomes)
    plain, own = picks["plain"], picks["own"]
    assert plain.chosen.number != plain.baseline.number  # everything passes CLIP and LPIPS: a cheaper pick
    assert own.chosen.number != plain.chosen.number  # the study's own metric ruled it out
    cfg, outcomes = cfgs["own"]
    assert cfg.metrics.objectives == ("clip_score", "lpips", "seconds", "pixel_distance")
    tol = outcomes["portrait"].tolerance
    assert tol is not None and tol.of("pixel_distance") == 0.0
    from autotune.decision.rule import verdicts

    ev = outcomes["portrait"].evidence
    cheap = next(c for c in ev.candidates if c.number == plain.chosen.number)
    failed = {b.metric for b in verdicts(cheap, ev.baseline, tol) if b.verdict != "pass"}  # type: ignore[arg-type]
    assert "pixel_distance" in failed and not failed & {"clip_score", "lpips"}
    assert "pixel_distance" in format_table(outcomes.cfg, outcomes).splitlines()[0]
    write_all(outcomes)
    data = json.loads((cfg.output_dir / "recommendations.json").read_text())
    assert data["rule"]["tolerances"]["pixel_distance"] == {
        "higher_is_better": False, "tolerance": 0.0, "unit": "absolute", "collapse": 10.0, "custom": True
    }  # fmt: skip
    assert "pixel_distance" in data["classes"]["portrait"]["metrics"]


def test_the_custom_metric_is_part_of_the_fingerprint(study_file: Callable[..., Path]) -> None:
    from autotune.config.resolve import resolve
    from autotune.space import schedulers
    from autotune.space.families import FAMILIES
    from autotune.store.versions import fingerprint

    cfg = load_config(_file(study_file, "fp", True))
    fp = fingerprint(resolve(cfg, FAMILIES["sd"], schedulers.names()), "portrait")
    assert fp["custom_metrics"] == {"pixel_distance": ["tests.test_custom_metric:PixelDistance", True, {"scale": 1.0}]}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            'score = "nowhere_at_all:Metric"',
            "metrics.custom.m.score: cannot load 'nowhere_at_all:Metric' (ModuleNotFoundError",
        ),
        ('score = "scorers.py:Missing"', "metrics.custom.m.score: cannot load 'scorers.py:Missing' (AttributeError"),
        (
            'score = "scorers.py:Broken"',
            "metrics.custom.m: scorers.py:Broken could not be built (RuntimeError: no weights",
        ),
    ],
)
def test_a_metric_that_cannot_load_is_one_line_naming_its_key(tmp_path: Path, table: str, message: str) -> None:
    (tmp_path / "scorers.py").write_text(
        "class Broken:\n    def __init__(self, device):\n        raise RuntimeError('no weights')\n"
    )
    path = tmp_path / "s.toml"
    path.write_text(f'[classes.a]\nprompts = ["x"]\n[metrics.custom.m]\n{table}\n')
    cfg = load_config(path)
    with pytest.raises(ConfigError) as e:
        load_metric("m", cfg.metrics, "cpu", str(tmp_path))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[metrics.custom.clip_score]\nscore = "a:B"', "metrics.custom.clip_score: expected a new metric name"),
        ('[metrics.custom.m]\nscore = "nocolon"', 'metrics.custom.m.score: expected "package.module:Class"'),
        (
            '[metrics.custom.m]\nscore = "a:B"\nunit = "seed_distance"',
            "metrics.custom.m.unit: expected one of absolute, seed_sd",
        ),
        ('[metrics.custom.m]\nscore = "a:B"\ntolerance = -1', "metrics.custom.m.tolerance: expected a number >= 0"),
        ('[metrics.custom.m]\nscore = "a:B"\nweight = 2', "metrics.custom.m.weight: unknown key"),
    ],
)
def test_a_bad_metric_table_is_refused_before_anything_loads(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(f'[classes.a]\nprompts = ["x"]\n{table}\n')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert message in str(e.value) and str(e.value).startswith(str(path))
