"""Read a sweep's runs back as polars frames (one row per run, long histories).

Two paths, same columns:

* **SQL** (``sqlite:``, ``postgresql:``, ``mysql:`` URIs): set-based queries
  on the store's tables (:mod:`liverlab.tracking.read_sql`); 10,000 runs in
  1.5-3 s on 2 cores (see ``benchmarks/bench_reader.py``).
* **client** (``http(s)://`` tracking servers, anything else): paged
  ``MlflowClient.search_runs`` plus ``get_metric_history`` (in a thread pool)
  for the best values (:mod:`liverlab.tracking.read_client`).

Columns of :func:`read_runs`:

``run_id, run_name, experiment_id, parent_run_id, status, start_time,
end_time, artifact_uri``; every ``liverlab.*`` tag under its short name
(``arm``, ``seed`` (Int64), ``stage``, ``trial_id``, ``sweep``, ``sweep_key``,
``git_commit``, ``git_dirty`` (Boolean), ``manifest_hash``, ``space_file``,
``version``, ``node_id``, ``error``); other tags as ``tag.<key>``; params as
``param.<key>`` cast to the ``ExperimentConfig`` field type (unknown keys:
Int64, else Float64, else Boolean, else String; "None" becomes null); the
latest value of each metric as ``metric.<key>``; and the best as
``best.<key>``: the **maximum** for keys whose last path part is one of
:data:`HIGHER_IS_BETTER` (iou, dice, ssim, psnr, shape_dice, ...), the
**minimum** for every other key (losses, distances, errors). NaN points are
ignored for ``best`` and kept for ``metric``. MLflow stores +-inf as +-max
float; those come back as +-inf (an empty mask's surface distance is inf).
"""

from __future__ import annotations

import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl

from liverlab.errors import LiverlabError
from liverlab.tracking import read_sql
from liverlab.tracking.artifacts import download_artifact, list_artifacts, local_dir
from liverlab.tracking.client import client_for, retry_locked
from liverlab.tracking.columns import HIGHER_IS_BETTER, assemble, config_param_types, higher_is_better, restore_inf
from liverlab.tracking.read_client import client_history, client_long, search_all

__all__ = [
    "HIGHER_IS_BETTER",
    "PER_PATIENT_FILE",
    "config_param_types",
    "download_artifact",
    "higher_is_better",
    "list_artifacts",
    "list_experiments",
    "read_histories",
    "read_per_patient",
    "read_run_tags",
    "read_runs",
    "resolve_experiment",
]

PER_PATIENT_FILE = "per_patient.parquet"


# ----------------------------------------------------------------------------- public API


def _use_sql(uri: str, backend: str) -> bool:
    if backend not in ("auto", "sql", "client"):
        raise ValueError(f"backend must be auto, sql or client, got {backend!r}")
    return backend == "sql" or (backend == "auto" and read_sql.is_sql_uri(uri))


def list_experiments(uri: str) -> pl.DataFrame:
    """experiment_id, name, lifecycle_stage of every experiment in the store."""
    if read_sql.is_sql_uri(uri):
        return read_sql.experiments(uri)
    from mlflow.entities import ViewType

    exps = retry_locked(client_for(uri).search_experiments, view_type=ViewType.ALL)
    return pl.DataFrame(
        [(e.experiment_id, e.name, e.lifecycle_stage) for e in exps],
        schema={"experiment_id": pl.String, "name": pl.String, "lifecycle_stage": pl.String},
        orient="row",
    )


def resolve_experiment(uri: str, experiment: str) -> str:
    """Experiment id for a name (or an id); LiverlabError listing the names when unknown."""
    exps = list_experiments(uri).filter(pl.col("lifecycle_stage") == "active")
    hit = exps.filter(pl.col("name") == experiment)
    if hit.height == 0:
        hit = exps.filter(pl.col("experiment_id") == experiment)
    if hit.height == 0:
        names = ", ".join(sorted(exps["name"].to_list())) or "none"
        raise LiverlabError(f"no experiment {experiment!r} in {uri} (experiments: {names})")
    return str(hit["experiment_id"][0])


def read_runs(
    uri: str,
    experiment: str | None = None,
    parent_run_id: str | None = None,
    filter_string: str = "",
    *,
    backend: str = "auto",
    include_replaced: bool = False,
) -> pl.DataFrame:
    """One row per active run (only the children of ``parent_run_id`` when given); see module doc.

    ``experiment`` is a name or id (None: every experiment). ``filter_string``
    is an MLflow search filter; it is evaluated by ``MlflowClient.search_runs``
    (exact MLflow semantics) and then applied to the fast path's rows, so it
    costs one extra search. ``backend``: auto | sql | client. Runs a resumed
    sweep replaced (tag ``liverlab.replaced_by``, see ``liverlab.tracking.recovery``)
    are left out unless ``include_replaced``: each trial counts once.
    """
    df = _read_runs(uri, experiment, parent_run_id, filter_string, backend)
    if include_replaced or "replaced_by" not in df.columns:
        return df
    return df.filter(pl.col("replaced_by").is_null())


