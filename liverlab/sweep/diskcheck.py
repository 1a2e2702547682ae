"""``liverlab sweep``'s disk-space check before compute (the estimate: ``liverlab.diskspace``).

A new sweep is checked for all its planned trials; a resume for the
planned trials that have no FINISHED run yet (read from the SQLite store
named in ``liverlab_sweep.json``; all of them for a tracking server or when
the store cannot be read).
"""

from __future__ import annotations

import json
from pathlib import Path

from liverlab.diskspace import check, plan_needs
from liverlab.sweep.plan import planned_slots
from liverlab.sweep.space import LoadedSpace, arm_id


def _finished(local_dir: Path) -> set[tuple[str, int, int]]:
    """Finished slots from a local SQLite store (a tracking server is not asked: it may be down, and
    its client would retry for minutes before the sweep even starts)."""
    try:
        from liverlab.tracking.recovery import slot_runs
        from liverlab.tracking.writer import sqlite_path

        info = json.loads((local_dir / "liverlab_sweep.json").read_text())
        if sqlite_path(info["tracking_uri"]) is None:
            return set()
        runs = slot_runs(info["tracking_uri"], info["experiment_id"], info["parent_run_id"])
    except Exception:  # noqa: BLE001 - no sweep file or store yet: count every planned trial
        return set()
    return {r["slot"] for r in runs if r["status"] == "FINISHED" and r["slot"] and not r["replaced_by"]}


def check_sweep_space(loaded: LoadedSpace, local_dir: Path, local: bool, tracking_uri: str,
                      resume: bool, force: bool) -> list[Path]:
    """Refuse (LiverlabError, one line) when the estimate does not fit; return the folders the sweep
    writes to (the disk-full diagnosis looks at them)."""
    from liverlab.tracking.writer import sqlite_path

    done = _finished(local_dir) if resume else set()
    todo = [(arm, seed) for arm, seed, k in loaded.trials() if (arm_id(arm), seed, k) not in done]
    db = sqlite_path(tracking_uri)
    storage = local_dir if local else None
    configs = [loaded.config(arm, seed) for arm, seed in todo]
    needs = plan_needs(configs, storage, db, storage / "cache" if storage else None)
    n = len(planned_slots(loaded))
    check(needs, force, f"sweep {loaded.name} ({len(todo)} of {n} planned trials to run)")
    cache = [need.folder for need in needs if need.what == "slice cache"]
    return [p for p in (local_dir if local else None, db, *cache) if p is not None]
