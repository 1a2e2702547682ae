"""Opening and ending MLflow runs: one sweep = one experiment + a parent run, one trial = a child run.

Why this module exists rather than MLflow's fluent API:

* The fluent API keeps one *global* active run per process; Ray can run
  several trials in one worker (``reuse_actors``), and the sweep driver holds
  the parent while trials log. ``MlflowClient`` calls take the run id
  explicitly, so any number of ``MlflowTracker`` objects coexist.
* A restored sweep must continue the *same* runs (Ray's MLflow callback opens
  a second run per resumed trial and leaves the first RUNNING). Parent and
  child runs are therefore found again by tags (``liverlab.sweep_key``,
  ``liverlab.trial_id``) before anything is created.
* A reopened trial run learns, per metric key, the last step it already holds;
  its tracker does not log those steps again (rule in :mod:`liverlab.tracking.tracker`).
* Training loops log every loss every step. ``log_metrics`` only appends to a
  buffer; a background thread sends ``log_batch`` requests (one per ~1 s or
  500 values), so the training step never waits on SQLite or HTTP.
* Several Ray workers write to one SQLite file; SQLite serialises writers and
  answers "database is locked" under contention. Every store call goes
  through :func:`liverlab.tracking.client.retry_locked` (exponential backoff with jitter).

The store's URI and client come from :mod:`liverlab.tracking.client`. This
package is the only place in liverlab that imports mlflow, and it does so
lazily (inside functions) so that ``liverlab --help`` stays instant.
"""

from __future__ import annotations

import logging
import re
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from liverlab.tracking.client import client_for, retry_locked, sqlite_path

# The tracker objects live in tracker.py (size); they are part of this module's API.
from liverlab.tracking.tracker import (
    ATTEMPT_TAG,
    ERROR_TAG,
    TERMINAL_STATUSES,
    MlflowTracker,
    NullTracker,
    Tracker,
    set_run_tags,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from mlflow.tracking import MlflowClient

__all__ = [
    "ERROR_TAG",
    "MlflowTracker",
    "NullTracker",
    "TERMINAL_STATUSES",
    "Tracker",
    "finish_sweep_run",
    "get_or_create_experiment",
    "git_tags",
    "log_artifacts_to_run",
    "open_run",
    "open_sweep_run",
    "open_trial_run",
    "set_run_tags",
]

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- run tags


def git_tags(repo_dir: str | Path | None = None) -> dict[str, str]:
    """``liverlab.git_commit`` and ``liverlab.git_dirty`` ("true"/"false"), "unknown" off git.

    ``repo_dir`` defaults to the folder holding the liverlab package: the code
    that runs, not Ray's working directory. Dirty means tracked files differ
    from HEAD (untracked files are ignored: caches and outputs live in-tree).
    """
    where = Path(repo_dir) if repo_dir is not None else Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=where, capture_output=True, text=True, timeout=15, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"liverlab.git_commit": "unknown", "liverlab.git_dirty": "unknown"}
    status = git("status", "--porcelain", "--untracked-files=no")
    dirty = "unknown" if status is None else ("true" if status.strip() else "false")
    return {"liverlab.git_commit": commit.strip(), "liverlab.git_dirty": dirty}


# ----------------------------------------------------------------------------- sweep / trial runs


def filter_value(value: str) -> str:
    """Quote a value for an MLflow filter string (it has no escape for quotes)."""
    if "'" in value:
        raise ValueError(f"value {value!r} contains a single quote; cannot be used in an MLflow filter")
    return f"'{value}'"


