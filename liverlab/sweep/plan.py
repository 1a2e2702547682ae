"""The planned trials of a sweep, and what a resume must still run.

A sweep plans arms x seeds x samples trials; each is a *slot*
``(arm_id, seed, sample)``, written to ``liverlab_sweep.json`` (``planned``)
and tagged on its MLflow run. A resume must never be silently smaller than
the plan, so before and after ``Tuner.restore``:

1. :func:`check_state` reads Tune's state files (the newest
   ``experiment_state-*.json``, ``search_gen_state-*.json``,
   ``searcher-state-*.pkl`` and ``tuner.pkl``). Tune writes the experiment
   state in place, so a full disk can leave it empty or cut short. Such state
   is **set aside** (:func:`set_aside`, into ``broken-state-<time>/``) with a
   warning, and the sweep is rebuilt from the plan and the MLflow runs.
2. After the restored trials ran (or at once, when the state was broken),
   :func:`missing_slots` lists the planned slots that have no FINISHED run
   and were not run by this resume (a restored trial that Ray refused before
   it ran counts as not run: ``liverlab.sweep.resume``); a fresh Tuner runs
   exactly those (in the same folder; its state file is the newest from then on).

A slot's earlier, unfinished run is then replaced (``liverlab.tracking.recovery``).
:func:`drop_partial_checkpoints` removes Tune checkpoint folders whose files
were cut short (Tune copies them without a temporary name).
"""

from __future__ import annotations

import fnmatch
import json
import pickle
import shutil
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liverlab.sweep.space import LoadedSpace, arm_id

Slot = tuple[str, int, int]
STATE_PATTERNS = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl")
TUNER_PKL = "tuner.pkl"


def planned_slots(loaded: LoadedSpace) -> list[Slot]:
    """Every (arm_id, seed, sample) the sweep plans, in launch order."""
    return [(arm_id(arm), seed, k) for arm, seed, k in loaded.trials()]


def plan_record(loaded: LoadedSpace) -> dict[str, Any]:
    """The plan as stored in ``liverlab_sweep.json``."""
    slots = planned_slots(loaded)
    return {"planned_trials": len(slots), "planned": [list(s) for s in slots]}


def slot_of(config: dict[str, Any] | None) -> Slot | None:
    """The slot of a Tune trial's config (None for sweeps started before slots existed)."""
    if not config or "sample" not in config:
        return None
    return str(config["arm_id"]), int(config["seed"]), int(config["sample"])


def missing_slots(planned: list[Slot], finished: Iterable[Slot], attempted: Iterable[Slot]) -> list[Slot]:
    """Planned slots with no FINISHED run that this invocation did not run either (plan order)."""
    skip = set(finished) | set(attempted)
    return [s for s in planned if s not in skip]


# ----------------------------------------------------------------------------- Tune's state files


@dataclass
class StateCheck:
    """``problem`` is None when Tune's state can be restored."""

    problem: str | None
    files: list[str]

    @property
    def ok(self) -> bool:
        return self.problem is None


def _local_fs(fs: Any) -> Any:
    if fs is not None:
        return fs
    import pyarrow.fs as pafs

    return pafs.LocalFileSystem()


def _names(fs: Any, root: str) -> list[str]:
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)


def _newest(names: list[str], pattern: str) -> str | None:
    matching = fnmatch.filter(names, pattern)
    return max(matching) if matching else None  # Tune's own rule: the latest timestamp in the name


def _read(fs: Any, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def check_state(tune_dir: str, fs: Any = None) -> StateCheck:
    """Can Tune restore ``tune_dir``? Names the first missing, empty or corrupt state file."""
    fs = _local_fs(fs)
    names = _names(fs, tune_dir)
    files: list[str] = []
    for pattern, kind in ((STATE_PATTERNS[0], "json"), (STATE_PATTERNS[1], "cloudpickle"),
                          (STATE_PATTERNS[2], "pickle"), (TUNER_PKL, "cloudpickle")):
        name = _newest(names, pattern)
        if name is None:
            if pattern == STATE_PATTERNS[2]:
                continue  # a searcher that saved nothing yet
            return StateCheck(f"no {pattern} in {tune_dir}", files)
        files.append(name)
        try:
            data = _read(fs, f"{tune_dir}/{name}")
        except OSError as exc:
            return StateCheck(f"{tune_dir}/{name} cannot be read ({exc})", files)
        if not data:
            return StateCheck(f"{tune_dir}/{name} is empty (0 bytes)", files)
        try:
            if kind == "json":
                state = json.loads(data)
                if not isinstance(state, dict) or not state.get("trial_data"):
                    raise ValueError("no trial_data")
            elif kind == "pickle":
                pickle.loads(data)  # our ArmSearcher's own state (liverlab.sweep.search)
            else:
                from ray import cloudpickle

                cloudpickle.loads(data)
        except Exception as exc:  # noqa: BLE001 - any decoding failure means a corrupt file
            return StateCheck(f"{tune_dir}/{name} is corrupt ({type(exc).__name__}: {str(exc)[:120]})", files)
    return StateCheck(None, files)


def set_aside(tune_dir: str, fs: Any = None) -> str:
    """Move Tune's state files into ``broken-state-<time>/`` (kept for inspection); return that folder."""
    fs = _local_fs(fs)
    target = f"{tune_dir}/broken-state-{time.strftime('%Y%m%d-%H%M%S')}"
    fs.create_dir(target)
    for name in _names(fs, tune_dir):
        if name == TUNER_PKL or any(fnmatch.fnmatch(name, p) for p in STATE_PATTERNS):
            fs.move(f"{tune_dir}/{name}", f"{target}/{name}")
    return target


def drop_partial_checkpoints(tune_dir: str | Path) -> list[Path]:
    """Remove checkpoints (local storage) that a full disk cut short; return what was removed.

    Tune copies trial folders and checkpoints to the storage without a
    temporary name. A PyTorch file is a zip archive whose directory is written
    last, so a file cut short has none (``zipfile.is_zipfile`` is False): such
    a ``.pt`` file is removed, with its whole folder when that is one of
    Tune's ``checkpoint_*`` folders (which must then hold a ``.pt`` file).
    Temporary files of atomic writes that Tune copied along are removed too.
    Call it only while no trial runs (before a resume, after a stop).
    """
    removed: list[Path] = []
    root = Path(tune_dir)
    for ckpt in sorted(root.glob("*/checkpoint_*")):
        files = list(ckpt.rglob("*.pt")) if ckpt.is_dir() else []
        if ckpt.is_dir() and (not files or any(not zipfile.is_zipfile(f) for f in files)):
            shutil.rmtree(ckpt, ignore_errors=True)
            removed.append(ckpt)
    for f in sorted(root.glob("*/**/*.pt")):
        if f.is_file() and not zipfile.is_zipfile(f):
            f.unlink(missing_ok=True)
            removed.append(f)
    # Tune's upload of a trial folder can catch an atomic write's temporary file (.NAME.tmp-...) mid-way.
    for f in sorted(root.glob("*/**/.*.tmp-*")):
        if f.is_file():
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed
