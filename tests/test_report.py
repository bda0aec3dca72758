from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from autotune.config import load_config
from autotune.report.table import write_all
from autotune.results.reader import recommend
from autotune.study.run import run_study

FIGURE = re.compile(r'<script type="application/json" data-figure="([^"]+)">(.*?)</script>', re.S)


def figures(page: str) -> dict[str, dict[str, Any]]:
    return {name: json.loads(data.replace("<\\/", "</")) for name, data in FIGURE.findall(page)}


def test_report_has_a_pareto_figure_per_class_with_markers_and_images(finished_study) -> None:  # type: ignore[no-untyped-def]
    cfg, outcomes = finished_study
    page = (cfg.output_dir / "report.html").read_text()
    figs = figures(page)
    assert "<script src=" not in page and '<img src="http' not in page  # self-contained: opens offline
    for c, o in outcomes.items():
        fig = figs[f"{c}-pareto"]
        assert f"{o.n_completed} completed trials" in fig["layout"]["title"]["text"]
        traces = {t["name"]: t for t in fig["data"] if t.get("xaxis", "x") == "x"}
        assert len(traces["dominated"]["x"]) + len(traces["Pareto front"]["x"]) == len(o.trials)  # distinct settings
        assert len(o.trials) == 8  # distinct settings rendered (n_trials)
        rec = o.recommendation
        base = {t.number: t for t in o.trials}[rec.baseline.number]
        chosen = {t.number: t for t in o.trials}[rec.chosen.number]
        # x is seconds, y the CLIP score in the first panel
        assert traces["baseline"]["x"] == [base.values[2]] and traces["baseline"]["y"] == [base.values[0]]
        assert traces["recommended"]["x"] == [chosen.values[2]] and traces["recommended"]["text"] == ["recommended"]
        for kind in ("steps", "hypervolume", "importances"):
            assert f"{c}-{kind}" in figs
        section = page.split(f'<section id="class-{c}">')[1].split("</section>")[0]
        comparison = section.split('<table class="images">')[1].split("</table>")[0]
        assert comparison.count("data:image/png;base64,") == 2 * 3  # per prompt: baseline, recommended, reference
        assert "not stored" not in comparison
    summary = page.split('<table class="summary">')[1].split("</table>")[0]
    assert f"{outcomes['portrait'].recommendation.speedup:.2f}x" in summary


def test_report_renders_for_one_completed_and_one_failed_trial(study_file: Callable[..., Path]) -> None:
    cfg = load_config(study_file(name="sparse", n_trials=1))
    study = run_study(cfg, progress=False)["portrait"].load_study()
    trial = study.ask()
    trial.set_user_attr("fail_reason", "OutOfMemoryError: CUDA out of memory")
    study.tell(trial, state=TrialState.FAIL)
    outcomes = recommend(cfg)
    write_all(outcomes)
    page = (cfg.output_dir / "report.html").read_text()
    figs = figures(page)
    assert "1 completed trials (1 distinct settings), 1 failed" in page
    assert "1 completed trials" in figs["portrait-pareto"]["layout"]["title"]["text"]
    assert "portrait-importances" not in figs and "Needs at least 3 distinct completed trials" in page


@pytest.mark.slow
def test_report_of_a_study_file_leaving_baseline_and_reference_to_the_family(study_file: Callable[..., Path]) -> None:
    path = study_file(name="defaults", n_trials=1)
    text = re.sub(r"\[baseline\].*?(?=\[classes)", "", path.read_text(), flags=re.S)
    path.write_text(text.replace("steps = [2, 8]\n", "").replace("guidance = [1.0, 9.0]\n", ""))
    cfg = load_config(path)
    assert cfg.baseline.guidance is None and cfg.reference.steps is None
    run_study(cfg, progress=False, check_reference=False, decide=False)  # test_families checks the family's
    write_all(recommend(cfg))  # what `autotune study` and `autotune report` do, model not loaded
    page = (cfg.output_dir / "report.html").read_text()
    comparison = page.split('<table class="images">')[1].split("</table>")[0]
    assert comparison.count("data:image/png;base64,") == 3  # the family's reference found and shown


def _comparison_images(page: str, class_name: str) -> list[Any]:
    import base64
    import io

    from PIL import Image

    section = page.split(f'<section id="class-{class_name}">')[1].split("</section>")[0]
    table = section.split('<table class="images">')[1].split("</table>")[0]
    blobs = re.findall(r'src="data:image/png;base64,([^"]+)"', table)
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in blobs]


