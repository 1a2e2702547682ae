"""A sweep stopped by Ctrl-C, SIGTERM or a full disk: clean runs, one line, a resume command.

:func:`run_guarded` wraps the body of ``liverlab sweep`` (``runner._run_sweep``):

* **First SIGINT / SIGTERM** during ``Tuner.fit``: Tune's own stop (the
  handler it installs for SIGUSR1: save the experiment state, stop the trials,
  which keep their last checkpoint). Tune's SIGINT handler is switched off
  (``TUNE_DISABLE_SIGINT_HANDLER``) so that SIGINT and SIGTERM take the same
  path, and our SIGTERM handler replaces Ray's (which aborts with native stack
  dumps). Outside ``fit`` the first signal stops at once. **A second signal**
  stops at once. Then every open MLflow run of the sweep is ended KILLED
  (``liverlab.tracking.recovery.close_interrupted_runs``), no report is
  written, one line gives the ``liverlab sweep ... --resume`` command, and the
  exit code is 130 (SIGINT) or 143 (SIGTERM).
* **A full disk** (ENOSPC, SQLite "database or disk is full", pyarrow, S3):
  :class:`SweepGuard` stops Tune at the first trial that failed of it; the
  driver's own writes raise it directly. One line names the path, the
  planned trials finished and the resume command; exit code 1.

In both cases the output of Ray and the trials, and the traceback, go to
``liverlab-<time>.log`` in the sweep folder (the temp folder when the sweep
folder cannot take it), not to the terminal.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback

from liverlab.diskspace import LOW_SPACE, DiskFull, describe, free_space, full_location, is_disk_full
from liverlab.signals import Console, SignalGuard, Stopped, command_line, exit_code, signal_name

_ACTIVE: SweepSession | None = None


def active() -> SweepSession | None:
    """The sweep this process is running (Tune restores callbacks from its pickles: they look it up here)."""
    return _ACTIVE


class SweepSession:
    """What the interrupt and disk-full paths need to know about the running sweep."""

    def __init__(self, opts: Any) -> None:
        self.opts = opts
        self.console = Console()
        self.guard = SignalGuard(self._first_signal)
        self.name = opts.name or Path(opts.space).stem
        self.local_dir: Path | None = None
        self.tune_dir: str | None = None
        self.fs: Any = None
        self.uri: str | None = None
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self.planned = 0
        self.fitting = False
        self.full: BaseException | str | None = None  # what stopped the sweep for a full disk
        self.statuses: dict[str, str] = {}  # trial id -> Tune status (SweepGuard)
        self.paths: list[Path] = []  # folders the sweep writes to (disk-full diagnosis)

    # -- filled in by the runner as it goes
    def located(self, name: str, local_dir: Path, tune_dir: str, fs: Any, paths: list[Path]) -> None:
        self.name, self.local_dir, self.tune_dir, self.fs = name, local_dir, tune_dir, fs
        self.paths = [p for p in paths if p is not None]

    def tracking(self, uri: str, experiment_id: str, parent_run_id: str, planned: int) -> None:
        self.uri, self.experiment_id, self.parent_run_id, self.planned = uri, experiment_id, parent_run_id, planned

    def resume_command(self) -> str:
        o = self.opts
        args = ["sweep", o.space]
        for item in o.set:
            args += ["--set", item]
        for flag, value in (("--num-samples", o.num_samples), ("--max-concurrent", o.max_concurrent),
                            ("--address", o.address), ("--storage", o.storage),
                            ("--tracking-uri", o.tracking_uri), ("--name", o.name)):
            if value:
                args += [flag, str(value)]
        args += ["--no-report"] if not o.report else []
        args += ["--force"] if getattr(o, "force", False) else []
        return command_line([*args, "--resume"])

    # -- Tune
    def fit(self, tuner: Any) -> list[Any]:
        """``tuner.fit()``; raises Stopped / DiskFull when a signal or a full disk ended it early."""
        previous = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # SIGINT comes to us; we call Tune's stop
        watch = _DiskFullFilter(self)
        handlers = logging.getLogger("ray").handlers
        for h in handlers:
            h.addFilter(watch)
        self.fitting = True
        try:
            results = list(tuner.fit())
        except Exception as exc:
            if self.guard.received:  # whatever Tune tripped over while stopping, the user stopped it
                raise Stopped(self.guard.signum or signal.SIGINT) from exc
            # Tune itself trips over files a full disk cut short (e.g. "EOFError: Ran out of input").
            if self.full is not None or is_disk_full(exc, self.paths) or self.space_exhausted():
                raise DiskFull(str(self.full or exc)[-2000:]) from exc
            raise
        finally:
            self.fitting = False
            if previous is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = previous
            for h in handlers:
                h.removeFilter(watch)
        if self.guard.received:
            raise Stopped(self.guard.signum or signal.SIGINT)
        if self.full is not None:
            raise DiskFull(str(self.full)[-2000:])
        return results

    def space_exhausted(self) -> bool:
        """True when a folder the sweep writes to has less than 1 MB free."""
        return any(free_space(p)[1] < LOW_SPACE for p in self.paths)

    def note_full(self, text: str) -> None:
        """A full disk was seen (trial error, Tune's log): quiet the terminal and stop Tune."""
        if self.full is None:
            self.full = text
            self.console.divert([self.local_dir])
            self.stop_tune()

    def stop_tune(self) -> bool:
        """Ask the running ``Tuner.fit`` to stop the way Ctrl-C does; False when none runs."""
        handler = signal.getsignal(signal.SIGUSR1)
        if (
            not self.fitting
            or not callable(handler)
            or "signal_interrupt_tune_run" not in getattr(handler, "__name__", "")
        ):
            return False
        if threading.current_thread() is threading.main_thread():
            handler(signal.SIGUSR1, None)
        else:  # Tune's handler touches signal handlers, which only the main thread may do
            os.kill(os.getpid(), signal.SIGUSR1)
        return True

    def _first_signal(self, signum: int) -> bool:
        self.console.say(f"liverlab: {signal_name(signum)} received: stopping sweep {self.name} "
                         "(trials keep their last checkpoint; press Ctrl-C or send the signal again to stop at once)")
        self.console.divert([self.local_dir])
        return self.stop_tune()

    # -- endings
    def finished_slots(self) -> set[tuple[str, int, int]]:
        """Slots with a FINISHED (not replaced) child run in MLflow."""
        return self.slots_by_status().get("FINISHED", set())

    def slots_by_status(self) -> dict[str, set[tuple[str, int, int]]]:
        """Run status -> the slots with a (not replaced) child run in MLflow of that status (one query)."""
        from liverlab.tracking.recovery import slot_runs

        if not (self.uri and self.experiment_id and self.parent_run_id):
            return {}
        out: dict[str, set[tuple[str, int, int]]] = {}
        for r in slot_runs(self.uri, self.experiment_id, self.parent_run_id):
            if r["slot"] and not r["replaced_by"]:
                out.setdefault(r["status"], set()).add(r["slot"])
        return out

    def _progress(self) -> str:
        try:
            return f"{len(self.finished_slots())} of {self.planned} planned trials finished"
        except Exception as exc:  # noqa: BLE001 - the store may be what is full
            self.console.log(f"finished trials not counted: {exc!r}")
            return f"{self.planned} trials planned"

    def _close_runs(self, parent_status: str, error: str | None) -> None:
        from liverlab.tracking.recovery import close_interrupted_runs

        if not (self.uri and self.parent_run_id):
            return
        unfinished = [t for t, s in self.statuses.items() if s == "RUNNING"]
        try:
            n = close_interrupted_runs(self.uri, self.parent_run_id, unfinished, parent_status, error)
            self.console.log(f"ended {n} open trial run(s) KILLED, parent {parent_status}")
        except Exception:  # noqa: BLE001 - a resume ends them; the log says why it could not now
            self.console.log("could not end the open MLflow runs:\n" + traceback.format_exc())

    def _drop_partial(self) -> None:
        from liverlab.sweep.plan import drop_partial_checkpoints

        if self.tune_dir is not None and self.fs is None:
            for path in drop_partial_checkpoints(self.tune_dir):
                self.console.log(f"removed {path}: cut short by the full disk")

    def interrupted(self, signum: int) -> int:
        self.console.divert([self.local_dir])
        self._close_runs("KILLED", None)
        log = f" (log: {self.console.log_path})" if self.console.log_path else ""
        self.console.say(f"liverlab: sweep {self.name} interrupted by {signal_name(signum)}: {self._progress()}, "
                         f"open runs KILLED, no report; resume with: {self.resume_command()}{log}")
        return exit_code(signum)

    def disk_full(self, exc: BaseException) -> int:
        self.console.divert([self.local_dir])
        self.console.log("".join(traceback.format_exception(exc)))
        detail = self.full if self.full is not None else exc
        where = full_location(detail, self.paths)
        place = describe(where) if where is not None else "the sweep's storage or tracking store"
        self._close_runs("FAILED", f"disk full: {where}")
        self._drop_partial()
        log = f" (traceback: {self.console.log_path})" if self.console.log_path else ""
        self.console.say(f"liverlab: error: disk full at {place}: sweep {self.name} stopped with {self._progress()}; "
                         f"free space, then resume with: {self.resume_command()}{log}")
        return DiskFull.exit_code


class SweepGuard(Callback):
    """Tune callback: trial statuses (for the KILLED marking) and the stop on a full disk.

    Statuses come from the events, not from Tune's trial list at the end: when
    Tune stops running trials at the end of an interrupted ``fit`` it marks them
    TERMINATED without a completion event, and their runs must end KILLED.

    Stateless itself (Tune pickles callbacks into ``tuner.pkl`` and a restore
    gets a copy): everything goes to :func:`active`.
    """

    def _note(self, trial: Any, status: str) -> None:
        session = active()
        if session is not None:
            session.statuses[trial.trial_id] = status

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._note(trial, "RUNNING")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._note(trial, "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._note(trial, "ERROR")
        self._check_disk(trial)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._check_disk(trial)

    def _check_disk(self, trial: Any) -> None:
        session = active()
        if session is None or session.full is not None:
            return
        text = _error_text(trial)
        if is_disk_full(text, session.paths):
            session.note_full(text)


class _DiskFullFilter(logging.Filter):
    """On Ray's log handler during ``fit``: the first record that reports a full disk (a trial's
    traceback, Tune's failed state upload) diverts the output to the log file before it is written."""

    def __init__(self, session: SweepSession) -> None:
        super().__init__()
        self.session = session

    def filter(self, record: logging.LogRecord) -> bool:
        if self.session.full is None:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text += "\n" + "".join(traceback.format_exception(record.exc_info[1]))
            if is_disk_full(text, self.session.paths):
                self.session.note_full(text)
        return True


def _error_text(trial: Any) -> str:
    """The trial's error as text (its error files may themselves be cut short by a full disk)."""
    parts: list[str] = []
    for getter in (getattr(trial, "get_error", None), getattr(trial, "get_pickled_error", None)):
        if getter is None:
            continue
        try:
            err = getter()
        except Exception as exc:  # noqa: BLE001 - an unreadable error file is itself a clue
            parts.append(f"{type(exc).__name__}: {exc}")
            continue
        if err is not None:
            parts.append(str(err))
    return "\n".join(parts)


def run_guarded(opts: Any, body: Callable[[Any, SweepSession], int]) -> int:
    """Run ``body(opts, session)`` under the signal handlers; signals and a full disk end it as above."""
    global _ACTIVE
    session = _ACTIVE = SweepSession(opts)
    try:
        with session.guard:
            try:
                return body(opts, session)
            except Stopped as stop:
                return session.interrupted(stop.signum)
            except KeyboardInterrupt:  # before our handler was installed, or raised by a library
                return session.interrupted(session.guard.signum or signal.SIGINT)
            except DiskFull as exc:
                return session.disk_full(exc)
            except Exception as exc:
                if is_disk_full(exc, session.paths):
                    return session.disk_full(exc)
                raise
    finally:
        _ACTIVE = None
