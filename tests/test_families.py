from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState
from sqlalchemy import create_engine, text

from autotune.config import ConfigError, load_config
from autotune.space.schedulers import get as schedulers_get
from autotune.study.run import run_study

CLASSES = '[classes.portrait]\nprompts = ["a studio portrait of an old fisherman"]\n'
SHOWABLE = "[recommend]\nbroken_share = 0.9\n"  # what one prompt's few images can show (an exact bound)


FAMILY_MODELS = [
    ("tiny", "sd", {"euler", "dpmpp_2m", "dpmpp_2m_karras", "unipc", "ddim"}),
    ("tiny-sdxl", "sdxl", {"euler", "dpmpp_2m", "dpmpp_2m_karras", "unipc", "ddim"}),
    ("tiny-sd3", "sd3", {"flow_euler", "flow_heun", "flow_dpmpp_2m", "flow_unipc"}),
    ("tiny-flux", "flux", {"flow_euler", "flow_dpmpp_2m", "flow_unipc"}),
]


@pytest.mark.parametrize(("model", "family", "schedulers"), FAMILY_MODELS, ids=[m[0] for m in FAMILY_MODELS])
def test_every_family_meets_the_contract_a_study_relies_on(
    tmp_path: Path, model: str, family: str, schedulers: set[str]
) -> None:
    """What a study needs of a family, on its tiny model: detected from the model alone, its default
    space usable, a study file of id and classes alone resolved, embeddings the pipeline takes, AYS
    exactly where the family has it, and its baseline rendering prompt-dependent images."""
    import inspect

    from autotune.config import ModelConfig
    from autotune.model.encode import encode_prompt
    from autotune.model.pipeline import describe_model, load_pipeline, resolve_config
    from autotune.model.render import generate
    from autotune.space.settings import Settings, takes_ays

    described = describe_model(ModelConfig(id=model, device="cpu"))
    assert described.family.name == family
    assert schedulers <= set(described.compatible)
    assert all(schedulers_get(n).flow == described.family.flow for n in described.compatible)
    path = tmp_path / "fam.toml"
    path.write_text(f'[model]\nid = "{model}"\ndevice = "cpu"\n' + CLASSES)
    cfg = resolve_config(load_config(path), described)
    assert set(cfg.search.schedulers) == schedulers and cfg.baseline.steps <= cfg.search.steps[1]
    p = load_pipeline(cfg.model, described=described)
    taken = inspect.signature(type(p.pipe).__call__).parameters
    assert set(encode_prompt(p.pipe, "a cat", "cpu", negative="blurry")) <= set(taken)
    assert takes_ays(cfg.baseline.scheduler, described.family) == (family in ("sd", "sdxl"))
    base = Settings.make(cfg.baseline.scheduler, 3, cfg.baseline.guidance)
    r = generate(p, base, ["a cat", "a dog"], [0], 32, 32)
    assert r.images.shape == (2, 3, 32, 32) and torch.isfinite(r.images).all()
    assert (r.images[0] - r.images[1]).abs().mean() > 1e-3  # the prompt reaches the denoiser
    assert r.model_calls == 3 * schedulers_get(cfg.baseline.scheduler).calls_per_step


@pytest.mark.slow
def test_reference_check_refuses_leading_dpmpp_2m_and_names_one_that_converges(tmp_path: Path) -> None:
    path = tmp_path / "ref.toml"
    path.write_text(
        '[model]\ndevice = "cpu"\n[search]\nn_trials = 1\nseeds = [0]\n'
        '[reference]\nscheduler = "dpmpp_2m"\nsteps = 100\n' + SHOWABLE + CLASSES
    )
    with pytest.raises(ConfigError) as err:
        run_study(load_config(path), progress=False)
    message = str(err.value)
    assert "DPM++ 2M, 100 steps, CFG 7.5 does not converge" in message
    assert '[reference] scheduler = "dpmpp_2m", steps = 100, options = { timestep_spacing = "trailing" }' in message
    assert not (tmp_path / "ref").exists()  # no outputs, and no database: no study was started
    assert not (tmp_path / "ref.db").exists()


@pytest.mark.slow
def test_reference_check_accepts_karras_and_measures_it(tiny) -> None:  # type: ignore[no-untyped-def]
    from autotune.model.metrics.lpips_distance import Lpips
    from autotune.model.references import CONVERGENCE_LIMIT, check_reference, convergence
    from autotune.space.settings import Settings

    karras = Settings.make("dpmpp_2m_karras", 100, 7.5)
    leading = Settings.make("dpmpp_2m", 100, 7.5)
    lp = Lpips()
    assert check_reference(tiny, lp, karras, "a cat", 0, 64, 64) is None
    good, bad = (convergence(tiny, lp, s, "a cat", 0, 64, 64) for s in (karras, leading))
    print(f"LPIPS(100, 200 steps) / seed-to-seed: karras {good:.2e}, leading dpmpp_2m {bad:.2e}")
    assert good < CONVERGENCE_LIMIT < bad


