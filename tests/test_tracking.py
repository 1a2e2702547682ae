"""Tracking writer and reader: idempotent resume, batching, statuses, types, both read paths."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from report_fixtures import fresh_uri, known_store, patient_iou

from liverlab.config import config_from_dict, flatten
from liverlab.errors import LiverlabError
from liverlab.tracking.client import client_for, resolve_tracking_uri, retry_locked
from liverlab.tracking.reader import (
    list_artifacts,
    read_histories,
    read_per_patient,
    read_run_tags,
    read_runs,
)
from liverlab.tracking.writer import (
    MlflowTracker,
    NullTracker,
    Tracker,
    finish_sweep_run,
    git_tags,
    open_run,
    open_sweep_run,
    open_trial_run,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def sweep(tmp_path: Path) -> tuple[str, str, str]:
    uri = fresh_uri(tmp_path)
    exp_id, parent = open_sweep_run(uri, "s", {"liverlab.sweep_key": "k"})
    return uri, exp_id, parent


def _count(uri: str, sql: str, *args: Any) -> int:
    con = sqlite3.connect(uri[len("sqlite:///"):])
    try:
        return int(con.execute(sql, args).fetchone()[0])
    finally:
        con.close()


# ----------------------------------------------------------------------------- writer


def test_trackers_satisfy_protocol() -> None:
    assert isinstance(NullTracker(), Tracker)
    NullTracker().log_metrics({"a": 1.0}, step=0)
    NullTracker().finish("FAILED", error="x")


def test_resolve_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_tracking_uri("http://h:5000", tmp_path) == "http://h:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri(None, tmp_path) == "http://env:5000"
    assert resolve_tracking_uri("http://explicit", tmp_path) == "http://explicit"
    monkeypatch.chdir(tmp_path)
    rel = resolve_tracking_uri("sqlite:///rel/m.db", "/elsewhere")
    assert rel == f"sqlite:///{(tmp_path / 'rel' / 'm.db').resolve()}" and rel.startswith("sqlite:////")


def test_git_tags(tmp_path: Path) -> None:
    tags = git_tags(REPO)
    assert set(tags) == {"liverlab.git_commit", "liverlab.git_dirty"}
    assert tags["liverlab.git_dirty"] in ("true", "false")
    assert len(tags["liverlab.git_commit"]) == 40
    assert git_tags(tmp_path) == {"liverlab.git_commit": "unknown", "liverlab.git_dirty": "unknown"}


def test_sweep_and_trial_runs_are_idempotent(sweep: tuple[str, str, str]) -> None:
    uri, exp_id, parent = sweep
    assert open_sweep_run(uri, "s", {"liverlab.sweep_key": "k"}) == (exp_id, parent)
    assert open_sweep_run(uri, "s", {"liverlab.sweep_key": "other"})[1] != parent
    tags = {"liverlab.arm": "synthesis=none", "liverlab.seed": "0"}
    a = open_trial_run(uri, exp_id, parent, "trial_1", tags, run_name="t1")
    a.log_params({"seed": 0, "unet": {"mixing_ratio": 0.5}})
    a.log_metrics({"val/iou": 0.5}, step=1)
    a.finish("KILLED")
    b = open_trial_run(uri, exp_id, parent, "trial_1", tags, run_name="t1")
    assert b.run_id == a.run_id
    b.log_params({"seed": 0, "unet": {"mixing_ratio": 0.5}})  # same values on resume: accepted, not duplicated
    b.log_metrics({"val/iou": 0.6}, step=2)
    b.finish()
    runs = read_runs(uri, "s", parent_run_id=parent)
    assert runs.height == 1 and runs["status"][0] == "FINISHED"
    assert runs["best.val/iou"][0] == pytest.approx(0.6)
    assert _count(uri, "SELECT count(*) FROM params WHERE run_uuid = ?", a.run_id) == 2


def test_a_stale_attempt_cannot_end_or_write_to_a_reopened_run(sweep: tuple[str, str, str]) -> None:
    """A worker orphaned by a killed driver keeps running for seconds; the resumed attempt owns the run."""
    uri, exp_id, parent = sweep
    stale = open_trial_run(uri, exp_id, parent, "trial_s", {})
    stale.log_metrics({"val/iou": 0.1}, step=1)
    stale.flush()
    fresh = open_trial_run(uri, exp_id, parent, "trial_s", {})  # the resumed attempt reopens the run
    assert fresh.run_id == stale.run_id
    stale.log_metrics({"val/iou": 0.9}, step=2)
    stale.finish("FAILED", error="RayActorError: the driver died")
    run = fresh.client.get_run(fresh.run_id)
    assert run.info.status == "RUNNING" and "liverlab.error" not in run.data.tags
    fresh.log_metrics({"val/iou": 0.5}, step=2)
    fresh.finish("FINISHED")
    runs = read_runs(uri, "s", parent_run_id=parent).filter(pl.col("run_id") == fresh.run_id)
    assert runs["status"][0] == "FINISHED"
    assert runs["best.val/iou"][0] == pytest.approx(0.5)  # the stale 0.9 never arrived


def test_resume_after_kill_9_continues_the_same_run(sweep: tuple[str, str, str]) -> None:
    uri, exp_id, parent = sweep
    code = textwrap.dedent(f"""
        import os, signal
        from liverlab.tracking.writer import open_trial_run
        t = open_trial_run({uri!r}, {exp_id!r}, {parent!r}, "trial_k", {{"liverlab.seed": "3"}})
        t.log_metrics({{"val/iou": 0.4}}, step=1)
        t.flush()
        print(t.run_id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == -9, proc.stderr
    killed_id = proc.stdout.split()[0]
    runs = read_runs(uri, "s", parent_run_id=parent)
    assert runs["status"].to_list() == ["RUNNING"]  # nobody ended it
    again = open_trial_run(uri, exp_id, parent, "trial_k", {"liverlab.seed": "3"})
    assert again.run_id == killed_id
    again.log_metrics({"val/iou": 0.5}, step=2)
    again.finish()
    runs = read_runs(uri, "s", parent_run_id=parent)
    assert runs.height == 1 and runs["status"][0] == "FINISHED"
    hist = read_histories(uri, runs, ["val/iou"])
    assert hist["step"].to_list() == [1, 2] and hist["value"].to_list() == [0.4, 0.5]


def test_finish_sweep_run_ends_running_children(sweep: tuple[str, str, str]) -> None:
    uri, exp_id, parent = sweep
    running = open_trial_run(uri, exp_id, parent, "r", {})
    done = open_trial_run(uri, exp_id, parent, "d", {})
    done.finish()
    finish_sweep_run(uri, parent)
    status = dict(read_runs(uri, "s", parent_run_id=parent).select("trial_id", "status").iter_rows())
    assert status == {"r": "KILLED", "d": "FINISHED"}
    assert read_runs(uri, "s").filter(pl.col("run_id") == parent)["status"][0] == "FINISHED"
    running.finish()  # the trainer may still end its own run later; that is allowed
    # Resuming the sweep sets the parent back to RUNNING.
    open_sweep_run(uri, "s", {"liverlab.sweep_key": "k"})
    assert read_runs(uri, "s").filter(pl.col("run_id") == parent)["status"][0] == "RUNNING"


def test_failed_run_carries_truncated_error(sweep: tuple[str, str, str]) -> None:
    uri, exp_id, parent = sweep
    t = open_trial_run(uri, exp_id, parent, "f", {})
    t.finish("FAILED", error="ValueError: " + "x" * 20000)
    t.finish("FINISHED")  # idempotent: the first status stays
    row = read_runs(uri, "s", parent_run_id=parent).row(0, named=True)
    assert row["status"] == "FAILED"
    assert row["error"].startswith("ValueError: x") and len(row["error"]) <= 8000
    with pytest.raises(RuntimeError, match="finished"):
        t.log_metrics({"a": 1.0}, step=0)
    with pytest.raises(ValueError, match="status"):
        open_trial_run(uri, exp_id, parent, "g", {}).finish("DONE")


def test_context_manager_marks_failure(sweep: tuple[str, str, str]) -> None:
    uri, exp_id, parent = sweep
    with pytest.raises(KeyError):
        with open_trial_run(uri, exp_id, parent, "cm", {}) as t:
            raise KeyError("boom")
    assert read_run_tags(uri, t.run_id)["liverlab.error"] == "KeyError: 'boom'"


class _CountingClient:
    """Wraps MlflowClient and counts log_batch requests."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.batches: list[int] = []

    def log_batch(self, run_id: str, metrics: Any = (), params: Any = (), tags: Any = (), **kw: Any) -> None:
        self.batches.append(len(metrics))
        self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_metrics_are_buffered_and_sent_in_batches(sweep: tuple[str, str, str]) -> None:
    uri, exp_id, parent = sweep
    run_id = open_trial_run(uri, exp_id, parent, "b", {}).run_id
    spy = _CountingClient(client_for(uri))
    t = MlflowTracker(spy, run_id)  # type: ignore[arg-type]
    times = []
    for step in range(100):
        t0 = time.perf_counter()
        t.log_metrics({"train/loss": 1.0 / (step + 1), "val/iou": step / 100}, step=step)
        times.append(time.perf_counter() - t0)
    assert sum(times) / len(times) < 0.010  # budget is 10 ms; in practice microseconds
    t.finish()
    assert sum(spy.batches) == 200 and len(spy.batches) <= 3  # 200 values, a few requests, never one per value
    assert _count(uri, "SELECT count(*) FROM metrics WHERE run_uuid = ?", run_id) == 200


def test_background_thread_flushes_without_flush_call(sweep: tuple[str, str, str]) -> None:
    uri, exp_id, parent = sweep
    t = open_trial_run(uri, exp_id, parent, "bg", {})
    t.log_metrics({"val/iou": 0.3}, step=1)
    deadline = time.time() + 5
    while time.time() < deadline and _count(uri, "SELECT count(*) FROM metrics WHERE run_uuid = ?", t.run_id) == 0:
        time.sleep(0.1)
    assert _count(uri, "SELECT count(*) FROM metrics WHERE run_uuid = ?", t.run_id) == 1
    with pytest.raises(ValueError, match="invalid MLflow key"):
        t.log_metrics({"bad key!": 1.0}, step=0)
    t.finish()


def test_params_round_trip_with_types(sweep: tuple[str, str, str]) -> None:
    uri, exp_id, parent = sweep
    cfg = config_from_dict({"data": {"root": "/data"}, "synthesis": "essnet", "seed": 7,
                            "unet": {"mixing_ratio": 0.5}, "channels_last": True})
    t = open_trial_run(uri, exp_id, parent, "p", {"liverlab.seed": "7", "liverlab.git_dirty": "true"})
    t.log_params(flatten(cfg.model_dump(mode="json")))
    t.log_params({"extra": {"n": 3, "f": 0.25, "b": False, "s": "abc", "long": "y" * 7000}})
    t.finish()
    row = read_runs(uri, "s", parent_run_id=parent)
    schema = row.schema
    r = row.row(0, named=True)
    assert r["param.unet.mixing_ratio"] == 0.5 and schema["param.unet.mixing_ratio"] == pl.Float64
    assert r["param.seed"] == 7 and schema["param.seed"] == pl.Int64
    assert r["param.channels_last"] is True and schema["param.channels_last"] == pl.Boolean
    assert r["param.synthesis"] == "essnet" and schema["param.synthesis"] == pl.String
    assert r["param.essnet.lambda_seg"] == 1.0 and schema["param.essnet.lambda_seg"] == pl.Float64
    assert r["param.essnet.steps_per_epoch"] is None and schema["param.essnet.steps_per_epoch"] == pl.Int64
    assert r["param.essnet.optim.lr"] == pytest.approx(2e-4)
    assert (r["param.extra.n"], r["param.extra.f"], r["param.extra.b"], r["param.extra.s"]) == (3, 0.25, False, "abc")
    assert len(r["param.extra.long"]) == 6000
    assert r["seed"] == 7 and schema["seed"] == pl.Int64 and r["git_dirty"] is True


def test_infinite_metrics_round_trip(sweep: tuple[str, str, str]) -> None:
    # MLflow's SQL store keeps +-inf as +-max float; an empty mask's ASSD must read back as inf.
    uri, exp_id, parent = sweep
    t = open_trial_run(uri, exp_id, parent, "inf", {})
    t.log_metrics({"test/assd": float("inf"), "test/ravd": float("-inf"), "test/iou": 0.0}, step=1)
    t.finish()
    for backend in ("sql", "client"):
        r = read_runs(uri, "s", parent_run_id=parent, backend=backend).row(0, named=True)
        assert r["metric.test/assd"] == float("inf") and r["best.test/assd"] == float("inf"), backend
        assert r["metric.test/ravd"] == float("-inf") and r["metric.test/iou"] == 0.0, backend
    runs = read_runs(uri, "s", parent_run_id=parent)
    assert read_histories(uri, runs, ["test/assd"])["value"].to_list() == [float("inf")]


def test_open_run_outside_a_sweep(tmp_path: Path) -> None:
    uri = fresh_uri(tmp_path)
    t = open_run(uri, "single", run_name="one", tags={"liverlab.stage": "unet"})
    t.log_text("a: 1\n", "config.yaml")
    t.finish()
    runs = read_runs(uri, "single")
    assert runs["run_name"].to_list() == ["one"] and runs["stage"].to_list() == ["unet"]
    assert list_artifacts(uri, t.run_id, runs=runs) == ["config.yaml"]
    assert runs["artifact_uri"][0].startswith(f"file://{tmp_path}")  # next to the db, not the cwd


def test_retry_locked() -> None:
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise sqlite3.OperationalError("database is locked")
        return "ok"

    assert retry_locked(flaky) == "ok" and calls["n"] == 3
    with pytest.raises(KeyError):
        retry_locked(lambda: {}["x"])


def test_concurrent_writers_on_one_sqlite_file(sweep: tuple[str, str, str]) -> None:
    uri, exp_id, parent = sweep
    code = textwrap.dedent(f"""
        import sys
        from liverlab.tracking.writer import open_trial_run
        t = open_trial_run({uri!r}, {exp_id!r}, {parent!r}, "w" + sys.argv[1], {{}})
        for step in range(300):
            t.log_metrics({{"train/loss": step * 1.0, "val/iou": 0.1}}, step=step)
            if step % 50 == 0:
                t.flush()
        t.finish()
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], cwd=REPO, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read() if p.stderr else ""
    runs = read_runs(uri, "s", parent_run_id=parent)
    assert runs.height == 2 and set(runs["status"]) == {"FINISHED"}
    assert _count(uri, "SELECT count(*) FROM metrics") == 2 * 600


