"""The tracker on MLflow's own batching: what reaches a real SQLite store, read back through MlflowClient.

MLflow 3.x splits one ``log_batch`` call into its store's batches (100 params
or tags, 1,000 metrics); liverlab hands it whole lists. Values over MLflow's
length limits are stored as their first ``limit - 3`` characters and ``...``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from report_fixtures import fresh_uri

from liverlab.tracking.client import client_for
from liverlab.tracking.writer import MlflowTracker, get_or_create_experiment


class _BatchSizes:
    """MlflowClient, recording how many metrics, params and tags each log_batch call carried."""

    def __init__(self, client: MlflowClient) -> None:
        self.client = client
        self.calls: list[tuple[int, int, int]] = []

    def log_batch(self, run_id: str, metrics: Any = (), params: Any = (), tags: Any = (), **kw: Any) -> None:
        self.calls.append((len(metrics), len(params), len(tags)))
        self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


@pytest.fixture()
def trial(tmp_path: Path) -> tuple[str, str]:
    """(uri, run_id) of a new run in a fresh store."""
    uri = fresh_uri(tmp_path)
    exp_id = get_or_create_experiment(uri, "s")
    return uri, client_for(uri).create_run(exp_id).info.run_id


def test_over_long_values_are_cut_with_a_marker(trial: tuple[str, str]) -> None:
    uri, run_id = trial
    t = MlflowTracker(client_for(uri), run_id)
    t.log_params({"long": "p" * 7000, "exact": "q" * 6000, "n": 3})
    t.set_tags({"long": "T" * 9000, "exact": "E" * 8000})
    t.finish("FAILED", error="ValueError: " + "x" * 20000)
    run = MlflowClient(uri).get_run(run_id)
    assert run.data.params == {"long": "p" * 5997 + "...", "exact": "q" * 6000, "n": "3"}
    assert run.data.tags["long"] == "T" * 7997 + "..."
    assert run.data.tags["exact"] == "E" * 8000
    assert run.data.tags["liverlab.error"] == "ValueError: " + "x" * (8000 - 15) + "..."
    # A resumed run compares against the stored (cut) form: the same long value is not a change.
    again = MlflowTracker(client_for(uri), run_id, existing_params=run.data.params)
    again.log_params({"long": "p" * 7000})
    again.finish()
    assert MlflowClient(uri).get_run(run_id).data.params["long"] == "p" * 5997 + "..."


def test_mlflow_splits_what_liverlab_sends_whole(trial: tuple[str, str]) -> None:
    uri, run_id = trial
    spy = _BatchSizes(client_for(uri))
    t = MlflowTracker(spy, run_id, flush_interval=3600, flush_threshold=10**9)  # type: ignore[arg-type]
    t.log_params({"p": {f"k{i:03d}": i for i in range(250)}})
    t.set_tags({f"tag{i:03d}": str(i) for i in range(230)})
    for step in range(1300):
        t.log_metrics({"a": step * 0.5, "b": -step}, step=step)
    t.flush()
    t.finish()
    # One call each, over the store's per-request limits (100 params/tags, 1,000 metrics)
    # that SqlAlchemyStore.log_batch enforces: MLflow's client split them.
    assert (0, 250, 0) in spy.calls and (0, 0, 230) in spy.calls and (2600, 0, 0) in spy.calls
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.data.params == {f"p.k{i:03d}": str(i) for i in range(250)}
    assert all(run.data.tags[f"tag{i:03d}"] == str(i) for i in range(230))
    for key, value in (("a", lambda s: s * 0.5), ("b", lambda s: float(-s))):
        hist = client.get_metric_history(run_id, key)
        assert sorted((m.step, m.value) for m in hist) == [(s, value(s)) for s in range(1300)]


def test_a_refused_send_is_kept_and_sent_once_later(trial: tuple[str, str]) -> None:
    uri, run_id = trial
    client = client_for(uri)
    t = MlflowTracker(client, run_id, flush_interval=3600, flush_threshold=10**9)
    t.log_metrics({"val/iou": 0.5}, step=1)
    client.delete_run(run_id)  # the store now refuses writes to the run
    with pytest.raises(Exception, match="(?i)deleted|active"):
        t.flush()
    assert t.pending() == 1
    client.restore_run(run_id)
    t.log_metrics({"val/iou": 0.6}, step=2)
    t.finish()
    hist = MlflowClient(uri).get_metric_history(run_id, "val/iou")
    assert sorted((m.step, m.value) for m in hist) == [(1, 0.5), (2, 0.6)]


def test_a_batch_sent_twice_is_stored_once(trial: tuple[str, str]) -> None:
    """A send that fails after MLflow stored some of its chunks is sent whole again; the store keeps one copy."""
    uri, run_id = trial
    batch = [Metric("a", float(s), 1_000 + s, s) for s in range(1500)]
    client_for(uri).log_batch(run_id, metrics=batch, synchronous=True)
    client_for(uri).log_batch(run_id, metrics=batch, synchronous=True)
    assert len(MlflowClient(uri).get_metric_history(run_id, "a")) == 1500


def test_keys_follow_mlflow_rules_in_the_callers_thread(trial: tuple[str, str]) -> None:
    uri, run_id = trial
    t = MlflowTracker(client_for(uri), run_id)
    for bad in ("bad key!", "val//iou", "/abs", "", "x" * 251):
        with pytest.raises(ValueError, match="invalid MLflow key"):
            t.log_metrics({bad: 1.0}, step=0)
    t.log_metrics({"val/iou": 1.0, "time 1:2": 2.0, "x" * 250: 3.0}, step=0)
    t.finish()
    assert set(MlflowClient(uri).get_run(run_id).data.metrics) == {"val/iou", "time 1:2", "x" * 250}
