from __future__ import annotations

from pathlib import Path

import pytest

from autotune.cli import main
from autotune.config import ConfigError, load_config
from autotune.config.resolve import resolve
from autotune.space.families import FAMILIES

MINIMAL = '[classes.a]\nprompts = ["a cat"]\n'
SD_USABLE = ["euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "unipc", "ddim"]


def write(tmp_path: Path, text: str | bytes, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_minimal_file_gets_the_model_familys_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL, "night.toml"))
    assert cfg.name == "night"
    assert cfg.classes == {"a": ("a cat",)}
    assert cfg.search.steps is None and cfg.baseline.steps is None  # filled once the model is known
    cfg = resolve(cfg, FAMILIES["sd"], ["euler", "dpmpp_2m", "dpmpp_2m_karras", "unipc", "ddim"])
    assert cfg.family is FAMILIES["sd"]
    assert cfg.search.steps == (4, 40) and cfg.search.guidance == (1.0, 9.0)
    assert cfg.search.seeds == (0, 1)
    assert cfg.metrics.objectives == ("clip_score", "lpips", "seconds")
    assert cfg.reference.steps == 100 and cfg.baseline.steps == 30
    assert cfg.baseline.scheduler == "dpmpp_2m_karras" and cfg.baseline.guidance == 7.5
    assert cfg.default_storage == f"sqlite:///{tmp_path / 'night.db'}"
    assert cfg.output_dir == tmp_path / "night"


def test_a1111_names_become_canonical_and_baseline_joins_the_space(tmp_path: Path) -> None:
    text = '[search]\nschedulers = ["Euler a", "UniPC", "euler_a"]\n[baseline]\nscheduler = "DPM++ 2M Karras"\n'
    cfg = resolve(load_config(write(tmp_path, text + MINIMAL)), FAMILIES["sd"], SD_USABLE)
    assert cfg.search.schedulers == ("euler_a", "unipc", "dpmpp_2m_karras")
    assert cfg.baseline.scheduler == "dpmpp_2m_karras"


def test_distilled_family_defaults_to_few_steps_and_low_guidance(tmp_path: Path) -> None:
    cfg = resolve(load_config(write(tmp_path, MINIMAL)), FAMILIES["distilled"], [*SD_USABLE, "lcm"])
    assert cfg.search.steps == (1, 8) and cfg.search.guidance == (0.0, 1.0)
    assert cfg.baseline.steps == 4 and cfg.reference.steps == 8


def test_schedulers_all_means_every_usable_one(tmp_path: Path) -> None:
    cfg = resolve(load_config(write(tmp_path, '[search]\nschedulers = "all"\n' + MINIMAL)), FAMILIES["sd"], SD_USABLE)
    assert cfg.search.schedulers == tuple(SD_USABLE)


RESOLVE_BAD = [
    (
        "incompatible scheduler",
        '[search]\nschedulers = ["euler", "flow_euler"]\n',
        "search.schedulers: flow_euler cannot be used with this sd model (it can use: euler, euler_a, dpmpp_2m",
    ),
    ("baseline outside steps", "[baseline]\nsteps = 50\n", "baseline.steps: expected a value inside"),
    ("baseline outside guidance", "[baseline]\nguidance = 12.0\n", "baseline.guidance: expected a value inside"),
    ("ancestral reference", '[reference]\nscheduler = "euler_a"\n', "reference.scheduler: expected a deterministic"),
    (
        "steps_step not dividing the range",
        "[search]\nsteps_step = 5\n",
        "search.steps_step: expected a divisor of 40 - 4",
    ),
    ("baseline off the steps grid", "[search]\nsteps_step = 4\n[baseline]\nsteps = 30\n", "in steps of 4, got 30"),
    ("baseline off the guidance grid", "[baseline]\nguidance = 7.25\n", "in steps of 0.5, got 7.25"),
]


@pytest.mark.parametrize(("case", "text", "message"), RESOLVE_BAD, ids=[b[0] for b in RESOLVE_BAD])
def test_space_checked_against_the_model_names_file_and_key(tmp_path: Path, case: str, text: str, message: str) -> None:
    path = write(tmp_path, text + MINIMAL)
    with pytest.raises(ConfigError) as err:
        resolve(load_config(path), FAMILIES["sd"], SD_USABLE)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_demo_study_file_is_valid() -> None:
    cfg = load_config(Path(__file__).parent.parent / "studies" / "demo.toml")
    assert cfg.model.id == "glyphs" and (cfg.model.height, cfg.model.width) == (32, 32)
    assert set(cfg.classes) == {"thin", "bold"} and all(len(set(p)) >= 16 for p in cfg.classes.values())
    held_out = (Path(__file__).parent.parent / "studies" / "demo_holdout.txt").read_text().splitlines()
    listed = {p for prompts in cfg.classes.values() for p in prompts}
    assert len([h for h in held_out if h and not h.startswith("#")]) >= 12 and not listed & set(held_out)
    assert cfg.baseline.scheduler == "dpmpp_2m_karras" and cfg.search.steps[0] <= 3  # shows the low-step failure
    assert cfg.search.guidance_cutoff == (0.5, 1.0) and cfg.search.fitted_schedules  # shows both beyond-named axes