# ----------------------------------------------------------------------------- reader


def test_sql_and_client_paths_agree() -> None:
    store = known_store()
    fast = read_runs(store.uri, "known", parent_run_id=store.parent_run_id, backend="sql")
    slow = read_runs(store.uri, "known", parent_run_id=store.parent_run_id, backend="client")
    assert fast.columns == slow.columns
    assert fast.schema == slow.schema
    key = ["run_id"]
    a, b = fast.sort(key), slow.sort(key)
    for col in fast.columns:
        if fast.schema[col] == pl.Float64:
            assert (a[col].fill_null(-1) - b[col].fill_null(-1)).abs().max() < 1e-12, col
        else:
            assert a[col].to_list() == b[col].to_list(), col
    ha = read_histories(store.uri, fast, backend="sql")
    hb = read_histories(store.uri, fast, backend="client")
    assert ha.sort(ha.columns).equals(hb.sort(hb.columns))


def test_read_runs_columns_and_best_direction() -> None:
    store = known_store()
    runs = read_runs(store.uri, "known", parent_run_id=store.parent_run_id)
    for col in ("run_id", "run_name", "status", "start_time", "end_time", "arm", "seed", "stage", "trial_id",
                "git_commit", "manifest_hash", "parent_run_id", "param.unet.mixing_ratio", "metric.test/iou",
                "best.val/iou", "best.train/loss"):
        assert col in runs.columns, col
    r = runs.filter(pl.col("run_id") == store.run_ids[("synthesis=none", 0)]).row(0, named=True)
    assert r["best.val/iou"] == pytest.approx(0.7)  # max over epochs
    assert r["metric.val/iou"] == pytest.approx(0.7)
    assert r["best.train/loss"] == pytest.approx(0.25)  # min over epochs
    assert r["metric.train/loss"] == pytest.approx(0.25)
    assert r["parent_run_id"] == store.parent_run_id
    every = read_runs(store.uri, "known")
    assert every.height == runs.height + 1  # plus the parent
    only = read_runs(store.uri, "known", parent_run_id=store.parent_run_id,
                     filter_string="attributes.status = 'FAILED'")
    assert only["run_id"].to_list() == [store.failed_run_id]


