"""The case table of one dataset folder: ``DIR/manifest.parquet`` (polars).

One row per case: case_id, patient_id, modality, image_path, label_path
(relative to DIR), shape, spacing (canonical RAS+ axes, mm), liver_voxels,
image_sha256, label_sha256, split, plus the files' size and mtime so an
unchanged case is not re-hashed or re-read when the manifest is refreshed.

Splits are by **patient**, never by case or slice, and fixed by a seed:
``assign_splits`` sorts the unique patient ids, shuffles them with
``numpy.random.default_rng(seed)`` and cuts the list into test, val, train
(or, with k folds, makes fold k the test set and cuts val/train from the rest).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from liverlab.data import layout
from liverlab.data.atomic import sha256_file, sha256_json, write_with
from liverlab.data.nifti import load_volume
from liverlab.data.progress import track
from liverlab.errors import LiverlabError

if TYPE_CHECKING:
    import polars as pl

MANIFEST = "manifest.parquet"
SPLITS = ("train", "val", "test")
COLUMNS = (
    "case_id", "patient_id", "modality", "image_path", "label_path", "shape", "spacing",
    "liver_voxels", "image_sha256", "label_sha256", "split",
    "image_bytes", "image_mtime_ns", "label_bytes", "label_mtime_ns",
)  # fmt: skip


def _schema() -> dict[str, Any]:
    import polars as pl

    return {
        "case_id": pl.String, "patient_id": pl.String, "modality": pl.String,
        "image_path": pl.String, "label_path": pl.String,
        "shape": pl.List(pl.Int64), "spacing": pl.List(pl.Float64),
        "liver_voxels": pl.Int64, "image_sha256": pl.String, "label_sha256": pl.String,
        "split": pl.String,
        "image_bytes": pl.Int64, "image_mtime_ns": pl.Int64, "label_bytes": pl.Int64, "label_mtime_ns": pl.Int64,
    }  # fmt: skip


def manifest_path(dataset_dir: str | Path) -> Path:
    return Path(dataset_dir) / MANIFEST


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return int(st.st_size), int(st.st_mtime_ns)


def _case_row(root: Path, case: str, patient: str, modality: str, image: Path, label: Path) -> dict[str, Any]:
    """Read and hash one case (the expensive path)."""
    vol = load_volume(image, label)
    assert vol.label is not None
    isize, imtime = _stat(image)
    lsize, lmtime = _stat(label)
    return {
        "case_id": case,
        "patient_id": patient,
        "modality": modality,
        "image_path": image.relative_to(root).as_posix(),
        "label_path": label.relative_to(root).as_posix(),
        "shape": list(vol.shape),
        "spacing": [round(v, 6) for v in vol.spacing],
        "liver_voxels": int(np.count_nonzero(vol.label == 1)),
        "image_sha256": sha256_file(image),
        "label_sha256": sha256_file(label),
        "split": None,
        "image_bytes": isize,
        "image_mtime_ns": imtime,
        "label_bytes": lsize,
        "label_mtime_ns": lmtime,
    }


def build_manifest(dataset_dir: str | Path, progress: bool = False) -> pl.DataFrame:
    """Scan ``dataset_dir`` (nnU-Net layout), write ``manifest.parquet`` atomically, return it.

    A case whose image and label have the same size and mtime as in the
    previous manifest is reused without re-reading or re-hashing. Existing
    split assignments are kept per patient (a new case of a patient already in
    ``val`` is in ``val``); cases of new patients get ``split = null`` until
    ``liverlab data split`` runs.
    """
    import polars as pl

    root = Path(dataset_dir)
    modality = layout.dataset_modality(root)
    patients = layout.patients_of(root)
    cases = layout.list_cases(root)
    if not cases:
        raise LiverlabError(f"{root}: no cases in {layout.IMAGES}/ (expected <case>_0000.nii.gz files)")
    old: dict[str, dict[str, Any]] = {}
    old_split: dict[str, str] = {}
    if manifest_path(root).is_file():
        try:
            prev = pl.read_parquet(manifest_path(root))
            old = {r["case_id"]: r for r in prev.iter_rows(named=True)}
            old_split = {r["patient_id"]: r["split"] for r in old.values() if r.get("split")}
        except Exception:  # an unreadable old manifest is simply rebuilt
            old, old_split = {}, {}
    rows = []
    for case, image, label in track(cases, f"manifest {root.name}", total=len(cases), enabled=progress):
        patient = patients.get(case, case)
        prev_row = old.get(case)
        if (
            prev_row is not None
            and (prev_row["image_bytes"], prev_row["image_mtime_ns"]) == _stat(image)
            and (prev_row["label_bytes"], prev_row["label_mtime_ns"]) == _stat(label)
            and prev_row["modality"] == modality
        ):
            row = dict(prev_row, patient_id=patient)
        else:
            row = _case_row(root, case, patient, modality, image, label)
        row["split"] = old_split.get(patient)
        rows.append({k: row.get(k) for k in COLUMNS})
    df = pl.DataFrame(rows, schema=_schema()).sort("case_id")
    write_manifest(root, df)
    return df


def write_manifest(dataset_dir: str | Path, df: pl.DataFrame) -> Path:
    """Write ``df`` to ``DIR/manifest.parquet`` atomically."""
    path = manifest_path(dataset_dir)
    write_with(path, lambda tmp: df.write_parquet(tmp), suffix=".parquet")
    return path


def read_manifest(dataset_dir: str | Path) -> pl.DataFrame:
    """Read ``DIR/manifest.parquet`` (LiverlabError when missing or unreadable)."""
    import polars as pl

    path = manifest_path(dataset_dir)
    if not path.is_file():
        raise LiverlabError(f"{path}: no manifest; run `liverlab data manifest {Path(dataset_dir)}`")
    try:
        df = pl.read_parquet(path)
    except Exception as exc:
        raise LiverlabError(f"{path}: unreadable manifest ({type(exc).__name__}: {exc})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise LiverlabError(f"{path}: missing columns {missing}; rebuild with `liverlab data manifest`")
    return df


def manifest_is_fresh(dataset_dir: str | Path, df: pl.DataFrame) -> bool:
    """True when the manifest lists exactly the cases on disk (same patients, sizes, mtimes)."""
    root = Path(dataset_dir)
    try:
        cases = layout.list_cases(root)
        patients = layout.patients_of(root)
        on_disk = {case: (patients.get(case, case), _stat(img), _stat(lab)) for case, img, lab in cases}
    except (LiverlabError, OSError):
        return False
    listed = {
        r["case_id"]: (r["patient_id"], (r["image_bytes"], r["image_mtime_ns"]),
                       (r["label_bytes"], r["label_mtime_ns"]))
        for r in df.iter_rows(named=True)
    }
    return listed == on_disk


def ensure_manifest(dataset_dir: str | Path) -> pl.DataFrame:
    """The current manifest, rebuilt (under a file lock) only if files changed.

    Parallel trials call this at start; the lock makes one of them rebuild.
    """
    from filelock import FileLock

    root = Path(dataset_dir)
    if manifest_path(root).is_file():
        df = read_manifest(root)
        if manifest_is_fresh(root, df):
            return df
    with FileLock(str(root / ".manifest.lock")):
        if manifest_path(root).is_file():
            df = read_manifest(root)
            if manifest_is_fresh(root, df):
                return df
        return build_manifest(root)


def split_counts(n: int, val: float, test: float) -> tuple[int, int, int]:
    """(train, val, test) patient counts for ``n`` patients.

    Rounded fractions; with >= 3 patients a non-zero fraction gets at least one
    patient; train always keeps at least one (val/test give way, larger first).
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise LiverlabError(f"split fractions must satisfy 0 <= val, test and val + test < 1 (got {val}, {test})")
    n_val, n_test = int(round(val * n)), int(round(test * n))
    if n >= 3:
        n_val = max(n_val, 1 if val > 0 else 0)
        n_test = max(n_test, 1 if test > 0 else 0)
    while n_val + n_test > n - 1 and n_val + n_test > 0:
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n - n_val - n_test, n_val, n_test


