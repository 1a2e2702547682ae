"""Data sections of the experiment config: phantoms, imports, splits, preprocessing (re-exported by liverlab.config)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from liverlab.config._base import _Strict


class PhantomConfig(_Strict):
    """Generate phantoms into ``data.root`` on first use (when it does not exist)."""

    patients: int = Field(8, ge=2, le=1000)
    size: int = Field(64, ge=16, le=1024, description="in-plane voxels of the generated volumes")
    slices: int = Field(16, ge=2, le=512)
    seed: int = 0


class SplitConfig(_Strict):
    """Patient-level split, fixed by a seed: fractions, or k-fold over patients.

    With ``folds`` K set, the test patients are fold ``fold`` of a seeded
    partition of all patients into K folds (over fold = 0..K-1 every patient
    is tested exactly once), ``test`` is not used, and ``val`` is the share of
    the remaining patients held out for validation (0 allowed with
    ``unet.keep: last``).
    """

    val: float = Field(0.2, ge=0.0, lt=1.0)
    test: float = Field(0.2, ge=0.0, lt=1.0)
    seed: int = 0
    folds: int | None = Field(None, ge=2, le=1000, description="k-fold over patients: number of folds")
    fold: int = Field(0, ge=0, description="with folds: which fold is the test set (0..folds-1)")

    @model_validator(mode="after")
    def _fractions(self) -> "SplitConfig":
        if self.folds is None:
            if self.val + self.test >= 1.0:
                raise ValueError(f"val + test must be < 1 (got {self.val} + {self.test})")
        else:
            if self.fold >= self.folds:
                raise ValueError(
                    f"data.split.fold must be < data.split.folds (got fold {self.fold}, folds {self.folds})"
                )
        return self


class NiftiImportConfig(_Strict):
    """``data.import`` entry: NIfTI image/label pairs (``liverlab data import-nifti``)."""

    kind: Literal["nifti"]
    images: str = Field(description="glob of image files, e.g. ../shared/data/chaos-mr-t2spir/image_*.nii.gz")
    labels: str = Field(description="glob of label files (paired with the images by case id)")
    modality: Literal["ct", "mri"]
    liver_label: int = Field(1, ge=1, le=255, description="label value of the liver (kept as 1)")
    organs: dict[str, tuple[int, ...]] | None = Field(
        None,
        description="other organs to keep, name -> source label values, as labels 2, 3, ... in this order "
        "(for unet.organs); e.g. {spleen: [4], kidneys: [2, 3]}; default: liver only",
    )

    @model_validator(mode="after")
    def _check_organs(self) -> NiftiImportConfig:
        organs = self.organs or {}
        bad = [k for k in organs if not re.fullmatch(r"[a-z][a-z0-9_]*", k) or k in ("background", "liver")]
        if bad:
            raise ValueError(f"organs: names must be lower-case letters, digits and '_' (not background, liver): {bad}")
        values = [self.liver_label] + [v for vs in organs.values() for v in vs]
        empty = any(not vs for vs in organs.values())
        if empty or len(set(values)) != len(values) or min(values) < 1 or max(values) > 255:
            raise ValueError(f"organs: each needs label values in 1..255, used once and not liver_label: {organs}")
        return self


class ChaosImportConfig(_Strict):
    """``data.import`` entry: the CHAOS release (``liverlab data import-chaos``)."""

    kind: Literal["chaos"]
    root: str = Field(description="folder holding Train_Sets, Train_Sets itself, or one patient folder")
    modality: Literal["ct", "t2spir", "t1in", "t1out"]


ImportSpec = Annotated[NiftiImportConfig | ChaosImportConfig, Field(discriminator="kind")]


class DataConfig(_Strict):
    """Where the data is and how slices are preprocessed.

    ``ct`` and ``mri`` are nnU-Net-layout folders (``imagesTr``, ``labelsTr``,
    ``dataset.json``). Relative paths are resolved against the current
    directory when the config is loaded, so Ray workers see absolute paths.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, serialize_by_alias=True)  # `import` is a keyword

    root: str | None = Field(None, description="dataset root holding ct/ and mri/ (phantoms)")
    ct: str | None = Field(None, description="nnU-Net folder of CT cases; default <root>/ct")
    mri: str | None = Field(None, description="nnU-Net folder of MRI cases; default <root>/mri")
    phantom: PhantomConfig | None = Field(None, description="generate phantoms into root if absent")
    import_: tuple[ImportSpec, ...] | None = Field(
        None,
        alias="import",
        description="import into data.ct / data.mri on first use (when the folder has no dataset.json): "
        "one entry or a list of {kind: nifti, images, labels, modality, liver_label} / {kind: chaos, root, modality}",
    )
    size: int = Field(64, ge=16, le=1024, description="in-plane size slices are resized to")
    ct_window: tuple[float, float] = (-160.0, 240.0)
    mri_percentiles: tuple[float, float] = (0.5, 99.5)
    empty_slice_fraction: float = Field(0.1, ge=0.0, le=1.0, description="share of liver-free slices kept")
    split: SplitConfig = SplitConfig()
    train_patients: Annotated[int, Field(ge=1)] | Literal["all"] | None = Field(
        None,
        description="real MRI training patients the U-Net learns from: a subset of n of the split's training "
        "patients drawn by the run's seed (smaller subsets are subsets of larger ones); all / null = every one",
    )
    cache_dir: str | None = Field(None, description="slice cache; default <root or mri>/.cache")
    spacing_mm: float | None = Field(
        None, gt=0.0, le=100.0,
        description="in-plane mm per pixel every slice is resampled to before it is centre-cropped or padded "
        "to size x size (so organs have one physical size in CT and MRI); null = resize the whole slice to size",
    )

    @model_validator(mode="after")
    def _paths(self) -> "DataConfig":
        if self.root is None and (self.ct is None and self.mri is None):
            raise ValueError("set data.root, or data.ct / data.mri")
        if self.ct_window[0] >= self.ct_window[1]:
            raise ValueError(f"ct_window must be increasing, got {list(self.ct_window)}")
        lo, hi = self.mri_percentiles
        if not (0.0 <= lo < hi <= 100.0):
            raise ValueError(f"mri_percentiles must satisfy 0 <= lo < hi <= 100, got {[lo, hi]}")
        return self

    @model_validator(mode="before")
    @classmethod
    def _one_import(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and isinstance(raw.get("import"), dict):
            raw = {**raw, "import": [raw["import"]]}  # one entry or a list of them
        return raw

    @model_validator(mode="after")
    def _imports(self) -> "DataConfig":
        for spec in self.import_ or ():
            domain = "ct" if spec.modality == "ct" else "mri"
            if getattr(self, domain) is None and self.root is None:
                raise ValueError(f"data.import: a {spec.modality} import needs data.{domain} (the folder it fills)")
        if self.import_ and self.phantom is not None:
            raise ValueError("data.import and data.phantom exclude each other (phantoms are generated, not imported)")
        return self

    @property
    def ct_dir(self) -> Path:
        return Path(self.ct) if self.ct else Path(self.root or ".") / "ct"

    @property
    def mri_dir(self) -> Path:
        return Path(self.mri) if self.mri else Path(self.root or ".") / "mri"
