"""The data layer: NIfTI/DICOM I/O, importers, phantoms, manifest, splits, slice cache, datasets.

The public names below are re-exported lazily (PEP 562): ``import
liverlab.data`` stays free of nibabel, polars and torch, which the CLI relies
on for an instant ``--help``; each name's module is imported on first use.

    from liverlab.data import load_slices, SegmentationSlices
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # nifti.py
    "Volume": "nifti",
    "load_volume": "nifti",
    "save_volume": "nifti",
    "orientation_codes": "nifti",
    # phantoms.py
    "generate_phantoms": "phantoms",
    "ensure_phantoms": "phantoms",
    "make_patient": "phantoms",
    # importers.py, chaos.py
    "import_chaos": "chaos",
    "import_chaos_ct": "chaos",
    "import_nifti": "importers",
    # manifest.py
    "build_manifest": "manifest",
    "read_manifest": "manifest",
    "ensure_manifest": "manifest",
    "assign_splits": "manifest",
    "manifest_hash": "manifest",
    # cache.py
    "SliceSet": "cache",
    "CaseStack": "cache",
    "load_slices": "cache",
    # datasets.py / augment.py (torch)
    "SegmentationSlices": "datasets",
    "UnpairedSlices": "datasets",
    "MixingSampler": "datasets",
    "unpaired_patients": "datasets",
    "Augment": "augment",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'liverlab.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"liverlab.data.{module}"), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
