"""Shared fixtures: one tiny pipeline per session, a study file factory, one finished study for the tests
that only read one, and storages over every backend (as ``optuna.testing.storages`` keeps Optuna's)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Built models and any torch hub cache go to a throwaway folder, never to the user's home.
_CACHE = tempfile.mkdtemp(prefix="autotune-test-cache-")
os.environ.setdefault("AUTOTUNE_CACHE", _CACHE)
os.environ.setdefault("TORCH_HOME", os.path.join(_CACHE, "torch"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: one torch thread each
    os.environ.setdefault("OMP_NUM_THREADS", "1")

SMALL_STUDY = """
name = "{name}"
[model]
id = "tiny"
device = "cpu"
height = 32
width = 32
[search]
steps = [2, 8]
schedulers = ["euler", "dpmpp_2m_karras", "ddim"]
guidance = [1.0, 9.0]
n_trials = {n_trials}
seeds = [0]
[baseline]
scheduler = "dpmpp_2m_karras"
steps = 8
guidance = 7.5
[reference]
scheduler = "dpmpp_2m_karras"
steps = 20
guidance = 7.5
[recommend]                # a small decision stage: tests run many studies (test_study races)
confirm_seeds = [1000, 1001]
finalists = 1
race_seeds = 2
race_budget = 0
broken_share = 0.5         # what a few prompts x seeds can show (an exact bound: 5 % needs about 60 clean images)
{classes}
"""
ONE_CLASS = '[classes.portrait]\nprompts = ["a studio portrait of an old fisherman"]\n'
TWO_CLASSES = ONE_CLASS + '[classes.landscape]\nprompts = ["a misty mountain lake at dawn"]\n'


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def flow():  # type: ignore[no-untyped-def]
    """The shipped flow micro model (Flux layout, true CFG), loaded once for the whole session (CPU)."""
    from autotune.config import ModelConfig
    from autotune.micro.train_flow import SEQUENCE
    from autotune.model.pipeline import Calls, load_pipeline

    return load_pipeline(ModelConfig(id="flow", device="cpu"), calls=Calls({"max_sequence_length": SEQUENCE}))


@pytest.fixture(scope="session")
def tiny():  # type: ignore[no-untyped-def]
    """The tiny SD pipeline, loaded once for the whole session (float32, CPU)."""
    from autotune.config import ModelConfig
    from autotune.model.pipeline import load_pipeline

    return load_pipeline(ModelConfig(device="cpu"))


def timed_by_evaluations(p, settings, prompt, seed, height, width, batch_size=1, repeats=3):  # type: ignore[no-untyped-def]
    """``time_serving`` as the setting's model evaluations (1 ms each), every call alike."""
    return [1e-3 * settings.steps * (1 + settings.guided_share())] * repeats


@pytest.fixture
def seconds_by_evaluations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Serving calls "timed" as the setting's model evaluations (1 ms each): for tests whose verdict follows
    the cost (which settings are cheaper, where the walk goes), so that no verdict hangs on the machine's
    timing noise. The timing itself is tested on its own (test_pipeline, the benchmarks)."""
    from autotune.model import render

    monkeypatch.setattr(render, "time_serving", timed_by_evaluations)


@pytest.fixture
def study_file(tmp_path: Path) -> Callable[..., Path]:
    """Write a small study file into a fresh folder; its database and outputs land beside it."""

    def write(name: str = "small", n_trials: int = 3, classes: str = ONE_CLASS, extra: str = "") -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(SMALL_STUDY.format(name=name, n_trials=n_trials, classes=classes) + extra)
        return path

    return write


# The finished study: seeded, its serving calls "timed" as their model evaluations, tolerances a tiny random
# model's images can pass on a few images, and the optimiser alone proposing (front_share 1) so that guidance
# cutoffs are tried: its picks are cheaper settings, not the baseline, and `landscape`'s, with its own negative
# prompt, stops guidance part-way (Euler [AYS sigmas, trailing] 4 steps, guidance on 3 of them).
FINISHED_STUDY = (
    SMALL_STUDY.format(
        name="finished",
        n_trials=8,
        classes=ONE_CLASS.replace('fisherman"', 'fisherman", "a portrait of a young girl"')
        + '[classes.landscape]\nprompts = ["a misty mountain lake at dawn", "a desert canyon at noon"]\n'
        + 'negative_prompt = "blurry, lowres"\n',
    )
    .replace("seeds = [0]\n", "seeds = [0, 1]\nseed = 3\nfront_share = 1.0\nguidance_cutoff = [0.5, 1.0]\n")
    .replace(
        "confirm_seeds = [1000, 1001]",
        "confirm_seeds = [1000, 1001, 1002, 1003]\nclip_tolerance = 5.0\nlpips_tolerance = 3.0",
    )
)


@pytest.fixture(scope="session")
def finished_study(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A finished two-class tiny study with every output written, shared read-only by the session
    (:data:`FINISHED_STUDY`: both classes pick a cheaper setting; ``landscape``'s stops guidance part-way).

    Returns ``(cfg, outcomes)``; the study file, database and ``finished/`` outputs lie in one folder.
    """
    from autotune.config import load_config
    from autotune.model import render
    from autotune.report.table import write_all
    from autotune.study.run import run_study

    path = tmp_path_factory.mktemp("finished") / "finished.toml"
    path.write_text(FINISHED_STUDY)
    cfg = load_config(path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(render, "time_serving", timed_by_evaluations)
        outcomes = run_study(cfg, progress=False)
    write_all(outcomes)
    return cfg, outcomes


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database on the local server (127.0.0.1:5432, trust auth), dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    name = f"autotune_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True, connect_timeout=5
        )
    except psycopg.OperationalError as e:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {e}")
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@contextlib.contextmanager
def storage_url(mode: str, folder: Path) -> Iterator[str]:
    """A fresh storage URL of ``mode`` ("sqlite" or "postgresql") that several processes can share."""
    if mode == "sqlite":
        yield f"sqlite:///{folder / f'{uuid.uuid4().hex[:8]}.db'}"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture(params=["inmemory", "sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """An Optuna storage of each backend, fresh per test, opened as a worker opens it."""
    import optuna

    from autotune.store.storage import open_storage

    if request.param == "inmemory":
        yield optuna.storages.InMemoryStorage()
        return
    with storage_url(request.param, tmp_path) as url:
        rdb = open_storage(url, workers=True)
        yield rdb
        rdb.engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A storage URL of each backend processes can share, fresh per test."""
    with storage_url(request.param, tmp_path) as url:
        yield url
