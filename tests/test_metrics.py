"""Metrics on literal masks and images, with the expected values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from liverlab.metrics import (
    assd,
    dice,
    iou,
    mae,
    mssd,
    psnr,
    ravd,
    segmentation_metrics,
    ssim,
    surface_distances,
)

INF = float("inf")

# ----------------------------------------------------------------------------- overlap


def test_iou_dice_literal() -> None:
    pred = np.array([[1, 1, 0], [0, 1, 0]])
    label = np.array([[1, 0, 0], [0, 1, 1]])
    # intersection {(0,0), (1,1)} = 2; |P| = 3, |L| = 3; union = 3 + 3 - 2 = 4
    assert iou(pred, label) == pytest.approx(2 / 4)
    assert dice(pred, label) == pytest.approx(2 * 2 / (3 + 3))
    assert iou(label, label) == dice(label, label) == 1.0


def test_ravd_literal() -> None:
    label = np.array([1, 1, 1, 1, 0, 0, 0, 0])  # V_l = 4
    assert ravd(np.array([1, 1, 1, 0, 0, 0, 0, 0]), label) == pytest.approx(25.0)  # 100 * |3 - 4| / 4
    assert ravd(np.array([1, 1, 1, 1, 1, 1, 0, 0]), label) == pytest.approx(50.0)  # 100 * |6 - 4| / 4
    # Same volume at a different place: RAVD only sees volumes.
    assert ravd(np.array([0, 0, 0, 0, 1, 1, 1, 1]), label) == 0.0


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        iou(np.zeros((2, 2)), np.zeros((2, 3)))


# ----------------------------------------------------------------------------- surface distances


def _cube_pair(axis: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros((10, 10, 10), dtype=bool)
    a[2:6, 2:6, 2:6] = True  # a 4 x 4 x 4 cube
    return a, np.roll(a, 1, axis=axis)  # the same cube shifted by one voxel


def test_cubes_shifted_along_z_anisotropic() -> None:
    """Cube A: z in 2..5; cube B: z in 3..6; spacing (1, 1, 3) mm, so a z step is 3 mm.

    Surface (face connectivity) of a 4^3 cube: 64 - 2^3 interior = 56 voxels.
    From the surface of A to the surface of B, per z layer of A:
      z=2 (A's bottom face, 16 voxels): outside B; B's bottom face is at z=3, right above: 3 mm each.
      z=3 (A's ring, 12 voxels): lie on B's bottom face: 0.
      z=4 (A's ring, 12 voxels): lie on B's ring at z=4: 0.
      z=5 (A's top face, 16): 12 ring voxels lie on B's ring: 0; 4 central voxels are inside B,
           the nearest B surface is B's ring in the same layer, one in-plane voxel away: 1 mm
           (B's faces are >= 1 z step = 3 mm away).
    Sum = 16 * 3 + 4 * 1 = 52 over 56 voxels, and by the mirror symmetry the same from B to A.
    ASSD = (52 + 52) / (56 + 56) = 13/14 mm; MSSD = 3 mm.
    """
    a, b = _cube_pair(axis=2)
    da, db = surface_distances(a, b, (1.0, 1.0, 3.0))
    assert da.size == db.size == 56
    assert sorted(np.unique(da).tolist()) == [0.0, 1.0, 3.0]
    assert da.sum() == pytest.approx(52.0) and db.sum() == pytest.approx(52.0)
    assert assd(a, b, (1.0, 1.0, 3.0)) == pytest.approx(13 / 14)
    assert mssd(a, b, (1.0, 1.0, 3.0)) == pytest.approx(3.0)


def test_cubes_shifted_along_x_anisotropic() -> None:
    """The same shift along x (spacing 1 mm): the shifted face is 1 mm away and the 4 central
    voxels are again 1 mm from the ring: 16 * 1 + 4 * 1 = 20 per side, ASSD = 40 / 112 = 5/14 mm,
    MSSD = 1 mm. The spacing, not the voxel count, sets the distances."""
    a, b = _cube_pair(axis=0)
    assert assd(a, b, (1.0, 1.0, 3.0)) == pytest.approx(5 / 14)
    assert mssd(a, b, (1.0, 1.0, 3.0)) == pytest.approx(1.0)


def test_single_pixels_2d() -> None:
    p = np.zeros((5, 6), dtype=np.uint8)
    lab = np.zeros_like(p)
    p[0, 0] = 1
    lab[3, 4] = 1
    # one surface voxel each; offset (3, 4) voxels: sqrt(3^2 + 4^2) = 5 mm at spacing (1, 1),
    # sqrt((3*2)^2 + 4^2) = sqrt(52) mm at spacing (2, 1)
    assert assd(p, lab, (1.0, 1.0)) == pytest.approx(5.0)
    assert mssd(p, lab, (2.0, 1.0)) == pytest.approx(math.sqrt(52.0))


def test_identical_masks_have_zero_distance() -> None:
    a, _ = _cube_pair(axis=0)
    m = segmentation_metrics(a, a, (0.7, 0.7, 2.5))
    assert m == {"iou": 1.0, "dice": 1.0, "ravd": 0.0, "assd": 0.0, "mssd": 0.0}


def test_mask_touching_the_array_edge_has_a_surface_there() -> None:
    # A full 3x3 array: erosion with outside = background leaves only the centre: 8 surface voxels.
    full = np.ones((3, 3), dtype=bool)
    da, _ = surface_distances(full, full, (1.0, 1.0))
    assert da.size == 8


def test_segmentation_metrics_cubes() -> None:
    a, b = _cube_pair(axis=2)
    m = segmentation_metrics(a, b, (1.0, 1.0, 3.0))
    # overlap 4 x 4 x 3 = 48; union 64 + 64 - 48 = 80
    assert m["iou"] == pytest.approx(48 / 80)
    assert m["dice"] == pytest.approx(2 * 48 / 128)
    assert m["ravd"] == 0.0
    assert m["assd"] == pytest.approx(13 / 14)
    assert m["mssd"] == pytest.approx(3.0)
    assert all(isinstance(v, float) for v in m.values())


@pytest.mark.parametrize(
    ("pred_empty", "label_empty", "expected"),
    [
        (True, True, {"iou": 1.0, "dice": 1.0, "ravd": 0.0, "assd": 0.0, "mssd": 0.0}),
        (False, True, {"iou": 0.0, "dice": 0.0, "ravd": INF, "assd": INF, "mssd": INF}),
        (True, False, {"iou": 0.0, "dice": 0.0, "ravd": 100.0, "assd": INF, "mssd": INF}),
    ],
    ids=["both-empty", "label-empty", "pred-empty"],
)
def test_empty_mask_rules(pred_empty: bool, label_empty: bool, expected: dict[str, float]) -> None:
    cube, _ = _cube_pair(axis=0)
    empty = np.zeros_like(cube)
    pred = empty if pred_empty else cube
    label = empty if label_empty else cube
    sp = (1.0, 1.0, 3.0)
    assert segmentation_metrics(pred, label, sp) == expected
    got = {"iou": iou(pred, label), "dice": dice(pred, label), "ravd": ravd(pred, label),
           "assd": assd(pred, label, sp), "mssd": mssd(pred, label, sp)}
    assert got == expected


def test_spacing_checks() -> None:
    a, b = _cube_pair(axis=0)
    with pytest.raises(ValueError, match="spacing"):
        assd(a, b, (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        mssd(a, b, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="non-empty"):
        surface_distances(a, np.zeros_like(a), (1.0, 1.0, 1.0))


# ----------------------------------------------------------------------------- image metrics


def _naive_ssim(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """Straight from Wang et al. (2004) with skimage's conventions, written independently:
    an explicit 11 x 11 Gaussian window (sigma 1.5, normalised), evaluated only at pixels whose
    window fits in the image, population (weighted) variances, mean over those pixels."""
    k = np.arange(-5, 6, dtype=np.float64)
    g = np.exp(-(k**2) / (2 * 1.5**2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(5, x.shape[0] - 5):
        for j in range(5, x.shape[1] - 5):
            px, py = x[i - 5 : i + 6, j - 5 : j + 6], y[i - 5 : i + 6, j - 5 : j + 6]
            mx, my = (w * px).sum(), (w * py).sum()
            vx = (w * (px - mx) ** 2).sum()
            vy = (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            values.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def _literal_pair() -> tuple[np.ndarray, np.ndarray]:
    i, j = np.mgrid[0:16, 0:18].astype(np.float64)
    # A deterministic texture in [0, 1]. (Zero-mean data would make the luminance term
    # (2 mx my + C1) / (mx^2 + my^2 + C1) tiny and the case less telling.)
    x = ((7 * i + 3 * j) % 11) / 10.0
    y = 0.8 * x + 0.1 * np.cos(i) * np.sin(j / 2.0) + 0.05
    return x, y


def test_ssim_identical_is_one() -> None:
    x, _ = _literal_pair()
    assert ssim(x, x) == pytest.approx(1.0)
    assert ssim(np.stack([x, -x]), np.stack([x, -x])) == pytest.approx(1.0)


def test_ssim_matches_independent_implementation() -> None:
    x, y = _literal_pair()
    expected = _naive_ssim(x, y, 2.0)
    assert 0.5 < expected < 0.99  # a non-trivial case
    assert ssim(x, y) == pytest.approx(expected, rel=1e-9)
    assert ssim(y, x) == pytest.approx(expected, rel=1e-9)
    assert ssim(x, y, data_range=1.0) == pytest.approx(_naive_ssim(x, y, 1.0), rel=1e-9)


def test_ssim_constant_images_by_hand() -> None:
    # x = 0, y = 0.1 everywhere: means 0 and 0.1, all variances 0, C1 = (0.01 * 2)^2 = 4e-4:
    # SSIM = (2*0*0.1 + C1)(0 + C2) / ((0 + 0.01 + C1)(0 + C2)) = 4e-4 / 1.04e-2 = 1/26
    x = np.zeros((12, 12))
    assert ssim(x, x + 0.1) == pytest.approx(1 / 26)


def test_ssim_batch_is_mean_of_images() -> None:
    x, y = _literal_pair()
    batch = ssim(np.stack([x, x]), np.stack([y, x]))
    assert batch == pytest.approx((_naive_ssim(x, y, 2.0) + 1.0) / 2, rel=1e-9)


def test_ssim_argument_checks() -> None:
    with pytest.raises(ValueError, match="H and W >= 11"):
        ssim(np.zeros((10, 20)), np.zeros((10, 20)))
    with pytest.raises(ValueError, match="data_range"):
        ssim(np.zeros((12, 12)), np.zeros((12, 12)), data_range=0.0)
    with pytest.raises(ValueError, match="differ in shape"):
        ssim(np.zeros((12, 12)), np.zeros((12, 13)))


def test_psnr_and_mae_literal() -> None:
    x = np.zeros((4, 4))
    y = np.full((4, 4), 0.5)
    # MSE = 0.25; PSNR = 10 log10(2^2 / 0.25) = 10 log10(16) ~= 12.0412 dB
    assert psnr(x, y) == pytest.approx(10 * math.log10(16.0))
    assert psnr(x, y, data_range=1.0) == pytest.approx(10 * math.log10(4.0))
    assert psnr(y, y) == INF
    # |[0, 1, -2, 3] - 0| mean = (0 + 1 + 2 + 3) / 4 = 1.5
    assert mae(np.array([0.0, 1.0, -2.0, 3.0]), np.zeros(4)) == pytest.approx(1.5)
