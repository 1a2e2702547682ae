"""MLflow runs after an interruption: one run per trial, nothing left RUNNING.

A sweep's planned trial is a *slot*: (arm, seed, sample), carried by the
child run's tags ``liverlab.arm``, ``liverlab.seed`` and ``liverlab.sample``.
Tune normally resumes a trial under its own id, and the trial continues its
own run (:func:`liverlab.tracking.writer.open_trial_run`). When Tune lost the
trial (its driver died before it saved the trial, or its experiment state was
lost to a full disk), the slot is run again under a new trial id, in a new run.
The old run is then **marked KILLED with the tag** ``liverlab.replaced_by``
naming its replacement (and the new run gets ``liverlab.replaces``), never
reused: its params were sampled for another attempt and its metric history
would mix two attempts. ``liverlab.tracking.reader.read_runs`` leaves replaced
runs out (``include_replaced=True`` keeps them), so the report and the reader
count every slot once.

Also: :func:`close_interrupted_runs` (the driver after Ctrl-C / SIGTERM / a
full disk), :func:`slot_runs` (what a resume compares with the plan) and
:func:`reopen_run` (``liverlab train`` continuing its own run).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from liverlab.tracking.client import client_for, retry_locked
from liverlab.tracking.writer import (
    ATTEMPT_TAG,
    ERROR_TAG,
    MlflowTracker,
    filter_value,
    last_steps,
    search_all,
    set_run_tags,
)

log = logging.getLogger(__name__)

REPLACED_BY = "liverlab.replaced_by"
REPLACES = "liverlab.replaces"
SAMPLE = "liverlab.sample"
SLOT_TAGS = ("liverlab.arm", "liverlab.seed", SAMPLE)


def _children(uri: str, experiment_id: str, parent_run_id: str, extra: str = "") -> list[Any]:
    """Every active child run of ``parent_run_id`` (all pages)."""
    flt = f"tags.`mlflow.parentRunId` = {filter_value(parent_run_id)}" + (f" and {extra}" if extra else "")
    return search_all(client_for(uri), experiment_id, flt)


def slot_of_tags(tags: Mapping[str, str]) -> tuple[str, int, int] | None:
    """(arm, seed, sample) of a child run; None for runs older than slots."""
    try:
        return tags["liverlab.arm"], int(tags["liverlab.seed"]), int(tags[SAMPLE])
    except (KeyError, ValueError):
        return None


def slot_runs(uri: str, experiment_id: str, parent_run_id: str) -> list[dict[str, Any]]:
    """run_id, status, trial_id, slot, replaced_by of every child run of the sweep."""
    return [
        {"run_id": r.info.run_id, "status": r.info.status, "trial_id": r.data.tags.get("liverlab.trial_id"),
         "slot": slot_of_tags(r.data.tags), "replaced_by": r.data.tags.get(REPLACED_BY)}
        for r in _children(uri, experiment_id, parent_run_id)
    ]


def _end(client: Any, run_id: str, status: str, tags: Mapping[str, str]) -> None:
    """End a run that another process may still hold: a new attempt tag first, so that a
    stale tracker (``MlflowTracker.superseded``) neither ends it again nor adds metrics."""
    set_run_tags(client, run_id, {ATTEMPT_TAG: f"closed-{uuid.uuid4().hex}", **tags})
    retry_locked(client.set_terminated, run_id, status)


def replace_slot_runs(tracker: MlflowTracker, experiment_id: str, parent_run_id: str,
                      tags: Mapping[str, str], uri: str) -> list[str]:
    """Mark the earlier runs of this trial's slot KILLED + ``liverlab.replaced_by`` = this run.

    Called by a trial right after it opened its run. Runs of the same slot
    under another trial id are earlier attempts Tune no longer knows.
    Returns their ids.
    """
    slot = slot_of_tags(tags)
    if slot is None:
        return []
    _, seed, sample = slot
    extra = (f"tags.`liverlab.seed` = '{seed}' and tags.`{SAMPLE}` = '{sample}'")
    old = [
        r for r in _children(uri, experiment_id, parent_run_id, extra)
        if r.info.run_id != tracker.run_id and slot_of_tags(r.data.tags) == slot
        and r.data.tags.get("liverlab.trial_id") != tags.get("liverlab.trial_id")
        and REPLACED_BY not in r.data.tags
    ]
    client = client_for(uri)
    for r in old:
        _end(client, r.info.run_id, "KILLED", {REPLACED_BY: tracker.run_id})
        log.info("run %s (trial %s) replaced by run %s", r.info.run_id, r.data.tags.get("liverlab.trial_id"),
                 tracker.run_id)
    if old:
        tracker.set_tags({REPLACES: ",".join(r.info.run_id for r in old)})
    return [r.info.run_id for r in old]


def close_interrupted_runs(uri: str, parent_run_id: str, unfinished_trials: Iterable[str],
                           parent_status: str = "KILLED", error: str | None = None) -> int:
    """End the sweep's parent as ``parent_status`` and every open child KILLED.

    Open: RUNNING, or the run of a trial Tune had not completed when it
    stopped (``unfinished_trials``): Tune stops such a trial by raising
    SystemExit(0) in it, which a trial cannot tell from an ASHA stop and so
    may have ended FINISHED. Returns the number of children ended.
    """
    client = client_for(uri)
    parent = retry_locked(client.get_run, parent_run_id)
    unfinished = set(unfinished_trials)
    n = 0
    for r in _children(uri, parent.info.experiment_id, parent_run_id):
        trial = r.data.tags.get("liverlab.trial_id")
        if r.info.status == "RUNNING" or (trial in unfinished and r.info.status == "FINISHED"):
            if "liverlab.stopped_early" in r.data.tags:  # Tune's stop, not ASHA's: the trial is not done
                retry_locked(client.delete_tag, r.info.run_id, "liverlab.stopped_early")
            _end(client, r.info.run_id, "KILLED", {})
            n += 1
    tags = {"liverlab.error": error} if error else {}
    _end(client, parent_run_id, parent_status, tags)
    return n


def finish_quietly(tracker: Any, status: str, error: str | None = None) -> bool:
    """``tracker.finish`` that logs instead of raising (a full disk, a store outage).

    Used where another error is already on its way up: that error must not be
    masked. The run stays open; the sweep driver (:func:`close_interrupted_runs`)
    or a resume ends it. Returns True when the run was ended.
    """
    try:
        tracker.finish(status, error=error)
        return True
    except Exception as exc:  # noqa: BLE001 - reported, the caller re-raises its own error
        log.warning("run %s could not be ended as %s: %s", getattr(tracker, "run_id", "?"), status, exc)
        return False


def reopen_run(uri: str, run_id: str) -> MlflowTracker | None:
    """A tracker on an existing run, set back to RUNNING (None when the run is gone).

    Like a resumed trial, the tracker drops points at steps the run already
    holds: the checkpoint a resume starts from can be older than the last
    metrics that reached the store before the stop.
    """
    from mlflow.exceptions import MlflowException

    client = client_for(uri)
    try:
        run = retry_locked(client.get_run, run_id)
    except MlflowException:
        return None
    if run.info.lifecycle_stage != "active":
        return None
    attempt = uuid.uuid4().hex
    if ERROR_TAG in run.data.tags:  # the error of the attempt that stopped; this one starts clean
        retry_locked(client.delete_tag, run_id, ERROR_TAG)
    retry_locked(client.update_run, run_id, status="RUNNING")
    set_run_tags(client, run_id, {ATTEMPT_TAG: attempt})
    return MlflowTracker(
        client, run_id, existing_params=run.data.params, last_steps=last_steps(run), attempt=attempt
    )
