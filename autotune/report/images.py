"""The images a report shows, read from storage: trial images from the study's artifacts, and the
reference an image was compared with, found by the same content key the study stored it under
(model and what production adds, prompt, seed, size, setting, dtype, the device kind its noise was
drawn on). Nothing is rendered.

Example:
    >>> images = StoredImages(cfg, cfg.default_storage)
    >>> images.reference(outcome, "a handwritten digit six", seed=0, guidance=5.0)
    b'\\x89PNG...'
"""

from __future__ import annotations

from typing import Any

from autotune.config.resolve import ResolvedStudy, reference_setting
from autotune.results.reader import ClassOutcome
from autotune.store.optuna_api import artifact_files
from autotune.store.reference_table import ReferenceTable, generator_kind, image_name, model_identity, reference_key

__all__ = ["StoredImages"]


class StoredImages:
    """Trial images from the study's artifacts, and references from the reference table."""

    def __init__(self, cfg: ResolvedStudy, url: str, store: Any = None) -> None:
        self.cfg, self.url, self.store = cfg, url, store  # store: autotune.store.artifacts.reader_store
        self.refs = ReferenceTable(url)
        self.missing = 0  # images the study stored that the store no longer has (a folder cleaned by hand)

    def trial(self, t: Any, prompt_index: int, seed: int) -> bytes | None:
        """One image of a trial as stored, or None (images off, never uploaded, or gone from the store)."""
        store = self.store
        if store is None:
            return None
        artifact = artifact_files(t.system_attrs).get(image_name(prompt_index, seed))
        if artifact is None:
            return None
        from optuna.artifacts.exceptions import ArtifactNotFound

        try:
            with store.open_reader(artifact) as f:
                return bytes(f.read())
        except (ArtifactNotFound, OSError):  # deleted by hand: the report goes on without it, and says so
            self.missing += 1
            return None

    def reference(self, o: ClassOutcome, prompt: str, seed: int, guidance: float) -> bytes | None:
        """The stored reference that the class's images of ``prompt`` rendered at ``guidance`` were compared
        with: same model, call arguments, size, dtype and noise device as the study's (its fingerprint)."""
        cfg, m = self.cfg, self.cfg.model
        measured = o.stored.fingerprint
        if "dtype" not in measured:  # a study from before dtypes were recorded: no key to find it by
            return None
        call = cfg.call_for(o.name)
        negative = call.pop("negative_prompt", None)
        identity = model_identity(m.id, m.additions(), call, negative)
        setting = reference_setting(cfg, guidance)
        key = reference_key(
            identity, prompt, seed, m.height, m.width, setting, measured["dtype"], generator_kind(measured["device"])
        )
        return self.refs.find(key)
