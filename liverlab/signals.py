"""Ctrl-C and SIGTERM for the long commands (``liverlab sweep``, ``liverlab train``).

The first SIGINT or SIGTERM asks the command to stop cleanly: ``on_first``
starts that (for a sweep: Tune saves its experiment state and stops the
trials) and returns True, or returns False to stop at once. A second signal
always stops at once, by raising :class:`Stopped` (a ``KeyboardInterrupt``) in
the main thread. Exit codes follow the shell: 128 + the signal number, so 130
for SIGINT and 143 for SIGTERM.

From the first signal on, everything the process or its native libraries
still print (Ray's warnings, the tracebacks of stopped trials, absl stack
dumps) goes to a log file instead of the terminal, so that the user sees
liverlab's own lines only: :meth:`Console.divert` keeps a copy of the
terminal for them.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Self, TextIO

HANDLED = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum: int) -> str:
    """'SIGINT', 'SIGTERM', ..."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + signal number (130 SIGINT, 143 SIGTERM)."""
    return 128 + int(signum)


class Stopped(KeyboardInterrupt):
    """A signal stopped the command; ``signum`` is the first signal received."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)


class SignalGuard:
    """SIGINT / SIGTERM handlers of the main thread, the previous ones restored on exit.

    ``on_first(signum) -> bool``: True when the command now stops by itself
    (gracefully); False (or no callback) raises :class:`Stopped` at once.
    Outside the main thread (where Python cannot install handlers) the guard
    does nothing.
    """

    def __init__(self, on_first: Callable[[int], bool] | None = None) -> None:
        self.on_first = on_first
        self.signum: int | None = None  # the first signal received, if any
        self.second = False
        self._previous: dict[int, Any] = {}

    @property
    def received(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        """(Re)install the handlers: call again after a library replaced them (``ray.init`` does)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for s in HANDLED:
            current = signal.getsignal(s)
            if current != self._handle and s not in self._previous:
                self._previous[s] = current
            signal.signal(s, self._handle)

    def restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s, handler in self._previous.items():
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def __enter__(self) -> Self:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            if self.on_first is not None and self.on_first(signum):
                return
        else:
            self.second = True
        raise Stopped(self.signum)


class Console:
    """liverlab's own lines, on the terminal even after :meth:`divert` sent fds 1 and 2 to a log."""

    def __init__(self) -> None:
        self._term: TextIO | None = None
        self.log_path: Path | None = None

    @property
    def diverted(self) -> bool:
        return self._term is not None

    def divert(self, candidates: Sequence[str | Path | None]) -> Path | None:
        """Send stdout and stderr (the file descriptors, so native code too) to a log file.

        The first of ``candidates`` (folders) where the log can be opened wins,
        then the temp folder: on a full disk the sweep folder may refuse it.
        Idempotent; returns the log path (None when no file could be opened).
        """
        if self._term is not None:
            return self.log_path
        name = f"liverlab-{time.strftime('%Y%m%d-%H%M%S')}.log"
        fd = -1
        for folder in [*candidates, tempfile.gettempdir()]:
            if folder is None:
                continue
            path = Path(folder) / name
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.write(fd, f"--- liverlab log {time.strftime('%Y-%m-%d %H:%M:%S')} (pid {os.getpid()})\n".encode())
            except OSError:
                if fd >= 0:  # opened but not writable (a full disk): leave no empty log behind
                    os.close(fd)
                    fd = -1
                    with contextlib.suppress(OSError):
                        path.unlink()
                continue
            self.log_path = path
            break
        if fd < 0:
            return None
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        self._term = os.fdopen(os.dup(2), "w", buffering=1)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        return self.log_path

    def say(self, line: str) -> None:
        """One line for the user (the terminal's stderr)."""
        stream = self._term or sys.stderr
        with contextlib.suppress(Exception):
            stream.write(line + "\n")
            stream.flush()

    def log(self, text: str) -> None:
        """Text for the log only (stderr before :meth:`divert`)."""
        if self._term is None:
            return
        with contextlib.suppress(Exception):
            sys.stderr.write(text if text.endswith("\n") else text + "\n")
            sys.stderr.flush()


@contextlib.contextmanager
def guarded(on_first: Callable[[int], bool] | None = None) -> Iterator[SignalGuard]:
    """``with guarded(...) as guard:`` the handlers live for the block."""
    guard = SignalGuard(on_first)
    with guard:
        yield guard


def command_line(args: Sequence[str]) -> str:
    """``liverlab ARGS`` quoted for a POSIX shell."""
    return "liverlab " + shlex.join([str(a) for a in args])
