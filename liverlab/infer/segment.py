"""Segment a dataset with a trained U-Net; masks on each case's own grid, in NIfTI.

Class probabilities are mapped back to the volume's in-plane grid before the
argmax (the inverse of the cache's resize or ``data.spacing_mm`` resampling)
and the mask is post-processed (``unet.postprocess``), so predicted masks share
the image's affine and the metrics are computed in the volume's own physical
spacing (not the training resolution), by the same function as the training
run's test metrics (``evaluate.native_case_metrics``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from liverlab.config import TTAConfig, config_from_dict
from liverlab.errors import LiverlabError
from liverlab.infer.ensemble import Ensemble, member_mismatch
from liverlab.infer.evaluate import native_case_metrics
from liverlab.models import liver_only, unet_from_config
from liverlab.train import common
from liverlab.train import data as tdata


def load_unet(checkpoint: str | Path, device: torch.device) -> tuple[torch.nn.Module, Any]:
    """The U-Net of a ``best.pt`` or a training checkpoint (its kept weights), in eval mode, and its config."""
    state = common.load_checkpoint(checkpoint, map_location="cpu")
    if state.get("kind") == "unet_weights":
        weights = state["model"]
    elif state.get("kind") == "unet":
        weights = state["best_model"]
    else:
        raise LiverlabError(f"{checkpoint}: not a U-Net checkpoint (kind={state.get('kind')!r})")
    config = config_from_dict(state["config"], source=f"{checkpoint} (embedded config)")
    # as train.unet.build_unet builds it; more than 2 outputs with unet.organs (checkpoints before it: 2)
    model = unet_from_config(config.unet.model, out_channels=int(state.get("out_channels", 2)))
    model.load_state_dict(weights)
    model = model.to(device)
    if config.channels_last:  # as in training, so bf16 kernels (and hence test/* and evaluate) match
        model = model.to(memory_format=torch.channels_last)
    return liver_only(model).eval(), config  # liver / not liver, whatever the classes it learned


def load_ensemble(checkpoints: Sequence[str | Path], device: torch.device) -> tuple[torch.nn.Module, Any]:
    """The model of one checkpoint, or the ``Ensemble`` of several, in eval mode, with the first one's config.

    Raises ``LiverlabError`` naming the checkpoint and the key when a member's
    input or post-processing settings (``ensemble.MUST_AGREE``) differ from the first member's.
    """
    if not checkpoints:
        raise LiverlabError("no checkpoint given")
    models, configs = zip(*(load_unet(c, device) for c in checkpoints), strict=True)
    for path, config in zip(checkpoints[1:], configs[1:], strict=True):
        if (bad := member_mismatch(configs[0], config)) is not None:
            raise LiverlabError(
                f"{path}: {bad[0]} = {bad[1]!r}, but {checkpoints[0]} has {bad[2]!r}; "
                "ensemble members must see the same input and be post-processed alike"
            )
    if len(models) == 1:
        return models[0], configs[0]
    return Ensemble(list(models)).eval(), configs[0]


def segment_dataset(
    checkpoint: str | Path | Sequence[str | Path],
    data_dir: str | Path,
    out: str | Path,
    split: str | None = "test",
    tta: TTAConfig | None = None,
    cases: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Predict every case of ``split`` (None = all), write masks to ``out``, return CHAOS metrics.

    Several checkpoints are an ensemble (``liverlab.infer.ensemble``): the
    mean of their probabilities, with the first checkpoint's config (split,
    post-processing, precision). ``cases``, when given, replaces ``split``.

    Masks are on each case's own grid and post-processed with the
    checkpoint's ``unet.postprocess``; the metrics are those of the written
    masks against the labels (``evaluate.native_case_metrics``, the same
    function that computes the training run's ``test/*``). The masks appear in
    ``out`` only once every case has been segmented. ``tta`` overrides the
    checkpoint's ``unet.tta`` (test-time augmentation; ``TTAConfig()`` = off).
    """
    data_dir, out = Path(data_dir), Path(out)
    tdata.require_dataset(data_dir, "--data")
    device = common.select_device("auto")
    checkpoints = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint)
    model, config = load_ensemble(checkpoints, device)
    if cases is None:
        cases = tdata.cases_in(data_dir, config, split) if split else None
        if cases is not None and not cases:
            raise LiverlabError(f"{data_dir}: no cases in split {split!r} with the checkpoint's split settings")
    elif not cases:
        raise LiverlabError(f"{data_dir}: no cases given to segment")
    slices = tdata.load(config, data_dir, "mri", None, all_slices=True, cases=None if cases is None else list(cases))
    return native_case_metrics(
        model, slices, data_dir, device, config.precision, config.unet.postprocess, out=out,
        tta=config.unet.tta if tta is None else tta,
    )
