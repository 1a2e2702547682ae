"""Which cases ``liverlab evaluate --checkpoint C --data DIR`` scores: never a silent subset.

``--split auto`` (the default) decides from what the checkpoint trained on:

* the checkpoint's ``train_patients`` (patient ids it trained *or validated*
  on, stored in ``best.pt`` by ``train_unet``); a checkpoint written before
  that field existed falls back to recomputing them from its embedded config
  (its MRI dataset and split settings) when that dataset is still readable,
  and says so; when it is not, the choice falls back to ``test`` and says so;
* none of the dataset's patient ids among them (a new dataset, whatever its
  manifest hash): ``all`` cases are scored;
* some of them seen: every patient the checkpoint did *not* see is scored.
  On the checkpoint's own dataset these are exactly the ``test`` split under
  the checkpoint's split settings, and the split is reported as ``test``; on a
  dataset that shares only some patients it is reported as ``unseen`` (the
  test split of that dataset would mix seen patients in or leave unseen ones
  out); all patients seen is an error that points to ``--split all``.

An explicit ``--split train|val|test|all`` is obeyed (the checkpoint's split
settings), with a warning when it scores patients the checkpoint saw.
Patients are compared by id: two datasets that reuse ids for different
people look shared (the note says to pass ``--split all`` then).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liverlab.errors import LiverlabError
from liverlab.train import data as tdata


@dataclass(frozen=True)
class SplitChoice:
    requested: str  #: what the user asked for (auto, train, val, test, all)
    split: str  #: what is scored (train, val, test, all)
    cases: list[str]  #: case ids scored
    patients: dict[str, str]  #: case id -> patient id (scored cases)
    notes: list[str] = field(default_factory=list)  #: why, in sentences (printed on every run)
    seen_source: str = ""  #: where the checkpoint's patient list came from
    manifest_match: bool | None = None  #: dataset manifest hash == the checkpoint's (None: unknown)

    @property
    def n_cases(self) -> int:
        return len(self.cases)

    @property
    def n_patients(self) -> int:
        return len(set(self.patients.values()))

    def summary(self) -> str:
        """'split all (auto): 15 cases, 15 patients. <notes>'"""
        how = f"{self.split} (auto)" if self.requested == "auto" else self.split
        text = f"scored split {how}: {self.n_cases} case(s), {self.n_patients} patient(s)"
        return text + (". " + " ".join(self.notes) if self.notes else "")


def seen_patients(state: dict[str, Any], config: Any) -> tuple[set[str] | None, str]:
    """(patient ids the checkpoint trained or validated on, where that came from); None if unknown."""
    stored = state.get("train_patients")
    if stored is not None:
        return {str(p) for p in stored}, "the checkpoint's train_patients"
    mri_dir = Path(config.data.mri_dir)
    if (mri_dir / "dataset.json").is_file():
        try:
            table = tdata.split_table(mri_dir, config)
        except (LiverlabError, OSError):
            return None, f"unknown (the checkpoint has no train_patients and {mri_dir} cannot be read)"
        seen = table.filter(table["split"].is_in(["train", "val"]))["patient_id"].to_list()
        return {str(p) for p in seen}, (
            f"recomputed from the checkpoint's config ({mri_dir} with its split settings; "
            "older checkpoint without train_patients)"
        )
    return None, f"unknown (the checkpoint has no train_patients and its training data {mri_dir} is not here)"


def _same_manifest(stored: str | None, data_dir: Path, table: Any) -> bool | None:
    """Whether the checkpoint's manifest hash is this dataset's (as written, or with the checkpoint's split)."""
    from liverlab.data.manifest import manifest_hash, read_manifest

    if stored is None:
        return None
    hashes = {manifest_hash(table)}
    try:
        hashes.add(manifest_hash(read_manifest(data_dir)))
    except (LiverlabError, OSError):
        pass
    return stored in hashes


def choose_split(state: dict[str, Any], config: Any, data_dir: str | Path, requested: str = "auto") -> SplitChoice:
    """Resolve ``--split`` for a checkpoint state (with its embedded ``config``) and a dataset folder."""
    data_dir = Path(data_dir)
    table = tdata.split_table(data_dir, config)  # the checkpoint's split settings applied to this dataset
    patient_of = {str(c): str(p) for c, p in zip(table["case_id"].to_list(), table["patient_id"].to_list())}
    split_of = {str(c): str(s) for c, s in zip(table["case_id"].to_list(), table["split"].to_list())}
    match = _same_manifest(state.get("manifest_hash"), data_dir, table)
    seen, source = seen_patients(state, config)
    patients = set(patient_of.values())
    notes: list[str] = []

    def pick(split: str) -> list[str]:
        return sorted(c for c in patient_of if split == "all" or split_of[c] == split)

    if requested == "auto":
        if seen is None:
            split = "test"
            notes.append(f"The checkpoint's training patients are {source}: scoring the test split with the "
                         "checkpoint's split settings; pass --split all if this dataset is new to the model.")
            cases = pick(split)
        elif not patients & seen:
            split = "all"
            why = "none of the dataset's patients were in the checkpoint's training data"
            if match is False:
                why += " (and its manifest hash differs from the checkpoint's)"
            notes.append(f"auto: {why} ({source}), so every case is scored.")
            cases = pick(split)
        else:
            unseen = sorted(c for c, p in patient_of.items() if p not in seen)
            shared = len(patients & seen)
            same = ", same manifest hash as the checkpoint's" if match else ""
            if not unseen:
                raise LiverlabError(f"{data_dir}: all {len(patients)} patients were in the checkpoint's training data "
                                    f"({source}); pass --split all (or train/val/test) to score them anyway")
            if unseen == pick("test"):
                split = "test"
                notes.append(f"auto: the checkpoint trained or validated on {shared} of the dataset's {len(patients)} "
                             f"patients ({source}{same}), so its unseen test split is scored.")
            else:
                split = "unseen"
                notes.append(f"auto: {shared} of the dataset's {len(patients)} patients were in the checkpoint's "
                             f"training data ({source}{same}); only the {len(set(patient_of[c] for c in unseen))} "
                             "unseen patients are scored; if the shared ids name other people, pass --split all.")
            cases = unseen
    else:
        split = requested
        cases = pick(split)
        if seen:
            overlap = sorted({patient_of[c] for c in cases if patient_of[c] in seen})
            if overlap:
                notes.append(f"warning: {len(overlap)} scored patient(s) were in the checkpoint's training data "
                             f"({source}): " + ", ".join(overlap))
    if not cases:
        raise LiverlabError(f"{data_dir}: no cases to score with --split {requested} (resolved to {split!r}; "
                            + (" ".join(notes) or "the checkpoint's split settings") + ")")
    return SplitChoice(requested, split, cases, {c: patient_of[c] for c in cases}, notes, source, match)
