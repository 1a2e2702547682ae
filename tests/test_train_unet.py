"""U-Net stage: learning, validation, early stopping, test table, mixing, resume."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from conftest import ReportLog, tiny_config
from liverlab.errors import LiverlabError
from liverlab.losses import dice_ce_loss
from liverlab.train import data as tdata
from liverlab.train.common import NonFiniteLoss, check_finite, load_checkpoint
from liverlab.train.evaluate import case_metrics, predict_slices
from liverlab.train.unet import UNetData, build_unet, train_unet


def test_unet_overfits_one_phantom_patient(phantom_root):
    """Model + loss + slices + 3D metric: one patient learnt to IoU > 0.9."""
    config = tiny_config(phantom_root, **{"unet.model.base_features": 8, "unet.model.depth": 3})
    patient = tdata.cases_in(config.data.mri_dir, config, "train")[0]
    slices = tdata.load(config, config.data.mri_dir, "mri", None, all_slices=True, cases=[patient])
    torch.manual_seed(0)
    model = build_unet(config)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.from_numpy(np.array(slices.images))[:, None]
    y = torch.from_numpy(np.asarray(slices.masks, dtype=np.int64))
    for _ in range(150):
        loss = dice_ce_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    rows = case_metrics(slices, predict_slices(model, np.asarray(slices.images), torch.device("cpu")))
    assert len(rows) == 1 and rows[0]["iou"] > 0.9, rows


def test_train_unet_reports_per_epoch_and_writes_the_test_table(phantom_root, tmp_path):
    config = tiny_config(phantom_root, **{"unet.epochs": 3})
    log = ReportLog()
    metrics = train_unet(config, log, None, tmp_path)
    assert [m["epoch"] for m in log.metrics] == [1, 2, 3]
    assert all(0.0 <= m["val/iou"] <= 1.0 and "val/dice" in m for m in log.metrics)
    assert all(c is not None for c in log.checkpoints)
    table = pl.read_parquet(tmp_path / "per_patient.parquet")
    assert set(table.columns) >= {"patient_id", "iou", "dice", "ravd", "assd", "mssd"}
    test_patients = {tdata.split_table(config.data.mri_dir, config).filter(pl.col("split") == "test")["patient_id"].to_list()[0]}
    assert set(table["patient_id"].to_list()) == test_patients
    assert metrics["test/iou"] == pytest.approx(table["iou"].mean())
    weights = load_checkpoint(tmp_path / "best.pt")
    assert weights["kind"] == "unet_weights"


def test_early_stopping_stops_after_patience(phantom_root, tmp_path):
    # lr tiny: val/iou cannot improve after the first epoch, so patience 1 stops at epoch 2.
    config = tiny_config(phantom_root, **{"unet.epochs": 6, "unet.patience": 1, "unet.optim.lr": 1e-12})
    log = ReportLog()
    train_unet(config, log, None, tmp_path)
    assert len(log.metrics) == 2


def test_resume_continues_from_last_epoch(phantom_root, tmp_path):
    train_unet(tiny_config(phantom_root, **{"unet.epochs": 2}), ReportLog(), None, tmp_path)
    log = ReportLog()
    train_unet(tiny_config(phantom_root, **{"unet.epochs": 3}), log, None, tmp_path)
    assert [m["epoch"] for m in log.metrics] == [3]


def test_mixing_ratio_draws_synthetic_slices(phantom_root):
    # The phantom MRI folder stands in for a synthetic set: the sampler mixes the two.
    config = tiny_config(phantom_root, **{
        "unet.mixing_ratio": 2.0, "unet.synthetic": str(phantom_root / "mri"), "unet.steps_per_epoch": 30,
    })
    data = UNetData(config)
    assert data.n_synth > 0
    drawn = np.array(list(data.loader(0).sampler))
    synth = (drawn >= data.n_real).sum()
    assert synth / (len(drawn) - synth) == pytest.approx(2.0, rel=0.02)
    # Real only: no synthetic index is ever drawn.
    real = UNetData(tiny_config(phantom_root))
    assert (np.array(list(real.loader(0).sampler)) < real.n_real).all()


def test_mixing_without_synthetic_set_is_a_clear_error(phantom_root):
    with pytest.raises(LiverlabError, match="unet.synthetic"):
        UNetData(tiny_config(phantom_root, **{"unet.mixing_ratio": 1.0}))


def test_non_finite_loss_stops_with_a_reason():
    check_finite({"train/loss": 1.0}, "here")
    with pytest.raises(NonFiniteLoss, match="train/loss=nan at|train/loss=nan"):
        check_finite({"train/loss": float("nan")}, "unet epoch 1 step 3")
