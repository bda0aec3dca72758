"""Files a study leaves for people: written whole (temporary name, then rename), and the output folder
checked writable before the night starts, and put back as it was when a run is refused after replacing it.

A write that fails mid-run for a cause outside the setting (a full disk, a read-only folder, a database
that went away) is a :class:`WriteFailed`: one line, exit 74 (``EX_IOERR``), everything already stored kept.

Example:
    >>> check_writable(cfg.output_dir)       # before the night starts
    >>> atomic_write(cfg.output_dir / "recommendations.json", text)
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autotune.config import ConfigError

__all__ = ["Kept", "WriteFailed", "atomic_write", "check_writable", "write_failure"]


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a kill leaves the old file or the new one, never half of one; an
    ``OSError`` (a full disk, a read-only folder) names ``path``, not the temporary file."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; outputs are as readable as any new file
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


class WriteFailed(Exception):
    """Something could not be written, said in one line: what, where and why (its exit code: 74)."""

    exit_code = 74  # EX_IOERR (sysexits.h): an input/output error, not bad input (2) nor no answer (1)


_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


def write_failure(e: BaseException) -> str | None:
    """Why ``e`` is a failure to write that no setting causes, or None: no room on the disk (or a read-only
    or failing one), or the study's database refusing a write or gone (``database or disk is full``, a
    server that closed the connection), however Optuna and SQLAlchemy wrap it."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _NO_ROOM:
            return seen.strerror or str(seen)
        if _database_error(seen):
            text = str(getattr(seen, "orig", None) or seen).strip()
            return text.splitlines()[0] if text else type(seen).__name__
        seen = seen.__cause__ or seen.__context__
    return None


def _database_error(e: BaseException) -> bool:
    """A database driver's operational error (what SQLAlchemy raises for a full disk or a lost server);
    nothing is imported for it: an error of a package not loaded cannot be one."""
    sqlalchemy = sys.modules.get("sqlalchemy.exc")
    return sqlalchemy is not None and isinstance(e, (sqlalchemy.OperationalError, sqlalchemy.InterfaceError))


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
