"""This process: how it stops (SIGINT and SIGTERM alike) and how it is known
to other workers (its worker id, and whether another worker of this machine still lives).

Signals never land inside an import: a Ctrl-C while torch is half imported crashes the interpreter
(a SystemError, a segfault) or leaves a module that later imports trip over. The command imports its
heavy packages first, under :func:`preload`, before it has written anything: a signal there ends the
process at once (its one line said, nothing to clean up), without waiting seconds for the imports.
Later, :func:`deferred` holds a signal while a block that must finish runs, and raises it after; and
a signal that lands inside an import done on first use (SQLAlchemy loads parts of itself lazily), a
finalizer or a database call is sent again a moment later, once it is done, so no module is left half
imported and no connection is dropped mid-statement.

Example:
    >>> install()                      # SIGINT raises Interrupted(SIGINT), SIGTERM Interrupted(SIGTERM)
    >>> preload()                      # torch, diffusers, ...: a signal meanwhile exits at once
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import CodeType, FrameType
from typing import NoReturn

__all__ = [
    "STOPS", "Interrupted", "alive", "deferred", "die_with_parent", "exit_code", "heard", "importing", "in_database",
    "install", "preload", "received", "run_main", "said", "signals_kept", "swallowed", "why", "worker_id",
]  # fmt: skip


STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C; a scheduler, a container runtime; a dropped ssh


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C), SIGTERM (a scheduler, a container runtime) or SIGHUP (an ssh session dropped, a
    terminal closed): handled alike; the exit code differs."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP, as a shell reports them

    @property
    def why(self) -> str:
        if self.signum == signal.SIGHUP:
            return "interrupted (SIGHUP: the terminal or ssh session closed)"
        return "interrupted (Ctrl-C)" if self.signum == signal.SIGINT else f"interrupted ({self.args[0]})"


def why(e: KeyboardInterrupt) -> str:
    """What stopped the run, for the stored state and a trial's fail reason."""
    return e.why if isinstance(e, Interrupted) else "interrupted (Ctrl-C)"


def exit_code(e: KeyboardInterrupt) -> int:
    return e.exit_code if isinstance(e, Interrupted) else 130


