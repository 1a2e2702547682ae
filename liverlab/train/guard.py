"""``liverlab train`` under Ctrl-C, SIGTERM and a full disk (the sweep's rules, for one run).

* Before compute: the disk-space estimate of ``liverlab.diskspace`` for one
  run in ``--out`` (``--force`` skips it).
* SIGINT / SIGTERM: training stops at once. The loops write a checkpoint
  atomically every ``unet.val_every`` iterations and every EssNet epoch; the
  newest one is kept and named. The MLflow run is ended KILLED, one line gives
  the resume command (the same command with ``--out`` of this run), and the
  exit code is 130 or 143. A second signal during that cleanup stops at once.
* A full disk: one line with the path and the resume command, the run ended
  FAILED where the store still takes it, the traceback in a log file in the
  run folder (the temp folder when that is full), exit code 1.
* ``--out`` remembers its MLflow run in ``liverlab_run.json``: training again
  into the same folder resumes from its checkpoint and continues the same run.
"""

from __future__ import annotations

import json
import signal
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from liverlab.data.atomic import write_json_atomic
from liverlab.diskspace import check, describe, full_location, is_disk_full, plan_needs
from liverlab.signals import Console, SignalGuard, Stopped, command_line, exit_code, signal_name

RUN_FILE = "liverlab_run.json"


class TrainGuard:
    """``with guard:`` installs the signal handlers around the training."""

    def __init__(self, args: Any, cfg: Any, out: Path) -> None:
        self.args, self.cfg, self.out = args, cfg, out
        self.console = Console()
        self.guard = SignalGuard(self._first_signal)
        self.uri: str | None = None

    def __enter__(self) -> Self:
        self.guard.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.guard.restore()

    def _first_signal(self, signum: int) -> bool:
        self.console.say(f"liverlab: {signal_name(signum)} received: stopping training (the last checkpoint is kept)")
        self.console.divert([self.out])
        return False  # stop now: the newest checkpoint on disk is what a resume starts from

    # -- before compute
    def check_space(self, tracking_uri: str | None) -> None:
        from liverlab.tracking.writer import sqlite_path

        db = sqlite_path(tracking_uri) if tracking_uri else None
        needs = plan_needs([self.cfg], self.out, db, self.out / "cache")
        check(needs, bool(getattr(self.args, "force", False)), f"train {self.cfg.name}")

    def open_tracker(self, uri: str, open_new: Callable[[], Any]) -> Any:
        """The run recorded in ``--out`` (continued), else a new one (recorded)."""
        from liverlab.tracking.recovery import reopen_run

        self.uri = uri
        path = self.out / RUN_FILE
        tracker = None
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError):
                saved = {}
            if saved.get("tracking_uri") == uri and saved.get("run_id"):
                tracker = reopen_run(uri, saved["run_id"])
        if tracker is None:
            tracker = open_new()
            write_json_atomic(path, {"tracking_uri": uri, "run_id": tracker.run_id})
        return tracker

    def resume_command(self) -> str:
        a = self.args
        args = ["train", a.experiment]
        for item in a.set:
            args += ["--set", item]
        args += ["--out", str(self.out)]
        args += ["--tracking-uri", a.tracking_uri] if a.tracking_uri else []
        args += ["--no-track"] if a.no_track else []
        args += ["--force"] if getattr(a, "force", False) else []
        return command_line(args)

    def _checkpoint(self) -> str:
        found = sorted(self.out.rglob("state.pt"), key=lambda p: p.stat().st_mtime)
        return f"last checkpoint {found[-1]}" if found else "no checkpoint yet"

    # -- endings
    def stopped(self, exc: BaseException, tracker: Any) -> int | None:
        """Exit code after a signal or a full disk (run ended, one line said); None for other errors."""
        from liverlab.tracking.recovery import finish_quietly

        if isinstance(exc, KeyboardInterrupt):
            signum = exc.signum if isinstance(exc, Stopped) else (self.guard.signum or signal.SIGINT)
            self.console.divert([self.out])
            if tracker is not None:
                finish_quietly(tracker, "KILLED", error=f"interrupted by {signal_name(signum)}")
            run = "run KILLED, " if tracker is not None else ""
            self.console.say(f"liverlab: train {self.cfg.name} interrupted by {signal_name(signum)}: {run}"
                             f"{self._checkpoint()}; resume with: {self.resume_command()}")
            return exit_code(signum)
        from liverlab.tracking.writer import sqlite_path

        db = sqlite_path(self.uri) if self.uri else None
        if not is_disk_full(exc, [p for p in (self.out, db) if p is not None]):
            return None
        self.console.divert([self.out])
        self.console.log("".join(traceback.format_exception(exc)))
        where = full_location(exc, [p for p in (self.out, db) if p is not None])
        if tracker is not None:
            finish_quietly(tracker, "FAILED", error=f"disk full: {where}")
        log = f" (traceback: {self.console.log_path})" if self.console.log_path else ""
        self.console.say(f"liverlab: error: disk full at {describe(where) if where else self.out}: train "
                         f"{self.cfg.name} stopped, {self._checkpoint()}; free space, then resume with: "
                         f"{self.resume_command()}{log}")
        return 1
