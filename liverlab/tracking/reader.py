"""Read a sweep's runs back as polars frames (one row per run, long histories).

Two paths, same columns:

* **SQL** (``sqlite:``, ``postgresql:``, ``mysql:`` URIs): set-based queries
  on the store's tables (:mod:`liverlab.tracking.sqlstore`); 10,000 runs in
  about a second (see ``benchmarks/bench_reader.py``).
* **client** (``http(s)://`` tracking servers, anything else): paged
  ``MlflowClient.search_runs`` plus ``get_metric_history`` (in a thread pool)
  for the best values.

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
ignored for ``best`` and kept for ``metric``.
"""

from __future__ import annotations

import shutil
import tempfile
import types
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import polars as pl

from liverlab.errors import LiverlabError
from liverlab.tracking import sqlstore
from liverlab.tracking.writer import client_for, retry_locked

HIGHER_IS_BETTER = frozenset({"iou", "dice", "ssim", "psnr", "shape_dice", "accuracy", "auc", "f1"})
BASE_COLUMNS = ("run_id", "run_name", "experiment_id", "parent_run_id", "status", "start_time", "end_time", "artifact_uri")
PER_PATIENT_FILE = "per_patient.parquet"
_TAG_TYPES: dict[str, Any] = {"seed": pl.Int64, "git_dirty": pl.Boolean}
_SKIP_TAGS = frozenset({"mlflow.runName"})  # already the run_name column


def higher_is_better(key: str) -> bool:
    """Direction of ``best.<key>``: max for iou/dice/ssim/psnr/shape_dice..., min otherwise."""
    return key.rsplit("/", 1)[-1].lower() in HIGHER_IS_BETTER


# ----------------------------------------------------------------------------- param types


def _kind(annotation: Any) -> tuple[str, Any]:
    """('model', cls) | ('float'|'int'|'bool'|'str', None) for a pydantic field annotation."""
    from pydantic import BaseModel

    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _kind(args[0])
    if origin is typing.Literal:
        kinds = {type(a) for a in typing.get_args(annotation)}
        return ("str", None) if kinds == {str} else (("int", None) if kinds == {int} else ("str", None))
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "model", annotation
        for t, name in ((bool, "bool"), (int, "int"), (float, "float")):
            if issubclass(annotation, t):
                return name, None
    return "str", None  # tuples, lists, unions of several types: keep the text


def config_param_types() -> dict[str, str]:
    """Dotted config key -> 'float' | 'int' | 'bool' | 'str', from ``ExperimentConfig``."""
    from liverlab.config import ExperimentConfig

    out: dict[str, str] = {}

    def walk(model: Any, prefix: str) -> None:
        for name, field in model.model_fields.items():
            kind, sub = _kind(field.annotation)
            if kind == "model":
                walk(sub, f"{prefix}{name}.")
            else:
                out[prefix + name] = kind

    walk(ExperimentConfig, "")
    return out


_NULLS = ("None", "null", "")
_BOOLS = {"true": True, "false": False}


def _cast_text(col: pl.Series, kind: str | None) -> pl.Series:
    """Cast a String column of param/tag values to ``kind`` (None: infer)."""
    s = pl.select(pl.when(col.is_in(_NULLS)).then(None).otherwise(col).alias(col.name)).to_series()
    nonnull = s.drop_nulls()
    if kind == "str":
        return s
    if kind in (None, "int"):
        as_int = s.cast(pl.Int64, strict=False)
        if kind == "int" or as_int.null_count() == s.null_count():
            return as_int
    if kind in (None, "float"):
        as_float = s.cast(pl.Float64, strict=False)
        if kind == "float" or as_float.null_count() == s.null_count():
            return as_float
    lowered = s.str.to_lowercase()
    if kind == "bool" or (nonnull.len() and lowered.drop_nulls().is_in(list(_BOOLS)).all()):
        return lowered.replace_strict(_BOOLS, default=None, return_dtype=pl.Boolean)
    return s


# ----------------------------------------------------------------------------- assembly


def _tag_column(key: str) -> str:
    if key == "mlflow.parentRunId":
        return "parent_run_id"
    if key.startswith("liverlab."):
        short = key[len("liverlab.") :]
        if short not in BASE_COLUMNS and not short.startswith(("tag.", "param.", "metric.", "best.")):
            return short
    return f"tag.{key}"


