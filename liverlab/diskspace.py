"""Disk space: a rough estimate before compute, and recognising a full disk during a run.

Before ``liverlab sweep`` or ``liverlab train`` starts anything, :func:`plan_needs`
estimates what the run will write and :func:`check` compares it with the free
space of each file system involved: the sweep storage (or the run folder),
the tracking store when it is a local SQLite file, and the slice cache folder.
The estimate is deliberately simple (``docs/reliability.md`` has the table):

* a checkpoint (``state.pt``): 4 bytes per value of the model weights, the
  kept best weights and Adam's two moments (U-Net: 16 bytes per parameter;
  EssNet: weights + 2 moments of five networks, 12 bytes per parameter),
  counted from the configured models built on PyTorch's ``meta`` device;
* per trial: 4 such checkpoints (the trial's own, Tune's 2 kept copies and
  the one being written), ``best.pt`` (4 bytes per U-Net parameter) and 1 MB
  of logs, results and pictures;
* per translator (pipeline arms ``cyclegan`` / ``essnet``): one EssNet
  checkpoint and 1 MB of panels; per synthetic set: every CT voxel as float32
  plus its slices in the cache;
* the slice cache: every slice as float32 image + uint8 mask at ``data.size``,
  for each dataset whose cache folder does not exist yet;
* the MLflow store: 1.5 MB for a new SQLite file, 0.3 MB of artifacts and
  4 KB of metrics per report for every run;
* plus 25 % margin. ``--force`` skips the check.

During a run, :func:`is_disk_full` recognises ENOSPC / EDQUOT, SQLite's
"database or disk is full" and the same from pyarrow or an object store in
an exception chain or a (remote) traceback's text, and :func:`full_location`
names the path.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liverlab.errors import LiverlabError

MB = 1 << 20
MARGIN = 1.25
TRIAL_OVERHEAD = 1 * MB
TRANSLATOR_OVERHEAD = 1 * MB
NEW_SQLITE = int(1.5 * MB)
RUN_ARTIFACTS = int(0.3 * MB)
REPORT_METRICS = 4 * 1024
CHECKPOINT_COPIES = 4

# Lower-case fragments of the messages a full disk or quota produces (OS, SQLite, pyarrow, S3 / MinIO).
FULL_TEXT = (
    "no space left on device",
    "database or disk is full",
    "disk quota exceeded",
    "quotaexceeded",
    "quota exceeded",
    "xminiostoragefull",
    "insufficient storage",
    "not enough space on the disk",
)
# Write errors that lost their errno (torch's zip writer); a full disk when little space is left.
WRITE_FAILED = ("unexpected pos", "file write failed", "iostream error", "failed writing file")
LOW_SPACE = 1 * MB
_ENOSPC_PATH = re.compile(r"(?:No space left on device|Disk quota exceeded)[^\n]*?: '([^']+)'")


class DiskFull(LiverlabError):
    """A full disk stopped the run; not the user's input, so exit code 1."""

    exit_code = 1


# ----------------------------------------------------------------------------- during a run


def is_disk_full(exc: BaseException | str | None, paths: list[Path] | None = None) -> bool:
    """True when ``exc`` (its cause / context chain, or a traceback text) says the disk or quota is full.

    Some writers lose the errno: ``torch.save`` on a full disk raises
    "unexpected pos ... vs ..." or "file write failed". Such a write error
    counts when one of ``paths`` has less than :data:`LOW_SPACE` free.
    """
    texts: list[str] = []
    seen: set[int] = set()
    while isinstance(exc, BaseException) and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        texts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    if isinstance(exc, str):
        texts.append(exc)
    if any(_text_full(t) for t in texts):
        return True
    wrote = any(w in t.lower() for t in texts for w in WRITE_FAILED)
    return wrote and any(free_space(p)[1] < LOW_SPACE for p in paths or [])


def _text_full(text: str) -> bool:
    low = text.lower()
    return any(s in low for s in FULL_TEXT) or "[errno 28]" in low


def _paths_in(exc: BaseException | str | None) -> list[str]:
    out: list[str] = []
    seen: set[int] = set()
    while isinstance(exc, BaseException) and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.filename:
            out.append(str(exc.filename))
        out += _ENOSPC_PATH.findall(str(exc))
        exc = exc.__cause__ or exc.__context__
    if isinstance(exc, str):
        out += _ENOSPC_PATH.findall(exc)
    return out