def test_the_gpu_study_file_names_a_hub_model_and_real_metric_weights() -> None:
    """The file the README's GPU section runs: it loads and resolves against its family offline (the model
    itself is not looked for here: no hub)."""
    from autotune.config.tables import local_weights

    cfg = load_config(Path(__file__).parent.parent / "studies" / "sd15.toml")
    assert local_weights("model.id", cfg.model.id, cfg.model.home) is None  # a hub id, not a path
    assert (cfg.metrics.clip_model, cfg.metrics.clip_pretrained) == ("ViT-B-32", "laion2b_s34b_b79k")
    assert cfg.metrics.lpips_backbone == "pretrained" and (cfg.model.height, cfg.model.width) == (512, 512)
    assert all(len(p) >= 16 for p in cfg.classes.values())
    resolved = resolve(cfg, FAMILIES["sd"], list(FAMILIES["sd"].schedulers))
    assert resolved.baseline.steps == 30 and resolved.search.steps == (4, 30)


BAD = [
    ("malformed toml", "[search\nsteps = 3", "not valid TOML"),
    ("unknown top key", "colour = 1\n" + MINIMAL, "colour: unknown key"),
    ("unknown section key", "[search]\nstep = [4, 8]\n" + MINIMAL, "search.step: unknown key"),
    ("wrong type", '[search]\nn_trials = "ten"\n' + MINIMAL, "search.n_trials: expected integer"),
    ("bool as int", "[search]\nn_trials = true\n" + MINIMAL, "search.n_trials: expected integer"),
    ("steps not a pair", "[search]\nsteps = [4]\n" + MINIMAL, "search.steps: expected [integer, integer]"),
    ("steps reversed", "[search]\nsteps = [40, 4]\n" + MINIMAL, "search.steps: expected [low, high]"),
    ("steps over 1000", "[search]\nsteps = [4, 1001]\n" + MINIMAL, "search.steps: expected [low, high]"),
    ("steps zero", "[search]\nsteps = [0, 10]\n" + MINIMAL, "search.steps: expected [low, high]"),
    ("negative guidance", "[search]\nguidance = [-1.0, 5.0]\n" + MINIMAL, "search.guidance: expected [low, high]"),
    ("negative baseline guidance", "[baseline]\nguidance = -2.0\n" + MINIMAL, "baseline.guidance: expected"),
    (
        "unknown scheduler",
        '[search]\nschedulers = ["euler", "warp9"]\n' + MINIMAL,
        "search.schedulers: unknown scheduler 'warp9'",
    ),
    (
        "scheduler near miss",
        '[search]\nschedulers = ["DPM++ 2M Karas"]\n' + MINIMAL,
        "search.schedulers: unknown scheduler 'DPM++ 2M Karas' (did you mean 'DPM++ 2M Karras'?)",
    ),
    (
        "A1111 sampler without a diffusers scheduler",
        '[baseline]\nscheduler = "DPM adaptive"\n' + MINIMAL,
        "baseline.scheduler: 'DPM adaptive' is an AUTOMATIC1111 sampler diffusers has no scheduler for",
    ),
    ("class named default", '[classes.default]\nprompts = ["a cat"]\n', "classes.default: 'default' is reserved"),
    ("unknown reference scheduler", '[reference]\nscheduler = "nope"\n' + MINIMAL, "reference.scheduler: unknown"),
    ("no classes", "[search]\nn_trials = 3\n", "classes: expected at least one"),
    ("empty class", "[classes.a]\nprompts = []\n", "classes.a.prompts: expected a non-empty list"),
    ("empty prompt", '[classes.a]\nprompts = ["ok", "  "]\n', "classes.a.prompts[1]: expected a non-empty string"),
    ("class not a table", 'classes = ["a"]\n', "classes: expected at least one"),
    (
        "unknown metric",
        '[metrics]\nobjectives = ["clip_score", "fid"]\n' + MINIMAL,
        "metrics.objectives: expected one of",
    ),
    (
        "unknown sampler",
        '[search]\nsampler = "cmaes"\n' + MINIMAL,
        "search.sampler: expected one of tpe, tpe_independent, gp, nsga2, random",
    ),
    ("bad device", '[model]\ndevice = "tpu"\n' + MINIMAL, "model.device: expected auto, cpu, cuda or cuda:N"),
    ("bad dtype", '[model]\ndtype = "int8"\n' + MINIMAL, "model.dtype: expected one of"),
    ("size not multiple of 8", "[model]\nheight = 60\n" + MINIMAL, "model.height: expected a positive multiple of 8"),
    ("duplicate seeds", "[search]\nseeds = [1, 1]\n" + MINIMAL, "search.seeds: expected distinct integers"),
    ("bad variant", '[search]\nvariants = ["sigmas", "eta"]\n' + MINIMAL, "search.variants: expected one of"),
    (
        "option of another scheduler",
        '[reference]\nscheduler = "ddim"\noptions = { sigmas = "karras" }\n' + MINIMAL,
        "reference.options.sigmas: not a parameter of ddim",
    ),
    (
        "bad option value",
        '[reference]\nscheduler = "dpmpp_2m"\noptions = { timestep_spacing = "x" }\n' + MINIMAL,
        "reference.options.timestep_spacing: expected one of default, leading, linspace, trailing",
    ),
    (
        "guidance trial on baseline",
        '[baseline]\nguidance = "trial"\n' + MINIMAL,
        "baseline.guidance: expected a number",
    ),
    ("bad family", '[model]\nfamily = "sd9"\n' + MINIMAL, "model.family: expected one of auto, sd, sdxl"),
    ("negative tolerance", "[recommend]\nclip_tolerance = -1\n" + MINIMAL, "recommend.clip_tolerance: expected"),
    ("unknown rule", '[recommend]\nrule = "knee"\n' + MINIMAL, "recommend.rule: expected one of match_baseline"),
    (
        "confirmation seed the search uses",
        "[recommend]\nconfirm_seeds = [0, 1000]\n" + MINIMAL,
        "recommend.confirm_seeds: expected at least two distinct integers >= 0 that search.seeds does not use",
    ),
    ("no finalist", "[recommend]\nfinalists = 0\n" + MINIMAL, "recommend.finalists: expected an integer >= 1, got 0"),
    ("serving batch 0", "[serving]\nbatch_size = 0\n" + MINIMAL, "serving.batch_size: expected an integer >= 1, got 0"),
    ("serving key typo", "[serving]\nrepeat = 3\n" + MINIMAL, "serving.repeat: unknown key"),
    ("non-utf8", b'[classes.a]\nprompts = ["caf\xe9"]\n', "expected UTF-8 text"),
    (
        "a prompt twice",
        '[classes.a]\nprompts = ["a cat", "a dog", "A  cat"]\n',
        "classes.a.prompts[2]: 'A  cat' repeats prompts[0] (the text encoder reads them alike); expected distinct",
    ),
]


