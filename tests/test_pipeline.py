"""Pipeline trials: translator -> synthesis -> U-Net, with content-hash reuse."""

from __future__ import annotations

import json
import threading

import numpy as np
from conftest import ReportLog, tiny_config

from liverlab.data.nifti import load_volume
from liverlab.tracking.writer import NullTracker
from liverlab.train.pipeline import cached_essnet, cached_synthesis, run_pipeline


def test_two_trials_share_one_translator_and_one_synthetic_set(phantom_root, tmp_path):
    cache = tmp_path / "cache"
    first = tiny_config(phantom_root, stage="pipeline", synthesis="essnet", **{"unet.mixing_ratio": 1.0})
    second = tiny_config(phantom_root, stage="pipeline", synthesis="essnet", **{"unet.mixing_ratio": 0.5})
    log1, log2 = ReportLog(), ReportLog()
    m1 = run_pipeline(first, log1, None, tmp_path / "t1", cache_root=cache)
    m2 = run_pipeline(second, log2, None, tmp_path / "t2", cache_root=cache)
    assert len(list((cache / "essnet").glob("*/done.json"))) == 1
    assert len(list((cache / "synthetic").glob("*/provenance.json"))) == 1
    # Only the U-Net reports to the scheduler: one report per unet.val_every iterations.
    assert [m["iteration"] for m in log1.metrics] == [4, 8] and "val/iou" in log1.metrics[0]
    assert m1["essnet/val/ssim"] == m2["essnet/val/ssim"]  # the second reused the first's translator


def test_cyclegan_and_essnet_arms_get_different_translators(phantom_root, tmp_path):
    cache = tmp_path / "cache"
    for arm in ("essnet", "cyclegan"):
        cached_essnet(tiny_config(phantom_root, stage="pipeline", synthesis=arm), cache, NullTracker())
    assert len(list((cache / "essnet").glob("*/done.json"))) == 2


def test_concurrent_requests_compute_once(phantom_root, tmp_path):
    cache = tmp_path / "cache"
    config = tiny_config(phantom_root, stage="pipeline", synthesis="essnet")
    results = []

    def job() -> None:
        ckpt, _, reused_essnet = cached_essnet(config, cache, NullTracker())
        out, reused_synth = cached_synthesis(config, ckpt, cache)
        results.append((reused_essnet, reused_synth, out))

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r[0] for r in results) == [False, True]  # one trained, one waited and reused
    assert sorted(r[1] for r in results) == [False, True]
    assert results[0][2] == results[1][2]


def test_synthetic_set_keeps_ct_label_and_affine(phantom_root, tmp_path):
    config = tiny_config(phantom_root, stage="pipeline", synthesis="essnet")
    ckpt, _, _ = cached_essnet(config, tmp_path, NullTracker())
    out, _ = cached_synthesis(config, ckpt, tmp_path)
    prov = json.loads((out / "provenance.json").read_text())
    assert len(prov["checkpoint_sha256"]) == 64 and prov["cases"]
    case = prov["cases"][0]
    synth = load_volume(out / "imagesTr" / f"{case}_0000.nii.gz", out / "labelsTr" / f"{case}.nii.gz")
    ct = load_volume(
        phantom_root / "ct" / "imagesTr" / f"{case}_0000.nii.gz", phantom_root / "ct" / "labelsTr" / f"{case}.nii.gz"
    )
    assert np.array_equal(synth.label, ct.label)
    assert np.allclose(synth.affine, ct.affine)
    assert synth.image.min() >= -1.0 and synth.image.max() <= 1.0 and synth.image.std() > 0
