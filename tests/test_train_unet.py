"""U-Net stage: learning, iterations and schedule, equal steps across arms, k-fold,
keep last/best, early stopping, test table, mixing, resume, checkpoint contents."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from conftest import ReportLog, tiny_config
from liverlab.errors import LiverlabError
from liverlab.losses import dice_ce_loss
from liverlab.train import data as tdata
from liverlab.train.common import NonFiniteLoss, check_finite, load_checkpoint, lr_factor
from liverlab.infer.evaluate import case_metrics, predict_slices
from liverlab.train.unet import UNetData, build_unet, train_unet


def _steps_taken(workdir) -> int:
    """Optimiser steps from AdamW's own per-parameter counter in the last checkpoint."""
    state = load_checkpoint(workdir / "checkpoint")
    steps = {float(s["step"]) for s in state["optim"]["state"].values()}
    assert len(steps) == 1
    return int(steps.pop())


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


def test_lr_schedules_known_values():
    assert lr_factor("poly", 0, 100) == 1.0
    assert lr_factor("poly", 50, 100) == pytest.approx(0.5**0.9)
    assert lr_factor("poly", 99, 100) == pytest.approx(0.01**0.9)
    assert lr_factor("cosine", 50, 100) == pytest.approx(0.5)
    assert lr_factor("cosine", 0, 100) == 1.0
    assert lr_factor("constant", 73, 100) == 1.0


def test_linear_schedule_is_cyclegans_epoch_decay_step_by_step():
    """EssNet's schedule per iteration equals torch's LambdaLR stepped once per epoch with CycleGAN's rule."""
    epochs, decay, steps = 2, 3, 4
    expected = [1.0] * 8 + [0.75] * 4 + [0.5] * 4 + [0.25] * 4  # constant 2 epochs, then 1 - k/(3 + 1)
    got = [lr_factor("linear", it, (epochs + decay) * steps, hold=epochs * steps, every=steps) for it in range(20)]
    assert got == expected
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=2e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0 - max(0, e + 1 - epochs) / (decay + 1))
    for it in range(20):
        assert opt.param_groups[0]["lr"] == 2e-4 * got[it]  # bit-identical, not approximately
        opt.step()  # no gradient: nothing moves, but torch wants a step before the scheduler's
        if (it + 1) % steps == 0:
            sched.step()


def test_train_unet_reports_every_val_every_steps_and_writes_the_test_table(phantom_root, tmp_path):
    config = tiny_config(phantom_root, **{"unet.iterations": 10, "unet.val_every": 4})
    log = ReportLog()
    metrics = train_unet(config, log, None, tmp_path)
    assert [m["iteration"] for m in log.metrics] == [4, 8, 10]
    assert all(0.0 <= m["val/iou"] <= 1.0 and "val/dice" in m for m in log.metrics)
    assert all(c is not None for c in log.checkpoints)
    assert _steps_taken(tmp_path) == 10
    # poly: the last step (index 9 of 10) ran at lr * (1 - 9/10)^0.9.
    assert log.metrics[-1]["train/lr"] == pytest.approx(config.unet.optim.lr * 0.1**0.9)
    table = pl.read_parquet(tmp_path / "per_patient.parquet")
    assert set(table.columns) >= {"patient_id", "iou", "dice", "ravd", "assd", "mssd"}
    split = tdata.split_table(config.data.mri_dir, config)
    assert set(table["patient_id"].to_list()) == set(split.filter(pl.col("split") == "test")["patient_id"].to_list())
    assert metrics["test/iou"] == pytest.approx(table["iou"].mean())


def test_best_pt_holds_last_weights_patients_and_manifest_hash(phantom_root, tmp_path):
    from liverlab.data.manifest import ensure_manifest, manifest_hash

    config = tiny_config(phantom_root)
    train_unet(config, ReportLog(), None, tmp_path)
    weights = load_checkpoint(tmp_path / "best.pt")  # weights_only=True
    assert weights["kind"] == "unet_weights"
    last = load_checkpoint(tmp_path / "checkpoint")["model"]
    assert all(torch.equal(weights["model"][k], last[k]) for k in last)  # keep: last
    split = tdata.split_table(config.data.mri_dir, config)
    seen = split.filter(pl.col("split").is_in(["train", "val"]))["patient_id"].unique().sort().to_list()
    assert weights["train_patients"] == seen and all(isinstance(p, str) for p in seen)
    assert weights["manifest_hash"] == manifest_hash(ensure_manifest(config.data.mri_dir))


