"""The serving side: apply a recommendation to a pipeline, route prompts to their class, export for
other tools. Reads ``recommendations.json`` only (:mod:`autotune.results.recommendations_file`): no study, no Optuna.
"""
