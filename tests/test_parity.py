"""The export's parity check: k-diffusion's samplers, as AUTOMATIC1111 and ComfyUI run them, on the micro model."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from autotune import parity
from autotune.cli import main
from autotune.results.recommendations_file import ClassRecommendation, Recommendations, load_recommendations
from autotune.serving.export import export
from autotune.space.tools import TOOLS

ROOT = Path(__file__).parent.parent
# its sampling code (the Makefile installs it without its training stack, which `import k_diffusion` wants)
needs_k = pytest.mark.skipif(importlib.util.find_spec("k_diffusion") is None, reason="k-diffusion is not installed")


@pytest.fixture(scope="module")
def glyphs(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The demo's study file on the CPU (its model, CLIP and LPIPS), and an evaluator of it."""
    from autotune.config import load_config
    from autotune.model.evaluate import Evaluator
    from autotune.model.pipeline import resolve_config

    path = tmp_path_factory.mktemp("parity") / "demo.toml"
    path.write_text((ROOT / "studies" / "demo.toml").read_text().replace('device = "auto"', 'device = "cpu"'))
    cfg = load_config(path)
    resolved = resolve_config(cfg)
    return cfg, Evaluator(resolved, cfg.default_storage, "cpu")


def _images(evaluator, tool: str, setting: tuple[str, str, int, float]):  # type: ignore[no-untyped-def]
    prompts = list(evaluator.cfg.classes["thin"])[:2]
    m = evaluator.cfg.model
    return parity.render(
        evaluator.pipeline, parity.k_diffusion(), tool, setting, prompts, [7000, 7001], m.height, m.width
    )


@needs_k
@pytest.mark.parametrize(
    ("name", "options", "names"),
    [
        ("euler", {"sigmas": "karras", "timestep_spacing": "linspace"}, {"a1111": "Euler", "comfyui": "euler"}),
        ("dpmpp_2m_karras", {}, {"a1111": "DPM++ 2M", "comfyui": "dpmpp_2m"}),
    ],
)
def test_k_diffusion_karras_at_30_steps_reproduces_diffusers_images(glyphs, name, options, names) -> None:  # type: ignore[no-untyped-def]
    from autotune.model.render import generate
    from autotune.space.settings import Settings

    _, evaluator = glyphs
    m = evaluator.cfg.model
    prompts = list(evaluator.cfg.classes["thin"])[:2]
    ours = generate(evaluator.pipeline, Settings.make(name, 30, 5.0, options), prompts, [7000, 7001], m.height, m.width)
    for tool, schedule in (("a1111", "Karras"), ("comfyui", "karras")):
        theirs = _images(evaluator, tool, (names[tool], schedule, 30, 5.0))
        # measured: at most 2/255 a pixel (float noise of a different order of operations), LPIPS below 1e-5
        assert (ours.images - theirs).abs().max() <= 3 / 255, tool
        assert float(evaluator.lpips(ours.images, theirs).max()) < 1e-4, tool


@needs_k
def test_each_tools_schedules_follow_their_code() -> None:
    import torch

    sampling, external = parity.k_diffusion()  # type: ignore[misc]
    model = external.CompVisDenoiser(parity._Inner(None, torch.linspace(0.999, 0.005, 1000)), quantize=False)
    hi = float(model.sigmas[-1])
    uniform = parity.tool_sigmas(sampling, model, "a1111", "Euler", "Automatic", 4)
    assert torch.equal(uniform, model.get_sigmas(4)) and float(uniform[0]) == pytest.approx(hi)
    # A1111 1.9+: "Automatic" is Karras for DPM++ 2M; DPM2 drops the next-to-last sigma
    karras = sampling.get_sigmas_karras(4, float(model.sigmas[0]), hi)
    assert torch.allclose(parity.tool_sigmas(sampling, model, "a1111", "DPM++ 2M", "Automatic", 4), karras)
    assert len(parity.tool_sigmas(sampling, model, "a1111", "DPM2", "Karras", 4)) == 5
    sgm = parity.tool_sigmas(sampling, model, "comfyui", "euler", "sgm_uniform", 4)
    assert len(sgm) == 5 and float(sgm[0]) == pytest.approx(hi) and float(sgm[-2]) > float(uniform[-2])
    ddim = parity.tool_sigmas(sampling, model, "comfyui", "euler", "ddim_uniform", 4)  # timesteps 751, 501, 251, 1
    assert torch.allclose(ddim[:-1], model.sigmas[[751, 501, 251, 1]])
    assert parity.tool_sigmas(sampling, model, "comfyui", "euler", "align_your_steps", 4) is None


