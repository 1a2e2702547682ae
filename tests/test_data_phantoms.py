"""Phantoms: tissue values, contrast, pairing, determinism, layout, concurrency."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
from data_helpers import tiny_phantoms

from liverlab.data import phantoms as ph
from liverlab.data.nifti import load_volume, orientation_codes
from liverlab.errors import LiverlabError


@pytest.fixture(scope="module")
def patients() -> list[ph.PhantomPatient]:
    return [ph.make_patient(0, k, size=48, slices=12) for k in range(4)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_phantoms(tmp_path_factory.mktemp("ph") / "tiny")


def _mean(p: ph.PhantomPatient, arr: np.ndarray, tissue: int) -> float:
    return float(arr[p.tissue == tissue].mean())


def test_ct_hounsfield_ranges(patients: list[ph.PhantomPatient]) -> None:
    for p in patients:
        assert 50 <= _mean(p, p.ct_clean, ph.LIVER) <= 70
        assert 40 <= _mean(p, p.ct_clean, ph.SPLEEN) <= 50
        assert 30 <= _mean(p, p.ct_clean, ph.KIDNEY) <= 40
        assert 150 <= _mean(p, p.ct_clean, ph.VESSEL) <= 250
        assert 400 <= _mean(p, p.ct_clean, ph.MARROW) <= 1000 and 400 <= _mean(p, p.ct_clean, ph.CORTICAL) <= 1000
        assert -120 <= _mean(p, p.ct_clean, ph.FAT) <= -80
        assert _mean(p, p.ct_clean, ph.AIR) == -1000
        # Noise is zero-mean: the noisy liver stays in range too.
        assert 50 <= _mean(p, p.ct, ph.LIVER) <= 70


def test_mri_t2_contrast_order(patients: list[ph.PhantomPatient]) -> None:
    for p in patients:
        liver, spleen, kidney = (_mean(p, p.mri, t) for t in (ph.LIVER, ph.SPLEEN, ph.KIDNEY))
        fat, vessel, csf = (_mean(p, p.mri, t) for t in (ph.FAT, ph.VESSEL, ph.CSF))
        assert liver < spleen and liver < kidney  # liver dark on T2
        assert vessel > spleen and csf > spleen  # fluid bright
        assert fat < liver  # fat suppressed
        assert p.mri.min() >= 0  # magnitude (Rician) image


def test_mri_has_smooth_bias_field(patients: list[ph.PhantomPatient]) -> None:
    """A smooth multiplicative field that visibly modulates the same tissue."""
    for p in patients:
        body = p.tissue != ph.AIR
        assert p.bias[body].max() / p.bias[body].min() > 1.1
        assert np.abs(np.diff(p.bias, axis=0)).max() < 0.05  # smooth: small voxel-to-voxel change
        liver = p.tissue == ph.LIVER
        assert np.corrcoef(p.bias[liver], p.mri[liver])[0, 1] > 0.3


def test_liver_is_largest_organ_right_upper_most_slices(patients: list[ph.PhantomPatient]) -> None:
    for p in patients:
        counts = {t: int((p.tissue == t).sum()) for t in (ph.LIVER, ph.SPLEEN, ph.KIDNEY, ph.VESSEL)}
        assert counts[ph.LIVER] > 2 * max(v for k, v in counts.items() if k != ph.LIVER)
        xs, _, zs = np.nonzero(p.tissue == ph.LIVER)
        assert xs.mean() > p.tissue.shape[0] / 2  # patient's right (RAS+: +x)
        assert zs.mean() > p.tissue.shape[2] / 2  # upper abdomen
        per_slice = (p.tissue == ph.LIVER).any(axis=(0, 1))
        assert 0.5 < per_slice.mean() < 1.0  # most, not all slices


def test_deterministic_and_patients_differ() -> None:
    a, b = ph.make_patient(7, 1, 32, 8), ph.make_patient(7, 1, 32, 8)
    assert a.ct.tobytes() == b.ct.tobytes() and a.mri.tobytes() == b.mri.tobytes()
    assert a.tissue.tobytes() == b.tissue.tobytes()
    c = ph.make_patient(7, 2, 32, 8)
    assert (a.liver != c.liver).mean() > 0.005
    d = ph.make_patient(8, 1, 32, 8)
    assert not np.array_equal(a.ct, d.ct)


def test_layout_and_pairing(tiny: Path) -> None:
    for modality, channel in (("ct", "CT"), ("mri", "MRI")):
        meta = json.loads((tiny / modality / "dataset.json").read_text())
        assert meta["channel_names"] == {"0": channel}
        assert meta["labels"] == {"background": 0, "liver": 1}
        assert meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"
        assert (tiny / modality / "manifest.parquet").is_file()
    for k in range(3):
        case = f"phantom_{k:03d}"
        ct = load_volume(tiny / "ct/imagesTr" / f"{case}_0000.nii.gz", tiny / "ct/labelsTr" / f"{case}.nii.gz")
        mri = load_volume(tiny / "mri/imagesTr" / f"{case}_0000.nii.gz", tiny / "mri/labelsTr" / f"{case}.nii.gz")
        assert ct.shape == mri.shape == (32, 32, 8)
        np.testing.assert_allclose(ct.affine, mri.affine)
        np.testing.assert_array_equal(ct.label, mri.label)  # same anatomy
        assert ct.spacing == pytest.approx((10.0, 10.0, 5.0))
        assert orientation_codes(ct.affine) == "RAS"
        # Saved files equal the in-memory rendering (determinism through I/O).
        p = ph.make_patient(0, k, 32, 8)
        np.testing.assert_array_equal(ct.image, p.ct)
        np.testing.assert_array_equal(mri.label, p.liver)
    assert json.loads((tiny / "phantom.json").read_text()) == {"patients": 3, "size": 32, "slices": 8, "seed": 0}


def test_refuses_to_overwrite(tiny: Path) -> None:
    with pytest.raises(LiverlabError, match="already exists"):
        ph.generate_phantoms(tiny, patients=2, size=32, slices=8, progress=False)


def test_ensure_reuses_and_checks_parameters(tiny: Path) -> None:
    stamp = (tiny / "ct" / "dataset.json").stat().st_mtime_ns
    assert ph.ensure_phantoms(tiny, patients=3, size=32, slices=8, seed=0) == tiny
    assert (tiny / "ct" / "dataset.json").stat().st_mtime_ns == stamp
    with pytest.raises(LiverlabError, match="generated with"):
        ph.ensure_phantoms(tiny, patients=3, size=64, slices=8, seed=0)


def _ensure_and_load(root: str) -> tuple[str, str]:
    from liverlab.data.cache import load_slices
    from liverlab.data.phantoms import ensure_phantoms

    ensure_phantoms(root, patients=3, size=32, slices=8, seed=1)
    s = load_slices(Path(root) / "ct", "ct", size=32)
    return s.build_id, (Path(root) / "ct" / "manifest.parquet").read_bytes().hex()[:64]


def test_ensure_and_cache_concurrent_processes(tmp_path: Path) -> None:
    """Two processes race: phantoms are generated once and the slice cache built once."""
    root = tmp_path / "shared"
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.map(_ensure_and_load, [str(root), str(root)])
    assert results[0] == results[1]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging debris
    cache_entries = [p for p in (root / "ct" / ".cache").iterdir() if p.is_dir()]
    assert len(cache_entries) == 1


def test_cli_phantoms(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from liverlab.cli import main

    rc = main(["data", "phantoms", "--out", str(tmp_path / "p"), "--patients", "2", "--size", "16", "--slices", "4"])
    assert rc == 0
    assert len(list((tmp_path / "p" / "mri" / "imagesTr").glob("*.nii.gz"))) == 2
    rc = main(["data", "phantoms", "--out", str(tmp_path / "q"), "--patients", "0"])
    assert rc == 2 and "--patients" in capsys.readouterr().err
