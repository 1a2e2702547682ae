"""torch datasets and the mixing sampler over ``SliceSet``s.

* ``SegmentationSlices``: (image, mask) pairs for the U-Net.
* ``UnpairedSlices``: a CT slice with its mask and an MRI slice drawn
  independently (EssNet / CycleGAN training).
* ``MixingSampler``: draws real and synthetic slices from
  ``ConcatDataset([real, synthetic])`` at a synthetic/real ratio.
* ``unpaired_patients``: splits patient ids into disjoint CT and MRI halves,
  so phantom training (where every patient has both) stays unpaired.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from liverlab.data.cache import SliceSet
from liverlab.data.context import context_rows
from liverlab.errors import LiverlabError

AugmentFn = Callable[[torch.Tensor, "torch.Tensor | None"], "tuple[torch.Tensor, torch.Tensor | None]"]


def _image(s: SliceSet, i: int) -> torch.Tensor:
    # np.array copies out of the read-only memmap: torch needs writable memory.
    return torch.from_numpy(np.array(s.images[i], dtype=np.float32))[None]


def _mask(s: SliceSet, i: int) -> torch.Tensor:
    return torch.from_numpy(np.array(s.masks[i], dtype=np.int64))


class SegmentationSlices(Dataset):
    """Items ``{"image": (1 + 2 * context, H, W) float, "mask": (H, W) long, "patient_id", "case_id"}``.

    With ``context`` c > 0 the image holds the slice's z-neighbours as channels
    (``liverlab.data.context``), augmented together with one geometry and one
    intensity draw; the mask is the centre slice's.
    """

    def __init__(self, slice_set: SliceSet, augment: AugmentFn | None = None, context: int = 0) -> None:
        self.slices = slice_set
        self.augment = augment
        self.rows = context_rows(slice_set.case_ids, slice_set.slice_index, context) if context > 0 else None

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.rows is None:
            image = _image(self.slices, i)
        else:
            image = torch.from_numpy(np.asarray(self.slices.images[self.rows[i]], dtype=np.float32))
        mask = _mask(self.slices, i)
        if self.augment is not None:
            image, aug_mask = self.augment(image, mask)
            assert aug_mask is not None
            mask = aug_mask
        return {
            "image": image,
            "mask": mask,
            "patient_id": self.slices.patient_ids[i],
            "case_id": self.slices.case_ids[i],
        }


class UnpairedSlices(Dataset):
    """Items ``{"ct": (1, H, W), "ct_mask": (H, W) long, "mri": (1, H, W), ...}``.

    The length is the number of CT slices. The MRI slice for CT index ``i`` is
    ``mri[order[i]]``, where ``order`` is a chain of random permutations of
    the MRI indices drawn from ``default_rng([seed, epoch])``: independent of
    the CT index, every MRI slice used about equally often, and reproducible.
    Call ``set_epoch(e)`` before each epoch (before the DataLoader iterator is
    created, so worker processes get the new order). Also returned:
    ``ct_patient_id`` and ``mri_patient_id``.
    """

    def __init__(self, ct: SliceSet, mri: SliceSet, seed: int = 0, augment: AugmentFn | None = None) -> None:
        if len(ct) == 0 or len(mri) == 0:
            raise LiverlabError(f"unpaired slices need CT and MRI slices (got {len(ct)} CT, {len(mri)} MRI)")
        self.ct, self.mri, self.seed, self.augment = ct, mri, int(seed), augment
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Redraw the MRI order for ``epoch`` (deterministic for seed + epoch)."""
        self.epoch = int(epoch)
        rng = np.random.default_rng([self.seed, self.epoch])
        rounds = -(-len(self.ct) // len(self.mri))
        self._mri_order = np.concatenate([rng.permutation(len(self.mri)) for _ in range(rounds)])[: len(self.ct)]

    def __len__(self) -> int:
        return len(self.ct)

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = int(self._mri_order[i])
        ct, ct_mask, mri = _image(self.ct, i), _mask(self.ct, i), _image(self.mri, j)
        if self.augment is not None:
            ct, aug_mask = self.augment(ct, ct_mask)
            assert aug_mask is not None
            ct_mask = aug_mask
            mri, _ = self.augment(mri, None)
        return {
            "ct": ct,
            "ct_mask": ct_mask,
            "mri": mri,
            "ct_patient_id": self.ct.patient_ids[i],
            "mri_patient_id": self.mri.patient_ids[j],
        }


def mixing_counts(num_samples: int, ratio: float) -> tuple[int, int]:
    """(real, synthetic) draws per epoch so that synthetic / real ~= ``ratio``."""
    n_synth = int(round(num_samples * ratio / (1.0 + ratio)))
    return num_samples - n_synth, n_synth


class MixingSampler(Sampler[int]):
    """Indices into ``ConcatDataset([real, synthetic])`` at synthetic/real = ``ratio``.

    Indices ``< n_real`` are real slices, the rest synthetic. Each epoch yields
    ``num_samples`` indices: ``round(num_samples * r / (1 + r))`` synthetic, the
    rest real, each group drawn from chained random permutations (so every
    slice appears about equally often), then shuffled together. ``ratio = 0``
    draws real slices only (e.g. 2.04 reproduces the paper's 714 synthetic / 350
    real). Reproducible from ``seed`` and the epoch: ``set_epoch(e)`` sets the
    epoch; otherwise each iteration advances it by one.
    """

    def __init__(self, n_real: int, n_synth: int, ratio: float, num_samples: int, seed: int = 0) -> None:
        if n_real < 1:
            raise LiverlabError(f"mixing sampler: no real slices (n_real = {n_real})")
        if ratio < 0 or not np.isfinite(ratio):
            raise LiverlabError(f"mixing ratio must be a finite number >= 0, got {ratio}")
        if ratio > 0 and n_synth < 1:
            raise LiverlabError(f"mixing ratio {ratio} asks for synthetic slices, but the synthetic dataset is empty")
        if num_samples < 1:
            raise LiverlabError(f"mixing sampler: num_samples must be >= 1, got {num_samples}")
        self.n_real, self.n_synth, self.ratio = int(n_real), int(n_synth), float(ratio)
        self.num_samples, self.seed, self.epoch = int(num_samples), int(seed), 0

    @property
    def counts(self) -> tuple[int, int]:
        """(real, synthetic) indices drawn per epoch."""
        return mixing_counts(self.num_samples, self.ratio)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    @staticmethod
    def _draw(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
        if k == 0:
            return np.zeros(0, dtype=np.int64)
        rounds = -(-k // n)
        return np.concatenate([rng.permutation(n) for _ in range(rounds)])[:k]

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        k_real, k_synth = self.counts
        idx = np.concatenate(
            [self._draw(rng, self.n_real, k_real), self.n_real + self._draw(rng, self.n_synth, k_synth)]
        )
        return iter(rng.permutation(idx).tolist())


def unpaired_patients(patient_ids: Sequence[str], seed: int = 0) -> tuple[list[str], list[str]]:
    """Split patients into disjoint (CT, MRI) halves: sorted, shuffled by ``seed``, cut in two.

    For phantoms, where each patient has both modalities, EssNet training
    draws CT from one half and MRI from the other so it stays unpaired.
    """
    ids = sorted(set(patient_ids))
    if len(ids) < 2:
        raise LiverlabError(f"unpaired training needs at least 2 patients, got {len(ids)}")
    order = np.random.default_rng(seed).permutation(len(ids))
    half = (len(ids) + 1) // 2
    ct = sorted(ids[i] for i in order[:half])
    mri = sorted(ids[i] for i in order[half:])
    return ct, mri