@pytest.mark.parametrize(("case", "text", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_file_names_file_key_and_expectation(tmp_path: Path, case: str, text: str | bytes, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_study_file_starting_with_a_byte_order_mark_reads_as_without(tmp_path: Path) -> None:
    text = '[search]\nn_trials = 7\n[classes.a]\nprompts = ["a cat"]\n'
    cfg = load_config(write(tmp_path, "\ufeff".encode() + text.encode(), "bom.toml"))
    assert cfg.search.n_trials == 7 and cfg.classes == {"a": ("a cat",)}


@pytest.mark.parametrize(("family", "scheduler"), [("distilled", "euler"), ("sd3", "flow_euler")])
@pytest.mark.parametrize("where", ["baseline", "reference"])
def test_ays_where_the_family_has_none_is_refused_at_load_in_one_line(
    tmp_path: Path, family: str, scheduler: str, where: str
) -> None:
    path = write(tmp_path, f'[{where}]\nscheduler = "{scheduler}"\noptions = {{ sigmas = "ays" }}\n' + MINIMAL)
    with pytest.raises(ConfigError) as err:
        resolve(load_config(path), FAMILIES[family], ["euler", "euler_a", "lcm", "ddim", "flow_euler"])
    message = str(err.value)
    assert message.startswith(f"{path}: {where}.options.sigmas: 'ays' needs Align-Your-Steps timesteps"), message
    assert "\n" not in message
    if family == "distilled":  # the same file on SD, which has them, resolves
        assert getattr(resolve(load_config(path), FAMILIES["sd"], SD_USABLE), where).options == {"sigmas": "ays"}


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such study file"):
        load_config(tmp_path / "absent.toml")


@pytest.mark.parametrize("command", ["study", "recommend"])
def test_cli_bad_file_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    path = write(tmp_path, "[search]\nsteps = [40, 4]\n" + MINIMAL)
    assert main([command, str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "search.steps" in err and str(path) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.toml"]
