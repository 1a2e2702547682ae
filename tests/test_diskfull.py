"""A full disk, on purpose: a tmpfs of a few MB (needs root / CAP_SYS_ADMIN; skipped elsewhere).

* the writers liverlab relies on (checkpoint, slice cache, synthetic set) hit
  ENOSPC on a real full file system and leave nothing that looks complete;
* a sweep is refused before compute; with --force it stops with one line when
  the disk fills, leaves no checkpoint cut short, and after the tmpfs is
  enlarged (mount -o remount) --resume finishes every planned trial once,
  also when Tune's experiment state was left empty.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from test_sweep import _write_space

from liverlab.diskspace import is_disk_full
from liverlab.tracking.reader import read_runs

LIVERLAB = [sys.executable, "-m", "liverlab.cli"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _mount(path: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=False,
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {r.stderr.strip()}")


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    _mount(disk, "4m")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False, capture_output=True)
        if os.path.ismount(disk):  # a process still holds a file there: detach it
            subprocess.run(["umount", "-l", str(disk)], check=False, capture_output=True)


def _fill(disk: Path, leave: int = 0) -> None:
    """Take all but ``leave`` bytes of the disk."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(disk / "ballast", "wb") as f:
        f.write(b"\0" * max(free - leave, 0))


def test_writers_leave_nothing_that_looks_complete_on_a_full_disk(small_disk, phantom_root):
    from liverlab.data.cache import load_slices
    from liverlab.train import common
    from liverlab.train.pipeline import cached_intensity

    _fill(small_disk)
    big = {"weights": torch.zeros(1 << 18)}  # 1 MB
    with pytest.raises(Exception) as err:  # torch: RuntimeError "unexpected pos ..."
        common.save_checkpoint(small_disk / "run", big)
    assert is_disk_full(err.value, [small_disk])  # torch's zip writer loses the errno: judged by free space
    assert not list((small_disk / "run").rglob("*.pt*"))  # neither state.pt nor its temporary name

    with pytest.raises(Exception) as err:
        load_slices(phantom_root / "mri", "mri", size=256, cache_dir=small_disk / "cache")
    assert is_disk_full(err.value, [small_disk])
    assert not list((small_disk / "cache").rglob("meta.json"))  # no cache entry that a reader would open

    cfg = tiny_config(phantom_root, synthesis="intensity", stage="pipeline", **{"data.size": 256})
    with pytest.raises(Exception) as err:
        cached_intensity(cfg, small_disk / "sweepcache")
    assert is_disk_full(err.value, [small_disk])
    assert not list((small_disk / "sweepcache").rglob("provenance.json"))  # no synthetic set that looks done


