"""The slices EssNet trains and validates on.

Training is unpaired: CT slices (with their liver mask) and MRI slices are
drawn independently. As in the reference CycleGAN code, an epoch is
max(|CT|, |MRI|) pairs (the smaller domain is repeated in fresh permutations)
and each training slice gets a random resize-crop jitter (``essnet.load_scale``,
CycleGAN's load_size / crop_size), the CT mask moved with its image. Where CT and MRI share patient ids (phantoms, which
have both modalities of one anatomy), the training patients are split in two
halves, CT from one and MRI from the other, so no anatomy is seen in both
modalities. Validation on phantoms keeps the pairs: the true MRI of each CT
validation slice is known, so SSIM, PSNR and MAE can be measured exactly.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from liverlab.config import ExperimentConfig
from liverlab.train import data as tdata


def _chained(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """``k`` indices into ``range(n)``: random permutations chained, so each index appears about equally."""
    rounds = -(-k // n)
    return np.concatenate([rng.permutation(n) for _ in range(rounds)])[:k]


class ResizeCrop:
    """CycleGAN's resize-and-crop jitter: resize to ``round(size * load_scale)``, take a random ``size`` crop.

    Image (C, H, W) bilinear and mask (H, W) nearest are resized and cropped
    with the same offsets, so the mask stays on its anatomy. ``load_scale`` 1
    returns the inputs unchanged.
    """

    def __init__(self, size: int, load_scale: float) -> None:
        self.size = int(size)
        self.load = max(self.size, int(round(size * load_scale)))

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor | None, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        import torch.nn.functional as F

        if self.load == self.size:
            return image, mask
        big = F.interpolate(image[None].float(), size=(self.load, self.load), mode="bilinear", align_corners=False)[0]
        i, j = (int(v) for v in rng.integers(0, self.load - self.size + 1, size=2))
        image = big[:, i : i + self.size, j : j + self.size].clamp(-1.0, 1.0).contiguous()
        if mask is not None:
            m = F.interpolate(mask[None, None].float(), size=(self.load, self.load), mode="nearest-exact")[0, 0]
            mask = m[i : i + self.size, j : j + self.size].round().long().contiguous()
        return image, mask


class UnpairedEpoch(torch.utils.data.Dataset):
    """Unpaired (CT, CT mask, MRI) items; an epoch is max(|CT|, |MRI|) of them.

    Item ``i`` of epoch ``e`` is CT slice ``ct_order[i]`` and MRI slice
    ``mri_order[i]``, two independent chains of permutations drawn from
    ``default_rng([seed, e])``: every slice of the larger domain once, the
    smaller domain repeated about equally, reproducible. Call ``set_epoch``
    before each epoch. The jitter of item ``i`` is seeded by (seed, e, i).
    """

    def __init__(self, ct: Any, mri: Any, seed: int = 0, size: int | None = None, load_scale: float = 1.0) -> None:
        from liverlab.errors import LiverlabError

        if len(ct) == 0 or len(mri) == 0:
            raise LiverlabError(f"unpaired slices need CT and MRI slices (got {len(ct)} CT, {len(mri)} MRI)")
        self.ct, self.mri, self.seed = ct, mri, int(seed)
        self.jitter = ResizeCrop(size or int(ct.images.shape[-1]), load_scale)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self)
        self.ct_order = _chained(rng, len(self.ct), n)
        self.mri_order = _chained(rng, len(self.mri), n)

    def __len__(self) -> int:
        return max(len(self.ct), len(self.mri))

    def __getitem__(self, i: int) -> dict[str, Any]:
        a, b = int(self.ct_order[i]), int(self.mri_order[i])
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        ct = torch.from_numpy(np.array(self.ct.images[a], dtype=np.float32))[None]
        mask = torch.from_numpy(np.array(self.ct.masks[a], dtype=np.int64))
        mri = torch.from_numpy(np.array(self.mri.images[b], dtype=np.float32))[None]
        ct, mask_j = self.jitter(ct, mask, rng)
        mri, _ = self.jitter(mri, None, rng)
        assert mask_j is not None
        return {
            "ct": ct, "ct_mask": mask_j, "mri": mri,
            "ct_patient_id": self.ct.patient_ids[a], "mri_patient_id": self.mri.patient_ids[b],
        }


class EssNetData:
    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        ct_dir, mri_dir = tdata.dataset_dirs(config)
        tdata.require_dataset(ct_dir, "data.ct")
        tdata.require_dataset(mri_dir, "data.mri")
        ct_table = tdata.split_table(ct_dir, config)
        mri_table = tdata.split_table(mri_dir, config)
        ct_patients = dict(zip(ct_table["case_id"].to_list(), ct_table["patient_id"].to_list()))
        mri_patients = dict(zip(mri_table["case_id"].to_list(), mri_table["patient_id"].to_list()))
        self.paired = set(ct_patients.values()) == set(mri_patients.values())

        def split_cases(table: object, split: str) -> list[str]:
            return sorted(table.filter(table["split"] == split)["case_id"].to_list())  # type: ignore[attr-defined]

        ct_train, mri_train = split_cases(ct_table, "train"), split_cases(mri_table, "train")
        if self.paired and len(ct_train) >= 2:
            ct_train, mri_train = ct_train[0::2], mri_train[1::2]
        self.ct_train = tdata.load(config, ct_dir, "ct", None, cases=ct_train)
        self.mri_train = tdata.load(config, mri_dir, "mri", None, cases=mri_train)
        self.unpaired = UnpairedEpoch(
            self.ct_train, self.mri_train, seed=config.seed, size=config.data.size, load_scale=config.essnet.load_scale
        )

        # Validation: CT validation patients, every slice, so pairs line up with the MRI. Never the
        # test patients (on phantoms their CT and MRI are the U-Net's test anatomy): the training CT instead.
        val_cases = split_cases(ct_table, "val")
        if not val_cases:
            warnings.warn("no CT validation patients: validating EssNet on its training CT", stacklevel=2)
            val_cases = ct_train
        val_ct = tdata.load(config, ct_dir, "ct", None, all_slices=True, cases=val_cases)
        idx = tdata.evenly(len(val_ct), config.essnet.val_slices)
        self.val_ct = np.asarray(val_ct.images[idx], dtype=np.float32)
        self.val_mask = np.asarray(val_ct.masks[idx], dtype=np.int64)
        self.val_true_mri: np.ndarray | None = None
        if self.paired and all(c in mri_patients for c in val_cases):
            val_mri = tdata.load(config, mri_dir, "mri", None, all_slices=True, cases=val_cases)
            same = list(val_mri.case_ids) == list(val_ct.case_ids) and np.array_equal(
                np.asarray(val_mri.slice_index), np.asarray(val_ct.slice_index)
            )
            if same:
                self.val_true_mri = np.asarray(val_mri.images[idx], dtype=np.float32)

        # A few liver-bearing validation slices for the picture panel.
        liver = np.flatnonzero(self.val_mask.reshape(len(self.val_mask), -1).any(1))
        pick = liver[tdata.evenly(len(liver), 4)] if len(liver) else np.arange(min(4, len(self.val_ct)))
        self.panel_batch: dict[str, torch.Tensor] | None = None
        if len(pick):
            self.panel_batch = {
                "ct": torch.from_numpy(self.val_ct[pick, None]),
                "mask": torch.from_numpy(self.val_mask[pick]),
            }
            if self.val_true_mri is not None:
                self.panel_batch["mri"] = torch.from_numpy(self.val_true_mri[pick, None])

    def steps_per_epoch(self, batch_size: int, steps_per_epoch: int | None = None) -> int:
        """``essnet.steps_per_epoch``, else max(|CT|, |MRI|) training slices / batch (at least 1)."""
        return steps_per_epoch or max(1, len(self.unpaired) // batch_size)

    def train_batches(self, epoch: int, steps: int, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """The ``steps`` batches of epoch ``epoch``: slice order and jitter seeded by (seed, epoch)."""
        self.unpaired.set_epoch(epoch)
        loader = tdata.seeded_loader(self.unpaired, batch_size, steps * batch_size, self.config.seed * 1000 + epoch)
        yield from loader

    def batches(self, first_epoch: int, steps: int, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Training batches from epoch ``first_epoch`` on, ``steps`` per epoch, without end.

        One seeded loader per epoch, so a run resumed at an epoch's first step
        draws what the uninterrupted run draws there.
        """
        for epoch in itertools.count(first_epoch):
            yield from self.train_batches(epoch, steps, batch_size)

    def val_batches(self, batch_size: int = 8) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self.val_ct), batch_size):
            yield torch.from_numpy(self.val_ct[i : i + batch_size, None]), torch.from_numpy(self.val_mask[i : i + batch_size])
