"""A pipeline trial: EssNet (or CycleGAN, or nothing) -> synthesis -> U-Net.

EssNet checkpoints and synthetic datasets are stored by content hash under
``cache_root`` and reused by every trial that needs the same one. Two trials
that need the same one at the same time compute it once: the second waits on
a file lock and then finds it done. Only the U-Net phase reports to the
scheduler (its validation IoU per epoch), so ASHA compares like with like.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from filelock import FileLock

from liverlab.config import ExperimentConfig
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
    """What determines a trained translator: data, EssNet settings (after the arm), seed, precision."""
    payload = {
        "data": config.data.model_dump(mode="json"),
        "essnet": config.effective_essnet().model_dump(mode="json"),
        "seed": config.seed,
        "precision": config.precision,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _write_json(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def cached_essnet(config: ExperimentConfig, cache_root: Path, tracker: Any) -> tuple[Path, dict[str, float], bool]:
    """Train (or reuse) the translator; return (checkpoint folder, its final metrics, reused?)."""
    from liverlab.train.essnet import train_essnet

    folder = cache_root / "essnet" / essnet_key(config)[:24]
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        done = folder / DONE
        if done.is_file():
            return folder / common.CHECKPOINT_DIR, json.loads(done.read_text())["metrics"], True
        # A crashed earlier attempt left a checkpoint in `folder`: train_essnet resumes from it.
        metrics = train_essnet(config, common.no_report, tracker, folder)
        _write_json(done, {"metrics": metrics})
        return folder / common.CHECKPOINT_DIR, metrics, False


def cached_synthesis(config: ExperimentConfig, checkpoint: Path, cache_root: Path) -> tuple[Path, bool]:
    """Synthesise the CT training patients once per (checkpoint, data, settings)."""
    from liverlab.train.synthesize import synthesis_key, synthesize

    ct_dir, _ = tdata.dataset_dirs(config)
    cases = tdata.cases_in(ct_dir, config, "train")
    key = synthesis_key(checkpoint, ct_dir, config, cases)
    out = cache_root / "synthetic" / key[:24]
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        reused = (out / "provenance.json").is_file()
        synthesize(checkpoint, ct_dir, out, cases=cases, device=config.device)
        return out, reused


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
    cache_root = Path(cache_root) if cache_root else workdir / "cache"
    tracker.log_params(config.model_dump(mode="json"))
    tracker.log_text(dump_config(config), "config.yaml")
    tracker = _StageTracker(tracker)
    if config.synthesis == "none":
        unet_cfg = config.model_copy(update={"unet": config.unet.model_copy(update={"mixing_ratio": 0.0, "synthetic": None})})
        return train_unet(unet_cfg, report, tracker, workdir / "unet", progress=progress)

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
