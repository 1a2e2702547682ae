"""CT -> synthetic MRI with a trained G_mri, written as an nnU-Net dataset.

Every CT case becomes a synthetic MRI volume on the CT's own grid (the
generator's output is resized back to the CT's in-plane size) with the CT's
canonical affine and **its liver label carried over**. The folder holds
``imagesTr``, ``labelsTr``, ``dataset.json``, a manifest and
``provenance.json`` (checkpoint sha256, resolved config, source manifest hash).
The output is keyed by content: asking again for the same checkpoint, data and
settings reuses it; a folder made from anything else is never overwritten.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from liverlab import __version__
from liverlab.config import ExperimentConfig, config_from_dict, dump_config
from liverlab.data.atomic import sha256_file, sha256_json, staging_dir
from liverlab.errors import LiverlabError
from liverlab.models import generator_from_config
from liverlab.train import common
from liverlab.train import data as tdata

PROVENANCE = "provenance.json"


def load_generator(checkpoint: str | Path, device: torch.device) -> tuple[torch.nn.Module, ExperimentConfig]:
    """G_mri and the config it was trained with, from an EssNet checkpoint."""
    path = Path(checkpoint)
    state = common.load_checkpoint(path, map_location="cpu")
    if state.get("kind") != "essnet":
        raise LiverlabError(f"{checkpoint}: not an EssNet checkpoint (kind={state.get('kind')!r})")
    config = config_from_dict(state["config"], source=f"{checkpoint} (embedded config)")
    net = generator_from_config(config.essnet.generator)
    prefix = "g_mri."
    net.load_state_dict({k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)})
    return net.to(device).eval(), config


def synthesis_key(
    checkpoint: str | Path, ct_dir: str | Path, config: ExperimentConfig, cases: list[str] | None,
    checkpoint_sha256: str | None = None,
) -> str:
    """Content hash of what determines the output: weights, source data, preprocessing, cases."""
    from liverlab.data.manifest import manifest_hash, read_manifest

    d = config.data
    payload = {
        "checkpoint": checkpoint_sha256 or sha256_file(_state_file(checkpoint)),
        "source": manifest_hash(read_manifest(Path(ct_dir))),
        "size": d.size,
        "ct_window": list(d.ct_window),
        **({"spacing_mm": d.spacing_mm} if d.spacing_mm is not None else {}),
        "cases": sorted(cases) if cases else None,
    }
    return sha256_json(payload)


def synthesize(
    checkpoint: str | Path,
    ct_dir: str | Path,
    out: str | Path,
    cases: list[str] | None = None,
    device: str = "auto",
    batch_size: int = 16,
    progress: bool = False,
) -> Path:
    """Write the synthetic MRI dataset to ``out`` (reused when its key matches)."""
    from liverlab.data.cache import from_spacing

    ct_dir, out = Path(ct_dir), Path(out)
    tdata.require_dataset(ct_dir, "--data")
    dev = common.select_device(device)
    net, config = load_generator(checkpoint, dev)
    ckpt_sha = sha256_file(_state_file(checkpoint))
    key = synthesis_key(checkpoint, ct_dir, config, cases, ckpt_sha)
    if reuse_or_check(out, key, "a synthetic dataset from another checkpoint or data; choose another --out"):
        return out

    slices = tdata.load(config, ct_dir, "ct", None, all_slices=True, cases=cases)
    all_case_ids = np.asarray(list(slices.case_ids))
    z_all = np.asarray(slices.slice_index)

    def translate(case: str, vol: Any) -> np.ndarray:
        idx = np.flatnonzero(all_case_ids == case)
        idx = idx[np.argsort(z_all[idx])]
        fake = _generate(net, np.asarray(slices.images[idx]), dev, config.precision, batch_size)
        # Back onto the CT's own grid, so the CT affine and label apply unchanged.
        # (With data.spacing_mm: un-crop / un-pad, then resample; outside the crop: -1, background.)
        full = from_spacing(fake, vol.image.shape[:2], vol.spacing[:2], config.data.spacing_mm)
        image = np.zeros(vol.image.shape, dtype=np.float32)
        image[:, :, z_all[idx]] = np.moveaxis(full, 0, -1)
        return image

    return write_synthetic(
        out, ct_dir, list(dict.fromkeys(slices.case_ids)), translate,
        dataset={"name": f"synthetic MRI from {ct_dir.name}"},
        provenance={"key": key, "checkpoint": str(checkpoint), "checkpoint_sha256": ckpt_sha, "config": dump_config(config)},
        progress=progress,
    )


def reuse_or_check(out: Path, key: str, other: str) -> bool:
    """True when ``out`` already holds the dataset of ``key``; an error when it holds anything else."""
    prov_path = out / PROVENANCE
    if prov_path.is_file():
        if json.loads(prov_path.read_text()).get("key") == key:
            return True
        raise LiverlabError(f"{out}: holds {other}")
    if out.exists() and any(out.iterdir()):
        raise LiverlabError(f"{out}: exists and is not a liverlab synthetic dataset; choose another --out")
    return False


def write_synthetic(
    out: Path,
    ct_dir: Path,
    cases: list[str],
    image_of: Callable[[str, Any], np.ndarray],
    dataset: dict[str, Any],
    provenance: dict[str, Any],
    progress: bool = False,
) -> Path:
    """A synthetic MRI dataset in nnU-Net layout: ``image_of(case, ct_volume)`` on the CT grid, the CT label.

    Shared by every synthesis arm (EssNet/CycleGAN generators, the intensity
    control), so all write the same layout, manifest and provenance. Built in a
    staging folder beside ``out`` (same file system) and renamed into place
    when complete; ``provenance.json`` (with ``key``) is the completion marker.
    """
    from liverlab.data.manifest import build_manifest, manifest_hash, read_manifest
    from liverlab.data.nifti import load_volume, save_volume

    manifest = read_manifest(ct_dir)
    rows = {r["case_id"]: r for r in manifest.iter_rows(named=True)}
    with staging_dir(out.parent, prefix=f".{out.name}.staging-") as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        iterator: Any = cases
        if progress:
            from rich.progress import track

            iterator = track(cases, description="synthesize")
        for case in iterator:
            row = rows[case]
            vol = load_volume(ct_dir / row["image_path"], ct_dir / row["label_path"])
            save_volume(tmp / "imagesTr" / f"{case}_0000.nii.gz", image_of(case, vol), vol.affine)
            save_volume(tmp / "labelsTr" / f"{case}.nii.gz", vol.label.astype(np.uint8), vol.affine)
        meta = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "liver": 1},
                "numTraining": len(cases), "file_ending": ".nii.gz", "synthetic": True, **dataset}
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2))
        build_manifest(tmp)
        prov = {**provenance, "source": str(ct_dir), "source_manifest_hash": manifest_hash(manifest), "cases": list(cases),
                "liverlab_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (tmp / PROVENANCE).write_text(json.dumps(prov, indent=2))
        if out.exists():
            out.rmdir()  # empty (checked by reuse_or_check)
        os.replace(tmp, out)
    return out


def _state_file(checkpoint: str | Path) -> Path:
    p = Path(checkpoint)
    return p / common.STATE_FILE if p.is_dir() else p


@torch.no_grad()
def _generate(net: torch.nn.Module, images: np.ndarray, device: torch.device, precision: str, batch_size: int) -> np.ndarray:
    out = np.empty(images.shape, dtype=np.float32)
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.array(images[i : i + batch_size], dtype=np.float32))[:, None].to(device)
        with common.autocast(device, precision):
            out[i : i + batch_size] = net(x).float().clamp(-1, 1)[:, 0].cpu().numpy()
    return out
