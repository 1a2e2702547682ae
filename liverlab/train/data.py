"""From a config to the slices a training loop reads (both stages).

Phantoms are generated, and ``data.import`` sources imported, on first use
(once, under a lock, so parallel trials share them). Splits are by patient
and computed from ``data.split``, so every stage and every trial of a sweep
sees the same patients in the same split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from liverlab.config import ExperimentConfig
from liverlab.errors import LiverlabError


def dataset_dirs(config: ExperimentConfig) -> tuple[Path, Path]:
    """``(ct_dir, mri_dir)``, generating phantoms (``data.phantom``) or importing (``data.import``) on first use."""
    d = config.data
    if d.phantom is not None:
        from liverlab.data.phantoms import ensure_phantoms

        if d.root is None:
            raise LiverlabError("data.phantom needs data.root (where the phantoms are written)")
        p = d.phantom
        ensure_phantoms(d.root, patients=p.patients, size=p.size, slices=p.slices, seed=p.seed)
    if d.import_:
        from liverlab.data.importers import ensure_imported, import_domain

        specs = [spec.model_dump() for spec in d.import_]
        for domain, target in (("ct", d.ct_dir), ("mri", d.mri_dir)):
            mine = [spec for spec in specs if import_domain(spec) == domain]
            if mine:
                ensure_imported(target, mine)
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
    return assign_splits(manifest, s.val, s.test, s.seed, s.folds, s.fold)


def cases_in(dataset_dir: Path, config: ExperimentConfig, split: str) -> list[str]:
    table = split_table(dataset_dir, config)
    return sorted(table.filter(table["split"] == split)["case_id"].to_list())


def train_patient_subset(patients: list[str] | set[str], n: int | str | None, seed: int) -> list[str]:
    """``n`` of the training ``patients`` (sorted): the first ``n`` of a ``default_rng(seed)``
    permutation of the sorted ids, so for one seed smaller subsets are subsets of larger ones.

    ``n`` None or ``'all'``: every patient. More than there are: LiverlabError naming
    ``data.train_patients``.
    """
    ids = sorted(set(patients))
    if n is None or n == "all":
        return ids
    if not isinstance(n, int) or n < 1:
        raise LiverlabError(f"data.train_patients must be a positive integer or 'all', got {n!r}")
    if n > len(ids):
        raise LiverlabError(
            f"data.train_patients = {n} is more than the {len(ids)} training patient(s) of the split "
            f"({', '.join(ids) or 'none'}); use at most {len(ids)} or 'all'"
        )
    order = np.random.default_rng(seed).permutation(len(ids))
    return sorted(ids[int(i)] for i in order[:n])


def train_patient_cases(dataset_dir: Path, config: ExperimentConfig, cases: list[str] | None = None) -> list[str]:
    """Case ids of the split's training patients kept by ``data.train_patients`` (seeded by ``config.seed``)."""
    table = split_table(dataset_dir, config)
    train = table.filter(table["split"] == "train")
    keep = set(train_patient_subset(train["patient_id"].to_list(), config.data.train_patients, config.seed))
    picked = {c for c, p in zip(train["case_id"].to_list(), train["patient_id"].to_list()) if p in keep}
    return sorted(picked if cases is None else picked & set(cases))


def load(
    config: ExperimentConfig,
    dataset_dir: Path,
    modality: str,
    split: str | None,
    *,
    all_slices: bool = False,
    cases: list[str] | None = None,
    empty_slice_fraction: float | None = None,
    organs: bool = False,
) -> Any:
    """A cached ``SliceSet`` of one modality and split, preprocessed per ``config.data``.

    ``empty_slice_fraction`` overrides ``data.empty_slice_fraction`` (the
    U-Net's own setting); ``all_slices`` keeps every slice; ``organs`` keeps
    every label in the masks (``unet.organs``), not the liver alone.
    """
    from liverlab.data.cache import load_slices

    d = config.data
    s = d.split
    if split == "train" and modality == "mri" and d.train_patients not in (None, "all"):
        # data.train_patients: the U-Net's real MRI training patients, a seeded nested subset.
        cases = train_patient_cases(dataset_dir, config, cases)
        split = None
    if split is not None and s.folds is not None:
        # k-fold: the cache only knows fraction splits, so select the fold's cases here.
        in_split = set(cases_in(dataset_dir, config, split))
        cases = sorted(in_split if cases is None else in_split & set(cases))
        if not cases:
            raise LiverlabError(f"{dataset_dir}: no cases in split {split!r} (data.split: fold {s.fold} of {s.folds})")
        split = None
    esf = d.empty_slice_fraction if empty_slice_fraction is None else empty_slice_fraction
    return load_slices(
        dataset_dir,
        modality,
        size=d.size,
        ct_window=tuple(d.ct_window),
        mri_percentiles=tuple(d.mri_percentiles),
        empty_slice_fraction=1.0 if all_slices else esf,
        split=split,
        split_cfg=(s.val, s.test, s.seed),
        cache_dir=d.cache_dir,
        cases=cases,
        spacing_mm=d.spacing_mm,
        organs=organs,
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
