"""liver_contrast: the liver alone made darker or brighter than its neighbours (known answers)."""

from __future__ import annotations

import pytest
import torch

from liverlab.config import AugmentConfig, config_from_dict
from liverlab.data.augment import Augment, RandomRange, gaussian_blur
from liverlab.errors import LiverlabError


def _slice(context: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A 32 x 32 slice: air border, body u = 0.5, a 16 x 16 liver (rows/cols 8..23) at u = 0.6."""
    u = torch.zeros(1 + 2 * context, 32, 32)
    u[:, 2:30, 2:30] = 0.5
    u[:, 8:24, 8:24] = 0.6
    mask = torch.zeros(32, 32, dtype=torch.long)
    mask[8:24, 8:24] = 1
    return u * 2.0 - 1.0, mask


def _u(image: torch.Tensor) -> torch.Tensor:
    return (image + 1.0) / 2.0


def test_liver_scaled_by_the_factor_and_the_rest_untouched() -> None:
    image, mask = _slice()
    out, m = Augment(seed=0, liver_contrast=RandomRange(1.0, 0.5, 0.5))(image, mask)
    assert m is not None and torch.equal(m, mask)  # an intensity op: the mask is not changed
    u = _u(out)[0]
    # 4 px and more inside the edge the blurred mask is 1 (kernel radius 3): exactly half as bright
    torch.testing.assert_close(u[12:20, 12:20], torch.full((8, 8), 0.3), atol=1e-6, rtol=0)
    # 4 px and more outside it is 0: body and air bit-identical
    assert torch.equal(out[0, :4], image[0, :4]) and torch.equal(out[0, 28:], image[0, 28:])
    assert torch.equal(out[0, 4:28, 27:], image[0, 4:28, 27:])
    # at the edge, between: the liver side darkened partly, the body side a little
    assert 0.3 < float(u[8, 16]) < 0.6 and 0.3 < float(u[7, 16]) < 0.5


def test_brighter_liver_and_clipping_at_one() -> None:
    image, mask = _slice()
    out, _ = Augment(seed=0, liver_contrast=RandomRange(1.0, 2.0, 2.0))(image, mask)
    assert float(_u(out)[0, 16, 16]) == pytest.approx(1.0)  # 0.6 x 2 clipped to the top of the range
    out, _ = Augment(seed=0, liver_contrast=RandomRange(1.0, 1.5, 1.5))(image, mask)
    assert float(_u(out)[0, 16, 16]) == pytest.approx(0.9, abs=1e-6)


def test_needs_the_mask_unlabelled_slices_unchanged() -> None:
    image, _ = _slice()
    out, m = Augment(seed=0, liver_contrast=RandomRange(1.0, 0.5, 0.5))(image, None)
    assert m is None and torch.equal(out, image)


def test_every_channel_of_a_stack_scaled_by_the_centre_mask() -> None:
    image, mask = _slice(context=1)
    out, _ = Augment(seed=0, liver_contrast=RandomRange(1.0, 0.5, 0.5))(image, mask)
    u = _u(out)
    for c in range(3):
        torch.testing.assert_close(u[c, 12:20, 12:20], torch.full((8, 8), 0.3), atol=1e-6, rtol=0)


def test_scales_where_the_mask_lands_after_rotation_zoom_and_patches() -> None:
    """Geometry is drawn before intensity: the same seed gives the same window and angle with or without it."""
    image, mask = _slice()
    images, masks = image.expand(6, 1, 32, 32), mask.expand(6, 32, 32)
    geometry = {"rotate_degrees": 30.0, "scale": 0.2, "patch_size": 24}
    plain, m_plain = Augment(seed=3, **geometry)(images, masks)
    darker, m_dark = Augment(seed=3, liver_contrast=RandomRange(1.0, 0.4, 0.4), **geometry)(images, masks)
    assert m_plain is not None and m_dark is not None and torch.equal(m_plain, m_dark)
    liver = gaussian_blur(m_plain[:, None].float(), 1.0)
    torch.testing.assert_close(_u(darker), (_u(plain) * (1.0 - 0.6 * liver)).clamp(0, 1), atol=1e-5, rtol=0)
    assert not torch.equal(darker, plain)


def test_probability_applies_per_slice() -> None:
    image, mask = _slice()
    images, masks = image.expand(64, 1, 32, 32), mask.expand(64, 32, 32)
    out, _ = Augment(seed=1, liver_contrast=RandomRange(0.5, 0.5, 0.5))(images, masks)
    changed = [not torch.equal(out[i], images[i]) for i in range(64)]
    assert 16 < sum(changed) < 48


def test_config_default_off_and_validated() -> None:
    assert AugmentConfig().liver_contrast.p == 0.0
    assert "liver_contrast" not in Augment.from_config(AugmentConfig()).intensity
    on = config_from_dict({"data": {"root": "x"}}, ["unet.augment.liver_contrast.p=0.3"])
    aug = Augment.from_config(on.unet.augment)
    assert aug.intensity["liver_contrast"] == RandomRange(0.3, 0.3, 1.6)  # range kept from the default
    with pytest.raises(LiverlabError, match=r"liver_contrast\.range: factor on the liver .* in \(0, 10\]"):
        config_from_dict({"data": {"root": "x"}}, ["unet.augment.liver_contrast.range=[0, 1]"])
    with pytest.raises(ValueError, match="liver_contrast factors must be > 0"):
        Augment(liver_contrast=RandomRange(1.0, 0.0, 1.0))
