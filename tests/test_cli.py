from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from autotune.arguments import parse_duration
from autotune.space.families import FAMILIES
from autotune.space.settings import ays_timesteps


@pytest.mark.parametrize(
    ("text", "seconds"), [("8h", 28800), ("90m", 5400), ("1h30m", 5400), ("45s", 45), ("600", 600), ("0.5h", 1800)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autotune.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_study_then_recommend_end_to_end(study_file: Callable[..., Path]) -> None:
    from tests.conftest import TWO_CLASSES

    path = study_file(name="e2e", n_trials=3, classes=TWO_CLASSES)
    result = run("study", str(path), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "portrait" in result.stdout and "baseline" in result.stdout
    out = path.parent / "e2e"
    recs = json.loads((out / "recommendations.json").read_text())
    assert set(recs["classes"]) == {"portrait", "landscape"}
    for c, rec in recs["classes"].items():
        assert rec["settings_rendered"] == 3
        assert rec["metrics"]["seconds"] <= rec["baseline"]["metrics"]["seconds"]
        expected = {"num_inference_steps": rec["steps"], "guidance_scale": rec["guidance"]}
        if rec["options"].get("sigmas") == "ays":  # Align Your Steps passes its own timesteps
            expected["timesteps"] = ays_timesteps(FAMILIES["sd"], rec["steps"])
        assert rec["diffusers"]["call_kwargs"] == expected
        rows = list(csv.DictReader((out / f"pareto_{c}.csv").open()))
        assert 1 <= len(rows) <= 3
        assert sum(r["recommended"] == "True" for r in rows) == 1
        assert [float(r["seconds"]) for r in rows] == sorted(float(r["seconds"]) for r in rows)

    shown = run("recommend", str(path), "--format", "json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == recs
    table = run("recommend", str(path))
    assert table.stdout.splitlines()[0].split()[:2] == ["class", "setting"]


def test_recommend_before_any_study_exits_2(study_file: Callable[..., Path]) -> None:
    path = study_file(name="fresh")
    result = run("recommend", str(path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "autotune study" in result.stderr
    assert not (path.parent / "fresh.db").exists()


@pytest.mark.slow
def test_storage_that_is_not_a_database_exits_2_and_is_left_alone(study_file: Callable[..., Path]) -> None:
    path = study_file(name="junk")
    db = path.parent / "junk.db"
    db.write_bytes(b"this is not sqlite" * 100)
    result = run("study", str(path), "--quiet")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert db.read_bytes() == b"this is not sqlite" * 100


@pytest.mark.parametrize(
    "argv", [["recommend"], ["recommend", "--format", "json"], ["export", "--format", "diffusers"]]
)
@pytest.mark.slow
def test_a_reader_that_closes_stdout_early_ends_it_quietly(finished_study, argv: list[str]) -> None:  # type: ignore[no-untyped-def]
    """`autotune recommend ... | head` and `export ... | true`: no traceback, the shell's code for a closed pipe."""
    cfg, _ = finished_study
    proc = subprocess.Popen(
        [sys.executable, "-m", "autotune.cli", argv[0], str(cfg.path), *argv[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_output_to_a_full_device_is_one_line_and_exit_74(finished_study) -> None:  # type: ignore[no-untyped-def]
    """`autotune recommend ... > /dev/full`: the write fails; one line says where, the code is EX_IOERR."""
    cfg, _ = finished_study
    with open("/dev/full", "w") as full:
        run = subprocess.run(
            [sys.executable, "-m", "autotune.cli", "recommend", str(cfg.path)], stdout=full, stderr=subprocess.PIPE
        )
    assert run.returncode == 74, run.stderr
    assert run.stderr.decode() == "autotune: error: standard output: No space left on device\n"


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare -rm to mount a read-only folder")
def test_a_report_into_a_read_only_folder_is_refused_in_one_line(finished_study, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Root writes through chmod 555: the outputs folder is a read-only bind mount instead, in a namespace."""
    cfg, _ = finished_study
    study = tmp_path / "study"
    shutil.copytree(cfg.path.parent, study)
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("this machine lets no process mount a folder of its own")
    out = study / cfg.name
    script = f'mount --bind "{out}" "{out}" && mount -o remount,bind,ro "{out}" && exec "$@"'
    command = [sys.executable, "-m", "autotune.cli", "report", str(study / cfg.path.name)]
    run = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *command], capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    assert run.stderr == f"autotune: error: {out}: cannot write the study's outputs there (Read-only file system)\n"


def test_a_prompt_file_starting_with_a_byte_order_mark_reads_as_without(tmp_path: Path) -> None:
    from autotune.validate import read_prompts

    (tmp_path / "p.txt").write_bytes("\ufeffa handwritten digit eight\r\na digit six\n".encode())
    assert read_prompts(tmp_path / "p.txt") == ["a handwritten digit eight", "a digit six"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["study", "{path}", "--device", "tpu"], "argument --device: expected auto, cpu, cuda or cuda:N, got 'tpu'"),
        (["study", "{path}", "--device", "CPU"], "argument --device: expected auto, cpu, cuda or cuda:N, got 'CPU'"),
        (["validate", "{path}", "--prompts", "{path}", "--device", "gpu"], "argument --device: expected auto, cpu"),
        (["export", "{path}", "--check", "--device", "cuda:x"], "argument --device: expected auto, cpu"),
        (["report", "{path}", "--device", "tpu"], "argument --device: expected auto, cpu"),
        (
            ["dashboard", "{path}", "--port", "99999"],
            "argument --port: expected a port number in 1..65535, got '99999'",
        ),
        (["dashboard", "{path}", "--port", "-1"], "argument --port: expected a port number in 1..65535, got '-1'"),
        (["dashboard", "{path}", "--port", "0"], "argument --port: expected a port number in 1..65535, got '0'"),
    ],
)
def test_command_line_values_are_checked_as_the_study_files_are(
    study_file: Callable[..., Path], capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    from autotune.cli import main

    path = study_file()
    code = main([a.format(path=path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not any(path.parent.glob("*.db")) and not (path.parent / "small").exists()  # nothing written


def test_an_unusable_host_is_blamed_on_host(finished_study, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    from autotune.cli import main

    cfg, _ = finished_study
    code = main(["dashboard", str(cfg.path), "--host", "192.0.2.1", "--port", "18080"])  # TEST-NET-1: not ours
    err = capsys.readouterr().err
    assert (
        code == 2 and "--host '192.0.2.1': cannot serve on 192.0.2.1:18080" in err and "--port" not in err.split(":")[0]
    )
