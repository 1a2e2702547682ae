"""k-fold sweeps: pool the per-patient test rows of every fold into one unit per (arm, seed).

With ``data.split.fold`` as an arm factor (``data.split: {folds: K}`` set in
the sweep), each fold's trial tests a different part of the patients, and
over the K folds every patient is tested exactly once per seed. The fold is
therefore not an arm of the comparison: ``units.with_arm`` moves it out of
the arm into a ``fold`` column, ``units.select_units`` keeps one run per
(arm, seed, fold), and :func:`pool_folds` turns the K runs of an (arm, seed)
into one unit whose test value is the mean over all its patients. The
report's intervals are then over patients (each patient's mean over seeds),
and the paired tests over patients and (seed, patient) pairs, so they cover
patient sampling, not only seeds.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from liverlab.report.units import METRICS


def is_pooled(units: pl.DataFrame) -> bool:
    """Whether the units come from a k-fold sweep (a ``data.split.fold`` arm factor)."""
    return "fold" in units.columns and units["fold"].drop_nulls().len() > 0


def patient_rows(per_patient: pl.DataFrame, units: pl.DataFrame) -> pl.DataFrame:
    """The per-patient rows (``read_per_patient``) of the unit runs only, with the unit's
    ``arm`` (fold removed), ``seed`` and ``fold``: run_id, arm, seed, fold, patient_id, metric, value."""
    keys = units.select("run_id", "arm", "seed", pl.col("fold") if "fold" in units.columns
                        else pl.lit(None, dtype=pl.Int64).alias("fold"))
    cols = ["run_id", "arm", "seed", "fold", "patient_id", "metric", "value"]
    if per_patient.height == 0:
        return pl.DataFrame(schema={"run_id": pl.String, "arm": pl.String, "seed": pl.Int64, "fold": pl.Int64,
                                    "patient_id": pl.String, "metric": pl.String, "value": pl.Float64})
    pp = per_patient.drop([c for c in ("arm", "seed", "fold") if c in per_patient.columns])
    return pp.join(keys, on="run_id", how="inner").select(cols)


def expected_folds(units: pl.DataFrame) -> int:
    """K: the logged ``data.split.folds``, else the highest fold seen + 1."""
    col = "param.data.split.folds"
    if col in units.columns:
        logged = units[col].cast(pl.Int64, strict=False).drop_nulls()
        if logged.len():
            return int(logged.max())  # type: ignore[arg-type]
    return int(units["fold"].drop_nulls().max()) + 1  # type: ignore[operator]


def pool_folds(
    units: pl.DataFrame, patients: pl.DataFrame, metrics: Sequence[str] = METRICS
) -> tuple[pl.DataFrame, list[str]]:
    """(one row per (arm, seed), notes): the K fold runs of each (arm, seed) pooled.

    ``value.<m>`` is the mean over the pooled per-patient test rows (every
    patient once when the folds are complete); where a fold run has no
    per-patient table, the mean of the fold values is used and a note says
    so. ``val.<m>`` is the mean over folds. Other columns come from the
    fold-0 (lowest fold) run; ``run_ids`` lists every fold's run, ``n_folds``
    and ``n_patients`` count them. Notes warn about missing folds, patients
    tested more than once, and (arm, seed) units that did not test the same
    patients as the others.
    """
    if not is_pooled(units):
        return units, []
    k = expected_folds(units)
    notes: list[str] = []
    plain = units.filter(pl.col("fold").is_null() | pl.col("seed").is_null())
    folded = units.filter(pl.col("fold").is_not_null() & pl.col("seed").is_not_null())
    pooled: list[pl.DataFrame] = []
    patient_sets: dict[tuple[str, int], frozenset[str]] = {}
    for (arm, seed), group in sorted(folded.group_by("arm", "seed"), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        group = group.sort("fold")
        folds = group["fold"].to_list()
        missing = sorted(set(range(k)) - set(folds))
        if missing:
            notes.append(f"`{arm}` seed {seed}: fold(s) {', '.join(map(str, missing))} of {k} missing "
                         "(no finished run): its patients are not all tested")
        pp = patients.filter((pl.col("arm") == arm) & (pl.col("seed") == seed))
        first_metric = pp.filter(pl.col("metric") == pp["metric"][0]) if pp.height else pp
        counts = first_metric.group_by("patient_id").len()
        twice = sorted(counts.filter(pl.col("len") > 1)["patient_id"].to_list())
        if twice:
            notes.append(f"`{arm}` seed {seed}: patient(s) {', '.join(twice)} tested in more than one fold")
        patient_sets[(arm, seed)] = frozenset(counts["patient_id"].to_list())
        no_table = group.filter(~pl.col("run_id").is_in(pp["run_id"].unique().implode()))
        has_test = "value.iou" in group.columns and group["value.iou"].drop_nulls().len() > 0
        if not has_test and pp.height == 0:
            notes.append(f"`{arm}` seed {seed}: no test metrics in any fold (reported under validation only)")
        elif no_table.height:
            notes.append(f"`{arm}` seed {seed}: fold(s) {', '.join(map(str, no_table['fold'].to_list()))} have no "
                         "per_patient.parquet: the mean of fold means is used")
        exprs: list[pl.Expr] = []
        for m in metrics:
            rows = pp.filter(pl.col("metric") == m)["value"]
            test_col = group[f"value.{m}"] if f"value.{m}" in group.columns else pl.Series([], dtype=pl.Float64)
            value = rows.mean() if rows.len() and not no_table.height else test_col.mean()
            exprs.append(pl.lit(value, dtype=pl.Float64).alias(f"value.{m}"))
            if f"val.{m}" in group.columns:
                exprs.append(pl.lit(group[f"val.{m}"].mean(), dtype=pl.Float64).alias(f"val.{m}"))
        pooled.append(group.head(1).with_columns(
            *exprs,
            pl.lit(None, dtype=pl.Int64).alias("fold"),
            pl.lit(",".join(group["run_id"].to_list())).alias("run_ids"),
            pl.lit(len(folds), dtype=pl.Int64).alias("n_folds"),
            pl.lit(len(patient_sets[(arm, seed)]), dtype=pl.Int64).alias("n_patients"),
        ))
    everyone = frozenset().union(*patient_sets.values()) if patient_sets else frozenset()
    for (arm, seed), got in patient_sets.items():
        lacking = sorted(everyone - got)
        if lacking and got:
            notes.append(f"`{arm}` seed {seed}: patient(s) {', '.join(lacking)} tested in other units but not here")
    out = pl.concat([*pooled, plain], how="diagonal_relaxed") if pooled else plain
    return out.sort("arm", "seed", nulls_last=True), notes