def test_equal_optimizer_steps_whatever_the_mixing_ratio(phantom_root, tmp_path):
    """r changes what is in a batch, never how many steps (the phantom MRI stands in for a synthetic set)."""
    logs = {}
    for r in (0.0, 2.0):
        extra = {"unet.mixing_ratio": r, "unet.synthetic": str(phantom_root / "mri")} if r else {}
        log = ReportLog()
        train_unet(tiny_config(phantom_root, **{"unet.iterations": 6, "unet.val_every": 3, **extra}), log, None, tmp_path / str(r))
        logs[r] = log
        assert _steps_taken(tmp_path / str(r)) == 6
    assert [m["iteration"] for m in logs[0.0].metrics] == [m["iteration"] for m in logs[2.0].metrics] == [3, 6]
    assert [m["train/lr"] for m in logs[0.0].metrics] == [m["train/lr"] for m in logs[2.0].metrics]


def test_unet_trains_on_liver_free_slices_by_default(phantom_root):
    config = tiny_config(phantom_root)
    data = UNetData(config)
    train_cases = tdata.cases_in(config.data.mri_dir, config, "train")
    every = tdata.load(config, config.data.mri_dir, "mri", None, all_slices=True, cases=train_cases)
    assert config.unet.empty_slice_fraction == 1.0 and len(data.train) == len(every) == 8 * len(train_cases)
    empty = np.asarray(data.train.masks).reshape(len(data.train), -1).max(1) == 0
    assert empty.any()
    liver_only = UNetData(tiny_config(phantom_root, **{"unet.empty_slice_fraction": 0.0}))
    assert len(liver_only.train) == int((~empty).sum())
    assert np.asarray(liver_only.train.masks).reshape(len(liver_only.train), -1).max(1).min() == 1


def test_kfold_split_trains_without_validation_and_tests_the_fold(phantom_root, tmp_path):
    config = tiny_config(phantom_root, **{"data.split": {"folds": 3, "fold": 1, "val": 0.0}})
    log = ReportLog()
    metrics = train_unet(config, log, None, tmp_path)
    assert [m["iteration"] for m in log.metrics] == [4, 8]
    assert not any(k.startswith("val/") for k in log.metrics[0]) and "train/loss" in log.metrics[0]
    split = tdata.split_table(config.data.mri_dir, config)
    test = split.filter(pl.col("split") == "test")["patient_id"].unique().sort().to_list()
    assert len(test) == 2 and "val" not in split["split"].to_list()
    table = pl.read_parquet(tmp_path / "per_patient.parquet")
    assert sorted(table["patient_id"].to_list()) == test and "test/iou" in metrics
    assert load_checkpoint(tmp_path / "best.pt")["train_patients"] == sorted(set(split["patient_id"]) - set(test))


def test_keep_best_needs_validation_patients(phantom_root):
    with pytest.raises(LiverlabError, match="data.split.val"):
        UNetData(tiny_config(phantom_root, **{"data.split": {"folds": 3, "val": 0.0}, "unet.keep": "best"}))


def test_early_stopping_stops_after_patience(phantom_root, tmp_path):
    # lr tiny: val/iou cannot improve after the first validation, so patience 1 stops after the second.
    config = tiny_config(phantom_root, **{
        "unet.iterations": 24, "unet.val_every": 4, "unet.keep": "best", "unet.early_stopping": True,
        "unet.patience": 1, "unet.optim.lr": 1e-12,
    })
    log = ReportLog()
    train_unet(config, log, None, tmp_path)
    assert [m["iteration"] for m in log.metrics] == [4, 8]
    # Without early_stopping, patience is not used: all 6 validations run.
    log = ReportLog()
    train_unet(tiny_config(phantom_root, **{"unet.iterations": 24, "unet.val_every": 4, "unet.patience": 1,
                                           "unet.optim.lr": 1e-12}), log, None, tmp_path / "full")
    assert len(log.metrics) == 6


def test_resume_continues_from_last_iteration(phantom_root, tmp_path):
    train_unet(tiny_config(phantom_root, **{"unet.iterations": 8}), ReportLog(), None, tmp_path)
    log = ReportLog()
    train_unet(tiny_config(phantom_root, **{"unet.iterations": 12}), log, None, tmp_path)
    assert [m["iteration"] for m in log.metrics] == [12]
    assert _steps_taken(tmp_path) == 12
    # A run whose length was not a multiple of val_every, extended: validations stay on multiples of val_every.
    train_unet(tiny_config(phantom_root, **{"unet.iterations": 10}), ReportLog(), None, tmp_path / "odd")
    log = ReportLog()
    train_unet(tiny_config(phantom_root, **{"unet.iterations": 14}), log, None, tmp_path / "odd")
    assert [m["iteration"] for m in log.metrics] == [12, 14]
    assert _steps_taken(tmp_path / "odd") == 14


