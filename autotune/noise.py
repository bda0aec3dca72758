"""Each image its own noise: the generator seed of image ``seed`` of a prompt, from the prompt's text and
the number. The renderer, the references, the stored trials and the decision's panel all draw from here.

No two prompts share a noise (a noise shared by every prompt is a factor of its own: a bound over prompts
then speaks for those few noises), an image keeps its noise when prompts are reordered or added, and every
setting of a class draws the same noise for it, so candidate and baseline stay paired image by image.

Example:
    >>> noise_seed("a red letter A", 0) != noise_seed("a red letter B", 0)
    True
"""

from __future__ import annotations

import hashlib

__all__ = ["NOISE", "noise_seed"]

NOISE = "per image"  # the study fingerprint's word for this (studies before it shared one noise per seed)


def noise_seed(prompt: str, seed: int) -> int:
    """The generator seed of image ``seed`` of ``prompt`` (31 bits, a seed every tool takes: diffusers,
    AUTOMATIC1111, ComfyUI)."""
    digest = hashlib.sha256(f"{seed}\n{prompt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
