"""Random-weight test models built in code (``tiny``, ``tiny-sdxl``, ``tiny-sd3``, ``tiny-flux``), as ``optuna.testing``
keeps Optuna's fixtures: the tests, the benchmarks and ``model.id = "tiny"`` find them here.
"""