def _wide(long: pl.DataFrame, value: str = "value") -> pl.DataFrame:
    if long.height == 0:
        return pl.DataFrame(schema={"run_id": pl.String})
    return long.pivot(on="key", index="run_id", values=value, aggregate_function="first")


def assemble(base: pl.DataFrame, tags: pl.DataFrame, params: pl.DataFrame, latest: pl.DataFrame, best: pl.DataFrame) -> pl.DataFrame:
    """Long tables (run_id, key, value...) -> one row per run with the documented columns."""
    df = base.with_columns(
        pl.from_epoch(pl.col("start_time"), time_unit="ms").dt.replace_time_zone("UTC"),
        pl.from_epoch(pl.col("end_time"), time_unit="ms").dt.replace_time_zone("UTC"),
    )
    tags = tags.filter(~pl.col("key").is_in(list(_SKIP_TAGS)))
    # Map each distinct key once (not once per row): 10k runs x 15 tags.
    names = {k: _tag_column(k) for k in tags["key"].unique().to_list()}
    tags = tags.with_columns(pl.col("key").replace_strict(names, return_dtype=pl.String))
    tag_wide = _wide(tags)
    if "parent_run_id" not in tag_wide.columns:
        tag_wide = tag_wide.with_columns(pl.lit(None, dtype=pl.String).alias("parent_run_id"))
    tag_wide = tag_wide.with_columns(
        [_cast_text(tag_wide[c], "bool" if t == pl.Boolean else "int") for c, t in _TAG_TYPES.items() if c in tag_wide.columns]
    )
    types_ = config_param_types()
    param_wide = _wide(params)
    param_wide = param_wide.select(
        "run_id", *[_cast_text(param_wide[k], types_.get(k)).alias(f"param.{k}") for k in sorted(param_wide.columns) if k != "run_id"]
    )
    metric_wide = _wide(latest)
    metric_wide = metric_wide.select("run_id", *[pl.col(k).alias(f"metric.{k}") for k in sorted(metric_wide.columns) if k != "run_id"])
    if best.height:
        higher = [k for k in best["key"].unique().to_list() if higher_is_better(k)]
        best = best.with_columns(
            pl.when(pl.col("key").is_in(higher))
            .then(pl.col("max"))
            .otherwise(pl.col("min"))
            .alias("value")
        )
    else:
        best = best.with_columns(pl.lit(None, dtype=pl.Float64).alias("value"))
    best_wide = _wide(best.select("run_id", "key", "value"))
    best_wide = best_wide.select("run_id", *[pl.col(k).alias(f"best.{k}") for k in sorted(best_wide.columns) if k != "run_id"])
    for part in (tag_wide, param_wide, metric_wide, best_wide):
        df = df.join(part, on="run_id", how="left")
    tag_cols = sorted(c for c in tag_wide.columns if c not in BASE_COLUMNS and not c.startswith("tag."))
    rest = [c for c in df.columns if c.startswith(("tag.", "param.", "metric.", "best."))]
    order = sorted(rest, key=lambda c: (["tag.", "param.", "metric.", "best."].index(c.split(".", 1)[0] + "."), c))
    return df.select(*BASE_COLUMNS, *tag_cols, *order).sort("start_time", "run_id")


# ----------------------------------------------------------------------------- client path


