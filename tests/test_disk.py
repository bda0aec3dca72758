"""A full disk, for real: a small tmpfs in a user and mount namespace (``unshare -rm``) that fills at
start-up and after a few trials; the run stops in one line, keeps what it stored, and the next recovers.
(Its own file: the suite's workers share files out whole, and test_stopping.py is long already.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

_FILL = """
set -e
mount -t tmpfs -o size=64m tmpfs "$DIR"
cd "$DIR" && cp "$STUDY" x.toml
sed -i "s/^n_trials = .*/n_trials = 1/" x.toml
"$PY" -m autotune.cli study x.toml --quiet > /dev/null
sed -i "s/^n_trials = .*/n_trials = 12/" x.toml
set +e
for run in start-up mid-study; do                       # 16 KiB left: full at once; 48: after a few trials
    used=$(df -k --output=used . | tail -1)
    mount -o remount,size=$((used + $([ $run = start-up ] && echo 16 || echo 48)))k "$DIR"
    "$PY" -m autotune.cli study x.toml --quiet > /dev/null 2> $run.err; echo "$?" > $run.code
    "$PY" -c "$STATES" > $run.json
done
mount -o remount,size=64m "$DIR"                        # space freed
"$PY" -m autotune.cli study x.toml --quiet > /dev/null 2> freed.err; echo "$?" > freed.code
"$PY" -c "$STATES" > freed.json
cp *.err *.code *.json "$OUT"
"""
_STATES = """
import json, sqlite3
db = sqlite3.connect("x.db")
states = [s for (s,) in db.execute("select state from trials")]
why = [json.loads(v) for (v,) in db.execute("select value_json from trial_user_attributes where key = 'fail_reason'")]
print(json.dumps({"states": states, "fail_reasons": why}))
"""


def _namespaces() -> bool:
    """Whether this machine lets a process mount a tmpfs of its own (a user and mount namespace)."""
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _namespaces(), reason="needs unshare -rm to mount a small tmpfs")
def test_a_full_disk_stops_in_one_line_keeps_every_trial_and_the_next_run_recovers(
    study_file: Callable[..., Path], tmp_path: Path
) -> None:
    """A real full disk (a tmpfs with a few KiB left after a first run): the database refuses a write, the
    artifacts and report.html find no room, at start-up and after a few trials. One line each, exit 74;
    nothing stored lost; space freed, the same command finishes the study with no trial RUNNING or WAITING."""
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir(), out.mkdir()
    env = {"DIR": str(disk), "OUT": str(out), "STUDY": str(study_file(name="x", n_trials=1)), "PY": sys.executable,
           "STATES": _STATES, "PATH": os.environ["PATH"], "HOME": str(tmp_path)}  # fmt: skip
    run = subprocess.run(["unshare", "-rm", "bash", "-c", _FILL], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    stored = ["COMPLETE"]  # the first run's baseline
    for full in ("start-up", "mid-study"):
        said = (out / f"{full}.err").read_text().strip().splitlines()
        assert (out / f"{full}.code").read_text().strip() == "74", said
        assert len(said) == 1 and said[0].startswith("autotune: error: "), said  # one line, no traceback
        assert "(database or disk is full)" in said[0] or "(No space left on device)" in said[0], said
        states = json.loads((out / f"{full}.json").read_text())["states"]
        assert [s for s in states[: len(stored)] if s == "COMPLETE"] == [s for s in stored if s == "COMPLETE"]
        stored = states  # nothing stored before the disk filled was lost
    assert stored.count("COMPLETE") > 1  # the disk filled mid-study, after some trials
    assert (out / "freed.code").read_text().strip() == "0", (out / "freed.err").read_text()
    freed = json.loads((out / "freed.json").read_text())
    assert {"RUNNING", "WAITING"}.isdisjoint(freed["states"]) and freed["states"].count("COMPLETE") >= 12
    # the trial the disk stopped: failed as the infrastructure's, or as its dead worker's, and rendered again
    assert all(r.startswith(("could not be written", "interrupted: its worker")) for r in freed["fail_reasons"])
