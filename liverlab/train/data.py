"""From a config to the slices a training loop reads (both stages).

Phantoms are generated on first use (once, under a lock, so parallel trials
share them). Splits are by patient and computed from ``data.split``, so every
stage and every trial of a sweep sees the same patients in the same split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from liverlab.config import ExperimentConfig
from liverlab.errors import LiverlabError


def dataset_dirs(config: ExperimentConfig) -> tuple[Path, Path]:
    """``(ct_dir, mri_dir)``, generating phantoms into ``data.root`` when configured."""
    d = config.data
    if d.phantom is not None:
        from liverlab.data.phantoms import ensure_phantoms

        if d.root is None:
            raise LiverlabError("data.phantom needs data.root (where the phantoms are written)")
        p = d.phantom
        ensure_phantoms(d.root, patients=p.patients, size=p.size, slices=p.slices, seed=p.seed)
    return d.ct_dir, d.mri_dir


def require_dataset(path: Path, what: str) -> Path:
    if not (path / "dataset.json").is_file():
        raise LiverlabError(
            f"{what}: {path} is not a dataset folder (no dataset.json); create it with "
            "`liverlab data phantoms` or one of the `liverlab data import-*` commands"
        )
    return path


def split_table(dataset_dir: Path, config: ExperimentConfig) -> Any:
    """The dataset's manifest with the config's patient-level split column."""
    from liverlab.data.manifest import assign_splits, build_manifest, read_manifest

    s = config.data.split
    try:
        manifest = read_manifest(dataset_dir)
    except (LiverlabError, FileNotFoundError, OSError):
        manifest = build_manifest(dataset_dir)
    return assign_splits(manifest, s.val, s.test, s.seed)


def cases_in(dataset_dir: Path, config: ExperimentConfig, split: str) -> list[str]:
    table = split_table(dataset_dir, config)
    return sorted(table.filter(table["split"] == split)["case_id"].to_list())


def load(
    config: ExperimentConfig,
    dataset_dir: Path,
    modality: str,
    split: str | None,
    *,
    all_slices: bool = False,
    cases: list[str] | None = None,
) -> Any:
    """A cached ``SliceSet`` of one modality and split, preprocessed per ``config.data``."""
    from liverlab.data.cache import load_slices

    d = config.data
    s = d.split
    return load_slices(
        dataset_dir,
        modality,
        size=d.size,
        ct_window=tuple(d.ct_window),
        mri_percentiles=tuple(d.mri_percentiles),
        empty_slice_fraction=1.0 if all_slices else d.empty_slice_fraction,
        split=split,
        split_cfg=(s.val, s.test, s.seed),
        cache_dir=d.cache_dir,
        cases=cases,
    )


def evenly(n: int, k: int) -> np.ndarray:
    """``k`` indices spread evenly over ``range(n)`` (deterministic validation subsets)."""
    if n <= k:
        return np.arange(n)
    return np.linspace(0, n - 1, k).round().astype(int)


def seeded_loader(dataset: torch.utils.data.Dataset, batch_size: int, num_samples: int, seed: int) -> Any:
    """A loader drawing ``num_samples`` items in seeded shuffles (one seed per epoch)."""
    gen = torch.Generator().manual_seed(seed)
    # Without replacement: torch chains fresh permutations when num_samples > len(dataset).
    sampler = torch.utils.data.RandomSampler(dataset, replacement=False, num_samples=num_samples, generator=gen)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=0, drop_last=False)