def search_all(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Any]:
    """Every active run of ``experiment_id`` matching ``filter_string`` (all pages)."""
    from mlflow.entities import ViewType

    runs: list[Any] = []
    token: str | None = None
    while True:
        page = retry_locked(
            client.search_runs,
            [experiment_id],
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=50000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _artifact_location(uri: str, name: str) -> str | None:
    """Next to the SQLite file; MLflow's default (./mlruns) depends on the process's cwd."""
    path = sqlite_path(uri)
    if path is None:
        return None  # a tracking server decides where artifacts go
    safe = re.sub(r"[^\w.\-]+", "_", name).strip("._") or "experiment"
    return (path.parent / "mlartifacts" / safe).as_uri()


def get_or_create_experiment(uri: str, name: str) -> str:
    """Experiment id for ``name``, created (or restored, if deleted) when needed."""
    from mlflow.exceptions import MlflowException

    client = client_for(uri)
    exp = retry_locked(client.get_experiment_by_name, name)
    if exp is None:
        try:
            return retry_locked(client.create_experiment, name, artifact_location=_artifact_location(uri, name))
        except MlflowException as exc:  # another process created it first
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise exc from None
    if exp.lifecycle_stage == "deleted":
        log.warning("experiment %r was deleted; restoring it", name)
        retry_locked(client.restore_experiment, exp.experiment_id)
    return exp.experiment_id


def open_sweep_run(uri: str, sweep_name: str, tags: Mapping[str, str]) -> tuple[str, str]:
    """(experiment_id, parent_run_id) for a sweep; the parent is reused on resume.

    The parent is looked up by ``tags["liverlab.sweep_key"]`` among top-level
    runs of the experiment named ``sweep_name``; found, it is set back to
    RUNNING and its tags refreshed, so ``--resume`` never duplicates it.
    """
    key = tags.get("liverlab.sweep_key")
    if not key:
        raise ValueError("open_sweep_run needs tags['liverlab.sweep_key']")
    client = client_for(uri)
    exp_id = get_or_create_experiment(uri, sweep_name)
    found = [
        r
        for r in search_all(client, exp_id, f"tags.`liverlab.sweep_key` = {filter_value(key)}")
        if "mlflow.parentRunId" not in r.data.tags
    ]
    all_tags = {"liverlab.sweep": sweep_name, **tags}
    if found:
        if len(found) > 1:
            log.warning("%d parent runs share sweep key %s; continuing the oldest", len(found), key)
        run_id = found[0].info.run_id
        retry_locked(client.update_run, run_id, status="RUNNING")
        set_run_tags(client, run_id, all_tags)
        return exp_id, run_id
    run = retry_locked(client.create_run, exp_id, tags=dict(all_tags), run_name=sweep_name)
    return exp_id, run.info.run_id


def last_steps(run: Any) -> dict[str, int]:
    """Per metric key, the highest step ``run`` (an MLflow ``Run``) holds.

    A run's latest metrics are its points with the highest (step, timestamp,
    value) per key (SQL and file stores, and servers backed by them), so the
    run already fetched answers this without reading any history. Their steps
    are public through ``RunData.to_proto`` only (``RunData.metrics`` maps key
    to value).
    """
    return {m.key: int(m.step) for m in run.data.to_proto().metrics}


def open_trial_run(
    uri: str,
    experiment_id: str,
    parent_run_id: str,
    trial_id: str,
    tags: Mapping[str, str],
    run_name: str | None = None,
) -> MlflowTracker:
    """A tracker on the child run of ``parent_run_id`` for ``trial_id``; the same run on resume.

    A resumed trial (after Ctrl-C or ``kill -9``) finds its run by the tags
    ``mlflow.parentRunId`` + ``liverlab.trial_id`` and continues it (status
    back to RUNNING, params already logged are remembered so they are not
    logged twice). The tracker also learns the last step the run holds for each
    metric key and drops points at or below it: a trial restored from an older
    checkpoint reruns steps it had logged, and those keep their first value.
    """
    client = client_for(uri)
    flt = (
        f"tags.`mlflow.parentRunId` = {filter_value(parent_run_id)} "
        f"and tags.`liverlab.trial_id` = {filter_value(trial_id)}"
    )
    found = search_all(client, experiment_id, flt)
    attempt = uuid.uuid4().hex  # this attempt owns the run from now on (see MlflowTracker.superseded)
    all_tags = {**tags, "liverlab.trial_id": trial_id, "mlflow.parentRunId": parent_run_id, ATTEMPT_TAG: attempt}
    commit = all_tags.get("liverlab.git_commit")
    if commit and commit != "unknown":
        all_tags.setdefault("mlflow.source.git.commit", commit)  # shown by the MLflow UI
    if found:
        if len(found) > 1:
            log.warning("%d runs for trial %s; continuing the oldest", len(found), trial_id)
        run_id = found[0].info.run_id
        retry_locked(client.update_run, run_id, status="RUNNING")
        set_run_tags(client, run_id, {k: v for k, v in all_tags.items() if k != "mlflow.parentRunId"})
        # Read after the attempt tag is set: a stale attempt checks that tag before every
        # send (MlflowTracker.superseded), so at most a send already past its check lands later.
        run = retry_locked(client.get_run, run_id)
        return MlflowTracker(
            client, run_id, existing_params=run.data.params, last_steps=last_steps(run), attempt=attempt
        )
    run = retry_locked(
        client.create_run, experiment_id, tags={k: str(v) for k, v in all_tags.items()}, run_name=run_name
    )
    return MlflowTracker(client, run.info.run_id, attempt=attempt)


def open_run(
    uri: str, experiment: str, run_name: str | None = None, tags: Mapping[str, str] | None = None
) -> MlflowTracker:
    """A new top-level run in ``experiment`` (created if absent): ``liverlab train`` outside a sweep.

    Not idempotent (a single training has no resume key); sweeps use
    :func:`open_sweep_run` / :func:`open_trial_run`.
    """
    client = client_for(uri)
    exp_id = get_or_create_experiment(uri, experiment)
    all_tags = {k: str(v) for k, v in (tags or {}).items()}
    commit = all_tags.get("liverlab.git_commit")
    if commit and commit != "unknown":
        all_tags.setdefault("mlflow.source.git.commit", commit)
    run = retry_locked(client.create_run, exp_id, tags=all_tags, run_name=run_name)
    return MlflowTracker(client, run.info.run_id)


def finish_sweep_run(
    uri: str, parent_run_id: str, status: str = "FINISHED", child_status: str = "KILLED"
) -> None:
    """End the parent run; any child still RUNNING is ended as ``child_status`` first."""
    if status not in TERMINAL_STATUSES or child_status not in TERMINAL_STATUSES:
        raise ValueError(f"statuses must be in {TERMINAL_STATUSES}")
    client = client_for(uri)
    parent = retry_locked(client.get_run, parent_run_id)
    flt = f"tags.`mlflow.parentRunId` = {filter_value(parent_run_id)} and attributes.status = 'RUNNING'"
    for child in search_all(client, parent.info.experiment_id, flt):
        retry_locked(client.set_terminated, child.info.run_id, child_status)
    retry_locked(client.set_terminated, parent_run_id, status)


def log_artifacts_to_run(uri: str, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
    """Copy a local folder into any run's artifacts (the report goes to the sweep's parent)."""
    retry_locked(client_for(uri).log_artifacts, run_id, str(local_dir), artifact_path)
