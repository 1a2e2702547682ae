"""2.5D context: each slice's z-neighbours as channels, within its case, edges repeated."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from liverlab.data.cache import SliceSet
from liverlab.data.context import context_images, context_of, context_rows
from liverlab.data.datasets import SegmentationSlices
from liverlab.models import UNet


def _set(case_ids: list[str], z: list[int]) -> SliceSet:
    n = len(z)
    # Each slice's pixels hold its own row number, so a stacked input says which rows it came from.
    images = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, 4, 4)).copy()
    masks = np.zeros((n, 4, 4), dtype=np.uint8)
    masks[:, 0, 0] = np.arange(n) % 2
    spacing = {c: (1.0, 1.0, 1.0) for c in case_ids}
    return SliceSet(images, masks, case_ids, case_ids, np.asarray(z), spacing)


def test_neighbours_stay_in_their_case_and_repeat_the_edge():
    # case a: z 0..2; case b: z 0..1
    rows = context_rows(["a", "a", "a", "b", "b"], [0, 1, 2, 0, 1], 1)
    assert rows.tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 2], [3, 3, 4], [3, 4, 4]]


def test_two_neighbours_each_side_and_a_gap():
    # z 3 was dropped (a liver-free slice): its place is taken by the nearest slice towards the centre.
    rows = context_rows(["a"] * 4, [1, 2, 4, 5], 2)
    assert rows.tolist() == [
        [0, 0, 0, 1, 1],  # z 1: z -1, 0 absent -> itself; z 2 = row 1; z 3 absent -> row 1
        [0, 0, 1, 1, 2],  # z 2: z 0 absent -> z 1; z 3 absent -> itself; z 4 = row 2
        [1, 2, 2, 3, 3],  # z 4: z 2 = row 1; z 3 absent -> itself; z 5, then z 6 absent -> z 5
        [2, 2, 3, 3, 3],
    ]


def test_zero_context_is_the_slice_itself_and_negative_is_an_error():
    assert context_rows(["a", "a"], [0, 1], 0).tolist() == [[0], [1]]
    with pytest.raises(ValueError, match="context"):
        context_rows(["a"], [0], -1)


def test_context_images_stack_the_rows_as_channels():
    s = _set(["a", "a", "a"], [0, 1, 2])
    x = context_images(s, 1, np.array([0, 2]))
    assert x.shape == (2, 3, 4, 4) and x.dtype == np.float32
    assert x[:, :, 0, 0].tolist() == [[0, 0, 1], [1, 2, 2]]


def test_dataset_items_carry_the_context_and_the_centre_mask():
    s = _set(["a", "a", "b", "b"], [0, 1, 0, 1])
    item = SegmentationSlices(s, context=1)[1]
    assert item["image"].shape == (3, 4, 4)
    assert item["image"][:, 0, 0].tolist() == [0.0, 1.0, 1.0]  # the case ends at row 1: edge repeated
    assert int(item["mask"][0, 0]) == 1  # row 1's mask
    assert SegmentationSlices(s)[1]["image"].shape == (1, 4, 4)


def test_augmentation_moves_the_context_channels_together():
    from liverlab.data.augment import Augment, RandomRange

    aug = Augment(
        rotate_degrees=30, scale=0.2, gamma=RandomRange(1.0, 0.5, 2.0), blur=RandomRange(1.0, 1.0, 1.0), seed=0
    )
    image = torch.zeros(3, 16, 16)
    image[:, 4:12, 6:10] = 0.5  # the same square in every channel
    out, _ = aug(image, torch.zeros(16, 16, dtype=torch.long))
    assert out.shape == (3, 16, 16)
    # One geometry and one intensity draw for all channels: identical channels stay identical.
    assert torch.allclose(out[0], out[1]) and torch.allclose(out[1], out[2])


def test_context_of_reads_the_model_input_channels():
    assert context_of(UNet(in_channels=1, depth=1, base_features=2)) == 0
    assert context_of(UNet(in_channels=5, depth=1, base_features=2)) == 2
    with pytest.raises(ValueError, match="odd"):
        context_of(UNet(in_channels=2, depth=1, base_features=2))