@pytest.mark.slow
def test_the_reports_reference_is_the_one_of_the_trials_size_and_model(study_file: Callable[..., Path]) -> None:
    """Two versions of a study in one database, 32 and 48 px: each report shows its own size's reference."""
    path = study_file(name="sizes", n_trials=1)
    run_study(load_config(path), progress=False, decide=False)
    path.write_text(path.read_text().replace("height = 32\nwidth = 32", "height = 48\nwidth = 48"))
    cfg = load_config(path)
    run_study(cfg, progress=False, decide=False, new_version=True, check_reference=False)
    write_all(recommend(cfg))
    baseline, recommended, reference = _comparison_images((cfg.output_dir / "report.html").read_text(), "portrait")
    assert baseline.size == recommended.size == reference.size == (48, 48)


@pytest.mark.slow
def test_the_grid_is_rendered_with_the_calls_production_makes(study_file: Callable[..., Path]) -> None:
    import io

    import numpy as np
    from PIL import Image

    from autotune.model.pipeline import Calls, load_pipeline
    from autotune.model.render import generate
    from autotune.report.grid import render_grid
    from autotune.space.settings import Settings

    path = study_file(name="negative", n_trials=1, extra='negative_prompt = "blurry, lowres"\n')
    cfg = load_config(path)
    run_study(cfg, progress=False, decide=False)
    outcomes = recommend(cfg)
    grid = render_grid(outcomes.cfg, outcomes, "cpu")["portrait"]
    label, steps = next(iter(grid))
    setting = next(
        Settings.make(n, steps, 7.5) for n in cfg.search.schedulers if Settings.make(n, 1, 1).scheduler_label() == label
    )
    prompt = cfg.classes["portrait"][0]

    def render(calls: Calls) -> Any:
        p = load_pipeline(cfg.model, "cpu", calls=calls)
        return (generate(p, setting, [prompt], [0], 32, 32).images[0].permute(1, 2, 0).numpy() * 255).round()

    shown = np.asarray(Image.open(io.BytesIO(grid[(label, steps)])).convert("RGB")).astype(float)
    assert np.abs(shown - render(Calls.of(cfg))).max() <= 1  # the class's negative prompt, as its trials had
    assert np.abs(shown - render(Calls())).max() > 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> bytes:
    # optuna-dashboard answers 500 to requests without Accept-Encoding, as browsers always send one
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept-Encoding": "identity"}), timeout=10) as r:
        return bytes(r.read())