def patient_splits(
    patients: list[str] | set[str], val: float, test: float, seed: int, folds: int | None = None, fold: int = 0
) -> dict[str, str]:
    """patient id -> split: sorted unique ids, shuffled by ``default_rng(seed)``, cut test/val/train.

    With ``folds`` K: the shuffled ids are cut into K near-equal folds
    (``numpy.array_split``); fold ``fold`` is ``test`` (``test`` is not used),
    and ``val`` is the share of the remaining patients, taken in shuffled
    order (at least one when ``val`` > 0 and two or more remain; train always
    keeps at least one). Same seed, same partition for every ``fold``.
    """
    ids = sorted(set(patients))
    order = np.random.default_rng(seed).permutation(len(ids))
    if folds is None:
        _, n_val, n_test = split_counts(len(ids), val, test)
        out: dict[str, str] = {}
        for rank, idx in enumerate(order):
            out[ids[idx]] = "test" if rank < n_test else ("val" if rank < n_test + n_val else "train")
        return out
    if not 0 <= fold < folds:
        raise LiverlabError(f"data.split.fold = {fold} must be in 0..{folds - 1} (data.split.folds = {folds})")
    if folds > len(ids):
        raise LiverlabError(f"data.split.folds = {folds} is more than the dataset's {len(ids)} patients")
    parts = np.array_split(order, folds)
    rest = [int(i) for k, part in enumerate(parts) if k != fold for i in part]
    n_val = int(round(val * len(rest)))
    if val > 0 and len(rest) >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, len(rest) - 1)
    out = {ids[int(i)]: "test" for i in parts[fold]}
    out.update({ids[i]: ("val" if rank < n_val else "train") for rank, i in enumerate(rest)})
    return out