def _recs(cfg, rec: tuple[str, dict[str, str], int], path: Path) -> Recommendations:  # type: ignore[no-untyped-def]
    """A class recommendation and the demo's baseline, written by hand (tolerances stated)."""

    def one(name: str, scheduler: str, options: dict[str, str], steps: int) -> ClassRecommendation:
        return ClassRecommendation(name, f"{scheduler} {steps}", scheduler, options, steps, 5.0, "", {}, {}, "sd")

    classes = {"thin": one("thin", rec[0], rec[1], rec[2]), "default": one("default", "dpmpp_2m_karras", {}, 30)}
    tolerances = {"thin": {"clip_score": 3.0}}
    return Recommendations(
        cfg.name, {"id": "glyphs"}, classes, seed_lpips={"thin": 0.05}, tolerances=tolerances, path=path
    )


@pytest.mark.slow
@needs_k
def test_the_check_flags_a_setting_whose_tool_render_fails_and_names_a_measured_change(glyphs, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    cfg, evaluator = glyphs
    path = cfg.output_dir / "recommendations.json"
    recs = _recs(cfg, ("dpmpp_2m_karras", {}, 20), path)
    real = parity.tool_sigmas

    def broken(sampling, model, tool, sampler, schedule, steps):  # type: ignore[no-untyped-def]
        out = real(sampling, model, tool, sampler, schedule, steps)
        if tool == "a1111" and schedule == "Karras" and steps == 20:  # constructed: A1111's Karras stops early
            return out[[0, 1, -1]]  # its first two sigmas, then 0: 2 steps where 20 were asked
        return out

    monkeypatch.setattr(parity, "tool_sigmas", broken)
    monkeypatch.setattr("autotune.model.evaluate.Evaluator", lambda *a, **k: evaluator)
    result = parity.check(cfg, recs, prompts=4)
    thin = result["classes"]["thin"]
    assert thin["comfyui"]["parity"] == "qualifies", thin["comfyui"]  # 20 against 30 Karras steps: alike
    assert thin["a1111"]["parity"] == "fails" and thin["a1111"]["why_not"]
    assert thin["a1111"]["delta_to_diffusers"]["lpips"] > 0.005 > abs(thin["comfyui"]["delta_to_diffusers"]["lpips"])
    # the change it names is one it rendered and judged: another schedule at 20 steps, or 21 Karras steps
    tried = {f"schedule {s}" for s in TOOLS["a1111"].parity_schedules}
    assert thin["a1111"]["change"] in tried | {"21 steps (one more)"}
    stored = json.loads((path.parent / "parity.json").read_text())
    assert stored["classes"]["thin"]["a1111"]["parity"] == "fails"
    exported = json.loads(export(recs, "a1111"))
    assert exported["thin"]["parity"] == "fails" and "parity" not in exported["default"]
    assert json.loads(export(recs, "comfyui"))["thin"]["parity"] == "qualifies"
    # a recommendation that changed since: its verdict is no longer the stored one
    moved = dataclasses.replace(recs, classes={**recs.classes, "thin": _recs(cfg, ("euler", {}, 8), path)["thin"]})
    assert json.loads(export(moved, "a1111"))["thin"]["parity"] == "not checked"
    fitted = dataclasses.replace(
        recs, classes={**recs.classes, "thin": _recs(cfg, ("euler", {"sigmas": "fitted"}, 8), path)["thin"]}
    )
    assert json.loads(export(fitted, "comfyui"))["thin"]["why"] == "comfyui cannot express it (no_equivalent)"


def test_without_k_diffusion_the_export_works_and_says_not_checked(
    finished_study, tmp_path, monkeypatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = finished_study
    study = tmp_path / "finished"
    shutil.copytree(cfg.path.parent, study)
    monkeypatch.setattr(parity, "k_diffusion", lambda: None)
    assert main(["export", str(study / cfg.path.name), "--format", "comfyui", "--check"]) == 0
    out, err = capsys.readouterr()
    assert err.strip() == f"parity: not checked: {parity.NOT_INSTALLED}"
    data = json.loads(out)
    assert {v["parity"] for c, v in data.items() if c != "default"} == {"not checked"}
    assert not (study / "finished" / "parity.json").exists()
    plain = json.loads(export(load_recommendations(study / cfg.path.name), "a1111"))
    assert "autotune export" in plain["portrait"]["why"]  # expressible: how to check it
    assert plain["landscape"]["why"] == "a1111 cannot express it (no_equivalent)"  # its guidance cutoff


def test_check_needs_the_study_file(finished_study, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = finished_study
    assert main(["export", str(cfg.output_dir / "recommendations.json"), "--format", "a1111", "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--check renders the model: pass the study file" in err and "\n" not in err
