"""Overnight-proof: kills, trial failures, changed study files, several workers on one study."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from autotune.cli import main
from autotune.config import ConfigError, load_config
from autotune.model import references
from autotune.model import render as pipeline_module
from autotune.results.reader import recommend
from autotune.space import schedulers
from autotune.store.versions import study_name
from autotune.study.run import run_study


def _trials(cfg, url: str | None = None) -> list[optuna.trial.FrozenTrial]:  # type: ignore[no-untyped-def]
    try:
        study = optuna.load_study(study_name=study_name(cfg, "portrait"), storage=url or cfg.default_storage)
    except KeyError:
        return []
    return study.get_trials(deepcopy=False)


def _count(trials: list[optuna.trial.FrozenTrial], state: TrialState) -> int:
    """Trials in ``state``, leaving out repeats that reused a stored setting (they do not count towards n_trials)."""
    return sum(t.state == state and "reused_from" not in t.user_attrs for t in trials)


def _start(path: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "autotune.cli", "study", str(path), "--quiet", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _kill_when(
    proc: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float = 240, may_finish: bool = False
) -> None:
    end = time.monotonic() + timeout
    while not ready():
        if may_finish and proc.poll() == 0:  # it got past the point between two polls, and finished
            return
        assert proc.poll() is None, (proc.returncode, proc.stderr.read().decode() if proc.stderr else "")
        assert time.monotonic() < end, "the study never reached the point to kill it at"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()  # reaped: its pid is gone, as after a real kill -9


@pytest.mark.slow
def test_kill_9_at_several_points_then_resume_keeps_every_completed_trial(study_file: Callable[..., Path]) -> None:
    n = 8  # room for the second kill after the first, however late the first landed on a busy machine
    path = study_file(name="killed", n_trials=n)
    cfg = load_config(path)

    def running_after(n: int) -> Callable[[], bool]:
        def ready() -> bool:  # a trial under way (its worker recorded: not in the first milliseconds)
            trials = _trials(cfg)
            running = [t for t in trials if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
            return _count(trials, TrialState.COMPLETE) >= n and bool(running)

        return ready

    def kill_mid_trial(ready: Callable[[], bool]) -> None:
        """Kill -9 while a trial runs; where it finished between the last look and the kill (the machine
        is shared: it happens), start again and kill again, so that a trial is surely left RUNNING."""
        for _ in range(5):
            _kill_when(_start(path), ready)
            if _count(_trials(cfg), TrialState.RUNNING):
                return
        pytest.fail("no kill landed inside a trial in 5 tries")

    kill_mid_trial(running_after(0))  # during the first trial (the baseline)
    first = _count(_trials(cfg), TrialState.COMPLETE)
    assert first + 2 < n, [(t.number, t.state.name) for t in _trials(cfg)]  # the first kill landed early enough
    kill_mid_trial(running_after(first + 2))  # during a later trial
    second = _count(_trials(cfg), TrialState.COMPLETE)
    assert second >= first + 2
    _kill_when(_start(path), lambda: _count(_trials(cfg), TrialState.COMPLETE) >= n, may_finish=True)  # writing
    out = cfg.output_dir / "recommendations.json"
    if out.exists():  # written whole or not at all
        json.loads(out.read_text())
    finish = subprocess.run([sys.executable, "-m", "autotune.cli", "study", str(path), "--quiet"], capture_output=True)
    assert finish.returncode == 0, finish.stderr.decode()

    trials = _trials(cfg)
    assert _count(trials, TrialState.COMPLETE) == n and _count(trials, TrialState.RUNNING) == 0
    killed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(killed) >= 2 and all(t.user_attrs["interrupted"] for t in killed)
    assert all("is gone" in t.user_attrs["fail_reason"] for t in killed)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    intended = {t.number: repr(sorted((t.params or t.system_attrs.get("fixed_params") or {}).items())) for t in killed}
    times = Counter(intended.values())
    not_retried = [
        (t.number, t.params, t.user_attrs.get("retry_of"))
        for t in killed
        # killed before the sampler drew its setting: nothing to retry, the study draws a new one;
        # an enqueued trial (the baseline, a retry) killed before it drew is retried with its setting
        if intended[t.number] != "[]" and t.number not in retried and times[intended[t.number]] < 2
    ]
    assert not not_retried, (not_retried, [(t.number, t.state.name, t.user_attrs.get("retry_of")) for t in trials])
    assert sum(bool(t.user_attrs.get("baseline")) and t.state == TrialState.COMPLETE for t in trials) == 1
    rendered = [
        t.user_attrs["setting_key"]
        for t in trials
        if t.state == TrialState.COMPLETE and "reused_from" not in t.user_attrs
    ]
    assert len(rendered) == len(set(rendered))  # no setting rendered and counted twice
    assert json.loads(out.read_text())["classes"]["portrait"]["settings_rendered"] == n


def test_a_queued_trial_killed_before_it_drew_its_setting_is_enqueued_again(tmp_path: Path) -> None:
    from autotune.study.ledger import recover

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that is gone
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", directions=["maximize"])
    study.enqueue_trial({"steps": 30}, user_attrs={"baseline": True})
    study.enqueue_trial({"steps": 8})
    for _ in range(2):  # popped, its worker recorded, killed before ``suggest``: no params yet
        trial = study.ask()
        trial.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")
    drawn = study.ask()  # a sampler's trial killed before drawing: nothing to retry
    drawn.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")

    assert recover(study) == 2
    assert recover(study) == 0  # each once
    queued = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    me = f"{socket.gethostname()}:{os.getpid()}"
    assert [(t.system_attrs["fixed_params"], t.user_attrs) for t in queued] == [
        ({"steps": 30}, {"retry_of": 0, "baseline": True, "enqueued_by": me}),  # a baseline stays the baseline
        ({"steps": 8}, {"retry_of": 1, "enqueued_by": me}),
    ]


def _oom(real, *args, **kwargs):  # type: ignore[no-untyped-def]
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def _nan(real, *args, **kwargs):  # type: ignore[no-untyped-def]
    """The real render, with the pipeline putting out NaN (as fp16 overflow does)."""
    nan = lambda p, s, prompts, seeds, h, w: torch.full((len(prompts), 3, h, w), float("nan"))  # noqa: E731
    with pytest.MonkeyPatch.context() as m:
        m.setattr(pipeline_module, "_call", nan)
        return real(*args, **kwargs)


def _scheduler_error(real, *args, **kwargs):  # type: ignore[no-untyped-def]
    """The real render, with the scheduler refusing its config."""

    def build(name, base_config, options=None):  # type: ignore[no-untyped-def]
        raise ValueError(f"{name}: unsupported timestep spacing")

    with pytest.MonkeyPatch.context() as m:
        m.setattr(schedulers, "build", build)
        return real(*args, **kwargs)


FAULTS = {
    "out of memory": (_oom, "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB"),
    "nan image": (_nan, "RenderError: NaN in the rendered image (fp16 overflow?"),
    "scheduler error": (_scheduler_error, "ValueError: "),
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(FAULTS))
def test_injected_fault_fails_the_trial_with_its_reason_and_the_study_completes(
    study_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fault: str
) -> None:
    broken, reason = FAULTS[fault]
    real, free = pipeline_module.generate, pipeline_module.free_memory
    calls = {"n": 0, "freed": 0}

    def second_trial_breaks(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return broken(real, *args, **kwargs) if calls["n"] == 2 else real(*args, **kwargs)

    def counted_free() -> None:
        calls["freed"] += 1
        free()

    cfg = load_config(study_file(name="faulty", n_trials=3))
    monkeypatch.setattr(references, "generate", real)  # references render normally
    monkeypatch.setattr(pipeline_module, "generate", second_trial_breaks)  # trials render through this
    monkeypatch.setattr(pipeline_module, "free_memory", counted_free)
    outcome = run_study(cfg, progress=False)["portrait"]
    failed = outcome.load_study().get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 1 and failed[0].user_attrs["fail_reason"].startswith(reason)
    tb = failed[0].user_attrs["fail_traceback"]  # the whole story stays in the study, not on the console
    assert tb.startswith("Traceback") and "second_trial_breaks" in tb and reason.split(":")[0] in tb
    assert len(outcome.trials) == 3 and calls["freed"] == 1
    err = capsys.readouterr().err
    line = f"autotune: portrait trial {failed[0].number} ({failed[0].user_attrs['setting']}) failed: {reason}"
    failing = [x for x in err.splitlines() if " failed: " in x]
    assert len(failing) == 1 and failing[0].startswith(line) and "Traceback" not in err  # one line, no traceback


@pytest.mark.slow
def test_changed_model_size_is_refused_unless_new_version(study_file: Callable[..., Path]) -> None:
    path = study_file(name="versions", n_trials=1)
    run_study(load_config(path), progress=False)
    path.write_text(path.read_text().replace("height = 32", "height = 48"))
    changed = load_config(path)
    with pytest.raises(ConfigError, match=r"size \[32, 32\] -> \[48, 32\].*pass --new-version to start versions.v2"):
        run_study(changed, progress=False)
    with pytest.raises(ConfigError, match=r"`autotune study --new-version` starts versions\.v2"):
        recommend(changed)  # reading has no --new-version of its own: it names the command that has
    outcome = run_study(changed, progress=False, new_version=True)["portrait"]
    assert outcome.load_study().study_name == "versions.v2.portrait" and len(outcome.trials) == 1
    assert recommend(changed)["portrait"].load_study().study_name == "versions.v2.portrait"  # found without the flag
    path.write_text(path.read_text().replace("n_trials = 1", "n_trials = 2"))  # the space may change: resumes
    assert len(run_study(load_config(path), progress=False)["portrait"].trials) == 2
    fp = recommend(load_config(path))["portrait"].load_study().user_attrs["fingerprint"]
    assert (fp["device"], fp["dtype"], fp["serving"]["batch_size"]) == ("cpu", "float32", 1)
    path.write_text(path.read_text() + "[serving]\nbatch_size = 4\n")  # production's call changes the cost
    with pytest.raises(ConfigError, match=r"serving\.batch_size 1 -> 4"):
        run_study(load_config(path), progress=False)


def test_an_edited_baseline_is_refused_naming_baseline_steps_unless_new_version(
    study_file: Callable[..., Path],
) -> None:
    path = study_file(name="based", n_trials=1)
    run_study(load_config(path), progress=False, decide=False)
    text = path.read_text()
    path.write_text(
        text.replace(
            '[baseline]\nscheduler = "dpmpp_2m_karras"\nsteps = 8',
            '[baseline]\nscheduler = "dpmpp_2m_karras"\nsteps = 6',
        )
    )
    with pytest.raises(ConfigError, match=r"changed since the study ran \(baseline\.steps 8 -> 6\)"):
        run_study(load_config(path), progress=False, decide=False)
    with pytest.raises(ConfigError, match=r"baseline\.steps 8 -> 6"):
        recommend(load_config(path))  # what the study compared with is not what the file now says: no verdict
    out = run_study(load_config(path), progress=False, decide=False, new_version=True)["portrait"]
    assert out.study_name == "based.v2.portrait" and out.trials[0].params["steps"] == 6


def test_a_retrained_local_model_is_refused_unless_new_version(tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    from autotune.testing.tiny import tiny_pipeline_path

    shutil.copytree(tiny_pipeline_path("tiny"), tmp_path / "ours")
    path = tmp_path / "ours.toml"
    path.write_text(
        '[model]\nid = "./ours"\ndevice = "cpu"\nheight = 32\nwidth = 32\n[search]\nn_trials = 1\nseeds = [0]\n'
        '[baseline]\nsteps = 8\n[reference]\nsteps = 12\n[classes.portrait]\nprompts = ["an old fisherman"]\n'
    )
    run_study(load_config(path), progress=False, decide=False, check_reference=False)
    weights = next((tmp_path / "ours" / "unet").glob("*.safetensors"))
    state = load_file(weights)
    name = next(iter(state))
    state[name] = state[name] * 1.01  # trained some more, saved in place under the same name
    save_file(state, weights)
    with pytest.raises(ConfigError, match=r"changed since the study ran \(weights '[0-9a-f]{16}' -> '[0-9a-f]{16}'\)"):
        run_study(load_config(path), progress=False, decide=False, check_reference=False)
    out = run_study(load_config(path), progress=False, decide=False, check_reference=False, new_version=True)
    assert out["portrait"].study_name == "ours.v2.portrait"


@pytest.mark.slow
def test_an_edited_prompt_list_is_refused_naming_its_class_and_a_new_class_is_not(
    study_file: Callable[..., Path],
) -> None:
    path = study_file(name="prompts", n_trials=1)
    study = run_study(load_config(path), progress=False)["portrait"].load_study()
    old = {k: v for k, v in study.user_attrs["fingerprint"].items() if k != "prompts"}
    study.set_user_attr("fingerprint", old)  # a study fingerprinted before prompts were: its "prompts" attr counts
    text = path.read_text()
    path.write_text(text + '[classes.landscape]\nprompts = ["a misty mountain lake at dawn"]\n')
    assert set(run_study(load_config(path), progress=False)) == {"portrait", "landscape"}  # a new study beside
    path.write_text(path.read_text().replace('fisherman"]', 'fisherman", "a red apple"]'))
    with pytest.raises(ConfigError, match=r"\(classes\.portrait\.prompts\[1\] \(none\) -> 'a red apple'\)"):
        run_study(load_config(path), progress=False)
    assert run_study(load_config(path), progress=False, new_version=True)["portrait"].load_study().study_name == (
        "prompts.v2.portrait"
    )


@pytest.mark.slow
def test_workers_option_runs_helpers_and_writes_the_outputs_once(
    study_file: Callable[..., Path], capfd: pytest.CaptureFixture[str]
) -> None:
    path = study_file(name="helped", n_trials=4)
    threads = torch.get_num_threads()
    assert main(["study", str(path), "--quiet", "--workers", "2"]) == 0
    assert torch.get_num_threads() == threads  # the cores were shared for the run, then given back
    err = capfd.readouterr().err
    assert "Traceback" not in err and "exited with code" not in err, err
    trials = _trials(load_config(path))
    assert _count(trials, TrialState.COMPLETE) == 4 and _count(trials, TrialState.RUNNING) == 0
    assert json.loads((path.parent / "helped" / "recommendations.json").read_text())["classes"]["portrait"]


def _four_workers(path: Path, storage: str) -> list[str]:
    """Four `autotune study --worker` processes started at once, as on four machines; their stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # four CPU processes on a small machine: a thread each
    cmd = [sys.executable, "-m", "autotune.cli", "study", str(path), "--quiet", "--storage", storage, "--worker"]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, env=env) for _ in range(4)]
    errors = [p.communicate(timeout=600)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    return errors


@pytest.mark.slow
def test_four_workers_share_one_study(study_file: Callable[..., Path], shared_url: str) -> None:
    path = study_file(name="shared", n_trials=12)
    errors = _four_workers(path, shared_url)
    assert not any("database is locked" in e or "Traceback" in e for e in errors), errors
    trials = _trials(load_config(path), shared_url)
    assert _count(trials, TrialState.COMPLETE) == 12
    assert _count(trials, TrialState.FAIL) == 0 and _count(trials, TrialState.RUNNING) == 0
    assert len({t.user_attrs["worker"] for t in trials}) >= 2  # the trials were shared out
    assert sum(bool(t.user_attrs.get("baseline")) for t in trials) == 1
    rendered = [t for t in trials if t.state == TrialState.COMPLETE and "reused_from" not in t.user_attrs]
    keys = Counter(t.user_attrs["setting_key"] for t in rendered)
    assert max(keys.values()) == 1  # none rendered twice
    shown = subprocess.run(
        [sys.executable, "-m", "autotune.cli", "recommend", str(path), "--storage", shared_url, "--format", "json"],
        capture_output=True,
        text=True,
    )
    assert json.loads(shown.stdout)["classes"]["portrait"]["settings_rendered"] == 12
