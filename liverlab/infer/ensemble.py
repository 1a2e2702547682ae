"""Ensembles of trained U-Nets: the mean of their class probabilities (nnU-Net's ensembling).

``Ensemble`` is an ``nn.Module`` whose output is ``log(mean_k softmax(model_k(x)))``:
a softmax of it gives back the mean probability, so every caller that
softmaxes or argmaxes a model's logits (evaluation, ``liverlab evaluate``,
test-time augmentation) uses an ensemble unchanged. ``load_ensemble`` loads
the members from ``best.pt`` files (``liverlab.infer.segment``) and refuses
members that would not see the same input (slice size, spacing,
normalisation, 2.5D context, classes) or would be post-processed differently
(``member_mismatch``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

#: Config keys that must agree between members: they decide what a member is given and how its mask is
#: post-processed; a member that differs would be scored on another input or another mask.
MUST_AGREE = (
    "data.size", "data.spacing_mm", "data.mri_percentiles", "unet.model.context_slices", "unet.postprocess",
)


class Ensemble(torch.nn.Module):
    """``log`` of the mean softmax of ``models`` (each (B, C, H, W) -> (B, K, H, W) logits)."""

    def __init__(self, models: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        if len(models) < 1:
            raise ValueError("an ensemble needs at least one model")
        shapes = {(getattr(m, "in_channels", None), getattr(m, "out_channels", None)) for m in models}
        if len(shapes) != 1:
            raise ValueError(f"ensemble members disagree on (in_channels, out_channels): {sorted(shapes, key=str)}")
        self.members = torch.nn.ModuleList(models)
        self.in_channels, self.out_channels = next(iter(shapes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(m(x).float(), dim=1) for m in self.members]).mean(0)
        return probs.clamp_min(1e-12).log()  # softmax(log p) = p, since p sums to 1 over classes


def member_mismatch(first: Any, other: Any) -> tuple[str, Any, Any] | None:
    """The first ``MUST_AGREE`` key on which config ``other`` differs from ``first``: (key, other's, first's)."""
    for key in MUST_AGREE:
        if _get(other, key) != _get(first, key):
            return key, _get(other, key), _get(first, key)
    return None


def _get(config: Any, dotted: str) -> Any:
    value = config
    for part in dotted.split("."):
        value = getattr(value, part, None)
    return value.model_dump() if hasattr(value, "model_dump") else value
