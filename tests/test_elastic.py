"""Elastic deformation (``unet.augment.elastic``): known answers on literal tensors, bounds, config."""

from __future__ import annotations

import pytest
import torch

from liverlab.config import AugmentConfig, config_from_dict
from liverlab.data.augment import Augment, RandomRange, displace, elastic_field
from liverlab.errors import LiverlabError


def _ramp(h: int = 24, w: int = 32) -> torch.Tensor:
    """(1, 1, h, w) image whose value is the column index / 100 (a linear ramp along dim -1)."""
    return (torch.arange(w, dtype=torch.float32) / 100.0).expand(h, w)[None, None].clone()


def test_constant_field_shifts_by_exactly_the_drawn_pixels() -> None:
    # Identity grid + a field of +1 in x scaled by 2 px: output pixel j samples input j + 2 (known answer).
    img = torch.arange(6 * 8, dtype=torch.float32).view(1, 1, 6, 8)
    theta = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    grid = torch.nn.functional.affine_grid(theta, [1, 1, 6, 8], align_corners=False)
    field = torch.zeros(1, 6, 8, 2)
    field[..., 0] = 1.0
    moved = displace(grid, field, torch.tensor([2.0]), 6, 8)
    out = torch.nn.functional.grid_sample(img, moved, mode="bilinear", padding_mode="zeros", align_corners=False)
    torch.testing.assert_close(out[..., :6], img[..., 2:], atol=1e-4, rtol=0)
    assert torch.all(out[..., 7] == 0)  # sampled past the edge: zero padding
    field[..., 0], field[..., 1] = 0.0, -1.0  # y by -1 px: row i samples row i - 1
    moved = displace(grid, field, torch.tensor([1.0]), 6, 8)
    out = torch.nn.functional.grid_sample(img, moved, mode="bilinear", padding_mode="zeros", align_corners=False)
    torch.testing.assert_close(out[..., 1:, :], img[..., :5, :], atol=1e-4, rtol=0)


def test_field_is_smooth_and_normalised_per_slice_and_component() -> None:
    f = elastic_field(3, 40, 50, torch.Generator().manual_seed(0))
    assert f.shape == (3, 40, 50, 2)
    torch.testing.assert_close(f.abs().amax(dim=(1, 2)), torch.ones(3, 2))
    # knots ~13-17 px apart, bicubic between them: neighbouring pixels differ by a small fraction of the peak
    assert f.diff(dim=1).abs().max() < 0.25 and f.diff(dim=2).abs().max() < 0.25
    assert not torch.equal(f[0], f[1])  # a fresh field per slice


def test_strength_zero_is_the_identity_and_mask_stays_labels() -> None:
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    m = (torch.rand(4, 32, 32) > 0.5).long()
    y, mm = Augment(elastic=RandomRange(1.0, 0.0, 0.0), seed=0)(x, m)
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)
    assert torch.equal(mm, m)


def test_displacement_is_bounded_by_the_drawn_strength() -> None:
    # On a ramp of slope 0.01 per column, bilinear sampling is exact: |out - in| / 0.01 is the x displacement.
    img = _ramp().expand(8, 1, 24, 32).clone()
    aug = Augment(elastic=RandomRange(1.0, 3.0, 3.0), seed=1)
    out, _ = aug(img)
    shift = (out - img)[..., 4:-4, 4:-4].abs() / 0.01  # away from the border, where zero padding enters
    assert shift.max() <= 3.0 + 1e-3
    assert shift.max() > 1.5  # it does move: each slice's field peaks at 3 px somewhere


def test_image_and_mask_move_together() -> None:
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    disc = ((yy - 30) ** 2 + (xx - 34) ** 2 < 15**2).long()
    m = disc.expand(6, 64, 64).clone()
    img = (m.float() * 2 - 1)[:, None]
    y, mm = Augment(elastic=RandomRange(1.0, 5.0, 5.0), seed=2)(img, m)
    assert not torch.equal(mm, m)  # the disc was deformed
    agree = ((y[:, 0] > 0).long() == mm).float().mean()
    assert agree > 0.99  # bilinear image and nearest mask from one grid: they differ only on the outline


def test_probability_selects_slices_and_off_keeps_streams() -> None:
    x = torch.rand(64, 1, 16, 16) * 2 - 1
    y, _ = Augment(elastic=RandomRange(0.5, 4.0, 4.0), seed=0)(x)
    changed = (y - x).flatten(1).abs().amax(1) > 1e-4
    assert 16 < int(changed.sum()) < 48
    # p 0: the op is absent, the augmenter's random stream is what it was without it
    a = Augment(rotate_degrees=15, scale=0.2, gamma=RandomRange(0.5, 0.5, 2.0), seed=5)
    b = Augment(rotate_degrees=15, scale=0.2, gamma=RandomRange(0.5, 0.5, 2.0), elastic=RandomRange(0.0, 0, 4), seed=5)
    for _ in range(3):
        torch.testing.assert_close(a(x)[0], b(x)[0], atol=0, rtol=0)


def test_patch_windows_deform_too() -> None:
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    m = (torch.rand(4, 32, 32) > 0.5).long()
    y, mm = Augment(elastic=RandomRange(1.0, 2.0, 2.0), patch_size=16, seed=0)(x, m)
    assert y.shape == (4, 1, 16, 16) and mm is not None and mm.shape == (4, 16, 16)


def test_config_default_off_and_named_errors() -> None:
    assert AugmentConfig().elastic.p == 0.0
    assert Augment.from_config(AugmentConfig()).elastic is None
    on = AugmentConfig(elastic={"p": 0.5})  # --set unet.augment.elastic.p=0.5 keeps the default range
    assert on.elastic.range == (0.0, 4.0)
    assert Augment.from_config(on).elastic == RandomRange(0.5, 0.0, 4.0)
    for bad in ("[0, 40]", "[-1, 2]"):
        with pytest.raises(LiverlabError, match=r"elastic\.range: largest displacement in pixels .* in \[0, 32\]"):
            config_from_dict({"data": {"root": "x"}}, [f"unet.augment.elastic.range={bad}"])
    with pytest.raises(ValueError, match="elastic"):
        Augment(elastic=RandomRange(0.5, -1.0, 2.0))
