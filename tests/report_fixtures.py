"""A tracking store with KNOWN values, written through liverlab's own writer.

Imported by test_report*.py and test_analysis*.py (``from report_fixtures
import build_known_store``); tests/test_report.py checks that the store reads back.

Arms and seeds:
  synthesis=none    seeds 0-4   test/iou NONE_IOU
  synthesis=essnet  seeds 0-4   test/iou ESSNET_IOU (+ a worse extra Optuna sample on seed 0,
                                + a FAILED run on seed 5), panels/*.png, val/shape_dice
  synthesis=cyclegan seeds 0-2  test/iou CYCLEGAN_IOU, val/shape_dice
Every finished run has a per_patient.parquet with 4 patients (PATIENT_IOU).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from liverlab.config import config_from_dict, flatten
from liverlab.tracking.writer import finish_sweep_run, open_sweep_run, open_trial_run

NONE_IOU = [0.80, 0.82, 0.78, 0.81, 0.79]
ESSNET_IOU = [0.83, 0.84, 0.80, 0.85, 0.80]
CYCLEGAN_IOU = [0.79, 0.83, 0.775]
EPOCHS = 4
PATIENTS = ["p01", "p02", "p03", "p04"]


def dice_of(iou: float) -> float:
    """Dice from IoU (a deterministic, known function for the test values)."""
    return 2 * iou / (1 + iou)


def patient_iou(arm_offset: float, seed: int) -> list[float]:
    """Known per-patient IoU for a run."""
    return [0.7 + arm_offset + 0.01 * seed + 0.02 * k + 0.004 * ((7 * seed + 3 * k + round(100 * arm_offset)) % 5)
            for k in range(len(PATIENTS))]


@dataclass
class KnownStore:
    uri: str
    root: Path
    experiment_id: str
    parent_run_id: str
    sweep_dir: Path
    run_ids: dict[tuple[str, int], str] = field(default_factory=dict)
    extra_run_id: str = ""
    failed_run_id: str = ""


def _panel(path: Path, shade: int) -> Path:
    Image.fromarray(np.full((20, 60), shade, dtype=np.uint8)).save(path)
    return path


def _trial(store: KnownStore, arm: str, seed: int, trial_id: str, test_iou: float | None, val_scale: float,
           tmp: Path, status: str = "FINISHED") -> str:
    synth = arm.split("=")[1]
    cfg = config_from_dict({"data": {"root": str(store.root / "data")}, "stage": "pipeline", "synthesis": synth,
                            "seed": seed, "unet": {"mixing_ratio": 0.0 if synth == "none" else 1.0}})
    tags = {"liverlab.arm": arm, "liverlab.seed": str(seed), "liverlab.stage": "pipeline",
            "liverlab.sweep": "known", "liverlab.git_commit": "abc123", "liverlab.git_dirty": "false",
            "liverlab.manifest_hash": "m123"}
    tr = open_trial_run(store.uri, store.experiment_id, store.parent_run_id, trial_id, tags, run_name=trial_id)
    tr.log_params(flatten(cfg.model_dump(mode="json")))
    tr.log_metrics({"data/n_real": 350, "data/n_synthetic": 0 if synth == "none" else 714}, step=0)
    for e in range(1, EPOCHS + 1):
        m = {"val/iou": val_scale * e / EPOCHS, "train/loss": 1.0 / e}
        if synth != "none":
            m["val/shape_dice"] = (0.9 if synth == "essnet" else 0.7) + 0.01 * seed + 0.001 * e
        tr.log_metrics(m, step=e)
    if status == "FAILED":
        tr.finish("FAILED", error="RuntimeError: out of memory")
        return tr.run_id
    assert test_iou is not None
    tr.log_metrics({"test/iou": test_iou, "test/dice": dice_of(test_iou), "test/assd": 2.0 - test_iou,
                    "test/mssd": 10.0 - 5 * test_iou, "test/ravd": 0.1 * test_iou}, step=EPOCHS)
    offset = {"none": 0.0, "essnet": 0.03, "cyclegan": 0.01}[synth]
    pp = tmp / f"{trial_id}.parquet"
    ious = patient_iou(offset, seed)
    pl.DataFrame({"patient_id": PATIENTS, "iou": ious, "dice": [dice_of(v) for v in ious],
                  "ravd": [0.05] * 4, "assd": [1.0] * 4, "mssd": [5.0] * 4}).write_parquet(pp)
    (tmp / "per_patient.parquet").write_bytes(pp.read_bytes())
    tr.log_artifact(tmp / "per_patient.parquet")
    tr.log_text("synthesis: " + synth + "\n", "config.yaml")
    if synth == "essnet":
        for e in (1, 2):
            tr.log_artifact(_panel(tmp / f"essnet_epoch_{e:03d}.png", 10 * seed + e), "panels")
    tr.finish(status)
    return tr.run_id


_CACHE: dict[str, object] = {}


def _session_dir() -> Path:
    if "dir" not in _CACHE:
        # tmpfs when there is one: SQLite's fsyncs make a store 2x slower to build on disk.
        shm = Path("/dev/shm")
        base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
        d = Path(tempfile.mkdtemp(prefix="liverlab-test-stores-", dir=base))
        atexit.register(shutil.rmtree, d, True)
        _CACHE["dir"] = d
    return _CACHE["dir"]  # type: ignore[return-value]


def fresh_uri(root: Path) -> str:
    """A new, empty, already-migrated SQLite store in ``root``.

    MLflow's schema migrations take 3-7 s per new database here; they run
    once per test session and the empty file is copied for each store.
    """
    template = _session_dir() / "empty.db"
    if not template.exists():
        from liverlab.tracking.client import client_for

        client_for(f"sqlite:///{template}").search_experiments()
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, root / "mlflow.db")
    return f"sqlite:///{root}/mlflow.db"


def known_store() -> KnownStore:
    """The known store, built once per test session (read-only use, or additive like report/ artifacts)."""
    if "known" not in _CACHE:
        _CACHE["known"] = build_known_store(_session_dir() / "known")
    return _CACHE["known"]  # type: ignore[return-value]


def build_known_store(root: Path) -> KnownStore:
    """Write the known sweep under ``root`` (sqlite store + liverlab_sweep.json in root/sweep)."""
    uri = fresh_uri(root)
    exp_id, parent = open_sweep_run(uri, "known", {"liverlab.sweep_key": "known-key", "liverlab.git_commit": "abc123",
                                                   "liverlab.manifest_hash": "m123"})
    store = KnownStore(uri=uri, root=root, experiment_id=exp_id, parent_run_id=parent, sweep_dir=root / "sweep")
    tmp = root / "tmp"
    tmp.mkdir(exist_ok=True)
    for arm, values, scale in (("synthesis=none", NONE_IOU, 0.7), ("synthesis=essnet", ESSNET_IOU, 0.75),
                               ("synthesis=cyclegan", CYCLEGAN_IOU, 0.72)):
        for seed, v in enumerate(values):
            store.run_ids[(arm, seed)] = _trial(store, arm, seed, f"{arm.split('=')[1]}_{seed}", v, scale, tmp)
    # A second Optuna sample of (essnet, seed 0) with a worse validation score: set aside by select_units.
    store.extra_run_id = _trial(store, "synthesis=essnet", 0, "essnet_0_b", 0.60, 0.5, tmp)
    store.failed_run_id = _trial(store, "synthesis=essnet", 5, "essnet_5", None, 0.75, tmp, status="FAILED")
    finish_sweep_run(uri, parent)
    store.sweep_dir.mkdir()
    (store.sweep_dir / "liverlab_sweep.json").write_text(json.dumps({
        "name": "known", "tracking_uri": uri, "experiment_id": exp_id, "parent_run_id": parent,
        "space_file": "search_spaces/known.yaml"}))
    return store


# ----------------------------------------------------------------------------- custom stores (folds, scarcity)


@dataclass(frozen=True)
class TrialSpec:
    """One finished trial of a custom store: its arm, seed, test IoU and per-patient IoU (or None)."""

    arm: str
    seed: int
    test_iou: float | None
    patients: dict[str, float] | None = None
    val_iou: float = 0.5
    set: dict[str, object] = field(default_factory=dict)  # extra config keys (e.g. data.split.folds)


def build_custom_store(root: Path, name: str, trials: list[TrialSpec]) -> KnownStore:
    """A sweep of ``trials`` written through liverlab's writer (like ``build_known_store``)."""
    from liverlab.config import set_dotted
    from liverlab.report.arms import arm_factors

    uri = fresh_uri(root)
    exp_id, parent = open_sweep_run(uri, name, {"liverlab.sweep_key": f"{name}-key"})
    store = KnownStore(uri=uri, root=root, experiment_id=exp_id, parent_run_id=parent, sweep_dir=root / "sweep")
    tmp = root / "tmp"
    tmp.mkdir(exist_ok=True)
    for i, t in enumerate(trials):
        raw: dict = {"data": {"root": str(root / "data")}, "stage": "pipeline", "seed": t.seed}
        for key, value in {**arm_factors(t.arm), **t.set}.items():
            set_dotted(raw, key, value)
        cfg = config_from_dict(raw)
        tags = {"liverlab.arm": t.arm, "liverlab.seed": str(t.seed), "liverlab.stage": "pipeline",
                "liverlab.sweep": name}
        tr = open_trial_run(uri, exp_id, parent, f"t{i}", tags, run_name=f"t{i}")
        tr.log_params(flatten(cfg.model_dump(mode="json")))
        tr.log_metrics({"val/iou": t.val_iou}, step=1)
        if t.test_iou is not None:
            tr.log_metrics({"test/iou": t.test_iou, "test/dice": dice_of(t.test_iou)}, step=1)
        if t.patients is not None:
            ids = sorted(t.patients)
            pl.DataFrame({"patient_id": ids, "iou": [t.patients[p] for p in ids],
                          "dice": [dice_of(t.patients[p]) for p in ids]}).write_parquet(tmp / "per_patient.parquet")
            tr.log_artifact(tmp / "per_patient.parquet")
        tr.finish("FINISHED")
        store.run_ids[(t.arm, t.seed)] = tr.run_id
    finish_sweep_run(uri, parent)
    store.sweep_dir.mkdir()
    (store.sweep_dir / "liverlab_sweep.json").write_text(json.dumps({
        "name": name, "tracking_uri": uri, "experiment_id": exp_id, "parent_run_id": parent}))
    return store