def said(e: KeyboardInterrupt) -> int:
    """Say what stopped the command, its one line on stderr (where there is still one: a hung-up terminal
    takes it along); the exit code that goes with it."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"autotune: {why(e)}\n")
        sys.stderr.flush()
    return exit_code(e)


_pending: list[int] = []  # a signal that arrived while deferred
_received: list[int] = []  # every stop signal this process took (held or raised), in order: see heard
_depth = 0
_at_once = False  # importing, before anything is written: a signal exits there and then


def _handler(signum: int, frame: FrameType | None) -> None:
    if _at_once:
        os._exit(said(Interrupted(signum)))  # no teardown: modules are half imported, nothing is open for writing
    if _later(signum, frame):
        again = threading.Timer(_AGAIN, os.kill, (os.getpid(), signum))
        again.daemon = True
        again.start()
        return
    _waiting.clear()
    _received.append(signum)
    if _depth:
        _pending.append(signum)
        return
    raise Interrupted(signum)


_AGAIN = 0.05  # seconds before a signal that landed inside an import, a finalizer or a database call is sent again
_PATIENCE = 10.0  # seconds a signal waits for a database call to return; a hung one is interrupted after
_waiting: dict[int, float] = {}  # a signal held for a database call: since when


def _later(signum: int, frame: FrameType | None) -> bool:
    """Whether a signal landing at ``frame`` is sent again a moment later instead of raised there: inside
    an import (a module left half imported), a finalizer (the exception printed as "Exception ignored
    ..." with its traceback, and the stop lost) or a database call. Raised inside SQLAlchemy, an exit
    exception invalidates the connection mid-statement, and closing its cursor after logs an error with
    a traceback ("Error closing cursor ... Cannot operate on a closed database", CI, stop 56)."""
    if _depth:
        return False  # held anyway, raised when the block ends
    if importing(frame) or swallowed(frame):
        return True
    if not in_database(frame):
        return False
    since = _waiting.setdefault(signum, time.monotonic())
    return time.monotonic() - since < _PATIENCE


def _on_stack(frame: FrameType | None, found: Callable[[CodeType], bool]) -> bool:
    """Whether ``found`` holds for the code of ``frame`` or of any frame that called it."""
    while frame is not None:
        if found(frame.f_code):
            return True
        frame = frame.f_back
    return False


def importing(frame: FrameType | None) -> bool:
    """Whether ``frame`` runs inside an import (a module's top level, or importlib's machinery)."""
    return _on_stack(frame, lambda code: code.co_filename.startswith("<frozen importlib"))


def in_database(frame: FrameType | None) -> bool:
    """Whether ``frame`` runs inside SQLAlchemy (every storage call Optuna and autotune make)."""
    return _on_stack(frame, lambda code: _SQLALCHEMY in code.co_filename)


_SQLALCHEMY = f"{os.sep}sqlalchemy{os.sep}"
_FINALIZERS = ("weakref.py", "_weakrefset.py")  # the standard library's weak-reference callbacks


def swallowed(frame: FrameType | None) -> bool:
    """Whether ``frame`` runs where the interpreter swallows an exception: a ``__del__``, or a weak-reference
    callback (a ``WeakKeyDictionary`` dropping a key as the garbage collector frees it). An exception
    raised there is printed as "Exception ignored in ..." with a traceback, and the stop is lost."""
    return _on_stack(frame, lambda code: code.co_name == "__del__" or os.path.basename(code.co_filename) in _FINALIZERS)


def install() -> None:
    """SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread (a no-op off it)."""
    with contextlib.suppress(ValueError):  # not the main thread
        for s in STOPS:
            signal.signal(s, _handler)


def die_with_parent(parent: int) -> None:
    """Have the kernel send this process SIGTERM when ``parent`` dies, however it dies (``kill -9``
    included: Linux's parent-death signal), and stop at once if it died already. A helper worker
    started by ``autotune study --workers N`` must not go on adding trials to a study nobody decides."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the line above took hold
        raise Interrupted(signal.SIGTERM)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold the stop signals while the block runs (imports, writing the outputs); raise the first after it."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if not _depth and _pending:
        signum = _pending[0]
        _pending.clear()
        raise Interrupted(signum)


def received() -> int:
    """How many stop signals this process has taken so far: the mark :func:`heard` counts from."""
    return len(_received)


def heard(mark: int) -> None:
    """Raise a stop signal taken since ``mark`` again, if anything swallowed it on its way up: a signal that
    lands in a ``__del__`` or a weakref callback is printed as "Exception ignored" and dropped, and a held
    one is lost when its block ends in an error. A loop calls this between units of work, so a stop
    always stops it."""
    if len(_received) > mark:
        raise Interrupted(_received[-1]) from None


@contextlib.contextmanager
def signals_kept() -> Iterator[None]:
    """A stop signal raised inside the block stays a stop, whatever a library made of it on the way out:
    diffusers reads weights through safetensors and reports any failure there, a Ctrl-C included, as
    ``OSError: Unable to load weights from checkpoint file`` (which autotune would call unloadable weights,
    exit 2). Whatever the block raises after a signal was raised in it becomes that signal again."""
    mark = received()
    try:
        yield
    except BaseException as e:
        if not isinstance(e, Interrupted):
            heard(mark)
        raise


def run_main(main: Callable[[], int]) -> NoReturn:
    """Run a command's ``main`` as this process and exit with its code.

    A signal that lands as ``main`` returns is said and exits as one inside it; one that lands in
    Python's teardown (where its handlers are gone, so the signal would end the process without a word,
    exit -2 or -15, after the work was done and written) is ignored.
    """
    try:
        try:
            code = main()
        finally:
            for s in STOPS:  # ignored, in every thread: teardown leaves an ignored one be
                signal.signal(s, signal.SIG_IGN)
    except KeyboardInterrupt as e:  # landed after main's own handling, before the line above ran
        code = said(e)
    sys.exit(code)


# what rendering and writing the outputs import: in before a signal may land (diffusers loads its
# classes lazily, on first use, so those are named too)
_HEAVY = ("numpy", "PIL.Image", "scipy.stats", "sqlalchemy.orm", "optuna", "optuna.storages._rdb.storage",
          "optuna_dashboard", "plotly.graph_objects",
          "torch", "torchvision", "transformers", "diffusers", "open_clip", "lpips", "safetensors.torch")  # fmt: skip
_LAZY = ("DiffusionPipeline", "StableDiffusionPipeline", "AutoencoderKL", "UNet2DConditionModel", "DDPMScheduler")


def preload() -> None:
    """Import what a study imports; SIGINT or SIGTERM meanwhile exits at once (see the module's note).
    Call it before the command writes anything."""
    import importlib

    global _at_once
    _at_once = True
    try:
        for name in _HEAVY:
            importlib.import_module(name)
        diffusers = importlib.import_module("diffusers")
        for name in _LAZY:
            getattr(diffusers, name)
    finally:
        _at_once = False


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def alive(worker: str) -> bool:
    """False only for a worker of this machine whose process is gone; other machines' cannot be seen."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
