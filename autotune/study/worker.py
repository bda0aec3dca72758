"""A helper worker: runs trials of a study on a storage and writes nothing else (no outputs, no decision).

``autotune study --workers N`` starts N - 1 of these beside itself; workers on other machines run
``autotune study STUDY --storage URL --worker``, which is the same call.

    python -m autotune.study.worker STUDY_FILE STORAGE_URL N_TRIALS DEVICE TIMEOUT_SECONDS [PARENT_PID]

With ``PARENT_PID`` (as ``--workers`` starts it) it stops when that process dies, however it dies.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main", "work"]


def work(study_file: str, storage: str, n_trials: int, device: str | None, timeout: float | None) -> None:
    """Run trials until the study has ``n_trials`` rendered settings or ``timeout`` seconds pass."""
    from autotune.config import load_config
    from autotune.study.run import run_study

    cfg = load_config(study_file)
    run_study(
        cfg,
        storage=storage,
        n_trials=n_trials,
        timeout=timeout or None,
        device=device,
        progress=False,
        check_reference=False,
        decide=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    from autotune.config import ConfigError
    from autotune.process import die_with_parent, exit_code, install, preload

    install()  # SIGTERM (the parent's terminate) as Ctrl-C: the trial under way is marked interrupted
    path, url, target, device, timeout, *parent = argv if argv is not None else sys.argv[1:]
    try:
        if parent:
            die_with_parent(int(parent[0]))
        preload()
        work(path, url, int(target), device, float(timeout))
    except ConfigError as e:
        print(f"autotune: worker: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        return exit_code(e)
    return 0


if __name__ == "__main__":
    from autotune.process import run_main

    run_main(main)
