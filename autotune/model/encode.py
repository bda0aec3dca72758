"""Prompt embeddings: each family's ``encode_prompt`` called the way its pipeline wants, the result as
the call kwargs (``prompt_embeds``, ...) the pipeline takes instead of a prompt.

Example:
    >>> kwargs = encode_prompt(pipe, "a cat", "cpu", negative="blurry")
    >>> sorted(kwargs)
    ['negative_prompt_embeds', 'prompt_embeds']
"""

from __future__ import annotations

from typing import Any

from autotune.space.families import PIPELINES

__all__ = ["encode_prompt"]


def encode_prompt(
    pipe: Any,
    prompt: str,
    device: str,
    negative: str | None = None,
    clip_skip: int | None = None,
    max_sequence_length: int | None = None,
) -> dict[str, Any]:
    """One prompt's embeddings as the call kwargs the pipeline takes (negative: the empty prompt unless
    given; Flux's are used where it is guided with true CFG); ``max_sequence_length``: the T5 tokens read
    (Flux, SD3), where the call sets it."""
    kind = PIPELINES.get(type(pipe).__name__, "sd")
    length = {} if max_sequence_length is None else {"max_sequence_length": max_sequence_length}
    if kind == "sd":
        pos, neg = pipe.encode_prompt(prompt, device, 1, True, negative_prompt=negative, clip_skip=clip_skip)
        return {"prompt_embeds": pos, "negative_prompt_embeds": neg}
    if kind == "flux":
        pos, pooled, _ = pipe.encode_prompt(prompt, None, device=device, **length)
        neg, neg_pooled, _ = pipe.encode_prompt(negative or "", None, device=device, **length)
        return {
            "prompt_embeds": pos,
            "pooled_prompt_embeds": pooled,
            "negative_prompt_embeds": neg,
            "negative_pooled_prompt_embeds": neg_pooled,
        }
    if kind == "sdxl":
        out = pipe.encode_prompt(
            prompt,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=True,
            negative_prompt=negative,
            clip_skip=clip_skip,
        )
    else:  # sd3
        out = pipe.encode_prompt(
            prompt,
            None,
            None,
            device=device,
            do_classifier_free_guidance=True,
            negative_prompt=negative,
            clip_skip=clip_skip,
            **length,
        )
    keys = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
    return dict(zip(keys, out, strict=True))