def test_train_is_refused_before_compute_on_a_small_disk(small_disk, phantom_root, tmp_path):
    cfg = tiny_config(phantom_root)
    exp = tmp_path / "exp.yaml"
    exp.write_text(json.dumps(cfg.model_dump(mode="json")))  # JSON is YAML
    out = small_disk / "run"
    cmd = ["train", str(exp), "--set", "unet.model.base_features=64", "--out", str(out)]
    refused = subprocess.run(LIVERLAB + cmd, cwd=tmp_path, env=ENV, check=False, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2, refused.stderr[-2000:]
    line = refused.stderr.strip()
    assert "\n" not in line and f"not enough disk space for train tiny at {out}: 4.0 MB free" in line
    assert not out.exists()


def _check_nothing_corrupt(root: Path) -> int:
    """Every checkpoint and JSON file left under ``root`` loads; returns how many were checked."""
    n = 0
    for f in root.rglob("*.pt"):
        assert zipfile.is_zipfile(f), f"{f} is cut short"
        torch.load(f, weights_only=True)
        n += 1
    for ckpt in root.glob("*/*/checkpoint_*"):
        assert list(ckpt.glob("*.pt")), f"{ckpt} holds no checkpoint file"
    for f in root.rglob("meta.json"):  # slice cache entries
        json.loads(f.read_text())
        assert (f.parent / "images.npy").is_file()
    json.loads((root / "df" / "liverlab_sweep.json").read_text())
    assert not [p for p in root.rglob("*.tmp-*")], "a temporary file of an atomic write was left behind"
    return n


@pytest.mark.slow
def test_a_full_disk_is_refused_stopped_in_one_line_and_resumed_to_the_full_plan(tmp_path, phantom_root, small_disk):
    # U-Net base 16: a 1.9 MB checkpoint per report, so the 4 MB disk fills during the first reports.
    space = _write_space(tmp_path, phantom_root, "df", arms={"unet.model.norm": ["batch", "instance"]},
                         set={"unet.model.base_features": 16, "unet.iterations": 40, "unet.val_every": 4,
                              "data.cache_dir": str(small_disk / "slices")})
    cmd = ["sweep", str(space), "--storage", str(small_disk)]

    refused = subprocess.run(LIVERLAB + cmd, cwd=tmp_path, env=ENV, check=False, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    line = refused.stderr.strip()
    assert "\n" not in line and f"at {small_disk / 'df'}: 4.0 MB free, about" in line and "--force" in line
    assert not list(small_disk.iterdir())  # nothing written before the refusal

    t0 = time.monotonic()
    full = subprocess.run(LIVERLAB + cmd + ["--force"], cwd=tmp_path, env=ENV, check=False, capture_output=True, text=True,
                          timeout=400)
    stop_s = time.monotonic() - t0
    out = full.stdout + full.stderr
    assert full.returncode == 1, out[-3000:]
    lines = [x for x in out.splitlines() if x.startswith("liverlab: error: disk full at ")]
    assert len(lines) == 1, out[-3000:]
    assert str(small_disk) in lines[0] and "Traceback" not in out and "Tuner.restore" not in out
    resume = shlex.split(lines[0].split("resume with: ", 1)[1].split(" (traceback: ")[0])[1:]
    assert resume == [*cmd, "--force", "--resume"]
    log = Path(lines[0].rsplit("(traceback: ", 1)[1].rstrip(")"))
    assert "Traceback" in log.read_text()
    print(f"disk full: exit 1 after {stop_s:.0f} s; {lines[0]}")
    checked = _check_nothing_corrupt(small_disk)

    # The disk filled while Tune wrote its state (the 0-byte experiment_state of the issue): no smaller sweep.
    state = max((small_disk / "df").glob("experiment_state-*.json"))
    state.write_bytes(b"")
    subprocess.run(["mount", "-o", "remount,size=96m", str(small_disk)], check=True)
    t0 = time.monotonic()
    resumed = subprocess.run(LIVERLAB + resume + ["--no-report"], cwd=tmp_path, env=ENV, check=False,
                             capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "is empty (0 bytes)" in resumed.stderr and "rebuilding the sweep" in resumed.stderr
    assert "2 of 2 planned trials finished" in resumed.stdout
    info = json.loads((small_disk / "df" / "liverlab_sweep.json").read_text())
    assert info["planned_trials"] == 2
    runs = read_runs(info["tracking_uri"], parent_run_id=info["parent_run_id"])
    assert sorted(runs["status"].to_list()) == ["FINISHED", "FINISHED"]
    assert sorted(runs["arm"].to_list()) == ["unet.model.norm=batch", "unet.model.norm=instance"]
    every = read_runs(info["tracking_uri"], parent_run_id=info["parent_run_id"], include_replaced=True)
    assert "RUNNING" not in every["status"].to_list()
    assert every.filter(every["status"] != "FINISHED")["replaced_by"].null_count() == 0
    _check_nothing_corrupt(small_disk)
    print(f"resume: exit 0 in {time.monotonic() - t0:.0f} s; {every.height} runs, {runs.height} counted; "
          f"{checked} checkpoints checked after the stop")
