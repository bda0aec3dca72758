"""A night that ends when it was told to: --timeout bounds the whole command, SIGINT and SIGTERM end it
cleanly at any moment (imports and start-up included), and a run that produced nothing says so."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import optuna
import pytest

from autotune.config import load_config
from autotune.store.versions import study_name
from autotune.study.run import run_study


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "autotune.cli", "study", *args, "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # SIGABRT prints where a hung run is (see _stopped)
    )


def _stopped(proc: subprocess.Popen[str], limit: float = 300) -> str:
    """The stderr of ``proc`` once it has ended after a signal; a run that is still going after ``limit``
    seconds fails the test with every thread's stack as it stood."""
    try:
        return proc.communicate(timeout=limit)[1]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        pytest.fail(f"still running {limit:.0f} s after the signal; where it was:\n{proc.communicate()[1][-8000:]}")


def _states(path: Path) -> list[str]:
    cfg = load_config(path)
    url = cfg.default_storage
    if not (path.parent / f"{cfg.name}.db").exists():
        return []
    return [
        t.state.name
        for c in cfg.classes
        if study_name(cfg, c) in optuna.get_all_study_names(url)
        for t in optuna.load_study(study_name=study_name(cfg, c), storage=url).trials
    ]


STOPPED = ("stopped: interrupted (Ctrl-C)", "stopped: interrupted (SIGTERM)")  # a resumed run stopped before it
# opened its studies leaves the state of the run before it


def _decision(path: Path) -> dict[str, str]:
    cfg = load_config(path)
    out = cfg.output_dir / "recommendations.json"
    return {c: d["decision"]["state"] for c, d in json.loads(out.read_text())["classes"].items()}


@pytest.mark.slow
def test_sigint_and_sigterm_at_any_moment_end_cleanly_with_no_trial_left_running_or_waiting(
    study_file: Callable[..., Path],
) -> None:
    """0.5 and 2.5 s after the start fall in the imports (torch's, where a Ctrl-C once crashed the
    interpreter: now it exits there and then); 0 and 3 s after the studies opened, in the start-up or the
    first trials (the outputs are written, and SQLAlchemy's lazy imports once broke them). Each moment
    fresh and resumed, the two signals taking turns (each meets each kind of run in both phases)."""
    fresh = study_file(name="fresh", n_trials=4)
    resumed = study_file(name="resumed", n_trials=3)
    done = subprocess.run([sys.executable, "-m", "autotune.cli", "study", str(resumed), "--quiet"], capture_output=True)
    assert done.returncode == 0, done.stderr
    seen = []
    moments = (("start", 0.5), ("start", 2.5), ("open", 0.0), ("open", 3.0))  # after the command started, or
    for i, (anchor, after) in enumerate(moments):  # after its studies opened ("deciding" on disk)
        for j, (path, extra) in enumerate(((fresh, ()), (resumed, ("--n-trials", "10")))):
            for sig, code in [((signal.SIGINT, 130), (signal.SIGTERM, 143))[(i + j) % 2]]:
                if path == fresh:  # fresh each time: no database, no outputs
                    shutil.rmtree(path.parent / "fresh", ignore_errors=True)
                    (path.parent / "fresh.db").unlink(missing_ok=True)
                on_disk = path.parent / path.stem / "recommendations.json"
                on_disk.unlink(missing_ok=True)  # written again once the studies are open
                proc = _cli(str(path), *extra)
                while anchor == "open" and not on_disk.exists() and proc.poll() is None:
                    time.sleep(0.02)
                time.sleep(after)
                proc.send_signal(sig)
                err = _stopped(proc)
                if proc.returncode == 0:  # finished first: nothing to stop
                    continue
                assert proc.returncode == code, (after, sig, err)
                assert "Traceback" not in err and err.strip().splitlines()[-1] == (
                    "autotune: interrupted (Ctrl-C)" if sig == signal.SIGINT else "autotune: interrupted (SIGTERM)"
                ), err
                states = _states(path)
                assert "RUNNING" not in states and "WAITING" not in states, (after, sig, states)
                if states and on_disk.exists():  # what stopped them
                    assert set(_decision(path).values()) <= {"settled", *STOPPED}, (after, sig, err)
                assert anchor == "start" or states, (after, sig, err)  # stopped after the studies opened
                seen.append((anchor, path.name))
    assert len(set(seen)) == 4  # both kinds of run were stopped in both phases, not only finished
    resume = subprocess.run([sys.executable, "-m", "autotune.cli", "study", str(fresh), "--quiet"], capture_output=True)
    assert resume.returncode == 0, resume.stderr  # what the signals left resumes to the end
    assert _decision(fresh) == {"portrait": "settled"}


