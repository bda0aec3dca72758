"""Command-line values, checked as the same values in a study file are: a bad one is one line and exit 2
(argparse's ``type=``, through the parser's one-line errors), before anything loads or is written."""

from __future__ import annotations

import argparse
import re

from autotune.config.schema import device_expected

__all__ = ["device", "image_numbers", "parse_duration", "port", "positive_int"]


def parse_duration(text: str) -> float:
    """Seconds in ``"8h"``, ``"1h30m"``, ``"90s"``, ``"45m"`` or a plain number of seconds (above zero:
    a study given no time would stop before its first render)."""
    text = text.strip().lower()
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", text)
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    elif text and parts is not None:
        h, m, s = (float(x) if x else 0.0 for x in parts.groups())
        seconds = h * 3600 + m * 60 + s
    else:
        raise argparse.ArgumentTypeError(f"expected a duration such as 8h, 90m, 1h30m or 600, got {text!r}")
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration above zero (such as 8h, 90m or 600), got {text!r}")
    return seconds


def device(text: str) -> str:
    if expected := device_expected(text):
        raise argparse.ArgumentTypeError(expected)
    return text


def port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number in 1..65535, got {text!r}")
    return int(text)


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def image_numbers(text: str) -> list[int]:
    seeds = [s.strip() for s in text.split(",")]
    if not all(s.isdigit() for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct integers >= 0 separated by commas, got {text!r}")
    return [int(s) for s in seeds]
