"""The pieces behind issues 19 and 23, on real components: signals, MLflow runs, Tune state files, disk space."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient
from report_fixtures import fresh_uri

from liverlab.diskspace import Need, check, is_disk_full
from liverlab.errors import LiverlabError
from liverlab.signals import SignalGuard, Stopped
from liverlab.sweep.plan import check_state, drop_partial_checkpoints, missing_slots
from liverlab.tracking.reader import read_runs
from liverlab.tracking.recovery import close_interrupted_runs, replace_slot_runs, slot_runs
from liverlab.tracking.writer import open_sweep_run, open_trial_run


def test_first_signal_is_graceful_second_stops_at_once():
    seen: list[int] = []
    with SignalGuard(lambda s: seen.append(s) or True) as guard:
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM] and guard.signum == signal.SIGTERM
        with pytest.raises(Stopped) as stop:
            os.kill(os.getpid(), signal.SIGINT)
    assert stop.value.exit_code == 143  # the first signal decides the exit code
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
    with SignalGuard() as guard, pytest.raises(Stopped) as stop:  # no graceful path: stop at once
        os.kill(os.getpid(), signal.SIGINT)
    assert stop.value.exit_code == 130 and isinstance(stop.value, KeyboardInterrupt)


def _slot(trial: str, sample: int = 0) -> dict[str, str]:
    return {"liverlab.arm": "synthesis=none", "liverlab.seed": "0", "liverlab.sample": str(sample),
            "liverlab.trial_id": trial}


def test_a_replaced_trial_run_is_killed_named_and_counted_once(tmp_path):
    uri = fresh_uri(tmp_path)
    exp, parent = open_sweep_run(uri, "s", {"liverlab.sweep_key": "k"})
    first = open_trial_run(uri, exp, parent, "aaa", _slot("aaa"))
    other = open_trial_run(uri, exp, parent, "ccc", _slot("ccc", sample=1))
    second = open_trial_run(uri, exp, parent, "bbb", _slot("bbb"))  # Tune lost "aaa": same slot, new trial
    assert replace_slot_runs(second, exp, parent, _slot("bbb"), uri) == [first.run_id]
    second.finish("FINISHED")
    other.finish("FINISHED")
    first.finish("FINISHED")  # the stale attempt can no longer end the run it lost
    client = MlflowClient(uri)
    old = client.get_run(first.run_id)
    assert old.info.status == "KILLED" and old.data.tags["liverlab.replaced_by"] == second.run_id
    assert client.get_run(second.run_id).data.tags["liverlab.replaces"] == first.run_id
    runs = read_runs(uri, parent_run_id=parent)
    assert sorted(runs["trial_id"].to_list()) == ["bbb", "ccc"]
    assert read_runs(uri, parent_run_id=parent, include_replaced=True).height == 3
    finished = {r["slot"] for r in slot_runs(uri, exp, parent) if r["status"] == "FINISHED" and not r["replaced_by"]}
    assert finished == {("synthesis=none", 0, 0), ("synthesis=none", 0, 1)}


def test_interrupted_runs_end_killed_and_lose_tunes_stop_tag(tmp_path):
    uri = fresh_uri(tmp_path)
    exp, parent = open_sweep_run(uri, "s", {"liverlab.sweep_key": "k"})
    running = open_trial_run(uri, exp, parent, "run", _slot("run"))
    stopped = open_trial_run(uri, exp, parent, "stop", _slot("stop", 1))
    stopped.set_tags({"liverlab.stopped_early": "true"})  # Tune's SystemExit(0) at the end of an interrupted fit
    stopped.finish("FINISHED")
    done = open_trial_run(uri, exp, parent, "done", _slot("done", 2))
    done.finish("FINISHED")
    assert close_interrupted_runs(uri, parent, ["run", "stop"]) == 2
    client = MlflowClient(uri)
    assert client.get_run(running.run_id).info.status == "KILLED"
    assert client.get_run(stopped.run_id).info.status == "KILLED"
    assert "liverlab.stopped_early" not in client.get_run(stopped.run_id).data.tags
    assert client.get_run(done.run_id).info.status == "FINISHED"
    assert client.get_run(parent).info.status == "KILLED"
    running.finish("FAILED")  # a worker that outlived the driver cannot end it again
    assert client.get_run(running.run_id).info.status == "KILLED"


def test_processes_opening_one_new_sqlite_store_together_all_succeed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'new.db'}"
    code = textwrap.dedent(f"""
        import sys, time
        import mlflow.store.tracking.sqlalchemy_store  # imported before the start line: opens coincide
        from liverlab.tracking.writer import open_sweep_run
        while time.time() < float(sys.argv[2]):
            time.sleep(0.005)
        open_sweep_run({uri!r}, "s" + sys.argv[1], {{"liverlab.sweep_key": sys.argv[1]}})
    """)
    import time

    start = time.time() + 10
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i), str(start)], cwd=tmp_path, env=env,
                              stderr=subprocess.PIPE) for i in range(4)]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(e[-1500:] for e in errors)
    assert len(MlflowClient(uri).search_experiments()) >= 4


def test_tune_state_files_that_are_empty_or_cut_short_are_named(tmp_path):
    d = tmp_path / "sweep"
    d.mkdir()
    assert "no experiment_state" in check_state(str(d)).problem
    state = d / "experiment_state-2026-01-01_00-00-00.json"
    state.write_bytes(b"")
    assert check_state(str(d)).problem == f"{state} is empty (0 bytes)"
    state.write_text('{"trial_data": [["abc"')
    assert "is corrupt (JSONDecodeError" in check_state(str(d)).problem
    ckpt = d / "trial_1" / "checkpoint_000003"
    ckpt.mkdir(parents=True)
    (ckpt / "state.pt").write_bytes(b"PK\x03\x04 cut short")
    work = d / "trial_1" / "work" / "checkpoint" / "state.pt"
    work.parent.mkdir(parents=True)
    work.write_bytes(b"PK\x03\x04")
    temp = work.parent / ".state.pt.tmp-0123456789ab"
    temp.write_bytes(b"PK")
    assert drop_partial_checkpoints(d) == [ckpt, work, temp]
    assert not ckpt.exists() and not work.exists() and not temp.exists()


def test_missing_slots_keep_the_plan_order():
    plan = [("a", 0, 0), ("b", 0, 0), ("a", 1, 0), ("b", 1, 0)]
    assert missing_slots(plan, finished={("a", 0, 0)}, attempted=[("b", 1, 0)]) == [("b", 0, 0), ("a", 1, 0)]


def test_disk_full_errors_are_recognised_and_others_are_not():
    assert is_disk_full(OSError(28, "No space left on device"))
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    wrapped = RuntimeError("trial failed")
    wrapped.__cause__ = OSError(122, "Disk quota exceeded")
    assert is_disk_full(wrapped)
    assert is_disk_full("ray::ImplicitFunc.train() ... OSError: [Errno 28] Error writing bytes to file")
    assert not is_disk_full(OSError(2, "No such file or directory"))
    assert not is_disk_full(RuntimeError("unexpected pos 704 vs 598"), [Path("/")])  # plenty of space here


def test_space_check_refuses_in_one_line_and_force_overrides(tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    needs = [Need(tmp_path / "s", free, "checkpoints of 8 run(s)"), Need(tmp_path / "s", 1 << 20, "MLflow runs")]
    with pytest.raises(LiverlabError) as err:
        check(needs, force=False, what="sweep x")
    message = str(err.value)
    assert "\n" not in message and f"at {tmp_path / 's'}:" in message and "MB free, about" in message
    assert "checkpoints of 8 run(s)" in message and "--force" in message
    check(needs, force=True, what="sweep x")
    check([Need(tmp_path, 1024, "tiny")], force=False, what="sweep x")


def test_resume_command_quotes_what_the_user_typed():
    from liverlab.sweep.interrupt import SweepSession

    opts = SimpleNamespace(space="my spaces/q.yaml", set=["unet.iterations=40", "name=a b"], num_samples=None,
                           max_concurrent=2, address=None, storage="/data/sweeps", tracking_uri=None, name=None,
                           report=False, force=True)
    cmd = SweepSession(opts).resume_command()
    assert cmd == ("liverlab sweep 'my spaces/q.yaml' --set unet.iterations=40 --set 'name=a b' --max-concurrent 2 "
                   "--storage /data/sweeps --no-report --force --resume")
    assert json.dumps(cmd)  # one line
