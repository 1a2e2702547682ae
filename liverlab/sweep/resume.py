"""Run a sweep's trials, and on ``--resume`` every planned trial that is still missing.

``fit_all`` is the part of ``liverlab sweep`` between building the Tuner and
printing the table (see ``liverlab.sweep.plan`` for the rules):

* new sweep: one ``Tuner.fit`` over the whole plan;
* ``--resume``: ``Tuner.restore(...).fit()`` when Tune's state is sound (it
  continues interrupted trials from their checkpoints and retries errored
  ones), then a fresh Tuner over the planned slots that have no FINISHED run
  and were not run just now. Broken state is set aside first, with a warning,
  and the plan is rebuilt from ``liverlab_sweep.json`` and MLflow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from liverlab.sweep.interrupt import SweepSession
from liverlab.sweep.plan import (
    Slot,
    check_state,
    drop_partial_checkpoints,
    missing_slots,
    planned_slots,
    set_aside,
    slot_of,
)
from liverlab.sweep.space import LoadedSpace


def fit_all(
    session: SweepSession,
    loaded: LoadedSpace,
    resume: bool,
    restore: Callable[[], Any],
    fresh: Callable[[list[Slot] | None], Any],
) -> list[Any]:
    """Results of every trial run by this invocation (``restore()`` / ``fresh(only)`` build Tuners)."""
    if not resume:
        return session.fit(fresh(None))
    assert session.tune_dir is not None
    say = session.console.say
    if session.fs is None:  # local storage: Tune copies checkpoints in place, a full disk cuts them short
        for ckpt in drop_partial_checkpoints(session.tune_dir):
            say(f"liverlab: removed {ckpt}: a checkpoint cut short (full disk?)")
    results: list[Any] = []
    state = check_state(session.tune_dir, session.fs)
    if state.ok:
        results = session.fit(restore())
    else:
        where = set_aside(session.tune_dir, session.fs)
        say(f"liverlab: warning: {state.problem}; Tune's state moved to {where}; rebuilding the sweep from "
            "liverlab_sweep.json and the MLflow runs (interrupted trials start again)")
    slots = [slot_of(r.config) for r in results]
    if any(s is None for s in slots):
        return results  # a sweep started before slots were recorded: Tune's restore is all there is
    planned = planned_slots(loaded)
    missing = missing_slots(planned, session.finished_slots(), [s for s in slots if s is not None])
    if missing:
        say(f"liverlab: {len(missing)} of {len(planned)} planned trials have no finished run and were not "
            "in the restored state: running them")
        results += session.fit(fresh(missing))
    return results
