"""The slices EssNet trains and validates on.

Training is unpaired: CT slices (with their liver mask) and MRI slices are
drawn independently. Where CT and MRI share patient ids (phantoms, which
have both modalities of one anatomy), the training patients are split in two
halves, CT from one and MRI from the other, so no anatomy is seen in both
modalities. Validation on phantoms keeps the pairs: the true MRI of each CT
validation slice is known, so SSIM, PSNR and MAE can be measured exactly.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import torch

from liverlab.config import ExperimentConfig
from liverlab.train import data as tdata


class EssNetData:
    def __init__(self, config: ExperimentConfig) -> None:
        from liverlab.data.datasets import UnpairedSlices

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
        self.unpaired = UnpairedSlices(self.ct_train, self.mri_train, seed=config.seed)

        # Validation: CT validation patients, every slice, so pairs line up with the MRI.
        val_cases = split_cases(ct_table, "val") or split_cases(ct_table, "test")
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

    def train_batches(self, epoch: int, steps: int, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        self.unpaired.set_epoch(epoch)
        loader = tdata.seeded_loader(self.unpaired, batch_size, steps * batch_size, self.config.seed * 1000 + epoch)
        yield from loader

    def val_batches(self, batch_size: int = 8) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self.val_ct), batch_size):
            yield torch.from_numpy(self.val_ct[i : i + batch_size, None]), torch.from_numpy(self.val_mask[i : i + batch_size])
