"""A pipeline trial: EssNet (or CycleGAN, or nothing) -> synthesis -> U-Net.

``synthesis: intensity`` (the non-GAN control arm) trains no translator: its
synthetic set is the CT training slices remapped to the real-MRI histogram
(``liverlab.train.intensity_synth``), cached and mixed like the others.

EssNet checkpoints and synthetic datasets are stored by content hash under
``cache_root`` and reused by every trial that needs the same one. Two trials
that need the same one at the same time compute it once: the second waits on
a file lock and then finds it done. Only the U-Net phase reports to the
scheduler (its validation IoU per epoch), so ASHA compares like with like.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

from filelock import FileLock

from liverlab.config import ExperimentConfig
from liverlab.data.atomic import sha256_json, write_json_atomic
from liverlab.train import common
from liverlab.train import data as tdata
from liverlab.train.common import Report

DONE = "done.json"


class _StageTracker:
    """The trial's tracker for one stage: the pipeline logs the params once itself.

    (MLflow refuses a param logged twice with different values, and the U-Net
    stage's config differs from the trial's in ``unet.synthetic``.)
    """

    def __init__(self, tracker: Any) -> None:
        self._tracker = tracker

    def log_params(self, params: Any) -> None:
        pass

    def log_text(self, text: str, name: str) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tracker, name)


def essnet_key(config: ExperimentConfig) -> str:
    """What determines a trained translator: data, EssNet settings (after the arm), its seed, precision.

    Not the U-Net's: ``data.train_patients`` (it limits only the U-Net's labelled real MRI; the
    translator learns from every training patient's MRI) and, when ``essnet.seed`` is set, the
    run's seed. Trials that differ only in those share one translator.
    """
    from liverlab.train.essnet import translator_config

    config = translator_config(config)
    payload = {
        "data": config.data.model_dump(mode="json", exclude={"train_patients"}),
        "essnet": config.effective_essnet().model_dump(mode="json", exclude={"seed"}),
        "seed": config.seed,
        "precision": config.precision,
    }
    return sha256_json(payload)


def materialise(cache_root: str | Path, kind: str, key: str, marker: str, compute: Callable[[Path], None]) -> tuple[Path, bool]:
    """A cache entry as a local folder: ``(folder, reused?)``; ``compute(folder)`` makes it once.

    On a POSIX ``cache_root`` (shared folder) the entry lives there and a file
    lock makes concurrent trials compute it once. On an object-store URI the
    entry is computed into this node's cache, uploaded with its ``marker``
    last, and downloaded by the trials of other nodes; object stores have no
    locks, so two nodes asking at the same moment may both compute it (the
    same content, by its key), while trials of one node still share one.
    """
    from liverlab import storage

    if not storage.is_uri(cache_root):
        folder = Path(cache_root) / kind / key
        folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder) + ".lock"):
            if (folder / marker).is_file():
                return folder, True
            compute(folder)
            return folder, False
    remote = storage.join(str(cache_root), kind, key)
    space = sha256_json(str(cache_root))[:12]
    folder = storage.node_cache_dir() / space / kind / key
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / marker).is_file():
            return folder, True
        if storage.exists(storage.join(remote, marker)):
            storage.download_dir(remote, folder)
            return folder, True
        compute(folder)
        storage.upload_dir(folder, remote, marker)
        return folder, False


def cached_essnet(config: ExperimentConfig, cache_root: str | Path, tracker: Any) -> tuple[Path, dict[str, float], bool]:
    """Train (or reuse) the translator; return (checkpoint folder, its final metrics, reused?)."""
    from liverlab.train.essnet import train_essnet

    def compute(folder: Path) -> None:
        # A crashed earlier attempt left a checkpoint in `folder`: train_essnet resumes from it.
        t0 = time.perf_counter()
        metrics = train_essnet(config, common.no_report, tracker, folder)
        # The translator's wall time (this attempt; the judge's training too when this trial trained it).
        metrics["time/essnet_wall_s"] = time.perf_counter() - t0
        write_json_atomic(folder / DONE, {"metrics": metrics})

    folder, reused = materialise(cache_root, "essnet", essnet_key(config)[:24], DONE, compute)
    metrics = json.loads((folder / DONE).read_text())["metrics"]
    return folder / common.CHECKPOINT_DIR, metrics, reused


def cached_synthesis(config: ExperimentConfig, checkpoint: Path, cache_root: str | Path) -> tuple[Path, bool]:
    """Synthesise the CT training patients once per (checkpoint, data, settings)."""
    from liverlab.infer.synthesize import PROVENANCE, synthesis_key, synthesize

    ct_dir, _ = tdata.dataset_dirs(config)
    cases = tdata.cases_in(ct_dir, config, "train")
    key = synthesis_key(checkpoint, ct_dir, config, cases)

    def compute(out: Path) -> None:
        synthesize(checkpoint, ct_dir, out, cases=cases, device=config.device)

    return materialise(cache_root, "synthetic", key[:24], PROVENANCE, compute)


def cached_intensity(config: ExperimentConfig, cache_root: str | Path) -> tuple[Path, bool]:
    """The ``synthesis: intensity`` set (no translator): CT training patients remapped to the MRI histogram."""
    from liverlab.train.intensity_synth import PROVENANCE, intensity_key, synthesize_intensity

    ct_dir, mri_dir = tdata.dataset_dirs(config)
    tdata.require_dataset(ct_dir, "data.ct")
    tdata.require_dataset(mri_dir, "data.mri")
    cases = tdata.cases_in(ct_dir, config, "train")
    mri_cases = tdata.cases_in(mri_dir, config, "train")
    key = intensity_key(config, ct_dir, mri_dir, cases, mri_cases)

    def compute(out: Path) -> None:
        synthesize_intensity(config, ct_dir, mri_dir, out, cases, mri_cases)

    return materialise(cache_root, "synthetic", key[:24], PROVENANCE, compute)


def run_pipeline(
    config: ExperimentConfig,
    report: Report = common.no_report,
    tracker: Any = None,
    workdir: str | Path = ".",
    cache_root: str | Path | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Translator (per ``synthesis``), synthetic set, then the U-Net; U-Net metrics returned."""
    from liverlab.tracking.writer import NullTracker
    from liverlab.train.unet import train_unet

    from liverlab.config import dump_config

    tracker = tracker or NullTracker()
    workdir = Path(workdir)
    cache_root = cache_root or workdir / "cache"  # a folder, or an object-store URI
    tracker.log_params(config.model_dump(mode="json"))
    tracker.log_text(dump_config(config), "config.yaml")
    tracker = _StageTracker(tracker)
    if config.synthesis == "none":
        unet_cfg = config.model_copy(update={"unet": config.unet.model_copy(update={"mixing_ratio": 0.0, "synthetic": None})})
        return train_unet(unet_cfg, report, tracker, workdir / "unet", progress=progress)

    if config.synthesis == "intensity":  # the non-GAN control: no translator to train
        synthetic, synth_reused = cached_intensity(config, cache_root)
        tracker.set_tags({"liverlab.synthetic_cache": synthetic.name, "liverlab.synthetic_reused": str(synth_reused).lower()})
        unet = config.unet.model_copy(update={"synthetic": str(synthetic)})
        return train_unet(config.model_copy(update={"unet": unet}), report, tracker, workdir / "unet", progress=progress)

    checkpoint, essnet_metrics, reused = cached_essnet(config, cache_root, tracker)
    if reused:  # the run still carries the translator's figures and its last picture panel
        tracker.log_metrics(essnet_metrics, step=int(essnet_metrics.get("epoch", 0)))
        panels = sorted((checkpoint.parent / "panels").glob("essnet_epoch_*.png"))
        if panels:
            tracker.log_artifact(panels[-1], "panels")
    synthetic, synth_reused = cached_synthesis(config, checkpoint, cache_root)
    tracker.set_tags({
        "liverlab.essnet_cache": checkpoint.parent.name,
        "liverlab.synthetic_cache": synthetic.name,
        "liverlab.essnet_reused": str(reused).lower(),
        "liverlab.synthetic_reused": str(synth_reused).lower(),
    })
    unet = config.unet.model_copy(update={"synthetic": str(synthetic)})
    metrics = train_unet(config.model_copy(update={"unet": unet}), report, tracker, workdir / "unet", progress=progress)
    return {**{f"essnet/{k}": v for k, v in essnet_metrics.items()}, **metrics}
