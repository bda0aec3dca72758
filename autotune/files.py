"""Files a study leaves for people: written whole (temporary name, then rename), and the output folder
checked writable before the night starts.

Example:
    >>> check_writable(cfg.output_dir)       # before the night starts
    >>> atomic_write(cfg.output_dir / "recommendations.json", text)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from autotune.config import ConfigError

__all__ = ["atomic_write", "check_writable"]


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
