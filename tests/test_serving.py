from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from PIL import Image

import autotune
from autotune.model.references import decode_png
from autotune.results.recommendations_file import router_data
from autotune.serving.router import Router
from autotune.store.artifacts import open_store
from autotune.store.reference_table import image_name
from autotune.store.storage import open_storage
from autotune.testing.tiny import tiny_pipeline_path
from autotune.weights.clip import class_embedding, load_text_encoder
from tests.conftest import timed_by_evaluations

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def fresh_pipe():  # type: ignore[no-untyped-def]
    """The tiny model loaded the way a user loads theirs: plain diffusers, its own scheduler."""
    import diffusers

    return diffusers.StableDiffusionPipeline.from_pretrained(tiny_pipeline_path(), safety_checker=None)


def trial_image(cfg, outcome, number: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The study's stored image of trial ``number`` (first prompt, first seed)."""
    trial = outcome.load_study().trials[number]
    metas = optuna.artifacts.get_all_artifact_meta(trial, storage=open_storage(cfg.default_storage))
    (meta,) = [m for m in metas if m.filename == image_name(0, cfg.search.seeds[0])]
    with open_store(cfg.artifacts).open_reader(meta.artifact_id) as f:
        return decode_png(f.read())


def render(pipe, cfg, prompt: str, kwargs: dict) -> torch.Tensor:  # type: ignore[no-untyped-def, type-arg]
    out = pipe(
        prompt,
        **kwargs,
        height=cfg.model.height,
        width=cfg.model.width,
        generator=torch.Generator().manual_seed(autotune.noise_seed(prompt, cfg.search.seeds[0])),
        output_type="pt",
    )
    return (out.images[0] * 255).round() / 255


def test_apply_sets_the_scheduler_and_renders_the_trials_image(finished_study) -> None:  # type: ignore[no-untyped-def]
    import diffusers

    cfg, outcomes = finished_study
    recs = autotune.load_recommendations(cfg.path)
    blocks = json.loads((cfg.output_dir / "recommendations.json").read_text())["classes"]
    cut = recs["landscape"]  # the pick stops guidance part-way, with the class's own negative prompt
    assert cut.guidance_cutoff < 1 and cut.call_kwargs["negative_prompt"] == "blurry, lowres"
    for c in ("portrait", "landscape"):
        rec = recs[c]
        assert rec.setting != recs["default"].setting  # a cheaper pick, not the baseline
        pipe = fresh_pipe()
        kwargs = autotune.apply(pipe, rec)
        assert type(pipe.scheduler).__name__ == rec.scheduler_class
        for key, value in rec.scheduler_config.items():
            assert pipe.scheduler.config[key] == value
        assert ("callback_on_step_end" in kwargs) == (rec.guidance_cutoff < 1)
        assert {k: v for k, v in kwargs.items() if not k.startswith("callback")} == rec.call_kwargs
        assert kwargs["num_inference_steps"] == rec.steps
        expected = trial_image(cfg, outcomes[c], outcomes[c].recommendation.chosen.number)
        image = render(pipe, cfg, cfg.classes[c][0], kwargs)
        assert (image - expected).abs().max() <= 1 / 255 + 1e-6, c  # at most one 8-bit level, from float rounding

        # the diffusers block alone, without autotune, reproduces it as well (the cutoff: diffusers' callback)
        block = blocks[c]["diffusers"]
        assert {"timestep_spacing", "prediction_type"} <= set(block["scheduler_config"])  # complete, not a diff
        plain = fresh_pipe()
        plain.scheduler = getattr(diffusers, block["scheduler_class"]).from_config(
            plain.scheduler.config, **block["scheduler_config"]
        )
        call = dict(block["call_kwargs"])
        if block["guidance_cutoff"] < 1:
            call["callback_on_step_end"] = diffusers.callbacks.SDCFGCutoffCallback(block["guidance_cutoff"])
        assert torch.equal(render(plain, cfg, cfg.classes[c][0], call), image), c


def test_apply_twice_does_not_carry_the_first_overrides(finished_study) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = finished_study
    base = autotune.load_recommendations(cfg.path)["default"]  # the baseline: DPM++ 2M Karras
    karras = dataclasses.replace(
        base, scheduler="euler", scheduler_class="EulerDiscreteScheduler", scheduler_config={"use_karras_sigmas": True}
    )
    plain = dataclasses.replace(karras, scheduler_config={})
    pipe = fresh_pipe()
    autotune.apply(pipe, karras)
    assert pipe.scheduler.config.use_karras_sigmas is True
    autotune.apply(pipe, plain)
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert pipe.scheduler.config.use_karras_sigmas is False


# settings whose flags exclude each other or change what "default" means, as classes of one study could pick
SWITCHED = [
    ("dpmpp_2m_karras", {}),
    ("dpmpp_2m", {"sigmas": "exponential"}),
    ("dpmpp_2m", {"timestep_spacing": "trailing"}),
    ("euler", {"sigmas": "beta", "timestep_spacing": "linspace"}),
    ("dpmpp_3m_sde", {}),
    ("ddim", {}),
]


def test_switching_classes_in_every_order_renders_each_ones_images_with_and_without_autotune() -> None:
    import inspect
    import itertools

    import diffusers

    from autotune.space import schedulers
    from autotune.space.settings import Settings

    base_pipe = fresh_pipe()
    base = dict(base_pipe.scheduler.config)
    blocks = []
    for name, options in SWITCHED:
        overrides = Settings.make(name, 3, 1.0, options).scheduler_overrides()
        blocks.append((schedulers.get(name).class_name, schedulers.complete(name, base, overrides)))
    assert {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "timestep_spacing"} <= set(blocks[0][1])

    def image(pipe, seed: int = 0) -> torch.Tensor:  # type: ignore[no-untyped-def]
        g = torch.Generator().manual_seed(seed)
        return pipe("a red apple", num_inference_steps=3, guidance_scale=1.0, height=32, width=32, generator=g,
                    output_type="pt").images[0]  # fmt: skip

    def fresh(i: int) -> torch.Tensor:
        cls = getattr(diffusers, blocks[i][0])
        base_pipe.scheduler = cls.from_config(base, **blocks[i][1])
        return image(base_pipe)

    alone = [fresh(i) for i in range(len(blocks))]
    assert len({tuple(img.flatten()[:64].tolist()) for img in alone}) == len(blocks)  # six different pictures

    def init_config(scheduler) -> dict:  # type: ignore[no-untyped-def, type-arg]
        taken = inspect.signature(type(scheduler).__init__).parameters
        return {k: v for k, v in scheduler.config.items() if k in taken}

    plain, via = fresh_pipe(), fresh_pipe()
    for a, b in itertools.permutations(range(len(blocks)), 2):  # the README's snippet, on the *current* config
        for i in (a, b):
            plain.scheduler = getattr(diffusers, blocks[i][0]).from_config(plain.scheduler.config, **blocks[i][1])
        expected = getattr(diffusers, blocks[b][0]).from_config(base, **blocks[b][1])
        assert init_config(plain.scheduler) == init_config(expected), (SWITCHED[a], SWITCHED[b])
    for a, b in [(1, 0), (0, 1), (3, 2), (2, 3), (4, 5), (5, 4)]:  # both directions, images compared
        for pipe in (plain, via):
            for i in (a, b):
                if pipe is via:
                    rec = autotune.ClassRecommendation(
                        name=str(i), setting="", scheduler=SWITCHED[i][0], options=SWITCHED[i][1], steps=3,
                        guidance=1.0, scheduler_class=blocks[i][0], scheduler_config=blocks[i][1], call_kwargs={},
                        family="sd",
                    )  # fmt: skip
                    autotune.apply(pipe, rec)
                else:
                    pipe.scheduler = getattr(diffusers, blocks[i][0]).from_config(pipe.scheduler.config, **blocks[i][1])
            assert torch.equal(image(pipe), alone[b]), (pipe is via, SWITCHED[a], SWITCHED[b])


def test_apply_refuses_another_family_and_an_unusable_scheduler(finished_study) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = finished_study
    rec = autotune.load_recommendations(cfg.path)["portrait"]
    pipe = fresh_pipe()
    before = pipe.scheduler
    with pytest.raises(ValueError, match=r"made for a sdxl model, this pipeline .* is a sd model"):
        autotune.apply(pipe, dataclasses.replace(rec, family="sdxl"))
    flow = dataclasses.replace(rec, scheduler="flow_euler", scheduler_class="FlowMatchEulerDiscreteScheduler")
    with pytest.raises(ValueError, match="cannot be swapped for FlowMatchEulerDiscreteScheduler"):
        autotune.apply(pipe, flow)
    with pytest.raises(TypeError, match=r"expected one class's recommendation, recs\[NAME\] .* got dict"):
        autotune.apply(pipe, {"num_inference_steps": 5})  # the JSON block itself, say
    assert pipe.scheduler is before  # a refusal leaves the pipeline as it was


def test_load_recommendations_names_the_file_on_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "recommendations.json"
    bad.write_text("{not json")
    with pytest.raises(autotune.ConfigError, match=r"recommendations.json: cannot read it"):
        autotune.load_recommendations(bad)
    bad.write_text('{"study": "x"}')
    with pytest.raises(autotune.ConfigError, match="not an autotune recommendations file"):
        autotune.load_recommendations(bad)
    with pytest.raises(autotune.ConfigError, match="no such file"):
        autotune.load_recommendations(tmp_path / "missing.json")


CATS = ["a cat on a sofa", "a cat in the garden", "a sleeping cat", "a cat with a hat"]
NUMBERS = ["1999 2001 2024 1987", "404 500 301 200", "3.14159 2.71828", "42 17 99 1024"]


@pytest.fixture(scope="module")
def router() -> Router:
    """Two classes far apart in the tiny CLIP's text space: words about cats, and digits."""
    encode = load_text_encoder("tiny")
    data = router_data(
        {"cats": class_embedding(encode, CATS), "numbers": class_embedding(encode, NUMBERS)}, ("tiny", None)
    )
    return Router(data["centroids"], encode, data["threshold"])


def test_router_sends_each_class_back_to_itself(router: Router) -> None:
    held_out = {"a cat on a chair": "cats", "a black cat": "cats", "1234 5678": "numbers"}
    prompts = [*CATS, *NUMBERS, *held_out]
    expected = ["cats"] * 4 + ["numbers"] * 4 + list(held_out.values())
    assert [name for name, _ in router.route_many(prompts)] == expected
    assert router.threshold < min(s for _, s in router.route_many([*CATS, *NUMBERS]))


def test_router_falls_back_to_default_below_the_threshold(router: Router) -> None:
    name, similarity = router.route("a black cat")
    assert name == "cats"
    strict = Router(dict(zip(router.classes, router.matrix, strict=True)), router.encode, similarity + 1e-3)
    assert strict.route("a black cat") == ("default", pytest.approx(similarity, abs=1e-6))
    assert router.route_many([]) == []


def test_router_from_study_uses_the_stored_centroids(finished_study) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = finished_study
    r = Router.from_study(cfg.path)
    assert r.classes == ["portrait", "landscape"]
    encode = load_text_encoder("tiny")  # the study's CLIP model
    for row, (c, prompts) in zip(r.matrix, cfg.classes.items(), strict=True):
        centroid = np.array(class_embedding(encode, prompts)["centroid"])
        assert np.allclose(row, centroid, atol=1e-5)  # each class's prompts' centroid, as stored
        for p in prompts:
            assert r.route(p) == (c, pytest.approx(float(encode([p])[0] @ centroid), abs=1e-4))


def autotune_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the command in this process (the tiny pipeline stays loaded): exit code, stdout, stderr."""
    from autotune.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_validate_exit_code_follows_the_tolerance(  # type: ignore[no-untyped-def]
    finished_study, tmp_path: Path, capsys, seconds_by_evaluations
) -> None:
    cfg, _ = finished_study
    holdout = tmp_path / "holdout.txt"
    holdout.write_text("\n".join(p for ps in cfg.classes.values() for p in ps) + "\n")
    args = ["validate", str(cfg.path), "--prompts", str(holdout)]
    code, out, err = autotune_cli(capsys, *args, "--seeds", "3,4", "--clip-tolerance", "-100")
    assert code == 1, err
    result = json.loads((cfg.output_dir / "validation.json").read_text())
    assert result["passed"] is False and result["seeds"] == [3, 4]
    assert set(result["classes"]) == {"portrait", "landscape"}
    picks = json.loads((cfg.output_dir / "recommendations.json").read_text())["classes"]
    for c, v in result["classes"].items():
        assert v["images"] == 4 and not v["within_tolerance"] and "Δclip_score" in v["why_not"][0]
        b = v["bounds"]["clip_score"]  # the class's 2 prompts (each routed to it) x 2 seeds
        assert b["worst"] <= b["mean"] <= b["best"] and (b["images"], b["prompts"]) == (4, 2)
        assert b["verdict"] == "fail" and v["speedup"] == pytest.approx(v["model_call_ratio"])  # timed as evaluations
        assert v["recommended"] == picks[c]["setting"] != v["baseline"]  # the study's pick against the baseline
        assert v["model_call_ratio"] == pytest.approx(picks[c]["model_call_ratio"], rel=1e-3)
        assert v["model_call_ratio"] > 1
        assert v["bounds"]["broken"]["collapsed"] == [0, 0]
    assert "FAIL portrait" in out and "FAIL landscape" in out
    assert "collapsed 0 of 4 (baseline 0;" in out
    code, out, err = autotune_cli(
        capsys, *args, "--seeds", "3,4,5", "--clip-tolerance", "1000", "--lpips-tolerance", "1000"
    )
    assert code == 0, out + err
    assert json.loads((cfg.output_dir / "validation.json").read_text())["passed"] is True


@pytest.mark.slow
def test_validate_exits_non_zero_for_a_class_no_held_out_prompt_reached(finished_study, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = finished_study
    holdout = tmp_path / "holdout.txt"
    holdout.write_text(cfg.classes["portrait"][0] + "\n")  # routed to portrait only
    args = ["validate", str(cfg.path), "--prompts", str(holdout), "--seeds", "3,4,5", "--clip-tolerance", "1000"]
    code, out, err = autotune_cli(capsys, *args, "--lpips-tolerance", "1000")
    result = json.loads((cfg.output_dir / "validation.json").read_text())
    assert code == 1 and result["untested"] == ["landscape"] and result["passed"] is False, out + err
    assert set(result["classes"]) == {"portrait"} and "untested landscape: no held-out prompt" in out
    code, out, err = autotune_cli(capsys, *args, "--lpips-tolerance", "1000", "--allow-untested")
    assert code == 0 and json.loads((cfg.output_dir / "validation.json").read_text())["passed"] is True, out + err


def test_validate_rejects_a_prompt_file_that_is_not_utf8(finished_study, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = finished_study
    bad = tmp_path / "holdout.txt"
    bad.write_bytes(b"a portrait\n\xff\xfe broken\n")
    code, _, err = autotune_cli(capsys, "validate", str(cfg.path), "--prompts", str(bad))
    assert code == 2 and err.count("\n") == 1 and "expected UTF-8" in err


@pytest.mark.slow
@pytest.mark.parametrize("script", ["apply_recommendation.py", "route_prompts.py", "validate.sh"])
def test_examples_run_against_a_finished_study(finished_study, script: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = finished_study
    path = EXAMPLES / script
    cmd = ["bash", str(path)] if script.endswith(".sh") else [sys.executable, str(path)]
    env = {**os.environ, "AUTOTUNE": str(Path(sys.executable).parent / "autotune")}
    extra = []
    if script == "validate.sh":  # the tiny study's own prompts stand in for held-out ones (the default: the demo's)
        holdout = tmp_path / "holdout.txt"
        holdout.write_text("\n".join(p for ps in cfg.classes.values() for p in ps) + "\n")
        extra = [str(holdout)]
    result = subprocess.run([*cmd, str(cfg.path), *extra], capture_output=True, text=True, timeout=600, env=env)
    if script == "validate.sh":  # 0 or 1 by the held-out verdict, and the file says which
        passed = json.loads((cfg.output_dir / "validation.json").read_text())["passed"]
        assert result.returncode == (0 if passed else 1), result.stderr
        assert "held-out images" in result.stdout
    else:
        assert result.returncode == 0, result.stderr
    if script == "apply_recommendation.py":
        assert "renders the same image: True" in result.stdout
        assert np.asarray(Image.open(cfg.output_dir / "apply_example.png")).shape == (32, 32, 3)
    if script == "route_prompts.py":
        lines = [line for line in result.stdout.splitlines() if "->" in line]
        assert len(lines) == 4 and "-> portrait" in lines[0]


HANDOFF_STUDY = """
name = "handoff"
[model]
id = "tiny"
device = "cpu"
height = 32
width = 32
[search]
steps = [8, 8]
variants = []
schedulers = ["euler"]
guidance = [5.0, 5.0]
guidance_cutoff = [0.5, 1.0]   # the only searched axis: the pick stops guidance part-way
n_trials = 4
seeds = [0]
seed = 0
[baseline]
scheduler = "euler"
steps = 8
guidance = 5.0
[reference]
scheduler = "dpmpp_2m_karras"
steps = 20
guidance = 5.0
[recommend]
clip_tolerance = 100.0         # random weights: every cutoff passes, so the cheapest (the lowest) is picked
lpips_tolerance = 10.0
confirm_seeds = [1000, 1001]
finalists = 1
race_seeds = 2
race_budget = 0
broken_share = 0.5
[classes.portrait]
prompts = ["a studio portrait of an old fisherman", "an old sailor", "a young woman", "a child", "a farmer", "a chef"]
negative_prompt = "blurry, lowres"
"""


@pytest.fixture(scope="module")
def handoff(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A finished study whose class has a negative prompt and whose pick has a guidance cutoff."""
    from autotune.config import load_config
    from autotune.model import render as rendering
    from autotune.report.table import write_all
    from autotune.study.run import run_study

    path = tmp_path_factory.mktemp("handoff") / "handoff.toml"
    path.write_text(HANDOFF_STUDY)
    cfg = load_config(path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rendering, "time_serving", timed_by_evaluations)  # as `seconds_by_evaluations`, for the module
        outcomes = run_study(cfg, progress=False)
    write_all(outcomes)
    return cfg, outcomes


def test_every_handoff_renders_the_studys_image_with_the_negative_prompt_and_the_cutoff(handoff) -> None:  # type: ignore[no-untyped-def]
    import diffusers
    from diffusers.callbacks import SDCFGCutoffCallback

    from autotune.serving.export import export

    cfg, outcomes = handoff
    recs = autotune.load_recommendations(cfg.path)
    rec = recs["portrait"]
    assert rec.guidance_cutoff < 1 and rec.call_kwargs["negative_prompt"] == "blurry, lowres", rec
    assert "negative_prompt" not in recs["default"].call_kwargs  # a prompt of no class gets [call]'s (none here)
    prompt = cfg.classes["portrait"][0]
    stored = trial_image(cfg, outcomes["portrait"], outcomes["portrait"].recommendation.chosen.number)

    def close(image: torch.Tensor) -> bool:
        return float((image - stored).abs().max()) <= 1 / 255 + 1e-6  # one 8-bit level, from float rounding

    pipe = fresh_pipe()  # 1. autotune.apply
    kwargs = autotune.apply(pipe, rec)
    assert close(render(pipe, cfg, prompt, kwargs))
    without = {k: v for k, v in kwargs.items() if k != "negative_prompt"}  # what the handoff used to give
    assert not close(render(pipe, cfg, prompt, without))

    block = json.loads((cfg.output_dir / "recommendations.json").read_text())["classes"]["portrait"]["diffusers"]
    plain = fresh_pipe()  # 2. the JSON block by hand, as docs/how-to/serving.md shows it
    plain.scheduler = getattr(diffusers, block["scheduler_class"]).from_config(
        plain.scheduler.config, **block["scheduler_config"]
    )
    by_hand = dict(block["call_kwargs"])
    if block["guidance_cutoff"] < 1:
        by_hand["callback_on_step_end"] = SDCFGCutoffCallback(cutoff_step_ratio=block["guidance_cutoff"])
    assert close(render(plain, cfg, prompt, by_hand))
    uncut = render(plain, cfg, prompt, dict(block["call_kwargs"]))  # random weights: guidance matters little,
    assert not torch.equal(uncut, render(plain, cfg, prompt, by_hand))  # but the cutoff changes the image

    module: dict = {}  # type: ignore[type-arg]  # 3. the diffusers export
    exec(export(recs, "diffusers"), module)  # the module a user saves and imports
    exported = fresh_pipe()
    assert close(render(exported, cfg, prompt, module["apply"](exported, "portrait")))

    for fmt in ("a1111", "comfyui"):  # 4. the tools: the negative prompt carried, the cutoff said in one line
        out = json.loads(export(recs, fmt))["portrait"]
        assert out["negative_prompt"] == "blurry, lowres"
        assert [line for line in out["no_equivalent"] if f"guidance on the first {rec.guidance_cutoff:g} of" in line]
