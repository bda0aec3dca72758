"""The decision: which rendered setting replaces the baseline. ``evidence`` (every rendered setting as
the rule sees it, kept incrementally), ``rule`` (paired one-sided bounds, the one "cheapest that pass",
racing, confirmation), ``tolerance`` (the file's units made metric units), ``cost`` (the fitted cost
line) and ``pareto`` (fronts). Pure math: no torch, no Optuna, no I/O.
"""