@pytest.mark.slow
def test_reference_following_trial_guidance_caches_one_reference_per_guidance(
    tmp_path: Path, seconds_by_evaluations: None
) -> None:
    path = tmp_path / "trial.toml"
    path.write_text(  # the optimiser draws every setting after the baseline, seeded
        '[model]\ndevice = "cpu"\nheight = 32\nwidth = 32\n[search]\nn_trials = 4\nseeds = [0]\n'
        'seed = 1\nsampler = "random"\nfront_share = 1.0\n'
        'steps = [2, 8]\n[baseline]\nsteps = 8\n[reference]\nguidance = "trial"\nsteps = 30\n' + SHOWABLE + CLASSES
    )
    out = run_study(load_config(path), progress=False, check_reference=False)["portrait"]
    guidances = {t.params["guidance"] for t in out.load_study().get_trials(states=(TrialState.COMPLETE,))}
    engine = create_engine(f"sqlite:///{tmp_path / 'trial.db'}")
    with engine.connect() as conn:
        stored = {row[0] for row in conn.execute(text("select setting from autotune_references"))}
    stored_guidance = {json.loads(s)["guidance"] for s in stored}
    assert guidances <= stored_guidance and len(guidances) > 1


@pytest.mark.slow
def test_reference_with_its_own_guidance_is_the_one_rendered_checked_and_shown(
    study_file,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    from autotune.model import references
    from autotune.report.table import write_all
    from autotune.results.reader import recommend
    from autotune.space.settings import Settings

    path = study_file(name="ownref", n_trials=4)
    path.write_text(path.read_text().replace("steps = 20\nguidance = 7.5", "steps = 20\nguidance = 5.0"))
    checked: list[Settings] = []
    real = references.check_reference

    def counted(p, lpips, reference, *args):  # type: ignore[no-untyped-def]
        checked.append(reference)
        return real(p, lpips, reference, *args)

    monkeypatch.setattr(references, "check_reference", counted)
    cfg = load_config(path)
    run_study(cfg, progress=False)
    run_study(cfg, n_trials=5, progress=False)  # a resumed study does not check the same reference again
    reference = Settings.make("dpmpp_2m_karras", 20, 5.0)
    assert checked == [reference]
    engine = create_engine(f"sqlite:///{path.parent / 'ownref.db'}")
    with engine.connect() as conn:
        stored = {
            json.loads(row[0])["guidance"] for row in conn.execute(text("select setting from autotune_references"))
        }
    assert stored == {5.0}  # every trial, whatever its guidance (the baseline's is 7.5), compared with CFG 5
    outcomes = recommend(cfg)
    assert outcomes.cfg.reference.guidance == 5.0
    write_all(outcomes)
    page = (path.parent / "ownref" / "report.html").read_text()
    row = page.split(f"reference: {reference.label()}</th>")[1].split("</tr>")[1]  # the first prompt's images
    assert row.count("data:image/png;base64,") == 3  # baseline, recommended and the stored reference


@pytest.mark.slow
def test_schedulers_command_prints_the_models_table() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "autotune.cli", "schedulers", "--model", "tiny-sd3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "tiny-sd3: sd3 family; 4 schedulers it can use"
    rows = {line.split()[0]: line for line in lines[4:]}
    assert set(rows) == {"flow_euler", "flow_heun", "flow_dpmpp_2m", "flow_unipc"}
    assert "FlowMatchHeunDiscreteScheduler" in rows["flow_heun"] and rows["flow_heun"].split()[-2:] == ["2", "shift"]


@pytest.mark.slow
def test_study_naming_an_incompatible_scheduler_exits_2_with_the_usable_list(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[model]\nid = "tiny-sd3"\n[search]\nschedulers = ["flow_euler", "DPM++ 2M Karras"]\n' + CLASSES)
    result = subprocess.run(
        [sys.executable, "-m", "autotune.cli", "study", str(path), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"autotune: error: {path}: search.schedulers: dpmpp_2m_karras cannot be used "
        "with this sd3 model (it can use: flow_euler, flow_heun, flow_dpmpp_2m, flow_unipc)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


def test_embedded_guidance_costs_no_second_call_and_classifier_free_guidance_does() -> None:
    from autotune.space.families import FAMILIES, detect
    from autotune.space.settings import Settings

    s = Settings.make("flow_euler", 6, 3.5)
    assert s.guided_share(FAMILIES["flux"]) == 0.0  # Flux's guidance is an input of its one call
    assert s.guided_share(FAMILIES["sd3"]) == 1.0 and s.guided_share() == 1.0
    assert s.guided_share(FAMILIES["flux_cfg"]) == 1.0  # true CFG: the negative prompt's call each step
    # a Flux transformer without a guidance embedding is guided with true CFG, under its own argument
    flux = ("FluxPipeline", "FlowMatchEulerDiscreteScheduler")
    assert [detect(*flux, embedded=e).name for e in (True, False)] == ["flux", "flux_cfg"]
    assert detect(*flux, "black-forest-labs/FLUX.1-schnell", embedded=False).name == "distilled_flow"
    assert detect(*flux, hint="flux_cfg").guidance_param == "true_cfg_scale"
    with pytest.raises(ValueError, match="expected auto, flux, flux_cfg or distilled_flow"):
        detect(*flux, hint="sd3")
    assert Settings.make("flow_euler", 6, 1.0).guided_share(FAMILIES["sd3"]) == 0.0


FLOW_STUDIES = [
    ("tiny-flux", "FluxPipeline", 1, ""),
    ("flow", "FluxPipeline", 2, "[call]\nmax_sequence_length = 16\n"),  # shipped: true CFG, 16 T5 tokens
    ("tiny-sd3", "StableDiffusion3Pipeline", 2, ""),
]


@pytest.mark.slow
@pytest.mark.parametrize(("model", "pipeline", "per_step", "call"), FLOW_STUDIES, ids=[m[0] for m in FLOW_STUDIES])
def test_a_flow_study_runs_end_to_end_and_its_diffusers_block_renders_its_image(
    tmp_path: Path, model: str, pipeline: str, per_step: int, call: str
) -> None:
    """Flux's layout with embedded guidance (one call a step) and with true CFG (the negative prompt's
    call too: two), and SD3's (MMDiT, classifier-free guidance in one doubled batch: two) through a whole
    study: the calls counted as they run, and the recommendation's diffusers block re-renders the study's
    image in plain diffusers."""
    import diffusers

    import autotune
    from autotune.cli import main
    from autotune.micro import MODELS, pipeline_dir
    from autotune.results.reader import recommend
    from autotune.testing.tiny import tiny_pipeline_path
    from tests.test_serving import trial_image

    folder = pipeline_dir(model) if model in MODELS else tiny_pipeline_path(model)
    path = tmp_path / "flux.toml"
    path.write_text(
        f'name = "flux"\n[model]\nid = "{model}"\ndevice = "cpu"\nheight = 32\nwidth = 32\n{call}'
        "[search]\nsteps = [2, 8]\nn_trials = 4\nseeds = [0]\nguidance = [1.0, 6.0]\n"
        '[baseline]\nscheduler = "flow_euler"\nsteps = 8\nguidance = 3.5\n'
        '[reference]\nscheduler = "flow_euler"\nsteps = 40\nguidance = 3.5\n'
        + SHOWABLE
        + "confirm_seeds = [1000, 1001]\nfinalists = 1\nrace_seeds = 2\nrace_budget = 0\n"
        + CLASSES
    )
    assert main(["study", str(path), "--quiet"]) == 0
    cfg = load_config(path)
    data = json.loads((cfg.output_dir / "recommendations.json").read_text())["classes"]["portrait"]
    assert data["model_calls"] == data["steps"] and data["model_evaluations"] == per_step * data["steps"]  # CFG 3.5
    (outcome,) = recommend(cfg).values()
    trials = [t for t in outcome.load_study().trials if t.state == TrialState.COMPLETE]
    assert [t.user_attrs["guided_calls"] for t in trials] == [
        (per_step - 1) * t.user_attrs["model_calls"] * (t.params["guidance"] > 1) for t in trials
    ]

    expected = trial_image(cfg, outcome, data["trial"])  # the study's image of its first prompt and seed
    block = data["diffusers"]
    index = json.loads((folder / "model_index.json").read_text())
    absent = {k: None for k, v in index.items() if isinstance(v, list) and v[0] is None}  # tiny-sd3: no T5
    plain = getattr(diffusers, pipeline).from_pretrained(
        folder, torch_dtype=torch.float32, **absent
    )  # shipped: float16
    plain.scheduler = getattr(diffusers, block["scheduler_class"]).from_config(
        plain.scheduler.config, **block["scheduler_config"]
    )
    prompt = "a studio portrait of an old fisherman"
    out = plain(
        prompt, **block["call_kwargs"], height=32, width=32, output_type="pt",
        generator=torch.Generator().manual_seed(autotune.noise_seed(prompt, 0)),
    )  # fmt: skip
    assert ((out.images[0] * 255).round() / 255 - expected).abs().max() <= 1 / 255 + 1e-6
