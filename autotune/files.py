"""Files a study leaves for people: written whole (temporary name, then rename), and the output folder
checked writable before the night starts, and put back as it was when a run is refused after replacing it.

Example:
    >>> check_writable(cfg.output_dir)       # before the night starts
    >>> atomic_write(cfg.output_dir / "recommendations.json", text)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autotune.config import ConfigError

__all__ = ["Kept", "atomic_write", "check_writable"]


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a kill leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; outputs are as readable as any new file
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(folder: Path) -> None:
    """Fail before the night starts, not after it, when the outputs cannot be written."""
    probe_in = folder if folder.exists() else folder.parent
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder}: cannot write the study's outputs there (it is a file, not a folder)")
    try:
        tempfile.TemporaryFile(dir=probe_in).close()
    except OSError as e:
        raise ConfigError(f"{probe_in}: cannot write the study's outputs there ({e.strerror})") from None


class Kept:
    """An output file as it was before this run, put back when the run is refused after replacing it."""

    def __init__(self, path: Path) -> None:
        self.path, self.folder_was = path, path.parent.exists()
        self.before = path.read_bytes() if path.is_file() else None
        self.replaced = False

    def replace_with(self, write: Callable[..., Any]) -> Callable[[Any], None]:
        def started(outcomes: Any) -> None:
            self.replaced = True
            write(outcomes.cfg, outcomes)

        return started

    def restore(self) -> None:
        if not self.replaced:
            return
        if self.before is not None:
            self.path.write_bytes(self.before)
            return
        self.path.unlink(missing_ok=True)
        if not self.folder_was:
            with contextlib.suppress(OSError):  # left when something else is in it
                self.path.parent.rmdir()
