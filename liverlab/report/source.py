"""Which sweep a report (or an analysis script) is about: a sweep folder or an experiment name.

Light on purpose (json + pathlib only): ``liverlab --help`` imports the
report's command module, which imports this.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liverlab.errors import LiverlabError

SWEEP_FILE = "liverlab_sweep.json"


@dataclass(frozen=True)
class SweepRef:
    """Where a sweep's runs are: tracking URI, experiment (name or id), parent run (if known)."""

    uri: str
    experiment: str
    parent_run_id: str | None
    name: str
    space_file: str | None
    folder: Path | None  # the sweep folder, when SWEEP was one

    @property
    def default_out(self) -> Path:
        """``<SWEEP>/report``."""
        return (self.folder if self.folder is not None else Path(self.name)) / "report"


def resolve_sweep(sweep: str, tracking_uri: str | None = None) -> SweepRef:
    """A sweep folder holding ``liverlab_sweep.json``, or an MLflow experiment name.

    ``tracking_uri`` overrides the file's URI (a moved store); for an
    experiment name it is required (or ``$MLFLOW_TRACKING_URI``).
    """
    path = Path(sweep)
    if path.is_dir():
        meta_path = path / SWEEP_FILE
        if not meta_path.is_file():
            raise LiverlabError(f"{path}: not a sweep folder (no {SWEEP_FILE})")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise LiverlabError(f"{meta_path}: not valid JSON ({exc})") from None
        missing = [k for k in ("name", "tracking_uri", "experiment_id", "parent_run_id") if not meta.get(k)]
        if missing:
            raise LiverlabError(f"{meta_path}: missing {', '.join(missing)}")
        return SweepRef(
            uri=tracking_uri or str(meta["tracking_uri"]),
            experiment=str(meta["experiment_id"]),
            parent_run_id=str(meta["parent_run_id"]),
            name=str(meta["name"]),
            space_file=meta.get("space_file"),
            folder=path,
        )
    if path.suffix == ".json" or os.sep in sweep:
        raise LiverlabError(f"{sweep}: no such sweep folder")
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise LiverlabError(
            f"{sweep!r} is not a sweep folder; to read an MLflow experiment of that name pass --tracking-uri"
        )
    return SweepRef(uri=uri, experiment=sweep, parent_run_id=None, name=sweep, space_file=None, folder=None)


def sweep_runs(uri: str, experiment: str | None, parent_run_id: str | None) -> tuple[Any, str | None, str]:
    """(runs as polars, parent run id, note): the trials of a sweep.

    With a parent run id: its children. With only an experiment: the children
    of its latest sweep parent (a top-level run that has children), else every
    run of the experiment (plain ``liverlab train`` runs).
    """
    import polars as pl

    from liverlab.tracking.reader import read_runs

    if parent_run_id is not None:
        return read_runs(uri, experiment, parent_run_id=parent_run_id), parent_run_id, ""
    if experiment is None:
        raise LiverlabError("need an experiment or a parent run id")
    runs = read_runs(uri, experiment)
    if runs.height == 0:
        return runs, None, ""
    parents = runs.filter(pl.col("parent_run_id").is_null() & pl.col("run_id").is_in(runs["parent_run_id"].implode()))
    if parents.height == 0:
        return runs, None, "every run of the experiment (no sweep parent run found)"
    parent = str(parents.sort("start_time")["run_id"][-1])
    note = f"{parents.height} sweep parent runs in this experiment; the latest was used" if parents.height > 1 else ""
    return runs.filter(pl.col("parent_run_id") == parent), parent, note


def load_units(sweep: str, tracking_uri: str | None = None) -> tuple[SweepRef, Any, Any]:
    """(ref, finished runs, units): the finished trials of a sweep and one unit per (arm, seed),
    with ``value.<metric>`` (test) / ``val.<metric>`` (best validation) columns (see
    ``liverlab.report.units``); the folds of a k-fold sweep are pooled (``liverlab.report.folds``)."""
    import polars as pl

    from liverlab.report import folds
    from liverlab.report import units as unit_rows
    from liverlab.tracking.reader import read_per_patient

    ref = resolve_sweep(sweep, tracking_uri)
    runs, _, _ = sweep_runs(ref.uri, ref.experiment, ref.parent_run_id)
    if runs.height == 0:
        raise LiverlabError(f"{sweep}: no runs")
    finished = unit_rows.with_arm(runs.filter(pl.col("status") == "FINISHED"))
    if finished.height == 0:
        raise LiverlabError(f"{sweep}: no finished runs")
    units = unit_rows.metric_values(unit_rows.select_units(finished))
    if folds.is_pooled(units):
        units, _ = folds.pool_folds(units, folds.patient_rows(read_per_patient(ref.uri, units), units))
    return ref, unit_rows.metric_values(finished), units
