"""What a person sees while a sweep runs and when it ends.

A live table (trial, arm, seed, state, iteration, best objective, elapsed),
redrawn in place on a terminal and printed as plain lines otherwise (CI logs),
and a per-arm summary at the end.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from ray.tune import Callback

from liverlab.sweep.space import LoadedSpace


class LiveTable(Callback):
    def __init__(self, loaded: LoadedSpace, enabled: bool = True) -> None:
        self.objective = loaded.space.objectives[0]
        self.rows: dict[str, dict[str, Any]] = {}
        self.enabled = enabled
        self.tty = enabled and sys.stdout.isatty()
        self._live: Any = None
        if self.tty:
            from rich.live import Live

            self._live = Live(self._table(), refresh_per_second=2, transient=False)
            self._live.start()

    # -- Tune callback hooks
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        row["state"] = "RUNNING"
        self._update(trial, "started")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        row = self._row(trial)
        row["iter"] = result.get("training_iteration", row["iter"])
        value = result.get(self.objective.metric)
        if value is not None and math.isfinite(value):
            better = max if self.objective.mode == "max" else min
            row["best"] = value if row["best"] is None else better(row["best"], value)
        self._update(trial, None)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._row(trial)["state"] = "TERMINATED"
        self._update(trial, "finished")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._row(trial)["state"] = "ERROR"
        self._update(trial, "failed")

    # -- drawing
    def _row(self, trial: Any) -> dict[str, Any]:
        if trial.trial_id not in self.rows:
            cfg = trial.config
            self.rows[trial.trial_id] = {
                "arm": cfg.get("arm_id", "?"), "seed": cfg.get("seed", "?"), "state": "PENDING",
                "iter": 0, "best": None, "start": time.monotonic(),
            }
        return self.rows[trial.trial_id]

    def _update(self, trial: Any, event: str | None) -> None:
        if not self.enabled:
            return
        if self._live is not None:
            self._live.update(self._table())
        elif event:
            r = self.rows[trial.trial_id]
            best = "-" if r["best"] is None else f"{r['best']:.4f}"
            print(f"[sweep] {trial.trial_id} {r['arm']} seed={r['seed']} {event} "
                  f"iter={r['iter']} best {self.objective.metric}={best} "
                  f"({time.monotonic() - r['start']:.0f} s)", flush=True)

    def _table(self) -> Any:
        from rich.table import Table

        t = Table(title=f"trials (best {self.objective.metric}, {self.objective.mode})")
        for col in ("trial", "arm", "seed", "state", "iter", "best", "elapsed"):
            t.add_column(col)
        for tid, r in self.rows.items():
            best = "-" if r["best"] is None else f"{r['best']:.4f}"
            t.add_row(tid, r["arm"], str(r["seed"]), r["state"], str(r["iter"]), best, f"{time.monotonic() - r['start']:.0f} s")
        return t

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def summarize(loaded: LoadedSpace, results: Any, elapsed: float, finished: int | None = None) -> str:
    """Per-arm n, failures, mean and best objective, as a printed table.

    ``finished``: planned trials with a FINISHED run (the title says "N of M
    planned trials finished"; a resume may have run only some of them).
    """
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    obj = loaded.space.objectives[0]
    per_arm: dict[str, dict[str, Any]] = {}
    for r in results:
        cfg = r.config or {}
        arm = cfg.get("arm_id", "?")
        d = per_arm.setdefault(arm, {"values": [], "failed": 0})
        if r.error is not None:
            d["failed"] += 1
            continue
        df = r.metrics_dataframe
        if df is not None and obj.metric in df:
            col = df[obj.metric].dropna()
            if len(col):
                d["values"].append(float(col.max() if obj.mode == "max" else col.min()))
    planned = len(loaded.trials())
    done = f"{finished} of {planned} planned trials finished; " if finished is not None else ""
    t = Table(title=f"sweep {loaded.name}: {done}{len(results)} trials in {elapsed / 60:.1f} min "
                    f"(per trial: best {obj.metric} over epochs)")
    for col in ("arm", "n", "failed", f"mean {obj.metric}", f"best {obj.metric}"):
        t.add_column(col, justify="left" if col == "arm" else "right")
    pick = max if obj.mode == "max" else min
    for arm, d in sorted(per_arm.items()):
        v = d["values"]
        t.add_row(arm, str(len(v)), str(d["failed"]), f"{sum(v) / len(v):.4f}" if v else "-", f"{pick(v):.4f}" if v else "-")
    buf = StringIO()
    Console(file=buf, width=120, force_terminal=False).print(t)
    return buf.getvalue()
