"""``liverlab data inspect``: a table of the cases and a PNG montage to look at.

The table shows, per case: patient, shape and spacing (canonical RAS+ axes),
the file's own orientation codes, intensity range, liver fraction and split.
The montage shows a few axial slices per case (display orientation: anterior
up, patient right on the image's left) with the liver outlined, so a person
can check that labels sit on the liver and orientations agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liverlab.data.atomic import write_with
from liverlab.data.layout import DATASET_JSON, dataset_modality
from liverlab.data.manifest import ensure_manifest
from liverlab.data.nifti import file_orientation, load_volume
from liverlab.data.preprocess import display_slice
from liverlab.errors import LiverlabError


@dataclass
class CaseInfo:
    """One row of the inspect table."""

    case_id: str
    patient_id: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    orientation: str
    vmin: float
    vmax: float
    liver_fraction: float
    split: str | None


def case_table(dataset_dir: str | Path) -> list[CaseInfo]:
    """Gather the inspect table (reads every volume once for its intensity range)."""
    root = Path(dataset_dir)
    out = []
    for r in ensure_manifest(root).iter_rows(named=True):
        vol = load_volume(root / r["image_path"])
        out.append(
            CaseInfo(
                case_id=r["case_id"],
                patient_id=r["patient_id"],
                shape=tuple(r["shape"]),
                spacing=tuple(r["spacing"]),
                orientation=file_orientation(root / r["image_path"]),
                vmin=float(vol.image.min()),
                vmax=float(vol.image.max()),
                liver_fraction=r["liver_voxels"] / float(np.prod(r["shape"])),
                split=r["split"],
            )
        )
    return out


def print_table(dataset_dir: str | Path, rows: list[CaseInfo]) -> None:
    """Print ``rows`` as a rich table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{dataset_dir} ({dataset_modality(dataset_dir)}, {len(rows)} cases)")
    for col in ("case", "patient", "shape", "spacing mm", "file orient.", "intensity", "liver %", "split"):
        table.add_column(col, justify="right" if col in ("liver %",) else "left")
    for r in rows:
        table.add_row(
            r.case_id,
            r.patient_id,
            "x".join(str(s) for s in r.shape),
            " x ".join(f"{s:.3g}" for s in r.spacing),
            r.orientation,
            f"{r.vmin:.6g} .. {r.vmax:.6g}",
            f"{100 * r.liver_fraction:.2f}",
            r.split or "-",
        )
    Console(width=160).print(table)


def montage(dataset_dir: str | Path, png: str | Path, max_cases: int = 4, per_case: int = 4) -> Path:
    """Write a PNG of ``per_case`` liver slices for up to ``max_cases`` cases, liver outlined.

    Slices are spread over each case's liver extent. Rendered with the
    matplotlib Agg canvas (no display, no global pyplot state) and written
    atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    root = Path(dataset_dir)
    modality = dataset_modality(root)
    rows = list(ensure_manifest(root).iter_rows(named=True))[:max_cases]
    fig = Figure(figsize=(2.6 * per_case, 2.8 * len(rows)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), per_case, squeeze=False)
    for row_axes, r in zip(axes, rows):
        vol = load_volume(root / r["image_path"], root / r["label_path"])
        assert vol.label is not None
        liver = vol.label == 1
        zs = np.flatnonzero(liver.any(axis=(0, 1)))
        if zs.size == 0:
            zs = np.arange(vol.shape[2])
        picks = zs[np.round(np.linspace(0, zs.size - 1, per_case + 2)[1:-1]).astype(int)]
        img = vol.image
        lo, hi = (-160.0, 240.0) if modality == "ct" else tuple(np.percentile(img, [0.5, 99.5]))
        sx, sy, _ = vol.spacing
        for ax, z in zip(row_axes, picks):
            sl = display_slice(img[:, :, z])
            lab = display_slice(liver[:, :, z].astype(np.uint8))
            # aspect = row spacing / column spacing keeps anatomy undistorted.
            ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi, aspect=sy / sx, interpolation="nearest")
            if lab.any():
                ax.contour(lab, levels=[0.5], colors="red", linewidths=0.8)
            ax.set_title(f"{r['case_id']}  z={int(z)}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{root} ({modality}): liver outlined; anterior up, patient right on the left", fontsize=9)
    fig.tight_layout()
    out = Path(png)
    if out.suffix.lower() != ".png":
        raise LiverlabError(f"--png {out}: the file name must end in .png")
    write_with(out, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")
    return out


def dataset_folders(folder: str | Path) -> list[Path]:
    """``[folder]`` when it is a dataset, else its sub-folders that are (``ct/`` and ``mri/`` of phantoms)."""
    root = Path(folder)
    if not root.is_dir():
        raise LiverlabError(f"{root}: no such folder")
    if (root / DATASET_JSON).is_file():
        return [root]
    subs = sorted(p for p in root.iterdir() if p.is_dir() and (p / DATASET_JSON).is_file())
    if not subs:
        raise LiverlabError(
            f"{root}: no {DATASET_JSON} here or in its sub-folders (a dataset folder holds imagesTr/, labelsTr/, "
            "dataset.json; make one with `liverlab data phantoms` or `liverlab data import-*`)"
        )
    return subs


def require_one_dataset(folder: str | Path, what: str = "DIR") -> Path:
    """``folder`` if it is one dataset; a folder of datasets (``ct/``, ``mri/``) is an error naming them."""
    root = Path(folder)
    if root.is_dir() and not (root / DATASET_JSON).is_file():
        subs = [p.name for p in sorted(root.iterdir()) if p.is_dir() and (p / DATASET_JSON).is_file()]
        if subs:
            raise LiverlabError(
                f"{what} {root}: holds the datasets {', '.join(s + '/' for s in subs)}, not one dataset; "
                f"pass one of them (e.g. {root / subs[-1]})"
            )
    return root


def inspect_dataset(dataset_dir: str | Path, png: str | Path | None = None) -> dict[Path, list[CaseInfo]]:
    """Print the table of each dataset in ``dataset_dir`` (itself, or its ``ct/`` and ``mri/``); return the rows.

    With ``png``, write the montage there; for several datasets, one per
    dataset: ``montage.png`` -> ``montage_ct.png``, ``montage_mri.png``.
    """
    folders = dataset_folders(dataset_dir)
    if png is not None and Path(png).suffix.lower() != ".png":
        raise LiverlabError(f"--png {png}: the file name must end in .png")
    out: dict[Path, list[CaseInfo]] = {}
    for folder in folders:
        rows = case_table(folder)
        print_table(folder, rows)
        out[folder] = rows
    if png is not None:
        for folder, target in montage_paths(folders, Path(png)).items():
            montage(folder, target)
    return out


def montage_paths(folders: list[Path], png: Path) -> dict[Path, Path]:
    """Where each dataset's montage goes: ``png`` itself for one dataset, ``<stem>_<folder name>.png`` for several."""
    if len(folders) == 1:
        return {folders[0]: png}
    return {f: png.with_name(f"{png.stem}_{f.name}{png.suffix}") for f in folders}
