"""Slice augmentation: anatomical flips, geometry, intensity ops (known answers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from liverlab.config import AugmentConfig, config_from_dict
from liverlab.data.augment import (
    FLIP_AXES,
    INTENSITY_OPS,
    Augment,
    RandomRange,
    bias_field,
    gaussian_blur,
    random_conv,
)
from liverlab.data.phantoms import make_patient
from liverlab.data.preprocess import normalise
from liverlab.errors import LiverlabError

ALWAYS = {  # every op fires, with a fixed non-trivial strength
    "random_conv": RandomRange(1.0, 0.7, 0.7),
    "blur": RandomRange(1.0, 0.8, 0.8),
    "bias_field": RandomRange(1.0, 0.3, 0.3),
    "brightness": RandomRange(1.0, 1.2, 1.2),
    "contrast": RandomRange(1.0, 0.8, 0.8),
    "gamma": RandomRange(1.0, 1.4, 1.4),
    "noise": RandomRange(1.0, 0.05, 0.05),
}


@pytest.fixture(scope="module")
def liver_slice() -> tuple[torch.Tensor, torch.Tensor]:
    """A phantom MRI slice in the cache layout (rows along x towards the patient's right) and its liver mask."""
    p = make_patient(seed=0, patient=0, size=64, slices=16)
    z = int(p.liver.sum(axis=(0, 1)).argmax())
    image = torch.from_numpy(normalise(p.mri, "mri")[:, :, z].copy())[None]
    mask = torch.from_numpy(p.liver[:, :, z].astype(np.int64))
    return image, mask


def _centroid(mask: torch.Tensor) -> tuple[float, float]:
    rows, cols = torch.nonzero(mask, as_tuple=True)
    return float(rows.float().mean()), float(cols.float().mean())


def _outcomes(
    aug: Augment, image: torch.Tensor, mask: torch.Tensor, n: int = 16
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for _ in range(n):
        im, m = aug(image, mask)
        assert m is not None
        out.append((im, m))
    return out


# ----------------------------------------------------------------------------- flips


def test_left_right_flip_moves_liver_to_the_mirrored_row(liver_slice: tuple[torch.Tensor, torch.Tensor]) -> None:
    image, mask = liver_slice
    h, w = mask.shape
    row, col = _centroid(mask)
    assert row > (h - 1) / 2  # the phantom liver is on the patient's right (high x)
    seen = set()
    for im, m in _outcomes(Augment(flip=["left_right"], seed=0), image, mask):
        r2, c2 = _centroid(m)
        flipped = not torch.equal(m, mask)
        seen.add(flipped)
        if flipped:
            assert r2 == pytest.approx(h - 1 - row) and c2 == pytest.approx(col)  # mirrored in x, y unchanged
            assert r2 < (h - 1) / 2
            assert torch.equal(m, mask.flip(0)) and torch.equal(im, image.flip(1))
        else:
            assert torch.equal(im, image)
    assert seen == {True, False}


def test_anterior_posterior_flip_mirrors_the_column(liver_slice: tuple[torch.Tensor, torch.Tensor]) -> None:
    image, mask = liver_slice
    h, w = mask.shape
    row, col = _centroid(mask)
    seen = set()
    for im, m in _outcomes(Augment(flip=["anterior_posterior"], seed=1), image, mask):
        r2, c2 = _centroid(m)
        flipped = not torch.equal(m, mask)
        seen.add(flipped)
        if flipped:
            assert r2 == pytest.approx(row) and c2 == pytest.approx(w - 1 - col)
            assert torch.equal(m, mask.flip(1)) and torch.equal(im, image.flip(2))
    assert seen == {True, False}


def test_both_flips_reach_all_four_orientations(liver_slice: tuple[torch.Tensor, torch.Tensor]) -> None:
    image, mask = liver_slice
    variants = {"none": mask, "lr": mask.flip(0), "ap": mask.flip(1), "both": mask.flip(0).flip(1)}
    seen = set()
    for _, m in _outcomes(Augment(flip=["left_right", "anterior_posterior"], seed=2), image, mask, n=40):
        match = [k for k, v in variants.items() if torch.equal(m, v)]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == set(variants)


def test_flip_config_default_none_and_rejects_bad_names() -> None:
    assert AugmentConfig().flip == ()
    assert Augment.from_config(AugmentConfig(), seed=0).flip == ()
    assert AugmentConfig(flip=["left_right"]).flip == ("left_right",)
    assert set(FLIP_AXES) == {"left_right", "anterior_posterior"}
    bad_axis = r"unet\.augment\.flip\.0: Input should be 'left_right' or 'anterior_posterior'"
    with pytest.raises(LiverlabError, match=bad_axis):
        config_from_dict({"data": {"root": "x"}, "unet": {"augment": {"flip": ["up_down"]}}})
    with pytest.raises(LiverlabError, match=r"unet\.augment: .*flip is a list of anatomical axes"):
        config_from_dict({"data": {"root": "x"}, "unet": {"augment": {"flip": True}}})
    with pytest.raises(LiverlabError, match=r"unet\.augment: .*intensity was removed"):
        config_from_dict({"data": {"root": "x"}, "unet": {"augment": {"intensity": 0.1}}})
    with pytest.raises(ValueError, match="unknown flip axis 'x'"):
        Augment(flip=["x"])
    with pytest.raises(ValueError, match="list of anatomical axes"):
        Augment(flip=True)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- geometry


def test_geometry_matches_mask(liver_slice: tuple[torch.Tensor, torch.Tensor]) -> None:
    _, mask = liver_slice
    image = (mask.float() * 2 - 1)[None]  # image = mask, so geometry must agree
    aug = Augment(flip=["left_right", "anterior_posterior"], rotate_degrees=25, scale=0.2, seed=3)
    for _ in range(10):
        im2, m2 = aug(image, mask)
        assert m2 is not None and m2.dtype == torch.long and set(m2.unique().tolist()) <= {0, 1}
        agree = ((im2[0] > 0).long() == m2).float().mean()
        assert agree > 0.97


def test_off_is_identity_and_batched_shapes(liver_slice: tuple[torch.Tensor, torch.Tensor]) -> None:
    image, mask = liver_slice
    im, m = Augment()(image, mask)
    assert torch.equal(im, image) and m is not None and torch.equal(m, mask)
    images, masks = image[None].repeat(6, 1, 1, 1), mask[None].repeat(6, 1, 1)
    im, m = Augment.from_config(AugmentConfig(), seed=0)(images, masks)
    assert im.shape == images.shape and m is not None and m.shape == masks.shape and m.dtype == torch.long


# ----------------------------------------------------------------------------- intensity


def test_intensity_known_answers() -> None:
    image = torch.tensor([[[-1.0, 0.0], [0.5, 1.0]]])  # u = 0, 0.5, 0.75, 1
    gamma2, _ = Augment(gamma=RandomRange(1.0, 2.0, 2.0))(image)
    torch.testing.assert_close(gamma2, torch.tensor([[[-1.0, -0.5], [0.125, 1.0]]]))  # u^2 = 0, .25, .5625, 1
    half, _ = Augment(brightness=RandomRange(1.0, 0.5, 0.5))(image)
    torch.testing.assert_close(half, torch.tensor([[[-1.0, -0.5], [-0.25, 0.0]]]))
    # contrast 0.5 about the mean u = 0.5625, clipped to the slice's [0, 1]
    low, _ = Augment(contrast=RandomRange(1.0, 0.5, 0.5))(image)
    u = (torch.tensor([0.0, 0.5, 0.75, 1.0]) - 0.5625) * 0.5 + 0.5625
    torch.testing.assert_close(low, (u * 2 - 1).view(1, 2, 2))
    high, _ = Augment(contrast=RandomRange(1.0, 3.0, 3.0))(image)
    assert float(high.min()) == -1.0 and float(high.max()) == 1.0  # range preserved: air stays the darkest


@pytest.mark.parametrize(
    "op,neutral",
    [("gamma", 1.0), ("brightness", 1.0), ("contrast", 1.0), ("bias_field", 0.0), ("noise", 0.0), ("blur", 0.0),
     ("random_conv", 0.0)],
)
def test_neutral_strength_is_identity(liver_slice: tuple[torch.Tensor, torch.Tensor], op: str, neutral: float) -> None:
    image, mask = liver_slice
    out, m = Augment(seed=0, **{op: RandomRange(1.0, neutral, neutral)})(image, mask)  # type: ignore[arg-type]
    torch.testing.assert_close(out, image, atol=1e-6, rtol=0)
    assert m is not None and torch.equal(m, mask)


def test_bias_field_is_smooth_positive_and_bounded() -> None:
    g = torch.Generator().manual_seed(0)
    h = w = 64
    s = torch.full((8,), 0.4)
    field = bias_field(8, h, w, s, g)
    assert field.shape == (8, 1, h, w) and bool((field > 0).all())
    log = field.log()
    torch.testing.assert_close(log.abs().amax(dim=(1, 2, 3)), s)  # max |log field| = strength exactly
    # a cubic on [-1, 1] with max |g| = 1 has |g'| <= 9 (Markov): neighbour steps <= 9 * s * 2 / (n - 1)
    bound = 9 * 0.4 * 2 / (h - 1) + 1e-5
    assert float(log.diff(dim=2).abs().max()) <= bound and float(log.diff(dim=3).abs().max()) <= bound
    noise_tv = float(torch.randn(8, 1, h, w, generator=g).diff(dim=2).abs().mean())
    assert float(field.diff(dim=2).abs().mean()) < noise_tv / 50  # far smoother than noise
    assert torch.equal(bias_field(2, h, w, torch.zeros(2), g), torch.ones(2, 1, h, w))


def test_random_conv_blends_a_full_range_random_net_and_can_reorder_tissues() -> None:
    u = torch.full((1, 2, 32, 32), 0.2)
    u[..., 16:] = 0.8  # two tissues; channel 1 equals channel 0 (a 2.5D stack)
    full = random_conv(u, torch.ones(1), torch.Generator().manual_seed(3))
    half = random_conv(u, torch.full((1,), 0.5), torch.Generator().manual_seed(3))  # the same net
    assert float(full.min()) == 0.0 and float(full.max()) == 1.0  # the net's output rescaled to [0, 1]
    torch.testing.assert_close(half, 0.5 * full + 0.5 * u)  # blend weight 0.5, known answer
    assert torch.equal(full[:, 0], full[:, 1])  # every channel through the same net
    flips = 0
    for seed in range(20):
        out = random_conv(u[:, :1], torch.ones(1), torch.Generator().manual_seed(seed))
        flips += int(out[0, 0, 16, 4] > out[0, 0, 16, 28])  # the darker tissue came out brighter
    assert 0 < flips < 20  # non-monotone: tissue order is sometimes kept, sometimes reversed


def test_air_stays_air_and_noise_has_its_std() -> None:
    image = torch.full((1, 64, 64), -1.0)
    image[:, 16:48, 16:48] = 0.0
    for op in ("gamma", "brightness", "bias_field"):
        out, _ = Augment(seed=0, **{op: ALWAYS[op]})(image)  # type: ignore[arg-type]
        assert bool((out[image == -1.0] == -1.0).all()), op
        assert not torch.equal(out, image), op
    grey = torch.zeros(1, 128, 128)
    out, _ = Augment(seed=0, noise=RandomRange(1.0, 0.1, 0.1))(grey)
    assert float((out - grey).std()) == pytest.approx(0.1, rel=0.05)
    impulse = torch.zeros(1, 1, 15, 15)
    impulse[0, 0, 7, 7] = 1.0
    blurred = gaussian_blur(impulse, 1.0)  # an interior impulse -> the normalised 7-tap kernel's outer product
    k0 = 1.0 / float(torch.exp(-0.5 * torch.arange(-3.0, 4.0) ** 2).sum())
    assert float(blurred.sum()) == pytest.approx(1.0) and float(blurred[0, 0, 7, 7]) == pytest.approx(k0 * k0)


def test_intensity_never_changes_masks_and_is_seeded(liver_slice: tuple[torch.Tensor, torch.Tensor]) -> None:
    image, mask = liver_slice
    images, masks = image[None].repeat(4, 1, 1, 1), mask[None].repeat(4, 1, 1)
    a, b = Augment(seed=7, **ALWAYS), Augment(seed=7, **ALWAYS)
    for _ in range(3):
        ia, ma = a(images, masks)
        ib, mb = b(images, masks)
        assert ma is not None and torch.equal(ma, masks) and ma.dtype == torch.long
        assert torch.equal(ia, ib)  # same seed, same stream
        assert not torch.equal(ia, images) and float(ia.min()) >= -1.0 and float(ia.max()) <= 1.0
    other, _ = Augment(seed=8, **ALWAYS)(images, masks)
    assert not torch.equal(other, ia)


def test_slices_no_op_fires_on_are_untouched() -> None:
    images = torch.rand(32, 1, 8, 8) * 2 - 1
    out, _ = Augment(seed=4, gamma=RandomRange(0.5, 2.0, 2.0))(images)
    squared = ((images + 1) / 2) ** 2 * 2 - 1
    same = [bool(torch.equal(out[i], images[i])) for i in range(32)]
    for i in range(32):
        if not same[i]:
            torch.testing.assert_close(out[i], squared[i])
    assert 4 < sum(same) < 28


def test_config_defaults_on_and_validated() -> None:
    aug = Augment.from_config(AugmentConfig(), seed=0)
    assert set(aug.intensity) == set(INTENSITY_OPS) - {"random_conv", "liver_contrast"}  # both opt-in
    assert AugmentConfig().gamma.range == (0.5, 2.0)
    off = Augment.from_config(AugmentConfig(**{op: {"p": 0.0, "range": [1.0, 1.0]} for op in INTENSITY_OPS}))
    assert off.intensity == {}
    partial = config_from_dict({"data": {"root": "x"}}, ["unet.augment.gamma.p=0", "unet.augment.noise.range=[0, 0.1]"])
    assert partial.unet.augment.gamma.p == 0.0 and partial.unet.augment.gamma.range == (0.5, 2.0)  # range kept
    assert partial.unet.augment.noise.p == 0.15 and partial.unet.augment.noise.range == (0.0, 0.1)
    assert "gamma" not in Augment.from_config(partial.unet.augment).intensity
    with pytest.raises(LiverlabError, match=r"unet\.augment: .*gamma\.range: exponent .* in \(0, 10\]"):
        config_from_dict({"data": {"root": "x"}, "unet": {"augment": {"gamma": {"p": 0.5, "range": [0.0, 1.0]}}}})
    with pytest.raises(LiverlabError, match=r"unet\.augment\.noise: .*lo <= hi"):
        config_from_dict({"data": {"root": "x"}, "unet": {"augment": {"noise": {"p": 0.5, "range": [0.2, 0.1]}}}})
    with pytest.raises(LiverlabError, match=r"unet\.augment\.blur\.p"):
        config_from_dict({"data": {"root": "x"}, "unet": {"augment": {"blur": {"p": 1.5, "range": [0.5, 1.0]}}}})
