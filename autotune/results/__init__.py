"""The read side's ground floor: a study read back from storage (``reader``: no torch, no Optuna) and
``recommendations.json`` as one schema (``schema``) that every writer and reader uses.
"""
