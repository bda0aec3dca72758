"""Optuna studies, one per prompt class: everything that talks to Optuna while a study runs.

``storage`` (Optuna's RDB storage, artifacts, the reference table), ``optuna_api`` (the private Optuna
APIs, in one place), ``versions`` (names, fingerprints), ``sampling`` (the sampler, fresh random
settings), ``ledger`` (which trials render, step back, are retried), ``objective`` (one trial through
ask/tell), ``decide`` (racing and confirmation), ``run`` (the loop) and ``worker`` (a helper process).

Nothing is imported here: the read side imports ``storage`` and ``optuna_api`` without Optuna or torch.

Example:
    >>> from autotune.study.run import run_study
    >>> outcomes = run_study(load_config("studies/demo.toml"), n_trials=10)
"""
