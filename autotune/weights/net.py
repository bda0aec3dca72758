"""Is a download host reachable? Asked before a download that would otherwise retry for half a minute.

Example:
    >>> unreachable("https://huggingface.co")      # None when a TCP connect succeeds within 3 s
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

__all__ = ["hub_unreachable", "unreachable"]


@functools.cache
def unreachable(url: str) -> str | None:
    """None when ``url``'s host answers a TCP connect within 3 s, else why not (one phrase)."""
    parsed = urlparse(url)
    host = parsed.hostname or url
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as e:
        return f"{host} is unreachable ({e.strerror or type(e).__name__})"
    return None


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached (``HF_HUB_OFFLINE``, or no answer), or None."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    return unreachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