def _client_long(uri: str, experiment_ids: list[str], parent_run_id: str | None) -> dict[str, pl.DataFrame]:
    """The same long tables as ``sqlstore.read_long``, through the MLflow client (servers)."""
    from mlflow.entities import ViewType

    client = client_for(uri)
    flt = f"tags.`mlflow.parentRunId` = '{parent_run_id}'" if parent_run_id else ""
    runs: list[Any] = []
    token = None
    while True:
        page = retry_locked(
            client.search_runs, experiment_ids, filter_string=flt, run_view_type=ViewType.ACTIVE_ONLY,
            max_results=50000, page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    base = pl.DataFrame(
        [(r.info.run_id, r.info.run_name, r.info.experiment_id, r.info.status, r.info.start_time, r.info.end_time, r.info.artifact_uri) for r in runs],
        schema={"run_id": pl.String, "run_name": pl.String, "experiment_id": pl.String, "status": pl.String,
                "start_time": pl.Int64, "end_time": pl.Int64, "artifact_uri": pl.String},
        orient="row",
    )
    kv = {"run_id": pl.String, "key": pl.String, "value": pl.String}
    tags = pl.DataFrame([(r.info.run_id, k, v) for r in runs for k, v in r.data.tags.items()], schema=kv, orient="row")
    params = pl.DataFrame([(r.info.run_id, k, v) for r in runs for k, v in r.data.params.items()], schema=kv, orient="row")
    num = {"run_id": pl.String, "key": pl.String, "value": pl.Float64}
    latest = pl.DataFrame([(r.info.run_id, k, float(v)) for r in runs for k, v in r.data.metrics.items()], schema=num, orient="row")
    hist = _client_history(uri, [(r.info.run_id, k) for r in runs for k in r.data.metrics])
    best = (
        hist.filter(~pl.col("value").is_nan())
        .group_by("run_id", "key")
        .agg(pl.col("value").max().alias("max"), pl.col("value").min().alias("min"))
    )
    return {"base": base, "tags": tags, "params": params, "latest": latest, "best": best}


def _client_history(uri: str, pairs: list[tuple[str, str]]) -> pl.DataFrame:
    client = client_for(uri)

    def one(pair: tuple[str, str]) -> list[tuple[str, str, int, float, int]]:
        hist = retry_locked(client.get_metric_history, pair[0], pair[1])
        return [(pair[0], pair[1], m.step, float(m.value), m.timestamp) for m in hist]

    with ThreadPoolExecutor(max_workers=8) as pool:
        rows = [row for part in pool.map(one, pairs) for row in part]
    schema = {"run_id": pl.String, "key": pl.String, "step": pl.Int64, "value": pl.Float64, "timestamp": pl.Int64}
    return pl.DataFrame(rows, schema=schema, orient="row")


# ----------------------------------------------------------------------------- public API


def _use_sql(uri: str, backend: str) -> bool:
    if backend not in ("auto", "sql", "client"):
        raise ValueError(f"backend must be auto, sql or client, got {backend!r}")
    return backend == "sql" or (backend == "auto" and sqlstore.is_sql_uri(uri))


def list_experiments(uri: str) -> pl.DataFrame:
    """experiment_id, name, lifecycle_stage of every experiment in the store."""
    if sqlstore.is_sql_uri(uri):
        return sqlstore.experiments(uri)
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
) -> pl.DataFrame:
    """One row per active run (only the children of ``parent_run_id`` when given); see module doc.

    ``experiment`` is a name or id (None: every experiment). ``filter_string``
    is an MLflow search filter; it is evaluated by ``MlflowClient.search_runs``
    (exact MLflow semantics) and then applied to the fast path's rows, so it
    costs one extra search. ``backend``: auto | sql | client.
    """
    exp_ids = [resolve_experiment(uri, experiment)] if experiment is not None else []
    if _use_sql(uri, backend):
        if parent_run_id and not sqlstore.run_exists(uri, parent_run_id):
            raise LiverlabError(f"no run {parent_run_id} in {uri}")
        try:
            parts = sqlstore.read_long(uri, exp_ids, parent_run_id)
        except sqlstore.SchemaMismatch as exc:
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
    df = assemble(**_client_long(uri, exp_ids, parent_run_id))
    return _apply_filter(uri, df, exp_ids, filter_string) if filter_string else df


def _apply_filter(uri: str, df: pl.DataFrame, exp_ids: list[str], filter_string: str) -> pl.DataFrame:
    from mlflow.entities import ViewType

    client = client_for(uri)
    ids = exp_ids or df["experiment_id"].unique().to_list()
    keep: list[str] = []
    token = None
    while ids:
        page = retry_locked(
            client.search_runs, ids, filter_string=filter_string, run_view_type=ViewType.ACTIVE_ONLY,
            max_results=50000, page_token=token,
        )
        keep.extend(r.info.run_id for r in page)
        token = page.token
        if not token:
            break
    return df.filter(pl.col("run_id").is_in(keep))


