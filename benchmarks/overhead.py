"""Overhead: a study's wall time divided by the time spent inside the pipeline rendering trial images.

    .venv/bin/python benchmarks/overhead.py [--trials 12] [--size 256]

Runs a study on the tiny model at 256 px once to cache its references, then times a run of
``--trials`` more trials. "Inside the pipeline" is the sum of every new trial's per-image
seconds (the pipeline call, timed on the device); everything else - Optuna, the storage,
metrics, image artifacts, scheduler swaps - is overhead. Writes benchmarks/results/overhead.json.
Target: <= 1.10 once references are cached.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
STUDY = """
name = "overhead"
[model]
id = "tiny"
device = "cpu"
height = {size}
width = {size}
[search]
steps = [10, 40]
schedulers = ["euler", "dpmpp_2m_karras", "unipc", "ddim"]
seeds = [0, 1]
[baseline]
steps = 30
[reference]
steps = 60
[classes.portrait]
prompts = ["a studio portrait of an old fisherman", "a close-up photo of a smiling child"]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    from optuna.trial import TrialState

    from autotune.config import load_config
    from autotune.study import run_study

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "overhead.toml"
        path.write_text(STUDY.format(size=args.size))
        cfg = load_config(path)
        run_study(cfg, n_trials=1, progress=False)  # references and the warm-up, not timed
        t0 = time.perf_counter()
        outcome = run_study(cfg, n_trials=1 + args.trials, progress=False)["portrait"]
        wall = time.perf_counter() - t0
        new = [
            t
            for t in outcome.study.get_trials(states=(TrialState.COMPLETE,))
            if t.number > 0 and "reused_from" not in t.user_attrs
        ]
        inside = sum(sum(t.user_attrs["seconds_values"]) for t in new)
    result = {
        "size": args.size,
        "trials": len(new),
        "wall_seconds": round(wall, 2),
        "pipeline_seconds": round(inside, 2),
        "ratio": round(wall / inside, 3),
    }
    print(
        f"tiny model at {args.size} px, {len(new)} rendered trials: study wall {wall:.1f} s, inside the pipeline "
        f"{inside:.1f} s -> overhead ratio {result['ratio']:.2f}"
    )
    out = HERE / "results" / "overhead.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