def _read_runs(uri: str, experiment: str | None, parent_run_id: str | None, filter_string: str,
               backend: str) -> pl.DataFrame:
    exp_ids = [resolve_experiment(uri, experiment)] if experiment is not None else []
    if _use_sql(uri, backend):
        if parent_run_id and not read_sql.run_exists(uri, parent_run_id):
            raise LiverlabError(f"no run {parent_run_id} in {uri}")
        try:
            parts = read_sql.read_long(uri, exp_ids, parent_run_id)
        except read_sql.SchemaMismatch as exc:
            if backend == "sql":
                raise LiverlabError(f"{uri} is not an MLflow tracking store: {exc}") from None
            parts = None
        if parts is not None:
            df = assemble(**parts)
            return _apply_filter(uri, df, exp_ids, filter_string) if filter_string else df
    if not exp_ids:
        exp_ids = list_experiments(uri).filter(pl.col("lifecycle_stage") == "active")["experiment_id"].to_list()
    if parent_run_id:
        parent = retry_locked(client_for(uri).get_run, parent_run_id)  # raises when unknown
        exp_ids = exp_ids or [parent.info.experiment_id]
    df = assemble(**client_long(uri, exp_ids, parent_run_id))
    return _apply_filter(uri, df, exp_ids, filter_string) if filter_string else df


def _apply_filter(uri: str, df: pl.DataFrame, exp_ids: list[str], filter_string: str) -> pl.DataFrame:
    """Keep the rows whose runs match an MLflow filter string (evaluated by MLflow itself)."""
    ids = exp_ids or df["experiment_id"].unique().to_list()
    keep = [r.info.run_id for r in search_all(uri, ids, filter_string)]
    return df.filter(pl.col("run_id").is_in(keep))


def read_histories(
    uri: str, runs: pl.DataFrame, keys: list[str] | None = None, *, backend: str = "auto"
) -> pl.DataFrame:
    """Long metric histories: run_id, key, step, value (sorted; a step logged twice keeps the latest)."""
    ids = runs["run_id"].to_list() if runs.height else []
    if _use_sql(uri, backend):
        hist = read_sql.read_history(uri, ids, keys)
    else:
        metric_keys = keys or sorted({c[len("metric.") :] for c in runs.columns if c.startswith("metric.")})
        cols = [pl.col(f"metric.{k}").is_not_null().alias(k) for k in metric_keys if f"metric.{k}" in runs.columns]
        present = runs.select("run_id", *cols)
        pairs = [(row["run_id"], k) for row in present.iter_rows(named=True) for k in metric_keys if row.get(k)]
        hist = client_history(uri, pairs)
    return (
        hist.sort("run_id", "key", "step", "timestamp")
        .unique(subset=["run_id", "key", "step"], keep="last", maintain_order=True)
        .select("run_id", "key", "step", restore_inf())
    )


def _col_or_null(df: pl.DataFrame, name: str, dtype: Any) -> pl.Expr:
    """``name`` cast to ``dtype``, or a null column when the frame lacks it."""
    return (pl.col(name) if name in df.columns else pl.lit(None)).cast(dtype).alias(name)


def read_per_patient(uri: str, runs: pl.DataFrame) -> pl.DataFrame:
    """Long per-patient test metrics: run_id, arm, seed, patient_id, metric, value.

    Reads each run's ``per_patient.parquet`` (straight from disk for local
    artifact stores, downloaded otherwise); runs without one are skipped.
    """
    schema = {"run_id": pl.String, "arm": pl.String, "seed": pl.Int64, "patient_id": pl.String,
              "metric": pl.String, "value": pl.Float64}
    if runs.height == 0:
        return pl.DataFrame(schema=schema)
    meta = runs.select(
        "run_id",
        _col_or_null(runs, "arm", pl.String),
        _col_or_null(runs, "seed", pl.Int64),
        _col_or_null(runs, "artifact_uri", pl.String),
    )
    tmp = Path(tempfile.mkdtemp(prefix="liverlab-pp-"))

    def one(row: dict[str, Any]) -> pl.DataFrame | None:
        local = local_dir(row["artifact_uri"])
        if local is not None:
            path: Path | None = local / PER_PATIENT_FILE
            path = path if path.is_file() else None
        else:
            path = download_artifact(uri, row["run_id"], PER_PATIENT_FILE, tmp / row["run_id"], runs)
        if path is None:
            return None
        df = pl.read_parquet(path)
        if "patient_id" not in df.columns:
            raise LiverlabError(f"run {row['run_id']}: {PER_PATIENT_FILE} has no patient_id column")
        numeric = [c for c, t in df.schema.items() if c != "patient_id" and t.is_numeric()]
        return (
            df.select(pl.col("patient_id").cast(pl.String), *[pl.col(c).cast(pl.Float64) for c in numeric])
            .unpivot(on=numeric, index="patient_id", variable_name="metric", value_name="value")
            .with_columns(pl.lit(row["run_id"]).alias("run_id"), pl.lit(row["arm"], dtype=pl.String).alias("arm"),
                          pl.lit(row["seed"], dtype=pl.Int64).alias("seed"))
        )

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            parts = [p for p in pool.map(one, meta.iter_rows(named=True)) if p is not None]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not parts:
        return pl.DataFrame(schema=schema)
    return pl.concat(parts, how="vertical_relaxed").select(list(schema))


def read_run_tags(uri: str, run_id: str) -> dict[str, str]:
    """All tags of one run (e.g. the sweep's parent); LiverlabError when the run is unknown."""
    if read_sql.is_sql_uri(uri):
        rows = read_sql.run_tags(uri, run_id)
        if rows is not None:
            return rows
        raise LiverlabError(f"no run {run_id} in {uri}")
    from mlflow.exceptions import MlflowException

    try:
        return dict(retry_locked(client_for(uri).get_run, run_id).data.tags)
    except MlflowException as exc:
        raise LiverlabError(f"no run {run_id} in {uri}: {exc}") from None