@pytest.mark.slow
def test_dashboard_serves_study_metric_names_images_and_note(finished_study) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = finished_study
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "autotune.cli", "dashboard", str(cfg.path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                studies = json.loads(_get(f"{base}/api/studies"))["study_summaries"]
                break
            except OSError:
                assert server.poll() is None, server.stdout.read().decode() if server.stdout else ""
                time.sleep(0.5)
        else:
            pytest.fail("optuna-dashboard did not answer within 60 s")
        by_name = {s["study_name"]: s["study_id"] for s in studies}
        assert set(by_name) == {"finished.portrait", "finished.landscape"}
        detail = json.loads(_get(f"{base}/api/studies/{by_name['finished.portrait']}"))
        assert detail["objective_names"] == ["clip_score", "lpips", "seconds"]
        assert detail["note"]["body"].startswith("## Recommended: ")
        assert sorted(g["id"] for g in detail["plotly_graph_objects"]) == ["answer", "pareto-front"]
        by_id = {g["id"]: g["graph_object"] for g in detail["plotly_graph_objects"]}  # (in an order of its own)
        rec = json.loads((cfg.output_dir / "recommendations.json").read_text())["classes"]["portrait"]
        answer = json.loads(by_id["answer"])["data"][0]["cells"]["values"]
        assert (answer[1][:2], answer[2][1]) == (
            [f"#{rec['trial']}", f"#{rec['baseline']['trial']}"],
            rec["baseline"]["setting"],
        )
        assert len(answer[1]) == 2 + len(rec["decision"]["candidates"])  # the pick, the baseline, each candidate
        trial = detail["trials"][0]
        assert trial["note"]["body"].startswith(f"### {rec['baseline']['setting']}\n\nTrial 0: **the baseline**.")
        assert "| clip_score |" in trial["note"]["body"]  # its metrics by name
        names = sorted(a["filename"] for a in trial["artifacts"])  # 2 prompts x 2 seeds
        assert names == ["prompt0_seed0.png", "prompt0_seed1.png", "prompt1_seed0.png", "prompt1_seed1.png"]
        (artifact,) = [a for a in trial["artifacts"] if a["filename"] == "prompt0_seed0.png"]
        assert artifact["mimetype"] == "image/png"
        png = _get(f"{base}/artifacts/{trial['study_id']}/{trial['trial_id']}/{artifact['artifact_id']}")
        assert png.startswith(b"\x89PNG")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert server.returncode is not None


def test_dashboard_before_any_study_exits_2(study_file: Callable[..., Path]) -> None:
    path = study_file(name="nothing")
    result = subprocess.run(
        [sys.executable, "-m", "autotune.cli", "dashboard", str(path), "--port", str(_free_port())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "autotune study" in result.stderr and result.stderr.count("\n") == 1


def test_dashboard_on_a_port_in_use_exits_2_with_one_line(finished_study, capsys) -> None:  # type: ignore[no-untyped-def]
    from autotune.cli import main

    cfg, _ = finished_study
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", str(cfg.path), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--port {port}: cannot serve on 127.0.0.1:{port}" in err, err


def test_study_writes_artifacts_only_when_asked(study_file: Callable[..., Path]) -> None:
    cfg = load_config(study_file(name="noimages", n_trials=2, extra="[report]\nimages = false\n"))
    study = run_study(cfg, progress=False)["portrait"].load_study()
    assert not cfg.artifact_dir.exists()
    assert not any(k.startswith("artifacts:") for t in study.trials for k in t.system_attrs)
    assert optuna.artifacts.get_all_artifact_meta(study.trials[0], storage=study._storage) == []


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test installs it)")
def test_report_draws_every_figure_in_headless_chromium(finished_study, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, outcomes = finished_study
    report = cfg.output_dir / "report.html"
    n = len(figures(report.read_text()))
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=15000",
    ]
    assert CHROMIUM is not None
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    assert f'data-figures-drawn="{n}"' in dom and n == 4 * len(outcomes)
    assert dom.count('class="main-svg"') >= n  # plotly drew an SVG for every figure
    assert '<div id="errors" hidden="">' in dom  # the error box stayed hidden: no script errors
    shot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, *flags, "--window-size=1200,1600", f"--screenshot={shot}", report.as_uri()],
        capture_output=True,
        timeout=120,
    )
    from PIL import Image

    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 1000  # figures and images, not a blank page


def test_numbers_from_random_weights_say_so_wherever_a_user_reads_them(finished_study) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    from autotune.config import MetricsConfig, ModelConfig
    from autotune.report.table import format_table
    from autotune.results.notes import random_weights_warning
    from autotune.results.recommendations_file import recommendations_data

    cfg, outcomes = finished_study
    warning = random_weights_warning(outcomes.cfg)
    assert warning is not None and "the model (tiny)" in warning and "CLIP" in warning and "LPIPS" in warning
    assert recommendations_data(outcomes.cfg, outcomes)["random_weights"] == warning
    assert format_table(outcomes.cfg, outcomes).endswith(warning)
    assert warning in (cfg.output_dir / "report.html").read_text()
    study = outcomes["portrait"].load_study()
    attrs = study._storage.get_study_system_attrs(study._study_id)
    note = "".join(v for k, v in sorted(attrs.items()) if k.startswith("dashboard:note_str:"))  # the dashboard's
    assert note.endswith(f"**{warning}**")
    real = dataclasses.replace(
        outcomes.cfg,
        model=ModelConfig(id="stable-diffusion-v1-5/stable-diffusion-v1-5"),
        metrics=MetricsConfig(clip_model="ViT-B-32", clip_pretrained="laion2b_s34b_b79k", lpips_backbone="pretrained"),
    )
    assert random_weights_warning(real) is None
    micro = dataclasses.replace(real, model=ModelConfig(id="micro"), metrics=MetricsConfig(clip_model="micro"))
    assert random_weights_warning(micro) == (  # the micro model and its CLIP are trained
        "Random weights: the LPIPS backbone (alex). "
        "Their figures show how autotune works, not how two images look alike to a person."
    )


