"""The search space: the scheduler table and its variants, model families, and :class:`Settings`.

Nothing here reads a study file: :mod:`autotune.config.resolve` brings the two together.
"""
