"""Test-time augmentation (liverlab/infer/tta.py, ``unet.tta``, ``liverlab evaluate --tta``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from liverlab.config import TTAConfig
from liverlab.errors import LiverlabError
from liverlab.infer.commands import _tta_option
from liverlab.infer.evaluate import predict_probs
from liverlab.infer.tta import _warp, transforms, tta_probs

CPU = torch.device("cpu")


class Threshold(torch.nn.Module):
    """Pointwise 'U-Net': liver logit = 8 * intensity, background 0. Equivariant to any warp of the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x[:, :1]), 8.0 * x[:, :1]], dim=1)


def _disc(centre: tuple[float, float], radius: float, size: int = 64) -> np.ndarray:
    ii, jj = np.indices((size, size))
    inside = (ii - centre[0]) ** 2 + (jj - centre[1]) ** 2 <= radius**2
    return np.where(inside, 0.8, -0.8).astype(np.float32)[None]


def test_transforms_grid() -> None:
    assert len(transforms(0, 0)) == 1 and torch.equal(transforms(0, 0)[0], torch.eye(2, 3))
    grid = transforms(10, 0.1)
    assert len(grid) == 9 and torch.equal(grid[0], torch.eye(2, 3))
    assert len(transforms(10, 0)) == 3 and len(transforms(0, 0.2)) == 3
    # zoom 1.1 samples at A p = p / 1.1 (magnifies); rotation matrices keep their determinant 1 / zoom^2
    dets = sorted(round(float(torch.det(t[:, :2])), 4) for t in grid)
    assert dets[0] == round(1 / 1.1**2, 4) and dets[-1] == round(1 / 0.9**2, 4)


def test_off_is_the_single_pass_exactly() -> None:
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 2, 3, padding=1).eval()
    images = np.random.default_rng(0).uniform(-1, 1, (5, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(images)[:, None]), dim=1)
    for tta in (None, TTAConfig()):
        got = torch.cat([p for _, p in predict_probs(model, images, CPU, "fp32", 16, tta)])
        assert torch.equal(got, expected)


def test_constant_image_is_unchanged_by_any_copy() -> None:
    # Every copy of a constant image predicts the same probability (a copy continues the slice's edge), and
    # the way back weights each copy by its coverage, so the mean is that probability everywhere, borders included.
    x = torch.full((1, 1, 32, 32), 0.3)
    single = torch.softmax(Threshold()(x), dim=1)
    got = tta_probs(Threshold(), x, CPU, "fp32", transforms(20, 0.2))
    assert torch.allclose(got, single, atol=1e-5)


@pytest.mark.parametrize("theta", transforms(20, 0.2)[1:], ids=lambda t: f"{t[0, 0]:.3f},{t[0, 1]:.3f}")
def test_each_copy_maps_back_onto_the_slice(theta: torch.Tensor) -> None:
    # An off-centre disc through one copy alone: the copy moves the disc (the view itself disagrees with the
    # slice), and the probabilities mapped back by the inverse sit where the single pass puts them.
    x = torch.from_numpy(_disc((20.0, 40.0), 9.0))[None]
    single = torch.softmax(Threshold()(x), dim=1)[0, 1] > 0.5
    view = _warp(x, theta, "border")
    moved = torch.softmax(Threshold()(view), dim=1)[0, 1] > 0.5
    back = tta_probs(Threshold(), x, CPU, "fp32", [theta])[0, 1] > 0.5

    def iou(a: torch.Tensor) -> float:
        return float((a & single).sum() / (a | single).sum())

    assert iou(moved) < 0.8
    assert iou(back) > 0.95


def test_config_and_cli_validation() -> None:
    assert not TTAConfig().enabled and TTAConfig(rotate_degrees=10).enabled and TTAConfig(scale=0.1).enabled
    with pytest.raises(ValidationError, match="rotate_degrees"):
        TTAConfig(rotate_degrees=-1)
    with pytest.raises(ValidationError, match="scale"):
        TTAConfig(scale=0.5)
    assert _tta_option(None) is None
    assert _tta_option("off") == TTAConfig()
    assert _tta_option("10,0.1") == TTAConfig(rotate_degrees=10, scale=0.1)
    for bad in ("10", "ten,0.1", "10,0.7", "60,0"):
        with pytest.raises(LiverlabError, match="--tta"):
            _tta_option(bad)