def test_old_epoch_keys_are_clear_errors(phantom_root):
    with pytest.raises(LiverlabError, match="unet.epochs was removed: use unet.iterations"):
        tiny_config(phantom_root, **{"unet.epochs": 3})


def test_mixing_ratio_draws_synthetic_slices(phantom_root):
    # The phantom MRI folder stands in for a synthetic set: the sampler mixes the two.
    config = tiny_config(phantom_root, **{"unet.mixing_ratio": 2.0, "unet.synthetic": str(phantom_root / "mri")})
    data = UNetData(config)
    assert data.n_synth > 0
    loader = data.loader(0, 30)
    assert len(loader) == 30
    drawn = np.array(list(loader.sampler))
    synth = (drawn >= data.n_real).sum()
    assert synth / (len(drawn) - synth) == pytest.approx(2.0, rel=0.02)
    # Real only: no synthetic index is ever drawn.
    real = UNetData(tiny_config(phantom_root))
    assert (np.array(list(real.loader(0, 30).sampler)) < real.n_real).all()


def test_mixing_without_synthetic_set_is_a_clear_error(phantom_root):
    with pytest.raises(LiverlabError, match="unet.synthetic"):
        UNetData(tiny_config(phantom_root, **{"unet.mixing_ratio": 1.0}))


def test_non_finite_loss_stops_with_a_reason():
    check_finite({"train/loss": 1.0}, "here")
    with pytest.raises(NonFiniteLoss, match="train/loss=nan at|train/loss=nan"):
        check_finite({"train/loss": float("nan")}, "unet iteration 3")


def test_fold_is_a_sweep_arm_factor_and_max_t_counts_reports(phantom_root, tmp_path):
    import yaml

    from conftest import TINY
    from liverlab.config import read_yaml
    from liverlab.sweep.space import load_space

    base = read_yaml(TINY)
    base["data"].update(root=str(phantom_root), split={"folds": 3, "val": 0.0})
    base["data"].pop("phantom", None)
    base["unet"].update(iterations=10, val_every=4)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    space = {"name": "cv", "base": "base.yaml", "stage": "unet", "arms": {"data.split.fold": [0, 1, 2]}}
    (tmp_path / "cv.yaml").write_text(yaml.safe_dump(space))
    loaded = load_space(tmp_path / "cv.yaml")
    configs = [loaded.config(arm, 0) for arm in loaded.arms()]
    assert [c.data.split.fold for c in configs] == [0, 1, 2]
    assert loaded.max_t(configs[0]) == 3  # reports at iterations 4, 8, 10
    tested = [tdata.cases_in(c.data.mri_dir, c, "test") for c in configs]
    assert sorted(sum(tested, [])) == sorted(tdata.split_table(configs[0].data.mri_dir, configs[0])["case_id"].to_list())
    space["arms"] = {"data.split.fold": [0, 3]}
    (tmp_path / "cv.yaml").write_text(yaml.safe_dump(space))
    with pytest.raises(LiverlabError, match="data.split.fold must be < data.split.folds"):
        load_space(tmp_path / "cv.yaml")


def test_round_summary_shows_the_training_loss_without_validation_patients(capsys):
    from liverlab.train.progress import IterationProgress

    bar = IterationProgress("unet", 20, enabled=True)
    bar.report(10, {"train/loss": 0.25, "train/lr": 0.001, "time/train_s": 3.0})
    bar.report(20, {"train/loss": 0.2, "val/iou": 0.5})
    bar.close()
    out = capsys.readouterr().out
    assert "unet iteration 10: train/loss=0.2500 train/lr=0.0010" in out
    assert "unet iteration 20: val/iou=0.5000" in out and "train/loss=0.2000" not in out
    # EssNet validates once per epoch: the same bar names its positions by epoch.
    bar = IterationProgress("essnet", 12, enabled=True, per_epoch=4)
    bar.report(8, {"val/ssim": 0.5})
    bar.close()
    assert "essnet epoch 2: val/ssim=0.5000" in capsys.readouterr().out