@pytest.mark.slow
def test_a_time_limit_inside_the_start_up_stops_there_says_why_and_exits_1(
    study_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stepped clock: every render of the start-up (the seed-to-seed references, the convergence check)
    takes 10 s of it. With 15 s, no trial starts; nothing is left WAITING; the state is on disk."""
    from autotune.cli import main
    from autotune.model.references import ReferenceStore
    from autotune.study import run

    clock = {"t": 1000.0}
    real = ReferenceStore.images

    def ten_seconds(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        clock["t"] += 10
        return real(self, *args, **kwargs)

    monkeypatch.setattr(run, "now", lambda: clock["t"])
    monkeypatch.setattr(ReferenceStore, "images", ten_seconds)
    path = study_file(name="late", n_trials=3)
    out = run_study(load_config(path), progress=False, timeout=15)["portrait"]
    assert clock["t"] <= 1000 + 15 + 10  # the render that began in time finished; no other began
    assert out.recommendation is None and out.decision_state == "stopped: the time limit"
    assert _states(path) == ["FAIL"]  # the queued baseline withdrawn, not left WAITING
    trial = optuna.load_study(study_name="late.portrait", storage=load_config(path).default_storage).trials[0]
    assert trial.user_attrs["fail_reason"] == "withdrawn: the time limit before it began"
    monkeypatch.undo()
    capsys.readouterr()  # the command's deadline counts from its start: past before the first render
    assert main(["study", str(path), "--quiet", "--timeout", "0.001"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    said = "autotune: error: nothing recommended (classes.portrait: stopped: the time limit; the baseline failed "
    assert (
        err[-1]
        == said + "(withdrawn: the time limit before it began), not for its setting: the next run renders it again)"
    )
    assert _decision(path) == {"portrait": "stopped: the time limit"}
    resumed = run_study(load_config(path), progress=False)["portrait"]  # the withdrawn baseline is queued again
    assert resumed.recommendation is not None and resumed.decision_state == "settled"
    assert resumed.recommendation.baseline.number != 0


@pytest.mark.slow
def test_a_live_run_reads_as_deciding_and_a_killed_one_as_interrupted(study_file: Callable[..., Path]) -> None:
    from autotune.results.reader import recommend

    path = study_file(name="live", n_trials=3)
    cfg = load_config(path)
    seen: list[str] = []
    run_study(cfg, progress=False, started=lambda o: seen.append(o["portrait"].decision_state))
    assert seen == ["deciding"]  # what the on-disk recommendations.json says from the start
    study = optuna.load_study(study_name="live.portrait", storage=cfg.default_storage)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = __import__("socket").gethostname()
    study.set_user_attr("decision", {"state": "deciding", "by": f"{host}:{dead.stdout.strip()}"})
    assert recommend(cfg)["portrait"].decision_state == "interrupted"  # its process is gone: kill -9


def test_a_changed_prompt_is_named_by_its_entry_in_one_short_line(tmp_path: Path) -> None:
    from autotune.config import ConfigError
    from autotune.config.resolve import resolve
    from autotune.space import schedulers
    from autotune.space.families import FAMILIES
    from autotune.store.versions import find_version, fingerprint

    demo = Path(__file__).parents[1] / "studies" / "demo.toml"
    path = tmp_path / "demo.toml"
    path.write_text(demo.read_text())
    cfg = load_config(path)
    stored = {study_name(cfg, c): {"fingerprint": fingerprint(resolve(cfg, FAMILIES["sd"], schedulers.names()), c)}
              for c in cfg.classes}  # fmt: skip
    old = cfg.classes["thin"][18]
    assert len(cfg.classes["thin"]) == 20
    path.write_text(demo.read_text().replace(f'"{old}"', '"a thin red letter Q on white"'))
    with pytest.raises(ConfigError) as refused:
        find_version(load_config(path), stored, stored.__getitem__)
    said = str(refused.value)
    assert f"(classes.thin.prompts[18] {old!r} -> 'a thin red letter Q on white')" in said, said
    assert len(said) - len(str(path)) < 300 and "\n" not in said, said  # the file's path as the user typed it


def test_the_held_out_prompts_are_fingerprinted_and_a_study_stored_before_the_draw_keeps_the_last_ones(
    tmp_path: Path,
) -> None:
    from autotune.config import ConfigError
    from autotune.config.resolve import resolve
    from autotune.decision.panel import Panel
    from autotune.space import schedulers
    from autotune.space.families import FAMILIES
    from autotune.store.versions import find_version, fingerprint

    demo = Path(__file__).parents[1] / "studies" / "demo.toml"
    path = tmp_path / "demo.toml"
    path.write_text(demo.read_text())
    cfg = resolve(load_config(path), FAMILIES["sd"], schedulers.names())
    stored = {study_name(cfg, c): {"fingerprint": fingerprint(cfg, c)} for c in cfg.classes}
    held = Panel.of(20, cfg.search, cfg.recommend).held_prompts
    assert stored["demo.thin"]["fingerprint"]["held_out"] == list(held) != list(range(12, 20))
    path.write_text(demo.read_text().replace("holdout_seed = 0 ", "holdout_seed = 5 "))
    with pytest.raises(ConfigError, match=r"\(classes\.thin\.held_out \[.*\] -> \[.*\], classes\.bold\.held_out"):
        find_version(load_config(path), stored, stored.__getitem__)  # confirmation images on other prompts
    before = {n: {"fingerprint": {k: v for k, v in a["fingerprint"].items() if k != "held_out"}}
              for n, a in stored.items()}  # fmt: skip
    version, resolved = find_version(load_config(path), before, before.__getitem__)
    assert version == 1 and Panel.of(20, resolved.search, resolved.recommend).held_prompts == tuple(range(12, 20))


def test_gates_do_not_pass_on_a_study_without_a_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A study stopped before its baseline completed: `study`, `recommend`, `validate` and `export` all
    exit 1 and say so (a CI gate fails); a recommendations file of the wrong shape is one line, exit 2."""
    from autotune.cli import main
    from tests.conftest import ONE_CLASS, SMALL_STUDY

    (tmp_path / "my studies").mkdir()  # a space in the path: the hint quotes it
    path = tmp_path / "my studies" / "empty.toml"
    path.write_text(SMALL_STUDY.format(name="empty", n_trials=3, classes=ONE_CLASS))
    assert main(["recommend", str(path)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"run `autotune study '{path}'` first")
    assert main(["study", str(path), "--quiet", "--timeout", "0.001"]) == 1
    held_out = path.parent / "held_out.txt"
    held_out.write_text("a studio portrait of a young sailor\n")
    capsys.readouterr()
    assert main(["validate", str(path), "--prompts", str(held_out)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL nothing validated: ") and "(classes.portrait: stopped: the time limit)" in out, out
    report = json.loads((load_config(path).output_dir / "validation.json").read_text())
    assert report["passed"] is False and report["unrecommended"] == {"portrait": "stopped: the time limit"}
    for fmt in ("diffusers", "a1111"):
        assert main(["export", str(path), "--format", fmt]) == 1
        err = capsys.readouterr().err
        assert err == "autotune: error: nothing recommended (classes.portrait: stopped: the time limit)\n", err
    assert main(["recommend", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("autotune: error: nothing recommended (classes.portrait: stopped: the time limit; the"), err
    recs = load_config(path).output_dir / "recommendations.json"
    recs.write_text(json.dumps([json.loads(recs.read_text())]))
    assert main(["export", str(path), "--format", "diffusers"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("(the file: expected an object, got an array)\n"), err


def test_a_one_prompt_class_says_what_its_bound_speaks_for() -> None:
    from autotune.results.notes import prompts_note

    note = prompts_note(1, [(0, 0), (0, 1)], confirm=[(0, 9)])
    assert "degrees of freedom" not in note and "speaks for that prompt, not for new prompts of the class" in note
    searched = [(p, s) for p in range(12) for s in (0, 1)]
    drawn = prompts_note(20, searched, confirm=[(18, 9), (4, 9), (7, 9), (4, 10)])  # a draw: the note names them
    assert "12 of the class's 20 prompts" in drawn and "confirmed on 3 prompts (nos. 5, 8, 19 of the class's)" in drawn


def _resent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, tuple[int, int]]]:
    """The signals the handler sends again, as (delay, (pid, signal)): its timer, recorded instead of started."""
    from autotune import process

    sent: list[tuple[float, tuple[int, int]]] = []

    class Timer:
        def __init__(self, delay: float, fn: object, args: tuple[int, int]) -> None:
            sent.append((delay, args))

        def start(self) -> None:
            pass

    monkeypatch.setattr(process.threading, "Timer", Timer)
    return sent


def test_a_signal_inside_an_import_is_sent_again_after_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Raising inside a lazy import (SQLAlchemy's, once: "module 'sqlalchemy.orm.loading' has no attribute
    ...") leaves the module half imported for the code that writes the outputs; the handler sends the
    signal again a moment later instead, and raises at once anywhere else."""
    import importlib

    from autotune import process

    sent = _resent(monkeypatch)
    (tmp_path / "half_imported.py").write_text(
        "import sys\nfrom autotune import process\n"
        "INSIDE = process.importing(sys._getframe())\n"
        "process._handler(15, sys._getframe())  # a SIGTERM landing here\nDONE = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("half_imported")
    assert module.INSIDE and module.DONE  # the import ran to its end
    assert sent == [(process._AGAIN, (os.getpid(), 15))]
    assert not process.importing(sys._getframe())
    with pytest.raises(process.Interrupted) as stopped:
        process._handler(15, sys._getframe())
    assert stopped.value.exit_code == 143 and stopped.value.why == "interrupted (SIGTERM)"


def test_a_signal_inside_a_finalizer_is_sent_again_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Raised inside a weak-reference callback or a ``__del__``, the interpreter prints "Exception ignored
    in ..." with a traceback and drops the stop (CI, stop 53: a SIGHUP landed in a WeakKeyDictionary's
    callback as the collector freed a key). The handler sends it again a moment later instead."""
    import gc
    import weakref

    from autotune import process

    sent = _resent(monkeypatch)
    seen: list[tuple[str, bool]] = []

    def landing(frame: FrameType, event: str, arg: object) -> None:  # the signal lands as a finalizer starts
        if event == "call" and frame.f_code.co_name in ("__del__", "remove"):
            seen.append((frame.f_code.co_name, process.swallowed(frame)))
            process._handler(1, frame)  # SIGHUP

    class Key:
        def __del__(self) -> None:
            pass

    keys: weakref.WeakKeyDictionary[Key, int] = weakref.WeakKeyDictionary()
    key = Key()
    keys[key] = 1
    gc.collect()  # nothing else left to free: only the key's finalizers run below
    gc.disable()
    sys.setprofile(landing)
    try:
        del key  # freed at once (its last reference), as the collector would free it
    finally:
        sys.setprofile(None)
        gc.enable()
    assert sorted(seen) == [("__del__", True), ("remove", True)] and len(keys) == 0
    assert sent == [(process._AGAIN, (os.getpid(), 1))] * 2
    assert not process.swallowed(sys._getframe())
    with pytest.raises(process.Interrupted):
        process._handler(1, sys._getframe())


def test_a_signal_inside_a_database_call_is_sent_again_after_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Raised inside SQLAlchemy, a stop invalidates the connection mid-statement, and closing its cursor
    then logs "Error closing cursor" with a traceback (CI, stop 56: a Ctrl-C as a trial was read). The
    handler sends it again a moment later, once the call has returned; a call still hung after
    ``_PATIENCE`` seconds is interrupted all the same."""
    import sqlalchemy

    from autotune import process

    sent = _resent(monkeypatch)
    engine = sqlalchemy.create_engine("sqlite://")
    landed: list[bool] = []

    @sqlalchemy.event.listens_for(engine, "before_cursor_execute")
    def landing(*args: object) -> None:  # the signal lands as the statement starts
        landed.append(process.in_database(sys._getframe()))
        process._handler(2, sys._getframe())

    with engine.connect() as connection:
        assert connection.execute(sqlalchemy.text("select 1")).scalar() == 1  # the call ran to its end
    assert landed == [True] and sent == [(process._AGAIN, (os.getpid(), 2))]
    assert not process.in_database(sys._getframe())
    with pytest.raises(process.Interrupted):  # sent again, it lands outside: raised
        process._handler(2, sys._getframe())
    clock = iter([0.0, 1.0, 2.0, process._PATIENCE])  # held 1 s into a long call; sent again, still in it
    monkeypatch.setattr(process.time, "monotonic", lambda: next(clock))  # _PATIENCE s after it first landed
    with pytest.raises(process.Interrupted), engine.connect() as connection:
        connection.execute(sqlalchemy.text("select 1"))
        connection.execute(sqlalchemy.text("select 2"))
    assert landed == [True, True, True] and len(sent) == 2


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_in_pythons_teardown_leaves_the_exit_code_of_the_finished_work(sig: int) -> None:
    """Python drops its signal handlers while it tears down (a second or more, with torch loaded): a
    Ctrl-C there ended a finished run with -2 and no word (CI, stop 38). Sent from an object freed in the
    teardown; the command, which ran to its end, exits 0. The same as one landing as ``main`` returns: said."""
    teardown = (
        "import os, signal, threading, time\nfrom autotune.process import install, run_main\n"
        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()  # as torch's, alive meanwhile\n"
        "class Late:\n    def __del__(self):\n"
        f"        os.kill(os.getpid(), {int(sig)}); time.sleep(0.2)\n"
        "late = Late()\ninstall()\nrun_main(lambda: 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", teardown], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    returning = (
        "import os\nfrom autotune.process import install, run_main\ninstall()\n"
        f"run_main(lambda: os.kill(os.getpid(), {int(sig)}) or 0)\n"
    )
    said = subprocess.run([sys.executable, "-c", returning], capture_output=True, text=True, timeout=60)
    why = "interrupted (Ctrl-C)" if sig == signal.SIGINT else "interrupted (SIGTERM)"
    assert (said.returncode, said.stderr) == (128 + sig, f"autotune: {why}\n")


def test_a_signal_while_the_studies_are_created_leaves_nothing_queued_and_no_database(
    study_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between a study's creation (its baseline queued) and the moment the run can withdraw it: the
    studies it created in which nothing began are deleted, then the database it created."""
    from autotune.study import run

    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "open_store", interrupted)  # the step right after the studies are created
    path = study_file(name="gap")
    with pytest.raises(KeyboardInterrupt):
        run_study(load_config(path), progress=False)
    assert sorted(p.name for p in path.parent.iterdir()) == ["gap.toml"]


def _helpers(path: Path) -> list[int]:
    """Pids of the helper workers (``python -m autotune.study.worker``) running this study file."""
    out = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not a process
            continue
        if b"autotune.study.worker" in cmd and str(path).encode() in cmd:
            out.append(int(proc.name))
    return out


def _until(check: Callable[[], bool], limit: float = 120.0) -> bool:
    end = time.monotonic() + limit
    while not check():
        if time.monotonic() > end:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads the helpers from /proc")
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGKILL, -9)])
def test_helper_workers_stop_with_their_parent_however_it_stops(
    study_file: Callable[..., Path], sig: int, code: int
) -> None:
    """A signal to the parent alone (a scheduler's SIGTERM, a dropped ssh session's SIGHUP, kill -9), not
    to its process group as Ctrl-C: the helpers stop too, and none is left adding trials to the study."""
    path = study_file(name="helpers", n_trials=400)  # far more than the run reaches before the signal
    proc = _cli(str(path), "--workers", "2")
    assert _until(lambda: bool(_helpers(path)) or proc.poll() is not None), "no helper started"
    on_disk = path.parent / "helpers" / "recommendations.json"
    assert _until(lambda: on_disk.exists() or proc.poll() is not None)  # the studies are open, trials under way
    assert proc.poll() is None and _helpers(path)
    proc.send_signal(sig)
    err = _stopped(proc)
    assert proc.returncode == code, err
    if sig != signal.SIGKILL:
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("autotune: interrupted ("), err
    assert _until(lambda: not _helpers(path)), "a helper outlived its parent"
    if sig != signal.SIGKILL:  # (kill -9 leaves the parent's own trial RUNNING: the next run recovers it)
        assert {"RUNNING", "WAITING"}.isdisjoint(_states(path))


def test_ten_failures_in_a_row_stop_the_run_and_still_write_its_outputs_saying_why(
    study_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from autotune.cli import main
    from autotune.model.evaluate import Evaluator

    real = Evaluator.evaluate

    def broken(self, settings, prompts, seeds, timed=True):  # type: ignore[no-untyped-def]
        if (settings.scheduler, settings.guidance) != ("dpmpp_2m_karras", 7.5) or settings.steps < 8:
            # every setting but the baseline (and the reference): a scheduler error, say
            raise RuntimeError("scheduler error (for the test)")
        return real(self, settings, prompts, seeds, timed)

    monkeypatch.setattr(Evaluator, "evaluate", broken)
    path = study_file(name="failing", n_trials=30)
    path.write_text(path.read_text().replace("seeds = [0]", "seeds = [0]\nseed = 0"))
    code = main(["study", str(path), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("autotune: error: 10 trials in a row failed; the last: "), err
    out = path.parent / "failing"
    data = json.loads((out / "recommendations.json").read_text())["classes"]["portrait"]
    assert data["decision"]["state"].startswith("stopped: 10 trials in a row failed"), data["decision"]
    assert data["trial"] == data["baseline"]["trial"] == 0  # the baseline stands, and says why it stopped
    assert (out / "report.html").exists() and (out / "pareto_portrait.csv").exists()
    assert {"RUNNING", "WAITING"}.isdisjoint(_states(path))


def test_a_baseline_interrupted_again_and_again_is_rendered_by_the_next_run(
    study_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from autotune.model.evaluate import Evaluator
    from autotune.process import Interrupted

    real = Evaluator.evaluate

    def stopped(self, settings, prompts, seeds, timed=True):  # type: ignore[no-untyped-def]
        if (settings.scheduler, settings.steps) == ("dpmpp_2m_karras", 8):  # the baseline: a signal mid-render
            raise Interrupted(signal.SIGTERM)
        return real(self, settings, prompts, seeds, timed)

    cfg = load_config(study_file(name="again", n_trials=3))
    with monkeypatch.context() as m:
        m.setattr(Evaluator, "evaluate", stopped)
        for _ in range(3):  # more often than any other setting is retried
            with pytest.raises(KeyboardInterrupt):
                run_study(cfg, progress=False)
    outcomes = run_study(cfg, progress=False)
    assert outcomes["portrait"].recommendation is not None  # the baseline rendered at last
    assert {"RUNNING", "WAITING"}.isdisjoint(_states(cfg.path))


def test_a_baseline_whose_images_could_not_be_stored_is_rendered_again_and_the_line_says_so(
    study_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from autotune.cli import main
    from autotune.study.trials import TrialRunner

    real = TrialRunner._upload

    def full(self, trial, images):  # type: ignore[no-untyped-def]
        if trial.number == 0:  # the baseline's images meet an artifact store that does not answer, for a while
            raise ConnectionError("the artifact store did not answer")
        return real(self, trial, images)

    path = study_file(name="stored", n_trials=2)
    with monkeypatch.context() as m:
        m.setattr(TrialRunner, "_upload", full)
        assert main(["study", str(path), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "the baseline failed (storing the trial's images failed" in err[-1], err  # after each trial's own line
    assert err[-1].endswith("not for its setting: the next run renders it again)"), err  # after its state
    assert main(["study", str(path), "--quiet"]) == 0  # space freed: the baseline and the rest render
    data = json.loads((path.parent / "stored" / "recommendations.json").read_text())["classes"]["portrait"]
    assert data["baseline"]["trial"] != 0  # a retry of trial 0, whose images could not be stored


def test_an_artifacts_path_that_is_a_file_is_refused_before_the_first_trial(
    study_file: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from autotune.cli import main

    path = study_file(name="afile", n_trials=2)
    (path.parent / "images").write_text("not a folder")
    assert main(["study", str(path), "--quiet", "--artifacts", str(path.parent / "images")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file; expected a folder (or s3://) for the trial images" in err[0], err
    assert not (path.parent / "afile.db").exists() and not (path.parent / "afile").exists()  # nothing written


def test_a_sibling_worker_of_this_machine_that_died_has_its_trial_failed_at_once(
    study_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes on one study, one killed -9 mid-trial: the survivor fails that trial (and queues it
    again) as it goes, instead of finishing with it RUNNING for the next run to find."""
    import socket

    from autotune.study.decide import ClassRun

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that is gone: the sibling's
    real, stray = ClassRun.step, {}

    def step(self):  # type: ignore[no-untyped-def]
        if not stray:  # the sibling's trial, RUNNING under its (dead) worker id
            t = self.study.ask()
            self.study._storage.set_trial_user_attr(t._trial_id, "worker", f"{socket.gethostname()}:{dead.pid}")
            stray["number"] = t.number
        return real(self)

    monkeypatch.setattr(ClassRun, "step", step)
    cfg = load_config(study_file(name="sibling", n_trials=3))
    study = run_study(cfg, progress=False)["portrait"].load_study()
    t = study.trials[stray["number"]]
    assert (
        t.state.name == "FAIL"
        and t.user_attrs["fail_reason"] == f"interrupted: its worker {socket.gethostname()}:{dead.pid} is gone"
    )
    assert {"RUNNING", "WAITING"}.isdisjoint(_states(cfg.path))


def test_what_counts_as_a_failure_to_write_however_optuna_and_sqlalchemy_wrap_it() -> None:
    """The classification the stop rests on: no room (or a read-only, failing disk) and a database that
    refuses or went away stop the run; a setting's own error (a scheduler's, out of memory) does not."""
    import errno

    from sqlalchemy.exc import OperationalError

    from autotune.files import write_failure

    def wrapped(cause: BaseException) -> BaseException:  # as Optuna's RDB storage raises it
        try:
            try:
                raise cause
            except Exception as e:
                raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from e
        except optuna.exceptions.StorageInternalError as outer:
            return outer

    full = OperationalError("COMMIT", {}, Exception("database or disk is full"))
    gone = OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly\nmore"))
    assert write_failure(wrapped(full)) == "database or disk is full"
    assert write_failure(wrapped(gone)) == "server closed the connection unexpectedly"
    assert write_failure(OSError(errno.ENOSPC, "No space left on device")) == "No space left on device"
    assert write_failure(OSError(errno.EROFS, "Read-only file system")) == "Read-only file system"
    assert write_failure(RuntimeError("CUDA out of memory")) is None  # the setting's: the study goes on
    assert write_failure(FileNotFoundError(errno.ENOENT, "No such file")) is None
    assert write_failure(ConnectionError("the artifact store did not answer")) is None  # retried as infrastructure


@pytest.mark.parametrize("library", ["swallows", "rewords"])
def test_a_stop_signal_a_library_swallows_or_rewords_mid_render_still_stops_the_run(
    study_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, library: str
) -> None:
    """A signal that lands where it is lost (a ``__del__``, a library's ``except BaseException``) or reworded
    (safetensors' "Unable to load weights") must not leave the study going on for the rest of the night
    (seen once in CI: a parent given SIGHUP still running 300 s later). The run stops at once; the trial
    it landed in is an interrupted one, rendered again by the next run, not a failed setting."""
    from autotune import process
    from autotune.model.evaluate import Evaluator

    real = Evaluator.evaluate
    landed: list[int] = []

    def signalled(self, settings, prompts, seeds, timed=True):  # type: ignore[no-untyped-def]
        if settings.steps < 8 and not landed:  # the first trial after the baseline: the signal lands mid-render
            landed.append(1)
            try:
                process._handler(signal.SIGHUP, None)
            except BaseException as e:
                if library == "rewords":
                    raise RuntimeError("Unable to load weights from checkpoint file") from e
        return real(self, settings, prompts, seeds, timed)

    path = study_file(name=library, n_trials=40)
    path.write_text(path.read_text().replace("seeds = [0]", "seeds = [0]\nseed = 0"))
    cfg = load_config(path)
    with monkeypatch.context() as m, pytest.raises(process.Interrupted) as stop:
        m.setattr(Evaluator, "evaluate", signalled)
        run_study(cfg, progress=False)
    assert stop.value.signum == signal.SIGHUP and landed
    trials = optuna.load_study(study_name=study_name(cfg, "portrait"), storage=cfg.default_storage).trials
    assert len(trials) <= 3, [t.state.name for t in trials]  # the baseline, the signalled trial, a reference
    assert {"RUNNING", "WAITING"}.isdisjoint(t.state.name for t in trials)
    failed = [t for t in trials if t.state.name == "FAIL"]
    if library == "rewords":  # the trial it landed in is retried, its reason the signal's
        reasons = [t.user_attrs.get("fail_reason") for t in failed]
        assert reasons == ["interrupted (SIGHUP: the terminal or ssh session closed)"], reasons
        assert failed[0].user_attrs.get("interrupted") is True
    else:
        assert not failed  # the render finished; the next unit of work heard the stop


def test_a_stop_that_lands_while_the_database_steps_a_query_is_recorded_at_once(
    study_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM while SQLite steps a SELECT of the study loop (seen in CI: a parent given SIGTERM exited 74,
    "database is locked", after waiting twice 60 s on the lock its own cut cursor kept): the stop is recorded
    and the run ends as the signal's, with the trials it stopped failed as interrupted, none left running."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from autotune import process
    from autotune.model.evaluate import Evaluator

    real = Evaluator.evaluate
    armed: list[int] = []
    fired: list[str] = []

    def rendered(self, settings, prompts, seeds, timed=True):  # type: ignore[no-untyped-def]
        out = real(self, settings, prompts, seeds, timed)
        if settings.steps < 8:  # a trial after the baseline: the next query of the loop is cut
            armed.append(1)
        return out

    def cut(conn, cursor, statement, *_):  # type: ignore[no-untyped-def]
        if armed and not fired and not process._depth and statement.lstrip().upper().startswith("SELECT"):
            fired.append(statement)
            process._handler(signal.SIGTERM, None)

    path = study_file(name="cut", n_trials=40)
    path.write_text(path.read_text().replace("seeds = [0]", "seeds = [0]\nseed = 0"))
    cfg = load_config(path)
    event.listen(Engine, "after_cursor_execute", cut)
    try:
        with monkeypatch.context() as m, pytest.raises(process.Interrupted) as stop:
            m.setattr(Evaluator, "evaluate", rendered)
            run_study(cfg, progress=False)
    finally:
        event.remove(Engine, "after_cursor_execute", cut)
    assert stop.value.signum == signal.SIGTERM and fired
    study = optuna.load_study(study_name=study_name(cfg, "portrait"), storage=cfg.default_storage)
    assert study.user_attrs["decision"].get("stopped") == "interrupted (SIGTERM)", study.user_attrs["decision"]
    assert {"RUNNING", "WAITING"}.isdisjoint(t.state.name for t in study.trials)


def test_a_signal_that_a_library_turns_into_its_own_error_stays_a_stop() -> None:
    """diffusers reports a Ctrl-C inside a safetensors read as ``OSError: Unable to load weights``: seen as
    exit 2 "cannot load" in test_sigint_and_sigterm_... under load. Inside ``signals_kept`` it is the stop."""
    from autotune import process

    with pytest.raises(process.Interrupted) as stop, process.signals_kept():
        try:
            process._handler(signal.SIGTERM, None)  # the signal, raised where the weights are read
        except BaseException as e:
            raise OSError("Unable to load weights from checkpoint file for 'vae.safetensors'") from e
    assert stop.value.signum == signal.SIGTERM
    with pytest.raises(OSError, match="Unable to load weights"), process.signals_kept():
        raise OSError("Unable to load weights from checkpoint file for 'vae.safetensors'")  # no signal: as it is


def test_a_helper_that_does_not_stop_after_sigterm_is_killed_and_said(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The parent waits for its helpers after a stop, but not for ever: one that ignores SIGTERM (hung in a
    driver call, say) is killed after the grace period, with a warning naming it."""
    from autotune.study import run

    monkeypatch.setattr(run, "_GRACE", 0.5)
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(600)"
    deaf = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert deaf.stdout is not None and deaf.stdout.readline() == b"1\n"  # SIGTERM ignored from here on
    run._join([deaf], stopped=True)
    assert deaf.returncode == -signal.SIGKILL
    assert f"worker {deaf.pid} still going 0.5 s after SIGTERM: killed" in capsys.readouterr().err


def test_outputs_a_stopped_run_cannot_write_for_its_storage_are_a_warning_and_the_stop_stays(
    study_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a stop, the outputs so far are written from what is stored; a storage that refuses them then (a
    lock, a server gone) is one warning, and the signal's exit code stays (CI once saw exit 74 instead)."""
    import argparse
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from autotune import cli
    from autotune.results import reader

    def locked(*_: object, **__: object) -> None:
        raise OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked"))

    monkeypatch.setattr(reader, "recommend", locked)
    cfg = load_config(study_file(name="locked"))
    assert cli._outputs_so_far(cfg, argparse.Namespace(worker=False, storage=None)) is None
    said = "autotune: warning: the outputs could not be written (the study's storage failed: database is locked)"
    assert capsys.readouterr().err.strip() == said
    monkeypatch.setattr(reader, "recommend", lambda *a, **k: 1 / 0)  # not a storage failure: a bug, raised
    with pytest.raises(ZeroDivisionError):
        cli._outputs_so_far(cfg, argparse.Namespace(worker=False, storage=None))
