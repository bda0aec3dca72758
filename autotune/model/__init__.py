"""The model side: where weights come from, the pipeline, rendering and timing, prompt embeddings,
reference images, the metrics, and :class:`~autotune.model.evaluate.Evaluator` (a setting rendered
and scored; no Optuna). Everything that imports torch lives here.
"""
