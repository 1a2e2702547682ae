"""No metric step is logged twice in a run (issue 21): a reopened trial run skips the steps it already has.

Read back through MlflowClient.get_metric_history from a real SQLite store.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from report_fixtures import fresh_uri

from liverlab.tracking.recovery import reopen_run
from liverlab.tracking.writer import open_run, open_sweep_run, open_trial_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def sweep(tmp_path: Path) -> tuple[str, str, str]:
    uri = fresh_uri(tmp_path)
    exp_id, parent = open_sweep_run(uri, "s", {"liverlab.sweep_key": "k"})
    return uri, exp_id, parent


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def _assert_no_step_twice(uri: str, run_id: str) -> None:
    client = MlflowClient(uri)
    for key in client.get_run(run_id).data.metrics:
        counts = Counter(m.step for m in client.get_metric_history(run_id, key))
        assert max(counts.values()) == 1, (key, counts)


def test_a_restored_trial_does_not_log_its_steps_again(sweep: tuple[str, str, str]) -> None:
    """The first attempt reached step 10 (val/iou) and 4 (train/loss); the restore reruns from step 7 and 3."""
    uri, exp_id, parent = sweep
    first = open_trial_run(uri, exp_id, parent, "t", {})
    for step in range(1, 11):
        first.log_metrics({"val/iou": step / 100}, step=step)
    for step in range(1, 5):
        first.log_metrics({"train/loss": 1.0 / step}, step=step)
    first.flush()  # then the worker dies: the run stays RUNNING

    again = open_trial_run(uri, exp_id, parent, "t", {})
    assert again.run_id == first.run_id
    for step in range(7, 16):  # the rerun's values differ: the resume was not exact
        again.log_metrics({"val/iou": 0.5 + step / 100}, step=step)
    for step in range(3, 9):
        again.log_metrics({"train/loss": 2.0 / step, "val/dice": step / 10}, step=step)
    again.finish()

    run_id = again.run_id
    _assert_no_step_twice(uri, run_id)
    # Steps the run had keep their first value; later ones come from the rerun.
    assert _history(uri, run_id, "val/iou") == [(s, s / 100) for s in range(1, 11)] + [
        (s, 0.5 + s / 100) for s in range(11, 16)
    ]
    # The floor is per key: train/loss had only reached step 4.
    assert _history(uri, run_id, "train/loss") == [(s, 1.0 / s) for s in range(1, 5)] + [
        (s, 2.0 / s) for s in range(5, 9)
    ]
    # A key the run did not have is logged whole.
    assert _history(uri, run_id, "val/dice") == [(s, s / 10) for s in range(3, 9)]
    assert again.skipped == 4 + 2


def test_a_resumed_train_run_does_not_log_its_steps_again(tmp_path: Path) -> None:
    """`liverlab train` continues its own run (reopen_run): the metrics that reached the store before
    a SIGTERM can be newer than the checkpoint the resume starts from (validation at 12, checkpoint at 8)."""
    uri = fresh_uri(tmp_path)
    first = open_run(uri, "tiny")
    for step in (4, 8, 12):
        first.log_metrics({"val/iou": step / 100}, step=step)
    first.finish("KILLED")

    again = reopen_run(uri, first.run_id)
    assert again is not None and again.run_id == first.run_id
    for step in (12, 16):  # the resume reruns step 12 from the checkpoint at 8
        again.log_metrics({"val/iou": 0.5 + step / 100}, step=step)
    again.finish()
    _assert_no_step_twice(uri, first.run_id)
    assert _history(uri, first.run_id, "val/iou") == [(4, 0.04), (8, 0.08), (12, 0.12), (16, 0.66)]
    assert again.skipped == 1


def test_a_reused_translators_figures_are_logged_once(sweep: tuple[str, str, str]) -> None:
    """train/pipeline.py logs a reused translator's final metrics at step = its last epoch, on every attempt."""
    uri, exp_id, parent = sweep
    translator = {"val/shape_dice": 0.8, "train/loss_g": 1.5, "epoch": 3.0}
    first = open_trial_run(uri, exp_id, parent, "p", {})
    first.log_metrics(translator, step=3)  # the translator came from the cache
    first.log_metrics({"val/iou": 0.4}, step=20)
    first.flush()
    again = open_trial_run(uri, exp_id, parent, "p", {})  # the trial is retried; the cache is still there
    again.log_metrics(translator, step=int(translator["epoch"]))
    again.log_metrics({"val/iou": 0.5}, step=40)
    again.finish()
    _assert_no_step_twice(uri, again.run_id)
    assert _history(uri, again.run_id, "val/shape_dice") == [(3, 0.8)]
    assert _history(uri, again.run_id, "val/iou") == [(20, 0.4), (40, 0.5)]


def test_steps_are_learned_from_a_run_left_by_kill_9(sweep: tuple[str, str, str]) -> None:
    """The floor comes from the store, not from anything the killed process held."""
    uri, exp_id, parent = sweep
    code = textwrap.dedent(f"""
        import os, signal
        from liverlab.tracking.writer import open_trial_run
        t = open_trial_run({uri!r}, {exp_id!r}, {parent!r}, "k", {{}})
        for step in range(0, 60, 10):
            t.log_metrics({{"val/iou": step / 100, "data/n_real": 4.0}} if step == 0 else {{"val/iou": step / 100}},
                          step=step)
        t.flush()
        print(t.run_id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == -9, proc.stderr
    again = open_trial_run(uri, exp_id, parent, "k", {})
    assert again.run_id == proc.stdout.split()[0]
    again.log_metrics({"data/n_real": 4.0}, step=0)  # logged again at the start of every attempt
    for step in range(30, 80, 10):
        again.log_metrics({"val/iou": 0.9}, step=step)
    again.finish()
    _assert_no_step_twice(uri, again.run_id)
    assert _history(uri, again.run_id, "val/iou") == [(s, s / 100) for s in range(0, 60, 10)] + [(60, 0.9), (70, 0.9)]
    assert _history(uri, again.run_id, "data/n_real") == [(0, 4.0)]

