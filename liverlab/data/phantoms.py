"""Paired abdominal CT / MRI phantoms: the embedded default dataset.

Each phantom patient is one *tissue map* (a uint8 code per voxel: fat, liver,
spleen, kidneys, vessels, spine, ...) rendered twice: as CT in Hounsfield
units and as a T2-like, fat-suppressed MRI (liver dark, spleen and kidneys
brighter, fluid bright) with a smooth multiplicative bias field and Rician
noise. Both modalities therefore show exactly the same anatomy with the same
shape and affine, which is what lets synthesis fidelity (SSIM, PSNR, MAE
against the true MRI) and shape preservation be measured exactly.

Anatomy is a set of ellipsoids and cylinders in physical coordinates (mm
in-plane, a normalised height ``t`` in [-1, 1] along z, so any slice count
covers the same abdomen), seen through a smooth random deformation and with
per-patient organ sizes, positions and tissue values. Everything is
vectorised numpy on one grid; a patient at 128 x 128 x 32 takes a few tens of
milliseconds. The liver is the largest organ, in the right upper abdomen
(array axis 0 runs towards the patient's right, RAS+), absent from the lowest
quarter of the slices.

Randomness comes from ``numpy.random.default_rng([seed, patient])``: one
stream per patient, so the same seed gives byte-identical arrays and patient
``k`` does not depend on how many patients are generated.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liverlab.data import layout
from liverlab.data.atomic import staging_dir, write_json_atomic
from liverlab.data.manifest import build_manifest
from liverlab.data.nifti import save_volume
from liverlab.data.progress import track
from liverlab.errors import LiverlabError

FOV_MM = 320.0  # in-plane field of view: spacing = FOV_MM / size
SLICE_MM = 5.0
PHANTOM_JSON = "phantom.json"

# Tissue codes of the tissue map.
AIR, FAT, SOFT, LIVER, SPLEEN, KIDNEY, VESSEL, CORTICAL, MARROW, CSF, BOWEL = range(11)
TISSUE_NAMES = ("air", "fat", "soft", "liver", "spleen", "kidney", "vessel", "cortical", "marrow", "csf", "bowel")

# (low, high) ranges tissue values are drawn from, per patient.
CT_HU: dict[int, tuple[float, float]] = {
    AIR: (-1000, -1000), FAT: (-110, -90), SOFT: (35, 50), LIVER: (52, 68), SPLEEN: (41, 49),
    KIDNEY: (31, 39), VESSEL: (160, 240), CORTICAL: (850, 1000), MARROW: (400, 500), CSF: (5, 15),
    BOWEL: (20, 35),
}  # fmt: skip
# T2-SPIR-like relative signal: fat suppressed, liver darker than spleen/kidney, fluid bright.
MRI_T2: dict[int, tuple[float, float]] = {
    AIR: (0.0, 0.0), FAT: (0.06, 0.10), SOFT: (0.15, 0.20), LIVER: (0.22, 0.28), SPLEEN: (0.50, 0.60),
    KIDNEY: (0.55, 0.65), VESSEL: (0.80, 0.90), CORTICAL: (0.02, 0.04), MARROW: (0.12, 0.16), CSF: (0.95, 1.0),
    BOWEL: (0.35, 0.45),
}  # fmt: skip
MRI_SCALE = 1000.0  # MR units: signal 1.0 -> 1000, like real magnitude images


@dataclass
class PhantomPatient:
    """One rendered patient (canonical RAS+ arrays, (X, Y, Z))."""

    tissue: np.ndarray  # uint8 tissue codes
    ct: np.ndarray  # float32 HU, with noise
    mri: np.ndarray  # float32 MR units, bias field and Rician noise
    ct_clean: np.ndarray  # float32 HU before noise
    bias: np.ndarray  # float32 MRI multiplicative bias field (smooth, about 0.75..1.3)
    affine: np.ndarray  # 4x4, RAS+

    @property
    def liver(self) -> np.ndarray:
        return (self.tissue == LIVER).astype(np.uint8)


def phantom_affine(size: int, slices: int) -> np.ndarray:
    """RAS+ affine with ``FOV_MM / size`` in-plane spacing and ``SLICE_MM`` slices, centred at 0."""
    s = FOV_MM / size
    aff = np.diag([s, s, SLICE_MM, 1.0])
    aff[:3, 3] = [-(size - 1) / 2 * s, -(size - 1) / 2 * s, -(slices - 1) / 2 * SLICE_MM]
    return aff


def _interp_matrix(n: int, c: int) -> np.ndarray:
    """(n, c) linear-interpolation weights from ``c`` coarse nodes onto ``n`` voxels."""
    pos = (np.arange(n, dtype=np.float64) + 0.5) / n * c - 0.5
    pos = np.clip(pos, 0, c - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, c - 1)
    w = pos - lo
    m = np.zeros((n, c), dtype=np.float32)
    m[np.arange(n), lo] += (1 - w).astype(np.float32)
    m[np.arange(n), hi] += w.astype(np.float32)
    return m


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], coarse: tuple[int, int, int]) -> np.ndarray:
    """A smooth random field (unit-variance noise on a coarse grid, trilinearly upsampled).

    Trilinear upsampling is separable, so it is three small matrix products
    rather than a full-grid ``ndimage.zoom`` (about 10x faster here).
    """
    low = rng.standard_normal(coarse).astype(np.float32)
    wx, wy, wz = (_interp_matrix(n, c) for n, c in zip(shape, coarse))
    field = np.einsum("ia,abc->ibc", wx, low)
    field = np.einsum("jb,ibc->ijc", wy, field)
    return np.ascontiguousarray(field @ wz.T)


def _modes(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, t: np.ndarray, amp: float, n: int = 3) -> np.ndarray:
    """Sum of ``n`` random low-frequency plane waves (wavelengths 150-400 mm), amplitude ``amp``."""
    out = np.zeros(np.broadcast_shapes(x.shape, y.shape, t.shape), dtype=np.float32)
    for _ in range(n):
        wavelength = rng.uniform(150.0, 400.0)
        d = rng.normal(size=3)
        # Python floats: numpy 2 would promote float32 grids to float64 with numpy scalars.
        dx, dy, dt = (float(v) for v in d / np.linalg.norm(d))
        k = 2 * np.pi / wavelength
        # t is normalised height; 1 unit of t ~ 100 mm of abdomen for the wave's purpose.
        phase = rng.uniform(0, 2 * np.pi)
        out += np.sin((k * dx) * x + (k * dy) * y + (k * 100.0 * dt) * t + phase) * np.float32(amp / n)
    return out


def make_patient(seed: int, patient: int, size: int = 64, slices: int = 16) -> PhantomPatient:
    """Render phantom patient ``patient`` of ``seed``: tissue map, CT, MRI (deterministic)."""
    rng = np.random.default_rng([seed, patient])
    s = FOV_MM / size
    shape = (size, size, slices)
    # Physical in-plane coordinates (mm, RAS+: +x = patient right, +y = anterior)
    # and normalised height t in (-1, 1); broadcast, never materialised separately.
    x0 = ((np.arange(size, dtype=np.float32) - (size - 1) / 2) * s)[:, None, None]
    y0 = ((np.arange(size, dtype=np.float32) - (size - 1) / 2) * s)[None, :, None]
    t0 = (((np.arange(slices, dtype=np.float32) + 0.5) / slices) * 2 - 1)[None, None, :]

    # Smooth random deformation: organs are drawn in deformed coordinates.
    x = x0 + _modes(rng, x0, y0, t0, amp=rng.uniform(5, 10))
    y = y0 + _modes(rng, x0, y0, t0, amp=rng.uniform(5, 10))
    t = t0 + _modes(rng, x0, y0, t0, amp=rng.uniform(0.03, 0.08))

    def u(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    def ellipsoid(cx: float, cy: float, ct: float, ax: float, ay: float, at: float) -> np.ndarray:
        return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((t - ct) / at) ** 2 <= 1.0

    def cylinder(cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
        return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0

    tissue = np.zeros(shape, dtype=np.uint8)  # AIR outside the body
    # Body: an elliptic cylinder a little wider towards the top, skin + subcutaneous fat ring.
    bx, by = 138 * u(0.9, 1.06), 104 * u(0.9, 1.06)
    taper = 1.0 + 0.04 * t
    body_r = ((x / (bx * taper)) ** 2 + ((y + 5) / (by * taper)) ** 2)
    fat_mm = u(12, 26)
    inner = 1 - fat_mm / by
    tissue[body_r <= 1.0] = SOFT  # skin / abdominal wall
    tissue[body_r <= (1 - 3 / by) ** 2] = FAT  # subcutaneous fat
    tissue[body_r <= inner**2] = SOFT  # muscle wall
    cavity = body_r <= (inner - 8 / by) ** 2
    # Cavity filled with intraperitoneal fat and bowel loops (a thresholded smooth field),
    # a little gas in the anterior bowel.
    coarse = (max(2, size // 8), max(2, size // 8), max(2, slices // 4))
    bowel_field = _smooth_field(rng, shape, coarse)
    tissue[cavity] = FAT
    tissue[cavity & (bowel_field > 0.1)] = BOWEL
    tissue[cavity & (bowel_field > 1.3) & (y > 20)] = AIR

    # Spine, placed from the body's posterior edge: vertebral body (cortical shell,
    # marrow), canal, posterior elements, paraspinal muscles. Organs are drawn
    # around it (``free``), never through it.
    sy = -5 - by + 48 * u(0.95, 1.05)
    tissue[cylinder(-34, sy - 30, 22, 13) | cylinder(34, sy - 30, 22, 13)] = SOFT
    tissue[cylinder(0, sy - 34, 18, 7)] = CORTICAL
    tissue[cylinder(0, sy, 19, 17)] = CORTICAL
    tissue[cylinder(0, sy, 15, 13)] = MARROW
    tissue[cylinder(0, sy - 25, 7, 6)] = CSF
    free = cavity & ((tissue == FAT) | (tissue == BOWEL) | (tissue == AIR))

    # Liver: a large right lobe and a smaller anterior left lobe in the upper abdomen.
    # Absent from the lowest ~quarter of the slices.
    lx, ly, lt = u(50, 64), u(-2, 12), u(0.15, 0.25)
    lsx, lsy, lst = 72 * u(0.88, 1.12), 76 * u(0.88, 1.12), 0.68 * u(0.93, 1.07)
    liver = ellipsoid(lx, ly, lt, lsx, lsy, lst)
    liver |= ellipsoid(u(-20, -8), ly + u(28, 38), lt + 0.2, 44 * u(0.85, 1.15), 28 * u(0.85, 1.15), 0.45)
    tissue[liver & free] = LIVER
    # Spleen (left, posterior, upper), kidneys (beside the spine, lower; the right one lower).
    spleen = ellipsoid(
        -76 * u(0.95, 1.05), sy + 30 + u(-5, 5), u(0.3, 0.5), 30 * u(0.85, 1.15), 44 * u(0.85, 1.15), 0.38
    )
    tissue[spleen & free] = SPLEEN
    for side, tc in ((1.0, u(-0.55, -0.4)), (-1.0, u(-0.45, -0.3))):
        kid = ellipsoid(side * 66 * u(0.95, 1.05), sy + 10 + u(-4, 4), tc, 26 * u(0.9, 1.1), 30 * u(0.9, 1.1), 0.38)
        tissue[kid & free] = KIDNEY
    # Great vessels with contrast, in front of the spine: aorta left of the midline,
    # IVC on the right (it indents the liver).
    tissue[cylinder(-14, sy + 28, 11, 11) & free] = VESSEL
    tissue[cylinder(22, sy + 32, 12, 10) & free] = VESSEL

    # --- CT: per-patient tissue values + Gaussian noise.
    ct_lut = np.array([u(*CT_HU[k]) for k in range(len(TISSUE_NAMES))], dtype=np.float32)
    ct_clean = ct_lut[tissue]
    ct = ct_clean + rng.standard_normal(shape, dtype=np.float32) * np.float32(u(8, 14))
    np.clip(ct, -1024, 3071, out=ct)
    ct = np.rint(ct).astype(np.float32)  # CT is stored as integers

    # --- MRI: T2-like contrast x smooth bias field, Rician noise (magnitude of complex noise).
    mri_lut = np.array([u(*MRI_T2[k]) for k in range(len(TISSUE_NAMES))], dtype=np.float32)
    bias = np.exp(0.25 * _modes(rng, x0, y0, t0, amp=1.0, n=2)).astype(np.float32)
    signal = mri_lut[tissue] * bias * np.float32(MRI_SCALE)
    sigma = np.float32(u(0.015, 0.03) * MRI_SCALE)
    real = signal + rng.standard_normal(shape, dtype=np.float32) * sigma
    imag = rng.standard_normal(shape, dtype=np.float32) * sigma
    mri = np.rint(np.sqrt(real * real + imag * imag)).astype(np.float32)

    return PhantomPatient(
        tissue=tissue, ct=ct, mri=mri, ct_clean=ct_clean, bias=bias, affine=phantom_affine(size, slices)
    )


def case_id(patient: int) -> str:
    """Case id (= patient id) of phantom patient ``patient``."""
    return f"phantom_{patient:03d}"


def _check_params(patients: int, size: int, slices: int) -> None:
    if patients < 1:
        raise LiverlabError(f"phantoms: --patients must be >= 1, got {patients}")
    if not 16 <= size <= 1024:
        raise LiverlabError(f"phantoms: --size must be in 16..1024, got {size}")
    if not 2 <= slices <= 512:
        raise LiverlabError(f"phantoms: --slices must be in 2..512, got {slices}")


def _write_dataset(root: Path, patients: int, size: int, slices: int, seed: int, progress: bool) -> None:
    """Render every patient into ``root/ct`` and ``root/mri`` (nnU-Net layout)."""
    for modality in layout.MODALITIES:
        (root / modality / layout.IMAGES).mkdir(parents=True)
        (root / modality / layout.LABELS).mkdir(parents=True)
    for k in track(range(patients), "phantoms", total=patients, enabled=progress):
        p = make_patient(seed, k, size, slices)
        label = p.liver
        cid = case_id(k)
        for modality, image in (("ct", p.ct), ("mri", p.mri)):
            save_volume(layout.image_path(root / modality, cid), image, p.affine, dtype=np.int16)
            save_volume(layout.label_path(root / modality, cid), label, p.affine, dtype=np.uint8)
    params = {"patients": patients, "size": size, "slices": slices, "seed": seed}
    for modality in layout.MODALITIES:
        layout.write_dataset_json(root / modality, modality, {case_id(k): case_id(k) for k in range(patients)})
    write_json_atomic(root / PHANTOM_JSON, params)


def generate_phantoms(
    out: str | Path, patients: int = 8, size: int = 64, slices: int = 16, seed: int = 0, progress: bool = True
) -> Path:
    """Write ``patients`` paired CT/MRI phantoms to ``out/ct`` and ``out/mri``; return ``out``.

    Layout: ``out/{ct,mri}/{imagesTr/phantom_NNN_0000.nii.gz, labelsTr/phantom_NNN.nii.gz,
    dataset.json, manifest.parquet}`` and ``out/phantom.json`` (the parameters).
    Everything is rendered in a temporary folder beside ``out`` and renamed into
    place at the end, so an interrupted run leaves nothing that looks complete.
    Refuses to overwrite an existing ``out/ct`` or ``out/mri``.
    """
    _check_params(patients, size, slices)
    out = Path(out)
    for modality in layout.MODALITIES:
        if (out / modality).exists():
            raise LiverlabError(f"{out / modality}: already exists; remove it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(out.parent, prefix=f".{out.name}.tmp-") as tmp:
        _write_dataset(tmp, patients, size, slices, seed, progress)
        for modality in layout.MODALITIES:
            build_manifest(tmp / modality)
        if not out.exists():
            os.rename(tmp, out)  # staging_dir's cleanup then finds nothing to remove
        else:
            for name in (*layout.MODALITIES, PHANTOM_JSON):
                os.replace(tmp / name, out / name)
    return out


def ensure_phantoms(root: str | Path, patients: int = 8, size: int = 64, slices: int = 16, seed: int = 0) -> Path:
    """Generate phantoms into ``root`` unless they are there already; return ``root``.

    Safe under concurrency (parallel Ray trials): a file lock on
    ``root.parent/<root.name>.lock`` makes one process generate while the
    others wait and then reuse it. If ``root`` holds phantoms made with other
    parameters, that is an error rather than a silent mismatch.
    """
    from filelock import FileLock

    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    wanted = {"patients": patients, "size": size, "slices": slices, "seed": seed}

    def ready() -> bool:
        return all((root / m / layout.DATASET_JSON).is_file() for m in layout.MODALITIES)

    if not ready():
        with FileLock(str(root.parent / f"{root.name}.lock")):
            if not ready():
                # A ct/ or mri/ without dataset.json is not ours (we rename whole
                # folders into place): generate_phantoms refuses to overwrite it.
                generate_phantoms(root, patients, size, slices, seed, progress=False)
    meta = root / PHANTOM_JSON
    if meta.is_file():
        have = json.loads(meta.read_text())
        if have != wanted:
            raise LiverlabError(
                f"{root}: holds phantoms generated with {have}, but the config asks for {wanted}; "
                "use another data.root or delete it"
            )
    return root
