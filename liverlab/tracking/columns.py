"""Long tables (run_id, key, value) -> the one-row-per-run frame of ``read_runs``.

Shared by both read paths (SQL and MLflow client), so their columns are
identical by construction. Column rules are documented in
:mod:`liverlab.tracking.reader`.
"""

from __future__ import annotations

import types
import typing
from typing import Any

import polars as pl

HIGHER_IS_BETTER = frozenset({"iou", "dice", "ssim", "psnr", "shape_dice", "accuracy", "auc", "f1"})
BASE_COLUMNS = (
    "run_id", "run_name", "experiment_id", "parent_run_id", "status", "start_time", "end_time", "artifact_uri",
)
_TAG_TYPES: dict[str, Any] = {"seed": pl.Int64, "git_dirty": pl.Boolean}
_SKIP_TAGS = frozenset({"mlflow.runName"})  # already the run_name column


# MLflow's SQL store saves +-inf as +-max float (it cannot store inf); liverlab's
# distance metrics are inf when a mask is empty, so the reader maps them back.
FLOAT_MAX = 1.7976931348623157e308


def restore_inf(col: str = "value") -> pl.Expr:
    """``col`` with MLflow's +-max-float stand-ins turned back into +-inf."""
    c = pl.col(col)
    return pl.when(c >= FLOAT_MAX).then(float("inf")).when(c <= -FLOAT_MAX).then(float("-inf")).otherwise(c).alias(col)


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
        return ("int", None) if kinds == {int} else ("str", None)
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


def _prefixed(wide: pl.DataFrame, prefix: str) -> pl.DataFrame:
    return wide.select("run_id", *[pl.col(k).alias(f"{prefix}{k}") for k in sorted(wide.columns) if k != "run_id"])


def assemble(
    base: pl.DataFrame, tags: pl.DataFrame, params: pl.DataFrame, latest: pl.DataFrame, best: pl.DataFrame
) -> pl.DataFrame:
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
        [_cast_text(tag_wide[c], "bool" if t == pl.Boolean else "int")
         for c, t in _TAG_TYPES.items() if c in tag_wide.columns]
    )
    types_ = config_param_types()
    param_wide = _wide(params)
    param_wide = param_wide.select(
        "run_id",
        *[_cast_text(param_wide[k], types_.get(k)).alias(f"param.{k}") for k in sorted(param_wide.columns)
          if k != "run_id"],
    )
    metric_wide = _wide(latest.with_columns(restore_inf()))
    metric_wide = _prefixed(metric_wide, "metric.")
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
    best_wide = _wide(best.select("run_id", "key", "value").with_columns(restore_inf()))
    best_wide = _prefixed(best_wide, "best.")
    for part in (tag_wide, param_wide, metric_wide, best_wide):
        df = df.join(part, on="run_id", how="left")
    tag_cols = sorted(c for c in tag_wide.columns if c not in BASE_COLUMNS and not c.startswith("tag."))
    rest = [c for c in df.columns if c.startswith(("tag.", "param.", "metric.", "best."))]
    order = sorted(rest, key=lambda c: (["tag.", "param.", "metric.", "best."].index(c.split(".", 1)[0] + "."), c))
    return df.select(*BASE_COLUMNS, *tag_cols, *order).sort("start_time", "run_id")
