"""The study file's prompts: ``[classes.NAME]`` tables (prompts, a negative prompt, the class's share
of the traffic) and ``[call]``, the fixed arguments production passes to every pipeline call.

Example:
    >>> class_tables({"portrait": {"prompts": ["an old fisherman"], "negative_prompt": "blurry"}})
    ({'portrait': ('an old fisherman',)}, {'portrait': 'blurry'}, {})
"""

from __future__ import annotations

import warnings
from typing import Any

from autotune.config.tables import ConfigError, ConfigWarning

__all__ = ["MANY_PROMPTS", "MAX_PROMPT", "RESERVED_CALL", "call_table", "class_tables", "same_prompt"]

MANY_PROMPTS = 1000  # more prompts than this in one class: accepted, with a warning
MAX_PROMPT = 1000  # characters; CLIP reads 77 tokens (some 300 characters)


def same_prompt(prompt: str) -> str:
    """What the text encoder reads of a prompt: CLIP's tokenizer lowercases it and collapses whitespace,
    so "A cat" and "a  cat" render the same images."""
    return " ".join(prompt.lower().split())


def _prompt(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    if len(value) > MAX_PROMPT:
        raise ConfigError(
            f"{where}: expected at most {MAX_PROMPT:,} characters (the text encoder reads the first 77 tokens, "
            f"some 300 characters, and cuts the rest), got {len(value):,}"
        )
    return value


# what autotune sets or searches in every call: not for [call]
RESERVED_CALL = (
    "prompt", "prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds",
    "num_inference_steps", "guidance_scale", "true_cfg_scale", "timesteps", "sigmas", "generator", "latents",
    "height", "width", "output_type", "num_images_per_prompt", "return_dict", "callback_on_step_end",
)  # fmt: skip


def call_table(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"call: expected a table of pipeline call arguments, got {raw!r}")
    for key, value in raw.items():
        if key in RESERVED_CALL:
            raise ConfigError(f"call.{key}: autotune sets or searches it in every call; expected another argument")
        if key == "negative_prompt":
            _prompt(value, "call.negative_prompt")
        if key == "clip_skip" and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"call.clip_skip: expected an integer >= 1 (layers skipped from the end), got {value!r}")
    return dict(raw)


def class_tables(raw: Any) -> tuple[dict[str, tuple[str, ...]], dict[str, str], dict[str, float]]:
    """Each class's prompts, its negative prompt (where set) and its traffic share (where set: the share
    of production's requests it receives, what `autotune classes suggest` counts in a request log)."""
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("classes: expected at least one [classes.NAME] table with prompts = [...]")
    out, negatives, traffic = {}, {}, {}
    for name, table in raw.items():
        where = f"classes.{name}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table with prompts = [...], got {table!r}")
        for key in table:
            if key not in ("prompts", "negative_prompt", "traffic"):
                raise ConfigError(f"{where}.{key}: unknown key (expected: prompts, negative_prompt, traffic)")
        prompts = table.get("prompts")
        if not isinstance(prompts, list) or not prompts:
            raise ConfigError(f"{where}.prompts: expected a non-empty list of strings, got {prompts!r}")
        seen: dict[str, int] = {}
        for i, p in enumerate(prompts):
            _prompt(p, f"{where}.prompts[{i}]")
            if (first := seen.setdefault(same_prompt(p), i)) != i:
                raise ConfigError(
                    f"{where}.prompts[{i}]: {p!r} repeats prompts[{first}] (the text encoder reads them alike); "
                    "expected distinct prompts: each is one unit of the recommendation's bound"
                )
        if "traffic" in table:
            share = table["traffic"]
            if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
                raise ConfigError(f"{where}.traffic: expected the class's share of requests, in (0, 1], got {share!r}")
            traffic[name] = float(share)
        if "negative_prompt" in table:
            negatives[name] = _prompt(table["negative_prompt"], f"{where}.negative_prompt")
        if not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{where}: expected a class name of letters, digits, '_' or '-', got {name!r}")
        if name == "default":
            raise ConfigError(
                f"{where}: 'default' is reserved (serving gives it the baseline, for prompts that fit no class); "
                "expected another class name"
            )
        if len(prompts) > MANY_PROMPTS:
            warnings.warn(
                f"{where}.prompts: {len(prompts)} prompts; every trial renders each of them with every seed, "
                f"so a trial will take long (a few representative ones, say {MANY_PROMPTS // 100}, are usually enough; "
                "`autotune classes suggest` picks them)",
                ConfigWarning,
                stacklevel=2,
            )
        out[name] = tuple(prompts)
    _warn_shared(out)
    if traffic and (set(traffic) != set(out) or sum(traffic.values()) > 1 + 1e-6):
        missing = sorted(set(out) - set(traffic))
        got = f"no share for {', '.join(f'classes.{c}' for c in missing)}" if missing else f"{sum(traffic.values()):g}"
        raise ConfigError(f"classes: expected traffic shares on every class, summing to at most 1, got {got}")
    return out, negatives, traffic


def _warn_shared(classes: dict[str, tuple[str, ...]]) -> None:
    """The same prompt in two classes: accepted (each class studies it), said, since the router cannot
    tell the classes apart for it."""
    first: dict[str, str] = {}
    for name, prompts in classes.items():
        for i, p in enumerate(prompts):
            where = first.setdefault(same_prompt(p), f"classes.{name}.prompts[{i}]")
            if not where.startswith(f"classes.{name}."):
                warnings.warn(
                    f"classes.{name}.prompts[{i}]: {p!r} is also {where}; the router sends it to one of the two "
                    "classes only, so serving cannot tell them apart for it",
                    ConfigWarning,
                    stacklevel=3,
                )
