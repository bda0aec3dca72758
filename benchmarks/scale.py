"""Scale: `autotune recommend` and `autotune report` on a 10,000-trial study database.

    .venv/bin/python benchmarks/scale.py [--trials 10000]

Runs a real 2-trial study on the tiny model (references, images, attributes as autotune writes
them), then adds ``--trials`` completed trials drawn at random from the same search space with
every user attribute a real trial has and metrics from a plausible cost/quality model. Times
both commands as a user runs them (a fresh process each) and reads their peak memory; reports
the database size per added trial. Writes benchmarks/results/scale.json.
Targets: recommend under 5 s, report under 30 s.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from autotune.records import attributes
from autotune.study.sampling import RandomDraw

HERE = Path(__file__).parent
STUDY = """
name = "scale"
[model]
id = "tiny"
device = "cpu"
[search]
steps = [4, 50]
schedulers = "all"
n_trials = 2
[classes.portrait]
prompts = ["a studio portrait of an old fisherman", "a close-up photo of a smiling child"]
"""


class Draw(RandomDraw):
    """autotune's random draw of a setting, recording the Optuna distributions as a trial would."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.params: dict[str, Any] = {}
        self.distributions: dict[str, Any] = {}

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        self.distributions[name] = CategoricalDistribution(list(choices))
        self.params[name] = super().suggest_categorical(name, choices)
        return self.params[name]

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1) -> int:
        self.distributions[name] = IntDistribution(low, high, step=step)
        self.params[name] = super().suggest_int(name, low, high, step=step)
        return self.params[name]

    def suggest_float(self, name: str, low: float, high: float, *, step: float) -> float:
        self.distributions[name] = FloatDistribution(low, high, step=step)
        self.params[name] = super().suggest_float(name, low, high, step=step)
        return self.params[name]


def synthetic_trials(cfg: Any, family: Any, n: int, images: int) -> list[Any]:
    """``n`` completed trials with the attributes autotune's objective writes."""
    import optuna

    from autotune.space import schedulers
    from autotune.space.settings import suggest

    rng = random.Random(0)
    out = []
    for _ in range(n):
        draw = Draw(rng)
        s = suggest(draw, cfg.search, family)
        spec = schedulers.get(s.scheduler)
        calls = s.steps * spec.calls_per_step
        seconds = 0.004 * calls * (2 if s.guidance > 1 else 1) * rng.lognormvariate(0, 0.1)
        clip = 22 + 4 * (1 - math.exp(-s.steps / 8)) - 0.05 * abs(s.guidance - 7) + rng.gauss(0, 0.3)
        lpips = 0.6 * math.exp(-s.steps / 10) + 0.01 * abs(s.guidance - 7) + abs(rng.gauss(0, 0.02))
        values = {"clip_score": clip, "lpips": lpips, "seconds": seconds}
        per_image = {m: [round(v + rng.gauss(0, 0.01 * abs(v)), 6) for _ in range(images)] for m, v in values.items()}
        attrs = attributes(
            worker="bench:1",
            setting=s.label(),
            setting_key=s.key(),
            scheduler_class=spec.class_name,
            scheduler_config=s.scheduler_overrides(),
            deterministic=spec.deterministic,
            model_calls=calls,
            images=images,
            values=per_image,
        )
        out.append(
            optuna.trial.create_trial(
                params=draw.params,
                distributions=draw.distributions,
                values=[values[m] for m in cfg.metrics.objectives],
                user_attrs=attrs,
            )
        )
    return out


_PEAK = (
    "import re, sys; from autotune.cli import main; code = main(sys.argv[1:]); "
    "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1], file=sys.stderr); sys.exit(code)"
)


def timed(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident memory (MiB) of one ``autotune`` command in a fresh process.

    The process reports its own high-water mark (Linux ``VmHWM``): its rusage would also count the
    pages of this benchmark process (torch and all) that it was forked from before its exec.
    """
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-c", _PEAK, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if p.returncode != 0:
        raise SystemExit(f"autotune {' '.join(args)} failed: {p.stderr}")
    return time.perf_counter() - t0, int(p.stderr.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    args = parser.parse_args()
    import optuna

    from autotune.config import load_config
    from autotune.model.pipeline import resolve_config
    from autotune.store.versions import study_name
    from autotune.study.run import run_study

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scale.toml"
        path.write_text(STUDY)
        cfg = resolve_config(load_config(path))
        outcome = run_study(cfg, progress=False)["portrait"]
        db = Path(cfg.default_storage.removeprefix("sqlite:///"))
        before = db.stat().st_size
        images = len(cfg.classes["portrait"]) * len(cfg.search.seeds)
        t0 = time.perf_counter()
        trials = synthetic_trials(cfg, outcome.family, args.trials, images)
        study = optuna.load_study(study_name=study_name(cfg, "portrait"), storage=cfg.default_storage)
        study.add_trials(trials)
        added = time.perf_counter() - t0
        per_trial = (db.stat().st_size - before) / args.trials
        recommend_s, recommend_mb = timed(["recommend", str(path)])
        report_s, report_mb = timed(["report", str(path)])
        report_kb = (cfg.output_dir / "report.html").stat().st_size / 1024
    result = {
        "trials": args.trials + 2,
        "database_bytes_per_trial": round(per_trial),
        "seconds_to_add_trials": round(added, 1),
        "recommend_seconds": round(recommend_s, 2),
        "recommend_peak_mib": round(recommend_mb),
        "report_seconds": round(report_s, 2),
        "report_peak_mib": round(report_mb),
        "report_kib": round(report_kb),
    }
    print(
        f"{result['trials']} trials ({per_trial / 1024:.1f} KiB of database each): "
        f"autotune recommend {recommend_s:.1f} s, peak {recommend_mb:.0f} MiB; "
        f"autotune report {report_s:.1f} s, peak {report_mb:.0f} MiB, report.html {report_kb:.0f} KiB"
    )
    out = HERE / "results" / "scale.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