def assign_splits(
    manifest_df: pl.DataFrame, val: float = 0.2, test: float = 0.2, seed: int = 0, folds: int | None = None,
    fold: int = 0,
) -> pl.DataFrame:
    """Return ``manifest_df`` with its ``split`` column set by patient (see ``patient_splits``).

    Datasets with the same patient ids (phantom CT and MRI) get identical
    assignments for the same seed.
    """
    import polars as pl

    mapping = patient_splits(manifest_df["patient_id"].to_list(), val, test, seed, folds, fold)
    split = pl.Series("split", [mapping[p] for p in manifest_df["patient_id"].to_list()], dtype=pl.String)
    return manifest_df.with_columns(split)


def manifest_hash(df: pl.DataFrame) -> str:
    """sha256 over (case, patient, modality, content hashes, split), order-independent.

    Tagged on every run: two runs with equal hashes saw the same data and split.
    """
    cols = ["case_id", "patient_id", "modality", "image_sha256", "label_sha256", "split"]
    rows = sorted(df.select(cols).rows())
    return sha256_json([list(r) for r in rows])


def split_dataset(dataset_dir: str | Path, val: float, test: float, seed: int) -> pl.DataFrame:
    """Refresh the manifest, assign splits, write it back (``liverlab data split``)."""
    root = Path(dataset_dir)
    df = assign_splits(ensure_manifest(root), val, test, seed)
    write_manifest(root, df)
    return df


def describe_splits(df: pl.DataFrame) -> str:
    """One line: patients and cases per split."""
    parts = []
    for s in SPLITS:
        sub = df.filter(df["split"] == s)
        parts.append(f"{s}: {sub['patient_id'].n_unique()} patients / {sub.height} cases")
    return ", ".join(parts)
