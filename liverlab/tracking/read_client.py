"""Read path through ``MlflowClient`` (tracking servers, non-SQL stores).

Returns the same long tables as :func:`liverlab.tracking.read_sql.read_long`.
Best values need the full history: one ``get_metric_history`` request per
run and key, eight at a time in a thread pool; fine for hundreds of runs,
slow for tens of thousands (use the SQL path, or a server whose database you
can read, for those).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import polars as pl

from liverlab.tracking.client import client_for, retry_locked


def search_all(uri: str, experiment_ids: list[str], filter_string: str = "") -> list[Any]:
    """Every active run of the experiments matching ``filter_string`` (all pages)."""
    from mlflow.entities import ViewType

    client = client_for(uri)
    runs: list[Any] = []
    token = None
    while experiment_ids:
        page = retry_locked(client.search_runs, experiment_ids, filter_string=filter_string,
                            run_view_type=ViewType.ACTIVE_ONLY, max_results=50000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs


def client_long(uri: str, experiment_ids: list[str], parent_run_id: str | None) -> dict[str, pl.DataFrame]:
    """The long tables base, tags, params, latest, best (as ``read_sql.read_long``), via the client."""
    flt = f"tags.`mlflow.parentRunId` = '{parent_run_id}'" if parent_run_id else ""
    runs = search_all(uri, experiment_ids, flt)
    base = pl.DataFrame(
        [(r.info.run_id, r.info.run_name, r.info.experiment_id, r.info.status, r.info.start_time,
          r.info.end_time, r.info.artifact_uri) for r in runs],
        schema={"run_id": pl.String, "run_name": pl.String, "experiment_id": pl.String, "status": pl.String,
                "start_time": pl.Int64, "end_time": pl.Int64, "artifact_uri": pl.String},
        orient="row",
    )
    kv = {"run_id": pl.String, "key": pl.String, "value": pl.String}
    num = {"run_id": pl.String, "key": pl.String, "value": pl.Float64}
    tags = pl.DataFrame([(r.info.run_id, k, v) for r in runs for k, v in r.data.tags.items()], schema=kv, orient="row")
    params = pl.DataFrame(
        [(r.info.run_id, k, v) for r in runs for k, v in r.data.params.items()], schema=kv, orient="row")
    latest = pl.DataFrame(
        [(r.info.run_id, k, float(v)) for r in runs for k, v in r.data.metrics.items()], schema=num, orient="row")
    hist = client_history(uri, [(r.info.run_id, k) for r in runs for k in r.data.metrics])
    best = (
        hist.filter(~pl.col("value").is_nan())
        .group_by("run_id", "key")
        .agg(pl.col("value").max().alias("max"), pl.col("value").min().alias("min"))
    )
    return {"base": base, "tags": tags, "params": params, "latest": latest, "best": best}


def client_history(uri: str, pairs: list[tuple[str, str]]) -> pl.DataFrame:
    """run_id, key, step, value, timestamp of every point of the (run_id, key) pairs."""
    client = client_for(uri)

    def one(pair: tuple[str, str]) -> list[tuple[str, str, int, float, int]]:
        hist = retry_locked(client.get_metric_history, pair[0], pair[1])
        return [(pair[0], pair[1], m.step, float(m.value), m.timestamp) for m in hist]

    with ThreadPoolExecutor(max_workers=8) as pool:
        rows = [row for part in pool.map(one, pairs) for row in part]
    schema = {"run_id": pl.String, "key": pl.String, "step": pl.Int64, "value": pl.Float64, "timestamp": pl.Int64}
    return pl.DataFrame(rows, schema=schema, orient="row")
