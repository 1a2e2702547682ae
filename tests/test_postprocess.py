"""Post-processing of predicted masks: known answers for largest component and hole filling."""

from __future__ import annotations

import numpy as np
import pytest

from liverlab.config import PostprocessConfig
from liverlab.errors import LiverlabError
from liverlab.postprocess import apply, fill_holes_per_slice, largest_component, postprocess_mask


def test_two_blobs_keep_only_the_larger():
    m = np.zeros((6, 6, 3), dtype=np.uint8)
    m[0:2, 0:2, 0] = 1  # 4 voxels
    m[3:6, 3:6, 1:3] = 1  # 18 voxels
    expected = np.zeros_like(m)
    expected[3:6, 3:6, 1:3] = 1
    assert np.array_equal(postprocess_mask(m), expected)
    assert postprocess_mask(m).dtype == np.uint8


def test_corner_touching_voxels_are_one_component_26_connectivity():
    # Two cubes that touch only at one corner: one component with 26-connectivity,
    # so nothing is removed (with 6-connectivity the smaller cube would go).
    m = np.zeros((4, 4, 4), dtype=bool)
    m[0:2, 0:2, 0:2] = True  # 8 voxels
    m[2, 2, 2] = True  # touches (1, 1, 1) by a corner only
    assert np.array_equal(largest_component(m), m)


def test_ties_keep_the_first_component_in_c_order():
    m = np.zeros((5, 5, 1), dtype=np.uint8)
    m[3:5, 3:5, 0] = 1  # 4 voxels, later in C order
    m[0:2, 0:2, 0] = 1  # 4 voxels, first in C order
    kept = largest_component(m)
    assert kept[0:2, 0:2, 0].all() and not kept[3:5, 3:5, 0].any()
    # Same answer whatever the order the blobs were drawn in, and on a second call.
    assert np.array_equal(largest_component(m), kept)


def test_ring_gets_filled_per_slice():
    ring = np.zeros((7, 7), dtype=np.uint8)
    ring[1:6, 1:6] = 1
    ring[2:5, 2:5] = 0  # a 3 x 3 hole
    vol = np.stack([ring, ring, np.zeros_like(ring)], axis=-1)
    filled = postprocess_mask(vol)
    full = np.zeros((7, 7), dtype=np.uint8)
    full[1:6, 1:6] = 1
    assert np.array_equal(filled[..., 0], full) and np.array_equal(filled[..., 1], full)
    assert not filled[..., 2].any()
    # A tube (ring in every slice) has no 3D hole but is filled slice by slice.
    assert np.array_equal(
        fill_holes_per_slice(np.stack([ring] * 3, axis=-1)), np.stack([full] * 3, axis=-1).astype(bool)
    )


def test_a_hole_open_to_the_slice_border_is_not_filled():
    c = np.zeros((5, 5), dtype=np.uint8)
    c[0:5, 0:5] = 1
    c[2, 0:3] = 0  # a notch reaching the border
    assert np.array_equal(postprocess_mask(c[..., None])[..., 0], c)


def test_empty_mask_stays_empty():
    for shape in [(4, 4, 3), (4, 4)]:
        out = postprocess_mask(np.zeros(shape, dtype=np.uint8))
        assert out.shape == shape and not out.any()


def test_config_switches_each_step():
    m = np.zeros((9, 9, 1), dtype=np.uint8)
    m[2:7, 2:7, 0] = 1
    m[4, 4, 0] = 0  # a hole
    m[0, 0, 0] = 1  # an island two voxels away from the square
    only_lcc = apply(m, PostprocessConfig(largest_component=True, fill_holes=False))
    assert only_lcc[0, 0, 0] == 0 and only_lcc[4, 4, 0] == 0 and only_lcc.sum() == 24
    only_fill = apply(m, PostprocessConfig(largest_component=False, fill_holes=True))
    assert only_fill[0, 0, 0] == 1 and only_fill[4, 4, 0] == 1 and only_fill.sum() == 26
    both = apply(m, PostprocessConfig())
    assert both.sum() == 25 and both[2:7, 2:7, 0].all()
    assert np.array_equal(apply(m, None), m)
    assert np.array_equal(apply(m, PostprocessConfig(largest_component=False, fill_holes=False)), m)


def test_postprocess_config_is_validated():
    from liverlab.config import config_from_dict

    raw = {"data": {"root": "x"}}
    cfg = config_from_dict(raw, {"unet.postprocess.fill_holes": False})
    assert cfg.unet.postprocess.largest_component is True and cfg.unet.postprocess.fill_holes is False
    with pytest.raises(LiverlabError, match="postprocess"):
        config_from_dict(raw, {"unet.postprocess.smooth": True})