def read_histories(uri: str, runs: pl.DataFrame, keys: list[str] | None = None, *, backend: str = "auto") -> pl.DataFrame:
    """Long metric histories: run_id, key, step, value (sorted; a step logged twice keeps the latest)."""
    ids = runs["run_id"].to_list() if runs.height else []
    if _use_sql(uri, backend):
        hist = sqlstore.read_history(uri, ids, keys)
    else:
        metric_keys = keys or sorted({c[len("metric.") :] for c in runs.columns if c.startswith("metric.")})
        present = runs.select("run_id", *[pl.col(f"metric.{k}").is_not_null().alias(k) for k in metric_keys if f"metric.{k}" in runs.columns])
        pairs = [(row["run_id"], k) for row in present.iter_rows(named=True) for k in metric_keys if row.get(k)]
        hist = _client_history(uri, pairs)
    return (
        hist.sort("run_id", "key", "step", "timestamp")
        .unique(subset=["run_id", "key", "step"], keep="last", maintain_order=True)
        .select("run_id", "key", "step", "value")
    )


def _local_dir(artifact_uri: str | None) -> Path | None:
    """The folder of a file: (or plain path) artifact URI, else None (remote store)."""
    if not artifact_uri:
        return None
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and artifact_uri.startswith("/"):
        return Path(artifact_uri)
    return None


def _artifact_uri(uri: str, run_id: str, runs: pl.DataFrame | None = None) -> str | None:
    if runs is not None and "artifact_uri" in runs.columns:
        hit = runs.filter(pl.col("run_id") == run_id)
        if hit.height:
            return hit["artifact_uri"][0]
    return retry_locked(client_for(uri).get_run, run_id).info.artifact_uri


def list_artifacts(uri: str, run_id: str, path: str = "", runs: pl.DataFrame | None = None) -> list[str]:
    """Relative paths of the files directly under ``path`` in a run's artifacts."""
    local = _local_dir(_artifact_uri(uri, run_id, runs))
    if local is not None:
        folder = local / path
        return sorted(str(p.relative_to(local)) for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    infos = retry_locked(client_for(uri).list_artifacts, run_id, path or None)
    return sorted(i.path for i in infos if not i.is_dir)


def download_artifact(uri: str, run_id: str, path: str, dst_dir: str | Path, runs: pl.DataFrame | None = None) -> Path | None:
    """Copy one artifact file into ``dst_dir``; None when the run has no such artifact."""
    dst = Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    local = _local_dir(_artifact_uri(uri, run_id, runs))
    if local is not None:
        src = local / path
        if not src.is_file():
            return None
        return Path(shutil.copy2(src, dst / Path(path).name))
    try:
        return Path(retry_locked(client_for(uri).download_artifacts, run_id, path, str(dst)))
    except Exception as exc:  # noqa: BLE001 - MLflow raises several types for "not found"
        if "not found" in str(exc).lower() or "no such file" in str(exc).lower() or "does not exist" in str(exc).lower():
            return None
        raise


def read_per_patient(uri: str, runs: pl.DataFrame) -> pl.DataFrame:
    """Long per-patient test metrics: run_id, arm, seed, patient_id, metric, value.

    Reads each run's ``per_patient.parquet`` (straight from disk for local
    artifact stores, downloaded otherwise); runs without one are skipped.
    """
    schema = {"run_id": pl.String, "arm": pl.String, "seed": pl.Int64, "patient_id": pl.String, "metric": pl.String, "value": pl.Float64}
    if runs.height == 0:
        return pl.DataFrame(schema=schema)
    meta = runs.select(
        "run_id",
        (pl.col("arm") if "arm" in runs.columns else pl.lit(None, dtype=pl.String)).alias("arm"),
        (pl.col("seed") if "seed" in runs.columns else pl.lit(None, dtype=pl.Int64)).cast(pl.Int64).alias("seed"),
        (pl.col("artifact_uri") if "artifact_uri" in runs.columns else pl.lit(None, dtype=pl.String)).alias("artifact_uri"),
    )
    tmp = Path(tempfile.mkdtemp(prefix="liverlab-pp-"))

    def one(row: dict[str, Any]) -> pl.DataFrame | None:
        local = _local_dir(row["artifact_uri"])
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
    if sqlstore.is_sql_uri(uri):
        rows = sqlstore.run_tags(uri, run_id)
        if rows is not None:
            return rows
        raise LiverlabError(f"no run {run_id} in {uri}")
    from mlflow.exceptions import MlflowException

    try:
        return dict(retry_locked(client_for(uri).get_run, run_id).data.tags)
    except MlflowException as exc:
        raise LiverlabError(f"no run {run_id} in {uri}: {exc}") from None