def full_location(exc: BaseException | str | None, candidates: list[Path]) -> Path | None:
    """Which of ``candidates`` (folders the run writes to) is full.

    A path in the error wins (the candidate holding it, else the path); a
    SQLite "database or disk is full" names the candidate holding a ``.db``
    file; otherwise the candidate with the least free space.
    """
    cands = [Path(c) for c in candidates if c is not None]
    for p in _paths_in(exc):
        for c in sorted(cands, key=lambda x: len(str(x)), reverse=True):
            if str(p).startswith(str(c)):
                return c
        return Path(p).parent
    text = str(exc).lower() if exc is not None else ""
    if "database or disk is full" in text:
        dbs = [c for c in cands if c.suffix == ".db"]
        if dbs:
            return dbs[0]
    known = [(free_space(c)[1], c) for c in cands]
    return min(known, key=lambda t: t[0])[1] if known else None


def free_space(path: str | Path) -> tuple[Path, int]:
    """(nearest existing folder, free bytes there); a path not created yet is judged by its parent."""
    p = Path(path).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return p, shutil.disk_usage(p).free
    except OSError:
        return p, 0


def describe(path: str | Path) -> str:
    """'PATH (12.0 MB free)'."""
    free = free_space(path)[1]
    return f"{Path(path)} ({free / MB:.1f} MB free)"


# ----------------------------------------------------------------------------- before a run


@dataclass
class Need:
    """``nbytes`` that ``what`` will write under ``folder``."""

    folder: Path
    nbytes: int
    what: str


def _device(path: Path) -> tuple[Path, int, int]:
    where, free = free_space(path)
    try:
        dev = os.stat(where).st_dev
    except OSError:
        dev = -1
    return where, dev, free


def check(needs: list[Need], force: bool, what: str) -> None:
    """Refuse (one line: path, free space, estimate) when the needs of one file system exceed its free space."""
    groups: dict[int, list[Need]] = {}
    for n in needs:
        groups.setdefault(_device(n.folder)[1], []).append(n)
    for group in groups.values():
        total = int(sum(n.nbytes for n in group) * MARGIN)
        free = _device(group[0].folder)[2]
        if total <= free or force:
            continue
        parts = ", ".join(f"{n.what} {n.nbytes / MB:.1f} MB" for n in group if n.nbytes)
        folder = min((n.folder for n in group), key=lambda f: len(str(f)))
        raise LiverlabError(
            f"not enough disk space for {what} at {folder}: {free / MB:.1f} MB free, about {total / MB:.1f} MB "
            f"needed ({parts}, +25 %; docs/reliability.md); free space or pass --force"
        )


def _count_params(cfg: Any) -> tuple[int, int]:
    """(U-Net parameters, EssNet parameters; 0 when the run trains no translator)."""
    import torch

    from liverlab.models.registry import unet_from_config

    with torch.device("meta"):  # sizes only: no memory, no compute
        unet = sum(p.numel() for p in unet_from_config(cfg.unet.model).parameters())
        essnet = 0
        if cfg.stage == "essnet" or (cfg.stage == "pipeline" and cfg.synthesis in ("cyclegan", "essnet")):
            from liverlab.train.essnet import EssNet

            essnet = sum(p.numel() for p in EssNet(cfg.effective_essnet()).parameters())
    return int(unet), int(essnet)


_VOXELS: dict[str, tuple[int, int]] = {}


def _voxels(dataset: Path, phantom: Any) -> tuple[int, int]:
    """(voxels, axial slices) of a dataset: its manifest, else the phantom settings, else (0, 0)."""
    key = f"{dataset}|{phantom}"
    if key not in _VOXELS:
        _VOXELS[key] = _count_voxels(dataset, phantom)
    return _VOXELS[key]


