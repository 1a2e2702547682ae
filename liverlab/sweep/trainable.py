"""The Ray Tune function trainable around liverlab's plain training functions.

The training functions never see Ray: this adapter binds their ``report``
callback to ``ray.tune.report`` (with ``tune.Checkpoint``), restores the last
checkpoint into the trial's node-local work folder (``storage.trial_scratch``,
removed when the attempt ends) before a retry or a resume, picks the
device from the GPUs Ray assigned (``liverlab.sweep.devices``: a trial given a
GPU, or a fraction of one, runs on CUDA or stops with an error), and opens
the trial's MLflow child run, which a resumed or retried trial continues
instead of duplicating.
"""

from __future__ import annotations

import socket
from typing import Any

import ray
from ray import tune

from liverlab import __version__
from liverlab.config import ExperimentConfig, config_from_dict
from liverlab.storage import remove_scratch, trial_scratch
from liverlab.sweep.devices import trial_device
from liverlab.train.stages import run_stage

META = "_liverlab"  # the sweep's constants inside Tune's param_space


def trial_overrides(config: dict[str, Any], device: str) -> dict[str, Any]:
    meta = config[META]
    overrides = {**meta["overrides"], **config["arm"], "seed": config["seed"], **config.get("params", {})}
    # The device follows what Ray assigned, whatever the base config says.
    overrides["device"] = device
    return overrides


def trial_config(config: dict[str, Any], device: str) -> ExperimentConfig:
    """The trial's ``ExperimentConfig``: relative data paths resolve against the driver's directory
    (``meta["base_dir"]``), not the trial's own Ray working directory."""
    meta = config[META]
    return config_from_dict(meta["base"], trial_overrides(config, device), source=meta["space_file"],
                            base_dir=meta.get("base_dir"))


def run_trial(config: dict[str, Any]) -> None:
    """One trial: a stage (or the pipeline) for one arm, seed and Optuna sample."""
    import torch

    from liverlab.tracking.recovery import finish_quietly, replace_slot_runs
    from liverlab.tracking.writer import open_trial_run

    meta = config[META]
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    node_id = ray.get_runtime_context().get_node_id()
    device = trial_device(ray.get_gpu_ids(), node=f"{socket.gethostname()} ({node_id[:8]})")
    torch.set_num_threads(max(1, int(meta["cpus_per_trial"])))
    cfg = trial_config(config, device.device)

    tags = {
        **meta["tags"],
        "liverlab.arm": config["arm_id"],
        "liverlab.seed": str(config["seed"]),
        "liverlab.stage": cfg.stage,
        "liverlab.trial_id": trial_id,
        "liverlab.node_id": node_id,
        "liverlab.version": __version__,
        **device.tags(),  # liverlab.device, .gpu_ids, .cuda_visible_devices (what the trial resolved)
    }
    if "sample" in config:  # the trial's slot (arm, seed, sample): one FINISHED run per slot after a resume
        tags["liverlab.sample"] = str(config["sample"])
    run_name = f"{config['arm_id']} seed={config['seed']} {trial_id}"
    tracker = open_trial_run(
        meta["tracking_uri"], meta["experiment_id"], meta["parent_run_id"], trial_id, tags, run_name=run_name
    )
    replace_slot_runs(tracker, meta["experiment_id"], meta["parent_run_id"], tags, meta["tracking_uri"])

    # Working files live in node-local scratch, never in ctx.get_trial_dir(): Tune syncs that
    # folder (on the driver's node it uploads it whole at every experiment-state save, racing
    # our temp-file writes). What outlives the attempt is what it reports: Tune copies each
    # checkpoint into the sweep storage, and MLflow holds the metrics and artifacts.
    workdir = trial_scratch(meta.get("sweep_id") or ctx.get_experiment_name(), trial_id)
    stage_dir = workdir / "unet" if cfg.stage == "pipeline" else workdir
    restored = tune.get_checkpoint()
    if restored is not None:  # a retry or a resumed sweep continues from the last report
        restored.to_directory(str(stage_dir / "checkpoint"))

    def report(metrics: dict[str, Any], checkpoint: str | None = None) -> None:
        ckpt = None
        if checkpoint:
            # Metrics up to a checkpoint reach MLflow before it does: a trial resumed
            # from it (node loss, kill -9) then has no gap in its history.
            tracker.flush()
            ckpt = tune.Checkpoint.from_directory(checkpoint)
        tune.report(dict(metrics), checkpoint=ckpt)

    try:
        run_stage(cfg, report, tracker, workdir, cache_root=meta["cache_root"])
    except SystemExit as exc:  # Tune stops a trial (ASHA) by raising SystemExit(0) in report()
        if exc.code in (0, None):
            if not tracker.superseded():  # an interrupted sweep's driver ends this run KILLED instead
                tracker.set_tags({"liverlab.stopped_early": "true"})
            tracker.finish("FINISHED")
        else:
            tracker.finish("KILLED", error=f"SystemExit({exc.code})")
        raise
    except BaseException as exc:
        # On a full disk the store may refuse this too: the trial's own error is what the driver must see.
        finish_quietly(tracker, "FAILED", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        remove_scratch(workdir)
    tracker.finish("FINISHED")