def test_a_speed_up_its_timings_cannot_support_gives_way_to_the_compute_ratio() -> None:
    from autotune.results.notes import speedup_text, timing_check

    quiet = (2.30, 2.64)  # the demo's thin pick, timed alone: a range of 1.15x
    assert timing_check(2.61, quiet, 2.7) is None and timing_check(2.7, (2.5, 2.9), 2.5) is None  # within 10 %
    quiet_d = {"speedup": 2.61, "speedup_range": quiet, "model_call_ratio": 2.7, "timing": None}
    assert speedup_text(quiet_d) == "2.61x (2.30-2.64), 2.7x fewer model calls"
    beyond = timing_check(3.29, (3.1, 3.4), 2.5, "autotune validate s.toml")
    assert beyond == (
        "timing unreliable (timed 3.29x faster with 2.5x fewer model calls: the machine was busy); re-time alone: "
        "`autotune validate s.toml`"
    )
    busy = timing_check(6.80, (1.08, 16.97), 9.9)  # a study under a CPU hog: not beyond physics,
    assert busy is not None and "1.08-16.97x over the timed calls" in busy  # but its range supports no figure
    busy_d = {"speedup": None, "speedup_timed": 6.80, "speedup_range": (1.08, 16.97), "model_call_ratio": 9.9}
    assert speedup_text(busy_d | {"timing": busy}) == "9.9x fewer model calls; timing unreliable"
    assert timing_check(None, None, 2.5) is None and timing_check(1.5, (1.4, 1.6), None) is None


def test_a_study_timed_on_a_busy_machine_leads_with_its_compute_ratio(
    study_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every third timed call 1.6 times slower (another job took the cores): no output
    leads with the speed-up those calls give; each says why and names the command that re-times it."""
    import itertools

    from autotune.model import render
    from autotune.report.table import format_table

    calls = itertools.count()

    def busy(p, settings, prompt, seed, height, width, batch_size=1, repeats=3):  # type: ignore[no-untyped-def]
        cost = 1e-3 * settings.steps * (1 + settings.guided_share())  # every third call 1.6x slower
        return [cost * (1.6 if next(calls) % 3 == 1 else 1) for _ in range(repeats)]

    monkeypatch.setattr(render, "time_serving", busy)
    six = '[classes.portrait]\nprompts = ["a fisherman", "a sailor", "a child", "a farmer", "a chef", "a cook"]\n'
    path = study_file(name="busy", n_trials=4, classes=six)
    lenient = "seeds = [0]\nseed = 0", "broken_share = 0.5\nclip_tolerance = 100.0\nlpips_tolerance = 10.0"
    path.write_text(path.read_text().replace("seeds = [0]", lenient[0]).replace("broken_share = 0.5", lenient[1]))
    cfg = load_config(path)
    outcomes = run_study(cfg, progress=False)
    write_all(outcomes)
    d = json.loads((cfg.output_dir / "recommendations.json").read_text())["classes"]["portrait"]
    assert d["trial"] != d["baseline"]["trial"] and d["speedup"] is None and d["speedup_timed"] > 1
    assert d["timing"].startswith("timing unreliable") and f"autotune validate {cfg.path}" in d["timing"]
    row = next(line for line in format_table(outcomes.cfg, outcomes).splitlines() if line.startswith("portrait "))
    assert f"{d['model_call_ratio']:.2g}x fewer model calls; timing unreliable" in row
    assert f"{d['speedup_timed']:.2f}x (" not in row  # the timed figure is in the note, not the headline
    summary = (cfg.output_dir / "report.html").read_text().split('<table class="summary">')[1].split("</table>")[0]
    assert "timing unreliable" in summary and f"{d['speedup_timed']:.2f}x (" not in summary


def test_a_report_whose_images_were_deleted_is_written_with_one_warning(
    study_file: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from autotune.cli import main

    path = study_file(name="deleted", n_trials=2)
    assert main(["study", str(path), "--quiet"]) == 0
    cfg = load_config(path)
    gone = [f for f in Path(cfg.artifacts).rglob("*") if f.is_file()]
    assert gone
    for f in gone:  # the files deleted by hand, the folder left in place
        f.unlink()
    capsys.readouterr()
    assert main(["report", str(path)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autotune: warning: ") and "trial images are gone from" in err[0], err
    assert "Traceback" not in err[0] and (cfg.output_dir / "report.html").stat().st_size > 0