def _count_voxels(dataset: Path, phantom: Any) -> tuple[int, int]:
    try:
        from liverlab.data.manifest import read_manifest

        shapes = read_manifest(dataset)["shape"].to_list()
        return sum(int(s[0]) * int(s[1]) * int(s[2]) for s in shapes), sum(int(s[2]) for s in shapes)
    except Exception:  # noqa: BLE001 - not built yet: estimate from the phantom settings
        if phantom is None:
            return 0, 0
        return phantom.patients * phantom.size**2 * phantom.slices, phantom.patients * phantom.slices


def _slice_cache(folder: Path, slices: int, size: int) -> int:
    """An existing cache folder is assumed to hold these slices already."""
    if folder.is_dir() and any(folder.iterdir()):
        return 0
    return slices * size * size * 5  # float32 image + uint8 mask


_PARAMS: dict[str, tuple[int, int]] = {}


def _params(cfg: Any) -> tuple[int, int]:
    key = cfg.unet.model.model_dump_json() + cfg.effective_essnet().model_dump_json() + cfg.stage + str(cfg.synthesis)
    if key not in _PARAMS:
        _PARAMS[key] = _count_params(cfg)
    return _PARAMS[key]


def run_bytes(cfg: Any) -> dict[str, int]:
    """What one run of ``cfg`` writes besides shared caches: checkpoints (+ logs) and tracking."""
    unet_p, essnet_p = _params(cfg)
    state = 12 * essnet_p if cfg.stage == "essnet" else 16 * unet_p
    reports = cfg.essnet.epochs + cfg.essnet.decay_epochs if cfg.stage == "essnet" else cfg.unet.n_reports
    return {
        "checkpoints": CHECKPOINT_COPIES * state + 4 * unet_p + TRIAL_OVERHEAD,
        "tracking": RUN_ARTIFACTS + reports * REPORT_METRICS,
    }


def shared_bytes(cfg: Any) -> dict[tuple[str, str], int]:
    """The pipeline's shared cache entries of ``cfg``, keyed so that trials sharing one count it once."""
    if cfg.stage != "pipeline" or cfg.synthesis == "none":
        return {}
    ct_voxels, ct_slices = _voxels(cfg.data.ct_dir, cfg.data.phantom)
    out = {}
    if cfg.synthesis == "intensity":
        key = f"intensity seed={cfg.seed}"
    else:
        from liverlab.train.pipeline import essnet_key

        key = essnet_key(cfg)
        out[("translators", key)] = 12 * _params(cfg)[1] + TRANSLATOR_OVERHEAD
    out[("synthetic sets", key)] = 4 * ct_voxels + ct_slices * cfg.data.size**2 * 5
    return out


def cache_bytes(cfg: Any) -> tuple[Path, int]:
    """(slice cache folder, bytes of the slices it does not hold yet)."""
    d = cfg.data
    total = 0
    folder = Path(d.cache_dir) if d.cache_dir else d.mri_dir / ".cache"
    for dataset in (d.ct_dir, d.mri_dir):
        cache = Path(d.cache_dir) if d.cache_dir else dataset / ".cache"
        total += _slice_cache(cache, _voxels(dataset, d.phantom)[1], d.size)
    return folder, total


def plan_needs(
    configs: list[Any], storage: Path | None, tracking_db: Path | None, cache_root: Path | None = None
) -> list[Need]:
    """What ``configs`` (one per run) will write: storage, shared caches, tracking store, slice cache."""
    if not configs:
        return []
    runs = {"checkpoints": 0, "tracking": 0}
    shared: dict[tuple[str, str], int] = {}
    for cfg in configs:
        for k, v in run_bytes(cfg).items():
            runs[k] += v
        shared.update(shared_bytes(cfg))
    needs: list[Need] = []
    if storage is not None:
        needs.append(Need(storage, runs["checkpoints"], f"checkpoints of {len(configs)} run(s)"))
        for kind in ("translators", "synthetic sets"):
            nbytes = sum(v for (k, _), v in shared.items() if k == kind)
            if nbytes:
                needs.append(Need(cache_root or storage, nbytes, kind))
    if tracking_db is not None:
        base = 0 if tracking_db.exists() else NEW_SQLITE
        needs.append(Need(tracking_db.parent, base + runs["tracking"], "MLflow runs"))
    folder, nbytes = cache_bytes(configs[0])
    if nbytes:
        needs.append(Need(folder, nbytes, "slice cache"))
    return needs
