"""Device timer: seconds of device work between synchronisations (nanoGPT's bench.py way).

On CUDA it records events around the work and synchronises before reading them; on the CPU
it reads ``time.perf_counter``. It does not warm up: :func:`autotune.model.render.generate` renders
a 2-step image once per process before its first timed call, so kernel selection and allocator
growth are not billed to the first trial.

Example:
    >>> with DeviceTimer("cuda") as t:
    ...     pipe(...)
    >>> t.seconds
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

import torch

__all__ = ["DeviceTimer"]


class DeviceTimer:
    """Context manager measuring wall-clock device seconds of the work inside it."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.seconds = float("nan")
        self._events: tuple[Any, Any] | None = None
        self._start = 0.0

    def __enter__(self) -> DeviceTimer:
        if self.cuda:
            torch.cuda.synchronize()
            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            self._events[0].record()
        else:
            self._start = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._events is not None:
            self._events[1].record()
            torch.cuda.synchronize()
            self.seconds = self._events[0].elapsed_time(self._events[1]) / 1000.0
        else:
            self.seconds = time.perf_counter() - self._start
