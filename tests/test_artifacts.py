"""Trial images in an S3-compatible bucket: workers on machines that share no folder write them there,
the report and the dashboard on a third machine read every one back, and a store that cannot be
reached, or is not the study's, is refused in one line before anything renders."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autotune.cli import main
from autotune.config import load_config
from autotune.store.optuna_api import artifact_files
from autotune.store.reference_table import image_name

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")
BUCKET = "autotune-fleet"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """moto's S3 server on 127.0.0.1 with one bucket; the environment a worker reaches it with."""
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    try:
        yield env
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        server.stop()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    from tests.conftest import postgres_database

    with postgres_database() as url:
        yield url


def _machine(root: Path, study_file: Callable[..., Path]) -> Path:
    """The study file in a folder of its own: a machine that shares no disk with the others."""
    root.mkdir()
    source = study_file(name="fleet", n_trials=4)
    path = root / "fleet.toml"
    path.write_text(source.read_text())
    return path


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "autotune.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_two_machines_write_to_one_bucket_and_a_third_reads_every_image(
    s3: dict[str, str], study_file: Callable[..., Path], tmp_path: Path, postgres_url: str
) -> None:
    where = f"s3://{BUCKET}/nights/fleet"
    machines = [_machine(tmp_path / name, study_file) for name in ("gpu-a", "gpu-b")]
    args = ["--quiet", "--storage", postgres_url, "--artifacts", where, "--worker"]
    command = [sys.executable, "-m", "autotune.cli", "study"]
    env = {**os.environ, **s3, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([*command, str(p), *args], stderr=subprocess.PIPE, env=env) for p in machines]
    errors = [w.communicate(timeout=600)[1].decode() for w in workers]
    assert [w.returncode for w in workers] == [0, 0], errors
    for p in machines:  # nothing a reader needs stayed on the machine that rendered it
        assert not (p.parent / "fleet" / "artifacts").exists()

    reader = _machine(tmp_path / "laptop", study_file)  # no --artifacts: the study says where its images are
    cfg = load_config(reader)
    storage = optuna.storages.RDBStorage(postgres_url)
    study = optuna.load_study(study_name="fleet.portrait", storage=storage)
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE and "reused_from" not in t.user_attrs]
    assert len({t.user_attrs["worker"] for t in done}) == 2 and len(done) >= 4  # both machines rendered
    assert study.user_attrs["artifacts"] == where

    shown = _cli("recommend", str(reader), "--storage", postgres_url, "--format", "json", env=s3)
    assert shown.returncode == 0, shown.stderr  # the recommendations come from the database, on any machine
    (reader.parent / "fleet").mkdir()
    (reader.parent / "fleet" / "recommendations.json").write_text(shown.stdout)
    assert "SETTINGS = {" in _cli("export", str(reader), "--format", "diffusers", env=s3).stdout
    assert _cli("report", str(reader), "--storage", postgres_url, env=s3).returncode == 0
    html = (reader.parent / "fleet" / "report.html").read_text()
    assert html.count("data:image/png;base64") >= 2  # the comparison's images came from the bucket

    port = _free_port()
    dashboard = subprocess.Popen(
        [*command[:-1], "dashboard", str(reader), "--storage", postgres_url, "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        served = 0
        for t in done:
            artifact = artifact_files(t.system_attrs)[image_name(0, cfg.search.seeds[0])]
            url = f"http://127.0.0.1:{port}/artifacts/{study._study_id}/{t._trial_id}/{artifact}"
            for _ in range(300):  # the server starts (up to a minute on a loaded machine, as in test_report)
                try:
                    with urllib.request.urlopen(url, timeout=10) as r:
                        served += r.read().startswith(b"\x89PNG")
                    break
                except (ConnectionError, urllib.error.URLError):
                    time.sleep(0.2)
        assert served == len(done)
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)


@pytest.mark.slow
def test_an_unreachable_or_unknown_bucket_is_one_line_before_anything_is_written(
    s3: dict[str, str], study_file: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = study_file(name="lost")
    closed = {**s3, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}"}
    for env, where in ((closed, f"s3://{BUCKET}/x"), (s3, "s3://no-such-bucket/x")):
        out = _cli("study", str(path), "--artifacts", where, env=env)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1, out.stderr
        assert lines[0].startswith(f"autotune: error: {path}: storage.artifacts: cannot write trial images to {where}")
        assert not (path.parent / "lost.db").exists() and not (path.parent / "lost").exists()
    assert main(["study", str(path), "--artifacts", "gs://bucket/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "autotune: error: --artifacts: expected a folder or s3://bucket/prefix, got 'gs://bucket/x'"


def test_a_worker_that_would_write_elsewhere_than_the_study_is_refused(
    s3: dict[str, str], study_file: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = study_file(name="kept", n_trials=1)
    assert main(["study", str(path), "--quiet", "--artifacts", f"s3://{BUCKET}/kept"]) == 0
    capsys.readouterr()
    study = optuna.load_study(study_name="kept.portrait", storage=load_config(path).default_storage)
    before = len(study.get_trials())
    assert main(["study", str(path), "--quiet", "--n-trials", "3"]) == 2  # its own folder, not the study's bucket
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"keeps its trial images in s3://{BUCKET}/kept" in err and "--artifacts" in err
    assert len(study.get_trials()) == before and not (path.parent / "kept" / "artifacts").exists()


@pytest.mark.slow
def test_a_store_that_fails_mid_study_fails_that_trial_and_the_study_goes_on(
    study_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from optuna.artifacts import FileSystemArtifactStore

    from autotune.study import run

    writes = []

    class Flaky(FileSystemArtifactStore):
        def write(self, artifact_id: str, content_body) -> None:  # type: ignore[no-untyped-def]
            writes.append(artifact_id)
            if len(writes) == 2:  # the second trial's first image
                raise OSError("the bucket went away")
            super().write(artifact_id, content_body)

    monkeypatch.setattr(run, "open_store", lambda location: Flaky(location))
    path = study_file(name="flaky", n_trials=3)
    trials = run.run_study(load_config(path), progress=False)["portrait"].load_study().trials
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and "the bucket went away" in failed[0].user_attrs["fail_reason"]
    assert failed[0].user_attrs["fail_reason"].startswith("storing the trial's images failed")
    assert failed[0].user_attrs["clip_score_values"]  # the render's metrics are kept
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 3
