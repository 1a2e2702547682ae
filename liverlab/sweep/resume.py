"""Run a sweep's trials, and on ``--resume`` every planned trial that is still missing.

``fit_all`` is the part of ``liverlab sweep`` between building the Tuner and
printing the table (see ``liverlab.sweep.plan`` for the rules):

* new sweep: one ``Tuner.fit`` over the whole plan;
* ``--resume``: ``Tuner.restore(...).fit()`` when Tune's state is sound (it
  continues interrupted trials from their checkpoints and retries errored
  ones), then a fresh Tuner over the planned slots that have no FINISHED run
  and were not run just now. Broken state is set aside first, with a warning,
  and the plan is rebuilt from ``liverlab_sweep.json`` and MLflow.

A restored trial that ended in an error while its own run did not fail was
*lost*, not failed: its code never ran to an error of its own. The usual
cause is a checkpoint Tune's state still names but which is gone from the
storage (``CheckpointConfig(num_to_keep)`` deletes older checkpoints on
every report, and the state saved before a ``kill -9`` of the driver can
name one of them; Ray then refuses the restore with "does not exist on
storage anymore" before the trial starts). Such a slot is run again from the
start under a new trial id; its old run is marked replaced. A trial whose run
FAILED (its code raised) is not run again.
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
    by_status = session.slots_by_status()
    errored = {slot_of(r.config) for r in results if r.error is not None}
    lost = errored - by_status.get("FAILED", set())
    attempted = [s for s in slots if s is not None and s not in lost]
    missing = missing_slots(planned, by_status.get("FINISHED", set()), attempted)
    if missing:
        n_lost = sum(s in lost for s in missing)
        why = (f" ({n_lost} of them were restored but lost before they could run: "
               f"{_first_error(results, lost)})" if n_lost else "")
        say(f"liverlab: {len(missing)} of {len(planned)} planned trials have no finished run and were not "
            f"run to an end from the restored state{why}: running them from the start")
        # A lost trial's errored result is replaced by its new attempt (its run too: recovery.replace_slot_runs).
        results = [r for r in results if not (r.error is not None and slot_of(r.config) in lost)]
        results += session.fit(fresh(missing))
    return results


def _first_error(results: list[Any], lost: set[Slot | None]) -> str:
    """The first line of the first lost trial's error, shortened (for the one line the user reads)."""
    for r in results:
        if r.error is not None and slot_of(r.config) in lost:
            lines = [line.strip() for line in str(r.error).splitlines() if line.strip()]
            text = next((line for line in lines if "does not exist" in line), lines[-1] if lines else "error")
            return text if len(text) <= 160 else text[:157] + "..."
    return "error"
