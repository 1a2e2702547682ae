"""Which device a sweep trial trains on, from what Ray assigned it.

Ray hands a trial that asked for ``resources.gpu`` (a whole GPU or a
fraction: 0.25 packs four trials on one GPU) the ids of its GPUs and sets
``CUDA_VISIBLE_DEVICES`` to them in the trial's process, so torch sees only
that trial's GPU(s) and ``cuda`` means ``cuda:0`` = the assigned GPU. A trial
that asked for no GPU runs on CPU even on a GPU node (Ray does not blank
``CUDA_VISIBLE_DEVICES`` for it).

A trial that was given a GPU but finds no CUDA runtime (a CPU build of torch,
missing drivers) stops with an error naming the node: falling back to CPU
would run a GPU-sized sweep at a fraction of the speed, silently. Tests on
machines without GPUs use Ray's logical GPUs and set the **test-only**
environment variable ``LIVERLAB_TEST_GPU_AS_CPU=1``, under which such a trial
runs on CPU instead (and says so in its ``liverlab.device_note`` tag).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from liverlab.errors import LiverlabError

TEST_GPU_AS_CPU = "LIVERLAB_TEST_GPU_AS_CPU"


@dataclass(frozen=True)
class TrialDevice:
    """The device a trial's config gets, and the facts it was decided from (logged as tags)."""

    device: str  # "cuda" or "cpu"
    gpu_ids: tuple[str, ...]
    cuda_visible_devices: str | None
    note: str = ""

    def tags(self) -> dict[str, str]:
        out = {
            "liverlab.device": self.device,
            "liverlab.gpu_ids": ",".join(self.gpu_ids) or "none",
            "liverlab.cuda_visible_devices": "unset" if self.cuda_visible_devices is None else self.cuda_visible_devices,
        }
        if self.note:
            out["liverlab.device_note"] = self.note
        return out


def resolve_trial_device(
    gpu_ids: Sequence[str | int],
    cuda_available: bool,
    node: str,
    cuda_visible_devices: str | None,
    gpu_as_cpu: bool = False,
) -> TrialDevice:
    """``cuda`` for a trial with GPUs (each sees only its own), ``cpu`` without; errors on a GPU without CUDA.

    Args:
        gpu_ids: ``ray.get_gpu_ids()`` in the trial (one id for a fraction of a GPU).
        cuda_available: ``torch.cuda.is_available()`` in the trial.
        node: where the trial runs (host and Ray node id), for the error message.
        cuda_visible_devices: ``$CUDA_VISIBLE_DEVICES`` in the trial (None: unset).
        gpu_as_cpu: the test-only fallback (``LIVERLAB_TEST_GPU_AS_CPU=1``).
    """
    ids = tuple(str(i) for i in gpu_ids)
    if not ids:
        return TrialDevice("cpu", ids, cuda_visible_devices)
    visible = tuple(v.strip() for v in (cuda_visible_devices or "").split(",") if v.strip())
    if sorted(visible) != sorted(ids):
        # torch would see other trials' GPUs too, and "cuda" (= cuda:0) may not be this trial's GPU.
        raise LiverlabError(
            f"node {node}: Ray assigned GPU {','.join(ids)} to this trial but CUDA_VISIBLE_DEVICES="
            f"{cuda_visible_devices if cuda_visible_devices is not None else '(unset)'}: the trial would not be "
            "confined to its own GPU (is RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES set?)"
        )
    if cuda_available:
        return TrialDevice("cuda", ids, cuda_visible_devices)
    if gpu_as_cpu:
        return TrialDevice("cpu", ids, cuda_visible_devices,
                           note=f"{TEST_GPU_AS_CPU}=1: GPU {','.join(ids)} assigned, run on CPU (test only)")
    raise LiverlabError(
        f"node {node}: Ray assigned GPU {','.join(ids)} to this trial (CUDA_VISIBLE_DEVICES={cuda_visible_devices}) "
        "but torch finds no CUDA runtime there (a CPU build of torch, or no NVIDIA driver); install the CUDA "
        "build of torch on that node (`liverlab doctor` checks every node), or set resources.gpu: 0"
    )


def trial_device(gpu_ids: Sequence[str | int], node: str) -> TrialDevice:
    """:func:`resolve_trial_device` with this process's facts (torch, environment)."""
    import torch

    return resolve_trial_device(
        gpu_ids,
        cuda_available=torch.cuda.is_available(),
        node=node,
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        gpu_as_cpu=os.environ.get(TEST_GPU_AS_CPU) == "1",
    )
