"""Optuna studies, one per prompt class: the room of everything that talks to Optuna while a study runs.

``versions`` (names, fingerprints), ``sampling`` (the sampler, fresh random settings), ``ledger``
(which trials render, step back, are retried), ``objective`` (one trial through ask/tell), ``run``
(the loop and its workers) and ``results`` (read a study back; no torch).

Example:
    >>> outcomes = run_study(load_config("studies/demo.toml"), n_trials=10)
    >>> recommend(load_config("studies/demo.toml"))["portrait"].recommendation
"""

from __future__ import annotations

from autotune.study.results import ClassOutcome, Outcomes, recommend
from autotune.study.run import StudyAborted, run_study
from autotune.study.versions import study_name

__all__ = ["ClassOutcome", "Outcomes", "StudyAborted", "recommend", "run_study", "study_name"]
