"""Tables and figure of ``bench_search.py``: regret against compute, per strategy and budget.

Reads ``<out>/results/*.json`` (one per strategy, budget and repeat) and
writes ``results.csv`` (one row per run), ``summary.md`` and ``regret.png``.

A run's pick: the trial with the best final objective among the trials that
ran every round. Its test IoU is that trial's own evaluation on the test
patients. Regret (IoU points) = the grid's pick's test IoU - the run's pick's;
validation regret is the same on the objective. Compute = trial-seconds spent
(ASHA-stopped trials included), as a share of the grid's.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

ORDER = {"grid": 0, "random": 1, "tpe": 2, "tpe_asha": 3}
GOAL_POINTS, GOAL_COMPUTE = 1.0, 0.30  # issue 22: within 1 IoU point with <= 30 % of the grid's compute


def config_key(params: dict[str, Any]) -> tuple:
    return tuple(sorted((k, round(float(v), 10)) for k, v in params.items()))


def final(trial: dict[str, Any], metric: str) -> float | None:
    return trial["reports"][-1].get(metric) if trial["reports"] else None


def pick(record: dict[str, Any], metric: str) -> dict[str, Any] | None:
    """Best final objective among trials that ran all rounds (first started wins a tie)."""
    full = [t for t in record["trials"] if len(t["reports"]) >= record["max_t"] and final(t, metric) is not None]
    return max(full, key=lambda t: final(t, metric), default=None)  # type: ignore[arg-type, return-value]


def run_rows(records: list[dict[str, Any]], metric: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    grid = next(r for r in records if r["strategy"] == "grid")
    by_config = {config_key(t["params"]): t for t in grid["trials"]}
    g_pick = pick(grid, metric)
    assert g_pick is not None, "the grid has no finished trial"
    ref_test, ref_val = g_pick["test"]["test/iou"], final(g_pick, metric)
    grid_s = sum(t["trial_s"] for t in grid["trials"])
    grid_cpu = sum(t["cpu_s"] for t in grid["trials"])
    grid_rounds = sum(len(t["reports"]) for t in grid["trials"])
    oracle = max(grid["trials"], key=lambda t: t["test"].get("test/iou", -1.0))
    rows, diffs, off_grid = [], [], 0
    for rec in sorted(records, key=lambda r: (ORDER.get(r["strategy"], 9), r["label"], r["budget"], r["repeat"])):
        chosen = pick(rec, metric)
        test = chosen["test"].get("test/iou") if chosen else None
        same = by_config.get(config_key(chosen["params"])) if chosen else None
        if chosen and test is None and same:  # should not happen (the pick ran to the end); fall back to the grid's
            test = same["test"].get("test/iou")
        for t in rec["trials"] if rec is not grid else []:
            g = by_config.get(config_key(t["params"]))
            off_grid += g is None
            if g and t["completed"]:
                diffs.append(max(abs(final(t, metric) - final(g, metric)), abs(t["test"]["test/iou"] - g["test"]["test/iou"])))
        stopped = sum(len(t["reports"]) < rec["max_t"] for t in rec["trials"])
        spent = sum(t["trial_s"] for t in rec["trials"])
        rows.append({
            "run": rec["run"], "label": rec["label"], "strategy": rec["strategy"], "budget": rec["budget"],
            "repeat": rec["repeat"], "trials": len(rec["trials"]), "stopped_early": stopped,
            "distinct_configs": len({config_key(t["params"]) for t in rec["trials"]}),
            "rounds": sum(len(t["reports"]) for t in rec["trials"]), "budget_rounds": rec["budget_rounds"],
            "compute_s": spent, "compute_frac": spent / grid_s,
            "cpu_frac": sum(t["cpu_s"] for t in rec["trials"]) / grid_cpu,
            "rounds_frac": sum(len(t["reports"]) for t in rec["trials"]) / grid_rounds,
            "pick": json.dumps(chosen["params"] if chosen else None), "pick_val": final(chosen, metric) if chosen else None,
            "pick_test_iou": test,
            "test_regret_points": 100 * (ref_test - test) if test is not None else None,
            "val_regret_points": 100 * (ref_val - final(chosen, metric)) if chosen else None,
            "wall_s": rec["wall_s"],
        })
    full = [t for t in grid["trials"] if t["completed"]]
    info = {
        "n_grid": len(grid["trials"]), "grid_s": grid_s, "grid_wall_s": grid["wall_s"], "ref_test": ref_test,
        "ref_val": ref_val, "ref_params": g_pick["params"], "oracle_test": oracle["test"].get("test/iou"),
        "oracle_params": oracle["params"], "trial_s_median": statistics.median(t["trial_s"] for t in full),
        "cpu_s_median": statistics.median(t["cpu_s"] for t in full), "max_repro_diff": max(diffs, default=0.0),
        "rung_correlation": rung_correlation(grid, metric) if len(full) > 2 else [],
        "n_repro": len(diffs), "off_grid": off_grid, "max_t": grid["max_t"], "total_wall_s": sum(r["wall_s"] for r in records),
    }
    return rows, info


def rung_correlation(grid: dict[str, Any], metric: str) -> list[tuple[int, float, float]]:
    """Over the grid's trials: Spearman correlation of the objective after round r with the final one and with test IoU.

    What ASHA bets on: a low value at a rung means the ranking it stops trials by is not the final ranking.
    """
    from scipy.stats import spearmanr

    full = [t for t in grid["trials"] if t["completed"]]
    out = []
    for r in range(grid["max_t"]):
        at_r = [t["reports"][r].get(metric) for t in full]
        if len(set(at_r)) < 2:  # no ranking at all (e.g. every tiny model still predicts nothing)
            out.append((r + 1, float("nan"), float("nan")))
            continue
        rho_final = spearmanr(at_r, [final(t, metric) for t in full]).statistic
        rho_test = spearmanr(at_r, [t["test"]["test/iou"] for t in full]).statistic
        out.append((r + 1, float(rho_final), float(rho_test)))
    return out


def _span(values: list[float], fmt: str = "{:.1f}") -> str:
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ({fmt.format(min(values))} to {fmt.format(max(values))})"


def table(rows: list[dict[str, Any]], info: dict[str, Any], metric: str) -> str:
    groups: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["label"], r["budget"])].append(r)
    head = (f"Grid: {info['n_grid']} configurations x {info['max_t']} rounds, {info['grid_s']:.0f} trial-s "
            f"(median trial {info['trial_s_median']:.1f} s wall, {info['cpu_s_median']:.1f} s CPU); its pick "
            f"{info['ref_params']} tests at IoU {info['ref_test']:.3f} ({metric} {info['ref_val']:.3f}); the best test "
            f"IoU of any grid configuration (not selectable by validation) is {info['oracle_test']:.3f} "
            f"({info['oracle_params']}).")
    columns = ["strategy", "budget (share of grid)", "repeats", "trials (stopped early)", "distinct configs",
               "compute spent, trial-s (share of grid: wall / CPU)", "test IoU of the pick",
               "regret, IoU points: mean (range)", "validation regret, points", f"within {GOAL_POINTS:g} point"]
    lines = [head, "", "| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]
    for (label, budget), rs in sorted(groups.items(), key=lambda kv: (ORDER.get(kv[1][0]["strategy"], 9), kv[0])):
        tests = [r["pick_test_iou"] for r in rs if r["pick_test_iou"] is not None]
        regrets = [r["test_regret_points"] for r in rs if r["test_regret_points"] is not None]
        hits = sum(x <= GOAL_POINTS + 1e-9 for x in regrets)
        lines.append(
            f"| {label} | {100 * budget:.0f} % | {len(rs)} | {_span([r['trials'] for r in rs], '{:.1f}')} "
            f"({statistics.mean(r['stopped_early'] for r in rs):.1f}) | {statistics.mean(r['distinct_configs'] for r in rs):.1f} | "
            f"{statistics.mean(r['compute_s'] for r in rs):.0f} ({100 * statistics.mean(r['compute_frac'] for r in rs):.0f} % / "
            f"{100 * statistics.mean(r['cpu_frac'] for r in rs):.0f} %) | "
            f"{_span(tests, '{:.3f}') if tests else '-'} | {_span(regrets) if regrets else '-'} | "
            f"{_span([r['val_regret_points'] for r in rs if r['val_regret_points'] is not None])} | {hits}/{len(rs)} |"
        )
    goal = [g for (label, b), g in groups.items() if g[0]["strategy"] == "tpe_asha"
            and statistics.mean(r["compute_frac"] for r in g) <= GOAL_COMPUTE + 1e-9]
    verdicts = []
    for g in goal:
        hits = sum((r["test_regret_points"] or 1e9) <= GOAL_POINTS for r in g)
        verdicts.append(f"{g[0]['label']} at {100 * g[0]['budget']:.0f} %: {hits}/{len(g)} repeats within {GOAL_POINTS:g} point "
                        f"({'met' if 3 * hits >= 2 * len(g) else 'not met'})")
    lines += [
        "",
        "Goal (TPE + ASHA within 1 IoU point of the grid's pick with <= 30 % of its compute in >= 2 of 3 repeats): "
        + ("; ".join(verdicts) if verdicts else "no TPE + ASHA run spent <= 30 % of the grid's compute."),
        (f"Reproducibility: {info['n_repro']} finished trials of the searches repeat a grid configuration; the largest "
         f"difference in {metric} or test IoU from the grid's run is {info['max_repro_diff']:.2e}; trials off the "
         f"grid: {info['off_grid']}."),
        f"Wall time of all runs: {info['total_wall_s'] / 60:.1f} min.",
    ]
    if info["rung_correlation"]:
        lines += ["", (f"What ASHA's rungs see, over the grid's trials: Spearman correlation of {metric} after "
                       "round r with the final one / with test IoU:"), "",
                  "| round r | " + " | ".join(str(r) for r, _, _ in info["rung_correlation"]) + " |",
                  "|---|" + "---:|" * len(info["rung_correlation"]),
                  f"| vs final {metric} | " + " | ".join(f"{a:.2f}" for _, a, _ in info["rung_correlation"]) + " |",
                  "| vs test IoU | " + " | ".join(f"{b:.2f}" for _, _, b in info["rung_correlation"]) + " |"]
    return "\n".join(lines)


def figure(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=100, sharex=True)
    labels = sorted({r["label"] for r in rows}, key=lambda lab: (ORDER.get(lab.split("-")[0], 9), lab))
    for ax, key, title in ((axes[0], "test_regret_points", "test IoU regret"), (axes[1], "val_regret_points", "validation regret")):
        for i, label in enumerate(labels):
            rs = [r for r in rows if r["label"] == label and r[key] is not None]
            color = f"C{i}"
            ax.scatter([100 * r["compute_frac"] for r in rs], [r[key] for r in rs], color=color, alpha=0.35, s=18)
            by_budget: dict[float, list[dict[str, Any]]] = defaultdict(list)
            for r in rs:
                by_budget[r["budget"]].append(r)
            pts = sorted((100 * statistics.mean(r["compute_frac"] for r in g), statistics.mean(r[key] for r in g))
                         for g in by_budget.values())
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=label)
        ax.axhline(0, color="black", lw=0.8)
        ax.axhline(GOAL_POINTS, color="grey", ls="--", lw=0.8)
        ax.axvline(100 * GOAL_COMPUTE, color="grey", ls=":", lw=0.8)
        ax.set_xlabel("compute spent, % of the grid's trial-seconds")
        ax.set_ylabel(f"{title}, IoU points")
        ax.set_title(f"{title} vs compute (dots: repeats, line: mean)", fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from liverlab.data.atomic import atomic_path

    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def summarise(out: Path, metric: str) -> str:
    """Write results.csv, summary.md and regret.png under ``out``; return the markdown."""
    from liverlab.data.atomic import atomic_path, write_bytes_atomic

    records = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]
    if not any(r["strategy"] == "grid" for r in records):
        return "no grid results yet: nothing to compare against"
    rows, info = run_rows(records, metric)
    with atomic_path(out / "results.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    md = table(rows, info, metric)
    write_bytes_atomic(out / "summary.md", (md + "\n").encode())
    write_bytes_atomic(out / "summary.json", json.dumps(info, indent=2).encode())
    figure(rows, out / "regret.png")
    return md
