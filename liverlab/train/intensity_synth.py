"""``synthesis: intensity``: the non-GAN control arm (CT -> MRI-like images, no learned network).

Why this arm: the paper credits EssNet's synthetic MRI for the segmenter's
gain, but never asks whether *any* extra labelled images with MRI-like
intensities would do as well. This arm answers that: it takes the same CT
training slices and their CT liver masks that EssNet translates, changes
**only intensities** (no geometry, no learned weights), and hands the result
to the U-Net stage exactly like a synthetic EssNet set (same folder format,
same content-hash cache, same mixing ratio semantics, same steps). If EssNet
does not beat this arm, its adversarial translation buys nothing over a
histogram trick; the report says so.

Name: ``intensity``, for what it changes (intensities, nothing else), beside
``none`` / ``cyclegan`` / ``essnet``, for which translator makes the images.

The mapping, per slice (``remap_slice``), with ``x`` the CT slice windowed to
``data.ct_window`` and scaled to [0, 1]:

    out = Q_mri( w( F_x(x) ) )

* ``F_x``: the slice's own empirical CDF (mid-ranks, so tied voxels such as
  the air outside the body share one value);
* ``w``: a **random monotone** piecewise-linear map of [0, 1] onto itself
  (``WARP_KNOTS`` interior knots; increments drawn from a symmetric Dirichlet
  with concentration ``WARP_CONCENTRATION``: larger is closer to identity),
  drawn per slice from ``default_rng([seed, crc32(case), z])``, so each slice
  gets a different contrast and the set is reproducible from ``seed``;
* ``Q_mri``: the quantile function of the **real MRI training** voxels
  (``REFERENCE_QUANTILES`` levels; training patients only, never val/test).

Without ``w`` this is exact histogram matching of each CT slice to the MRI
training histogram. The random remap sits *inside* the matching because a
monotone remap applied *before* exact matching would be undone by it
(matching sees only ranks). Every step is non-decreasing, so tissue order is
kept (liver above fat stays above fat): this arm cannot invert contrasts the
way T2 MRI does relative to CT, which is what a learned translator could add
and what this control isolates. Output intensities lie in the range of the
real MRI training voxels; labels are the CT masks, unchanged, on the CT grid
with the CT affine.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from liverlab.config import ExperimentConfig, dump_config
from liverlab.data.atomic import sha256_json
from liverlab.errors import LiverlabError

PROVENANCE = "provenance.json"  # the same completion marker as liverlab.infer.synthesize
#: Interior knots of the random monotone warp of quantile levels.
WARP_KNOTS = 4
#: Dirichlet concentration of the warp's increments (larger: closer to the identity, i.e. plain matching).
WARP_CONCENTRATION = 4.0
#: Quantile levels kept of the real-MRI training histogram.
REFERENCE_QUANTILES = 1001
#: Bumped when the mapping changes, so cached sets made by an older mapping are not reused.
METHOD = "intensity-v1"


def mri_reference(images: list[np.ndarray], n: int = REFERENCE_QUANTILES) -> np.ndarray:
    """The quantile function of the pooled voxels of ``images``: ``n`` values at levels ``linspace(0, 1, n)``."""
    if not images:
        raise LiverlabError("synthesis: intensity needs real MRI training cases (none in the training split)")
    voxels = np.concatenate([np.asarray(im, dtype=np.float64).ravel() for im in images])
    return np.quantile(voxels, np.linspace(0.0, 1.0, n)).astype(np.float64)


def random_warp(rng: np.random.Generator, knots: int = WARP_KNOTS, concentration: float = WARP_CONCENTRATION) -> tuple[np.ndarray, np.ndarray]:
    """A random strictly increasing piecewise-linear map of [0, 1] onto [0, 1]: (knot x, knot y)."""
    xs = np.linspace(0.0, 1.0, knots + 2)
    steps = rng.dirichlet(np.full(knots + 1, concentration))
    ys = np.concatenate([[0.0], np.cumsum(steps)])
    ys[-1] = 1.0
    return xs, ys


def mid_ranks(x: np.ndarray) -> np.ndarray:
    """Empirical CDF with mid-ranks in (0, 1): equal values share one level; strictly increasing in ``x``."""
    flat = x.ravel()
    values, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    below = np.concatenate([[0], np.cumsum(counts)[:-1]])
    level = (below + counts / 2.0) / flat.size
    return level[inverse].reshape(x.shape)


def remap_slice(
    ct_hu: np.ndarray, window: tuple[float, float], reference: np.ndarray, rng: np.random.Generator | None
) -> np.ndarray:
    """One CT slice (HU) -> MRI-like intensities: window, mid-rank, random monotone warp, MRI quantiles.

    ``rng=None`` skips the warp (plain histogram matching). Non-decreasing in the HU value.
    """
    lo, hi = window
    x = np.clip((np.asarray(ct_hu, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    u = mid_ranks(x)
    if rng is not None:
        wx, wy = random_warp(rng)
        u = np.interp(u, wx, wy)
    levels = np.linspace(0.0, 1.0, len(reference))
    return np.interp(u, levels, reference).astype(np.float32)


def slice_rng(seed: int, case: str, z: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(case.encode()), int(z)])


def intensity_key(
    config: ExperimentConfig, ct_dir: Path, mri_dir: Path, cases: list[str], mri_cases: list[str]
) -> str:
    """Content hash of what determines the set: both datasets, cases, CT window, seed, mapping constants."""
    from liverlab.data.manifest import manifest_hash, read_manifest

    payload = {
        "method": METHOD,
        "source": manifest_hash(read_manifest(ct_dir)),
        "reference": manifest_hash(read_manifest(mri_dir)),
        "cases": sorted(cases),
        "mri_cases": sorted(mri_cases),
        "ct_window": list(config.data.ct_window),
        "seed": config.seed,
        "warp": [WARP_KNOTS, WARP_CONCENTRATION, REFERENCE_QUANTILES],
    }
    return sha256_json(payload)


def synthesize_intensity(
    config: ExperimentConfig, ct_dir: str | Path, mri_dir: str | Path, out: str | Path,
    cases: list[str], mri_cases: list[str],
) -> Path:
    """Write the intensity-arm dataset to ``out`` (nnU-Net layout, manifest, provenance), atomically.

    ``cases``: the CT cases to remap (the CT training patients); ``mri_cases``:
    the real MRI cases whose histogram is the target (the MRI training patients).
    """
    from liverlab.data.manifest import read_manifest
    from liverlab.data.nifti import load_volume
    from liverlab.infer.synthesize import reuse_or_check, write_synthetic

    ct_dir, mri_dir, out = Path(ct_dir), Path(mri_dir), Path(out)
    key = intensity_key(config, ct_dir, mri_dir, cases, mri_cases)
    if reuse_or_check(out, key, "a synthetic dataset made from other data or settings"):
        return out
    if not cases:
        raise LiverlabError(f"{ct_dir}: no CT training cases to remap (synthesis: intensity)")
    mri_rows = {r["case_id"]: r for r in read_manifest(mri_dir).iter_rows(named=True)}
    reference = mri_reference([load_volume(mri_dir / mri_rows[c]["image_path"]).image for c in mri_cases])
    window = (float(config.data.ct_window[0]), float(config.data.ct_window[1]))

    def remap(case: str, vol: Any) -> np.ndarray:
        image = np.empty(vol.image.shape, dtype=np.float32)
        for z in range(vol.image.shape[2]):
            image[:, :, z] = remap_slice(vol.image[:, :, z], window, reference, slice_rng(config.seed, case, z))
        return image

    return write_synthetic(
        out, ct_dir, list(cases), remap,
        dataset={"name": f"intensity-remapped CT from {ct_dir.name}", "synthesis": "intensity"},
        provenance={
            "key": key, "method": METHOD, "checkpoint": None, "reference": str(mri_dir),
            "reference_cases": sorted(mri_cases), "reference_range": [float(reference[0]), float(reference[-1])],
            "seed": config.seed, "config": dump_config(config),
        },
    )
