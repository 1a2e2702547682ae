"""Patch training (``unet.patch_size``): windows cut from the slices, geometry about the window's
centre, whole-slice geometry unchanged, config checks, and a U-Net trained on patches that
segments whole slices."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import ReportLog, tiny_config

from liverlab.data.augment import FILL, Augment
from liverlab.errors import LiverlabError
from liverlab.train.unet import UNetData, train_unet


def _windows(seed: int, b: int, h: int, w: int, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (top, left) corners an ``Augment(seed=seed, patch_size=p)`` draws first for a batch of ``b``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, h - p + 1, (b,), generator=g), torch.randint(0, w - p + 1, (b,), generator=g)


def _distinct(b: int, c: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose every pixel value is unique (so a window is found at one place only) and masks."""
    image = torch.arange(b * c * h * w, dtype=torch.float32).reshape(b, c, h, w) / (b * c * h * w)
    mask = (torch.arange(b * h * w).reshape(b, h, w) % 3 == 0).long()
    return image, mask


def test_patch_without_geometry_is_the_exact_window_of_image_and_mask() -> None:
    image, mask = _distinct(16, 3, 24, 40)  # 3 channels: a 2.5D stack is cut as one
    out, m = Augment(patch_size=8, seed=7)(image, mask)
    assert out.shape == (16, 3, 8, 8) and m is not None and m.shape == (16, 8, 8)
    top, left = _windows(7, 16, 24, 40, 8)
    for i, (t, lf) in enumerate(zip(top.tolist(), left.tolist(), strict=True)):
        assert torch.equal(out[i], image[i, :, t : t + 8, lf : lf + 8])
        assert torch.equal(m[i], mask[i, t : t + 8, lf : lf + 8])
    assert len(set(zip(top.tolist(), left.tolist(), strict=True))) > 8  # the windows move
    assert int(top.max()) <= 24 - 8 and int(left.max()) <= 40 - 8


def test_patch_as_large_as_the_slice_is_the_slice() -> None:
    image, mask = _distinct(2, 1, 16, 16)
    out, m = Augment(patch_size=16, seed=0)(image, mask)
    assert torch.equal(out, image) and m is not None and torch.equal(m, mask)


def test_zoom_one_on_a_patch_samples_the_exact_window() -> None:
    """The resampling path puts each output pixel on the centre of the window's input pixel."""
    image, mask = _distinct(6, 2, 32, 40)
    out, m = Augment(scale=1e-9, patch_size=16, seed=3)(image, mask)  # scale > 0: the grid path
    top, left = _windows(3, 6, 32, 40, 16)
    ref = torch.stack([image[i, :, t : t + 16, lf : lf + 16] for i, (t, lf) in enumerate(zip(top, left, strict=True))])
    ref_m = torch.stack([mask[i, t : t + 16, lf : lf + 16] for i, (t, lf) in enumerate(zip(top, left, strict=True))])
    assert torch.allclose(out, ref, atol=1e-5)
    assert m is not None and torch.equal(m, ref_m)


@pytest.mark.parametrize(("degrees", "k"), [(90.0, 1), (-90.0, -1)])
def test_rotation_turns_the_window_about_its_own_centre(degrees: float, k: int) -> None:
    """Known answer on a non-square slice: a 90-degree draw is ``rot90`` of the drawn window."""
    image, mask = _distinct(4, 1, 32, 48)
    aug = Augment(rotate_degrees=90.0, patch_size=16, seed=5)
    # Fix the draws at an end of their range: the angle at +-90, the zoom (range [1, 1], scale 0) at 1.
    aug._uniform = lambda n, lo, hi: torch.full((n,), hi if degrees > 0 else lo)  # type: ignore[method-assign]
    out, m = aug(image, mask)
    top, left = _windows(5, 4, 32, 48, 16)
    for i, (t, lf) in enumerate(zip(top.tolist(), left.tolist(), strict=True)):
        assert torch.allclose(out[i], torch.rot90(image[i, :, t : t + 16, lf : lf + 16], k, (-2, -1)), atol=1e-5)
        assert m is not None and torch.equal(m[i], torch.rot90(mask[i, t : t + 16, lf : lf + 16], k, (-2, -1)))


def test_whole_slice_geometry_is_unchanged_by_the_patch_option() -> None:
    """patch_size None: the sampling grid is the one every recorded run used (rotation and zoom
    about the slice's centre, theta = R / zoom), drawn from the same stream."""
    image = torch.rand(3, 1, 20, 20) * 2 - 1
    out, _ = Augment(rotate_degrees=20, scale=0.2, seed=11)(image)
    g = torch.Generator().manual_seed(11)
    angle = (torch.rand(3, generator=g) * 40 - 20) * (math.pi / 180)
    zoom = torch.rand(3, generator=g) * 0.4 + 0.8
    theta = torch.zeros(3, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle) / zoom, -torch.sin(angle) / zoom
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle) / zoom, torch.cos(angle) / zoom
    grid = F.affine_grid(theta, [3, 1, 20, 20], align_corners=False)
    ref = F.grid_sample(image - FILL, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + FILL
    assert torch.equal(out, ref)


def test_patch_geometry_keeps_image_and_mask_together() -> None:
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    mask = (((yy - 30) ** 2 + (xx - 36) ** 2) < 20**2).long()
    image = (mask.float() * 2 - 1)[None]
    aug = Augment(rotate_degrees=25, scale=0.2, patch_size=32, seed=2)
    for _ in range(10):
        im, m = aug(image, mask)
        assert im.shape == (1, 32, 32) and m is not None and m.shape == (32, 32)
        assert ((im[0] > 0).long() == m).float().mean() > 0.97


def test_bad_patch_sizes_are_named() -> None:
    with pytest.raises(ValueError, match="patch_size 40 is larger than the 32 x 32 slice"):
        Augment(patch_size=40)(torch.zeros(1, 32, 32))
    for bad in (0, -8, 2.5, True):
        with pytest.raises(ValueError, match="patch_size"):
            Augment(patch_size=bad)  # type: ignore[arg-type]


def test_config_checks_patch_size_against_data_size_and_depth(phantom_root) -> None:
    assert tiny_config(phantom_root).unet.patch_size is None  # default: whole slices
    with pytest.raises(LiverlabError, match=r"unet\.patch_size 48 is larger than data\.size 32"):
        tiny_config(phantom_root, **{"unet.patch_size": 48})
    not_divisible = r"unet\.patch_size 18 is not divisible by 2\*\*\(unet\.model\.depth - 1\) = 4"
    with pytest.raises(LiverlabError, match=not_divisible):
        tiny_config(phantom_root, **{"unet.patch_size": 18})


def test_unet_trains_on_patches_and_segments_whole_slices(phantom_root, tmp_path) -> None:
    config = tiny_config(phantom_root, **{"unet.patch_size": 16, "unet.iterations": 6, "unet.val_every": 3})
    data = UNetData(config)
    batch = next(data.batches(0, 6, 3))
    assert batch["image"].shape == (4, 1, 16, 16) and batch["mask"].shape == (4, 16, 16)
    assert data.train.images.shape[-2:] == (32, 32)  # the cache keeps data.size
    log = ReportLog()
    metrics = train_unet(config, log, None, tmp_path)
    assert [m["iteration"] for m in log.metrics] == [3, 6]
    assert all(0.0 <= m["val/iou"] <= 1.0 for m in log.metrics)  # whole 32 x 32 validation slices
    assert 0.0 <= metrics["test/iou"] <= 1.0 and (tmp_path / "per_patient.parquet").exists()
