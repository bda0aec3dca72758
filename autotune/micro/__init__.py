"""The micro models shipped with autotune, trained here: text-to-image pipelines and the CLIPs that
score them, small enough for a CPU and for git.

- ``micro``: handwritten digits (scikit-learn's ``load_digits``), grey, 32 px; ten captions
  ("a handwritten digit seven"). Rebuilt by ``python -m autotune.micro.train``.
- ``glyphs``: 24 letters and digits in 8 ink colours on 7 backgrounds, thin or bold, 32 px; 1,584
  compositional captions ("a bold red letter K on a white background"), so a class can hold dozens of
  distinct prompts. Rebuilt by ``python -m autotune.micro.train_glyphs``.

- ``flow``: the glyph world in Flux's layout (``FluxPipeline``: a flow-matching transformer, true
  classifier-free guidance, the glyphs model's VAE and text encoder), scored by the glyph CLIP; one
  combination in eight held out of its training. Rebuilt by ``python -m autotune.micro.train_flow``.

``model.id = "micro"``, ``"glyphs"`` or ``"flow"`` loads a pipeline (a diffusers folder), ``clip_model =
"micro"`` or ``"glyphs"`` its CLIP (an open_clip ``local-dir:`` folder), as a user's own folders load.
Render them at 32 px.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["MODELS", "clip_dir", "pipeline_dir"]

_HERE = Path(__file__).resolve().parent
MODELS = {"micro": _HERE, "glyphs": _HERE / "glyphs", "flow": _HERE / "flow"}  # id -> folder of pipeline/, clip/
_SCORED_BY = {"flow": "glyphs"}  # a model of the same world, scored by that world's CLIP


def pipeline_dir(name: str = "micro") -> Path:
    return MODELS[name] / "pipeline"


def clip_dir(name: str = "micro") -> Path:
    return MODELS[_SCORED_BY.get(name, name)] / "clip"