def test_read_per_patient_and_histories() -> None:
    store = known_store()
    runs = read_runs(store.uri, "known", parent_run_id=store.parent_run_id).filter(pl.col("status") == "FINISHED")
    pp = read_per_patient(store.uri, runs)
    assert pp.columns == ["run_id", "arm", "seed", "patient_id", "metric", "value"]
    assert pp.height == runs.height * 4 * 5
    one = pp.filter((pl.col("run_id") == store.run_ids[("synthesis=none", 2)]) & (pl.col("metric") == "iou"))
    assert one.sort("patient_id")["value"].to_list() == pytest.approx(patient_iou(0.0, 2))
    hist = read_histories(store.uri, runs, ["val/iou"])
    assert hist.columns == ["run_id", "key", "step", "value"]
    assert hist.height == runs.height * 4 and set(hist["key"]) == {"val/iou"}


def test_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(LiverlabError, match="no tracking store"):
        read_runs(f"sqlite:///{tmp_path}/absent.db")
    assert not (tmp_path / "absent.db").exists()
    store = known_store()
    with pytest.raises(LiverlabError, match="experiments: .*known"):
        read_runs(store.uri, "nope")
    with pytest.raises(LiverlabError, match="no run"):
        read_runs(store.uri, "known", parent_run_id="0" * 32)
