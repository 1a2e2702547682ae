"""``liverlab sweep``: from a search-space file to finished, tracked trials.

Order of work: validate the space (no compute before that), connect to Ray,
preflight the resources (a GPU request on a cluster without GPUs would pend
forever), open or reuse the sweep's parent MLflow run, then ``Tuner.fit`` or
``Tuner.restore`` with ``resume_errored``. The sweep folder holds Ray's
experiment state, the pipeline caches and ``liverlab_sweep.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from liverlab import __version__
from liverlab.data.atomic import write_bytes_atomic
from liverlab.data.manifest import manifest_hash, read_manifest
from liverlab.errors import LiverlabError
from liverlab.report.markdown import make_report
from liverlab.storage import filesystem as storage_filesystem
from liverlab.storage import is_uri, join, write_text
from liverlab.sweep.cluster import connect
from liverlab.sweep.display import LiveTable, summarize
from liverlab.sweep.preflight import preflight, quick_check
from liverlab.sweep.search import ArmSearcher
from liverlab.sweep.space import LoadedSpace, arm_id, load_space
from liverlab.sweep.trainable import META, run_trial
from liverlab.tracking.client import resolve_tracking_uri
from liverlab.tracking.writer import finish_sweep_run, git_tags, open_sweep_run

SWEEP_FILE = "liverlab_sweep.json"


@dataclass
class SweepOptions:
    space: str
    set: list[str] = field(default_factory=list)
    num_samples: int | None = None
    max_concurrent: int | None = None
    dry_run: bool = False
    resume: bool = False
    address: str | None = None
    storage: str | None = None
    tracking_uri: str | None = None
    name: str | None = None
    report: bool = True
    live: bool = True
    force: bool = False  # skip the disk-space check (liverlab.diskspace)


def _apply_cli(loaded: LoadedSpace, opts: SweepOptions) -> LoadedSpace:
    budget = loaded.space.budget
    upd: dict[str, Any] = {}
    if opts.num_samples:
        upd["samples_per_arm"] = opts.num_samples
    if opts.max_concurrent:
        upd["max_concurrent"] = opts.max_concurrent
    space = loaded.space.model_copy(update={"budget": budget.model_copy(update=upd)})
    if opts.name:
        space = space.model_copy(update={"name": opts.name})
    return LoadedSpace(loaded.path, space, loaded.base_raw, loaded.base_path)


def dry_run_text(loaded: LoadedSpace) -> str:
    s = loaded.space
    arms = loaded.arms()
    cfg = loaded.config(arms[0], s.seeds[0])
    lines = [
        f"sweep {s.name}: {loaded.path}",
        f"  base experiment: {loaded.base_path} (stage {cfg.stage})",
        f"  arms ({len(arms)}):",
    ]

    for arm in arms:
        active = loaded.active_params(arm)
        sampled = ", ".join(f"{k} ~ {_range(p)}" for k, p in active.items()) or "nothing sampled"
        lines.append(f"    {arm_id(arm)}: {sampled}")
    lines += [
        f"  seeds: {s.seeds}",
        f"  samples per arm and seed: {s.budget.samples_per_arm}",
        "  objective: " + ", ".join(f"{o.metric} ({o.mode})" for o in s.objectives),
        f"  scheduler: {s.scheduler.type}" + (f" (max_t {loaded.max_t(cfg)}, grace {loaded.grace_period(cfg)}, "
                                               f"reduction {s.scheduler.reduction_factor:g})"
                                               if s.scheduler.type == "asha" else ""),
        f"  resources per trial: {s.resources.cpu:g} CPU, {s.resources.gpu:g} GPU; "
        f"max concurrent {s.budget.max_concurrent}",
        f"  trials: {len(loaded.trials())}",
    ]
    return "\n".join(lines)


def _range(p: Any) -> str:
    if p.type == "categorical":
        return f"{{{', '.join(map(str, p.choices))}}}"
    return f"{p.type}[{p.low:g}, {p.high:g}]" + (" log" if p.log else "")


def _storage_root(opts: SweepOptions) -> str:
    storage = opts.storage or os.environ.get("LIVERLAB_STORAGE") or "sweeps"
    return storage if is_uri(storage) else str(Path(storage).expanduser().resolve())


def run_sweep(opts: SweepOptions) -> int:
    """Run (or resume) a sweep; exit code 0, or 1 when every trial failed or the disk is full; 130 / 143
    after SIGINT / SIGTERM (``liverlab.sweep.interrupt``)."""
    from liverlab.sweep.interrupt import run_guarded

    return run_guarded(opts, _run_sweep)


def _run_sweep(opts: SweepOptions, session: Any) -> int:
    loaded = _apply_cli(load_space(opts.space, opts.set), opts)
    if opts.dry_run:
        print(dry_run_text(loaded))
        return 0
    s = loaded.space
    storage = _storage_root(opts)
    if is_uri(storage):  # object store: Ray writes through pyarrow; caches are uploaded (liverlab/storage.py)
        if not (opts.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
            raise LiverlabError(
                f"--storage {storage}: object storage needs --tracking-uri (an MLflow server every node reaches); "
                "the default SQLite file lives in a local folder"
            )
        ray_fs, ray_root = storage_filesystem(storage)
        sweep_loc, tune_dir = join(storage, s.name), f"{ray_root}/{s.name}"
        local_dir = Path.cwd() / "sweeps" / s.name  # the report is written here (and logged to MLflow)
    else:
        ray_fs, ray_root = None, storage
        local_dir = Path(storage) / s.name
        sweep_loc = tune_dir = str(local_dir)
    can_restore = tune.Tuner.can_restore(tune_dir, storage_filesystem=ray_fs)
    if can_restore and not opts.resume:
        raise LiverlabError(
            f"sweep {s.name!r} already exists at {sweep_loc}: add --resume to continue it, or --name NEW"
        )
    # A resume needs Tune's state or, when that was lost (liverlab.sweep.plan), the sweep's own file.
    if opts.resume and not (can_restore or (local_dir / SWEEP_FILE).is_file()):
        raise LiverlabError(f"--resume: no sweep state at {sweep_loc} to resume")
    # -- reliability (issues 19, 23): where the sweep writes, and whether it fits there, before any compute
    from liverlab.sweep.diskcheck import check_sweep_space

    uri_planned = resolve_tracking_uri(opts.tracking_uri, local_dir)
    session.located(s.name, local_dir, tune_dir, ray_fs,
                    check_sweep_space(loaded, local_dir, ray_fs is None, uri_planned, opts.resume, opts.force))
    local_dir.mkdir(parents=True, exist_ok=True)

    # Tune warns when a trial checkpoints every few seconds (tiny models do); that is expected here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    connect(opts.address)
    session.guard.install()  # after ray.init, whose SIGTERM handlers (and native stack dumps) it replaces
    preflight(loaded)
    uri = resolve_tracking_uri(opts.tracking_uri, local_dir)
    first = loaded.config(loaded.arms()[0], s.seeds[0])
    # Multi-node only: every node must reach the storage (folder or bucket, with its own
    # credentials) and the tracking store, and hold the driver's data.
    quick_check(storage=sweep_loc, tracking_uri=uri, data=_node_data(first))
    sweep_key = hashlib.sha256(sweep_loc.encode()).hexdigest()[:16]
    repo_tags = git_tags(Path(loaded.path).parent)
    base_tags = {
        "liverlab.sweep": s.name,
        "liverlab.sweep_key": sweep_key,
        "liverlab.space_file": str(loaded.path),
        "liverlab.version": __version__,
        "liverlab.planned_trials": str(len(loaded.trials())),  # the report's "N of M planned trials"
        **repo_tags,
    }
    experiment_id, parent_run_id = open_sweep_run(uri, s.name, base_tags)
    session.tracking(uri, experiment_id, parent_run_id, len(loaded.trials()))
    from liverlab.sweep.plan import plan_record

    info = {"name": s.name, "tracking_uri": uri, "experiment_id": experiment_id, "parent_run_id": parent_run_id,
            "space_file": str(loaded.path), "baseline": s.baseline, "storage": sweep_loc, **plan_record(loaded)}
    _write_sweep_file(sweep_loc, local_dir, json.dumps(info, indent=2))

    from liverlab.train.data import dataset_dirs

    dataset_dirs(first)  # phantoms are generated here once, not raced by the first trials
    meta = {
        "base": loaded.base_raw,
        "base_dir": str(loaded.base_dir),  # relative data paths mean the driver's directory (issue 16)
        "overrides": loaded.overrides(),
        "space_file": str(loaded.path),
        "tracking_uri": uri,
        "experiment_id": experiment_id,
        "parent_run_id": parent_run_id,
        "cache_root": join(sweep_loc, "cache"),
        "sweep_id": f"{s.name}-{sweep_key[:8]}",  # names the trials' node-local scratch folders
        "cpus_per_trial": s.resources.cpu,
        "tags": {k: v for k, v in base_tags.items() if k != "liverlab.sweep_key"}
        | {"liverlab.manifest_hash": _data_hash(first)},
    }
    trainable = tune.with_resources(run_trial, {"cpu": s.resources.cpu, "gpu": s.resources.gpu})
    live = LiveTable(loaded, enabled=opts.live)
    from liverlab.sweep.interrupt import SweepGuard

    run_config = tune.RunConfig(
        name=s.name,
        storage_path=ray_root,
        storage_filesystem=ray_fs,
        verbose=0,
        callbacks=[live, SweepGuard()],
        failure_config=tune.FailureConfig(max_failures=s.budget.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
    )
    t0 = time.perf_counter()

    def restore() -> Any:
        return tune.Tuner.restore(tune_dir, trainable, resume_errored=True, param_space={META: meta},
                                  storage_filesystem=ray_fs)

    def fresh(only: list[tuple[str, int, int]] | None) -> Any:  # only: the planned trials a resume re-creates
        searcher = ArmSearcher(loaded, only)
        single = len(s.objectives) == 1
        objective = s.objectives[0]
        if s.scheduler.type == "asha":
            # stop_last_trials=False: Ray's default stops every trial at max_t, i.e. at the U-Net's last
            # report, before its test evaluation and best.pt; the trial ends by itself after it.
            scheduler: Any = ASHAScheduler(
                time_attr="training_iteration", max_t=loaded.max_t(first),
                grace_period=loaded.grace_period(first), reduction_factor=s.scheduler.reduction_factor,
                stop_last_trials=False,
            )
        else:
            scheduler = FIFOScheduler()
        return tune.Tuner(
            trainable,
            param_space={META: meta},
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                metric=objective.metric if single else None,
                mode=objective.mode if single else None,
                num_samples=searcher.total,
                max_concurrent_trials=s.budget.max_concurrent,
                time_budget_s=s.budget.time_limit_s,
                reuse_actors=True,
            ),
            run_config=run_config,
        )

    from liverlab.sweep.resume import fit_all

    try:  # Ctrl-C, SIGTERM and a full disk leave through liverlab.sweep.interrupt (runs KILLED, resume line)
        results = fit_all(session, loaded, opts.resume, restore, fresh)
    finally:
        live.close()
    elapsed = time.perf_counter() - t0
    n_errors = sum(r.error is not None for r in results)
    finish_sweep_run(uri, parent_run_id, "FAILED" if results and n_errors == len(results) else "FINISHED")
    print(summarize(loaded, results, elapsed, finished=len(session.finished_slots())))
    from liverlab.tracking.ui import ui_hint

    print(f"results: {sweep_loc}\n{ui_hint(uri, experiment_id)}   (experiment {s.name!r})")
    if opts.report and n_errors < len(results):
        _report(uri, parent_run_id, local_dir, s.baseline)
    return 1 if len(results) and n_errors == len(results) else 0


def _write_sweep_file(sweep_loc: str, local_dir: Path, text: str) -> None:
    """``liverlab_sweep.json`` in the sweep's storage (and a local copy for `liverlab report`)."""
    if is_uri(sweep_loc):
        write_text(join(sweep_loc, SWEEP_FILE), text)
    write_bytes_atomic(local_dir / SWEEP_FILE, text.encode())


def _node_data(config: Any) -> list[str] | None:
    """The data folders every node must hold a copy of (phantoms and imports each node makes itself)."""
    d = config.data
    if d.phantom is not None or d.import_:
        return None
    return [str(p) for p in (d.ct_dir, d.mri_dir) if Path(p).is_dir()] or None


def _data_hash(config: Any) -> str:
    """Manifest hash of the MRI data the U-Net is judged on (best effort before it exists)."""
    try:
        return manifest_hash(read_manifest(config.data.mri_dir))
    except Exception:  # phantoms not generated yet: the hash is set once they are
        return "pending"


def _report(uri: str, parent_run_id: str, sweep_dir: Path, baseline: str | None) -> None:
    try:
        out = make_report(uri, parent_run_id=parent_run_id, baseline=baseline, out=sweep_dir / "report")
        print(f"report: {out}")
    except LiverlabError as err:
        print(f"report not written: {err}")
