"""Send each incoming prompt to its prompt class, then serve that class's recommended setting.

    python examples/route_prompts.py [studies/demo.toml]

Runs offline against the demo study's outputs (run `make demo` first). A prompt that is like
no class goes to "default": the study's baseline, what you served before.
"""

from __future__ import annotations

import sys

import autotune

study = sys.argv[1] if len(sys.argv) > 1 else "studies/demo.toml"
recs = autotune.load_recommendations(study)
router = autotune.Router.from_study(recs)
first_class_prompt = next(iter(autotune.load_config(study).classes.values()))[0]
incoming = [
    first_class_prompt,
    "a thin red digit nine on a white background",  # held out: no class lists it
    "a bold white letter R on a blue background",
    "zzzz 12345",
]
print(f"threshold {router.threshold:.3f}; classes: {', '.join(router.classes)}")
for prompt, (name, similarity) in zip(incoming, router.route_many(incoming), strict=True):
    print(f"{prompt!r:45} -> {name:10} (similarity {similarity:.3f}): {recs[name].setting}")
