"""unet.num_workers: training batches built in DataLoader workers, one seeded augmentation stream per worker."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import ReportLog, tiny_config

from liverlab.config import AugmentConfig
from liverlab.data.augment import INTENSITY_OPS, Augment
from liverlab.errors import LiverlabError
from liverlab.train.unet import UNetData, seed_worker_augment, train_unet

NO_AUGMENT = {"unet.augment.rotate_degrees": 0.0, "unet.augment.scale": 0.0} | {
    f"unet.augment.{op}.p": 0.0 for op in INTENSITY_OPS
}


class _Draws(torch.utils.data.Dataset):
    """Each item is the next two numbers of its augmenter's stream (what a worker's augmentation draws)."""

    def __init__(self) -> None:
        self.augment = Augment.from_config(AugmentConfig(), seed=0)

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.rand(2, generator=self.augment.generator)


def test_each_worker_reseeds_its_augmenter_by_base_plus_worker_id() -> None:
    loader = torch.utils.data.DataLoader(
        torch.utils.data.ConcatDataset([_Draws()]), batch_size=1, num_workers=2,
        worker_init_fn=functools.partial(seed_worker_augment, 1000),
    )
    items = [b[0] for b in loader]  # items 0, 2 from worker 0; 1, 3 from worker 1 (in order)
    stream = {w: torch.rand(4, generator=torch.Generator().manual_seed(1000 + w)) for w in (0, 1)}
    assert torch.equal(items[0], stream[0][:2]) and torch.equal(items[2], stream[0][2:])
    assert torch.equal(items[1], stream[1][:2]) and torch.equal(items[3], stream[1][2:])
    assert not torch.equal(items[0], items[1])  # a copied, unseeded generator would repeat one stream


def test_worker_batches_repeat_resume_and_draw_the_same_slices(phantom_root) -> None:
    config = tiny_config(phantom_root, **{"unet.num_workers": 2, "unet.batch_size": 4})
    data = UNetData(config)
    first = [b["image"] for b in data.batches(0, 6, 3)]
    again = [b["image"] for b in data.batches(0, 6, 3)]
    assert len(first) == 6 and all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    resumed = [b["image"] for b in data.batches(3, 6, 3)]  # a run resumed at round 1 draws round 1 again
    assert all(torch.equal(a, b) for a, b in zip(first[3:], resumed, strict=True))
    # Worker 0 does not replay the in-process stream (its augmenter was reseeded, not just copied).
    in_process = next(iter(UNetData(tiny_config(phantom_root, **{"unet.batch_size": 4})).batches(0, 6, 3)))
    assert not torch.equal(in_process["image"], first[0])
    # The sampler does not depend on the workers: without augmentation, 0 and 2 workers give the same batches.
    plain = {w: UNetData(tiny_config(phantom_root, **NO_AUGMENT, **{"unet.num_workers": w, "unet.batch_size": 4}))
             for w in (0, 2)}
    for b0, b2 in zip(plain[0].batches(0, 6, 3), plain[2].batches(0, 6, 3), strict=True):
        assert torch.equal(b0["image"], b2["image"]) and torch.equal(b0["mask"], b2["mask"])


def test_train_unet_with_workers(phantom_root, tmp_path) -> None:
    config = tiny_config(phantom_root, **{"unet.num_workers": 2, "unet.iterations": 6, "unet.val_every": 3})
    log = ReportLog()
    metrics = train_unet(config, log, None, tmp_path)
    assert [m["iteration"] for m in log.metrics] == [3, 6] and 0.0 <= metrics["test/iou"] <= 1.0


def test_negative_workers_is_an_error_naming_the_key(phantom_root) -> None:
    with pytest.raises(LiverlabError, match="unet.num_workers"):
        tiny_config(phantom_root, **{"unet.num_workers": -1})
