"""Optuna studies, one per prompt class: everything that talks to Optuna while a study runs.

``sampling`` (the sampler, fresh random settings), ``ledger`` (which trials render, step back, are
retried), ``objective`` (one trial through ask/tell), ``decide`` (racing and confirmation), ``run``
(the loop) and ``worker`` (a helper process).

Storage (Optuna's RDB storage, its private APIs, fingerprints, artifacts, the reference table) is the
floor below, :mod:`autotune.store`. Nothing is imported here.

Example:
    >>> from autotune.study.run import run_study
    >>> outcomes = run_study(load_config("studies/demo.toml"), n_trials=10)
"""
