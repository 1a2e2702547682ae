"""Through-plane context for 2.5D segmentation: a slice and its z-neighbours as channels.

A 2D U-Net sees one axial slice. At the liver's dome and tip, and where the
left lobe thins out, the slice above and below say what a structure is;
with ``unet.model.context_slices = c`` the U-Net's input is the ``2c + 1``
slices ``z - c .. z + c`` of the same case, as channels (the centre slice in
the middle channel), and it still predicts the centre slice's mask.

Neighbours never cross cases. A neighbour that does not exist (beyond the
first or last slice, or a liver-free slice dropped by
``empty_slice_fraction`` < 1) is replaced by the nearest slice towards the
centre that does, so the edge slice is repeated ("edge" padding). The model's ``in_channels`` is ``2c + 1``; the same
neighbour rule is used in training, validation, testing and
``liverlab evaluate``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["context_rows", "context_images", "context_of"]


def context_rows(case_ids: Any, slice_index: Any, context: int) -> np.ndarray:
    """(N, 2c+1) int rows of each slice's neighbours ``z - c .. z + c`` in its own case.

    ``case_ids`` / ``slice_index`` are per slice (a ``SliceSet``'s fields).
    Column ``c`` is the slice itself; a missing neighbour is the nearest
    present slice towards the centre.
    """
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    cases = np.asarray(list(case_ids))
    z = np.asarray(slice_index, dtype=np.int64)
    n = len(z)
    if len(cases) != n:
        raise ValueError(f"case_ids ({len(cases)}) and slice_index ({n}) differ in length")
    rows = np.empty((n, 2 * context + 1), dtype=np.int64)
    rows[:, context] = np.arange(n)
    lookup = {(c, int(k)): i for i, (c, k) in enumerate(zip(cases.tolist(), z.tolist()))}
    for step in (-1, 1):
        for o in range(1, context + 1):
            col = context + step * o
            prev = rows[:, col - step]  # the neighbour one step closer to the centre
            for i in range(n):
                rows[i, col] = lookup.get((cases[i], int(z[i]) + step * o), prev[i])
    return rows


def context_images(slice_set: Any, context: int, rows: np.ndarray | None = None) -> np.ndarray:
    """(N, 2c+1, H, W) float32 inputs for ``rows`` of ``slice_set`` (all rows when None).

    The neighbour table is built only over the cases ``rows`` belong to, so
    predicting a set one case at a time stays linear in its slices.
    """
    cases = np.asarray(list(slice_set.case_ids))
    rows = np.arange(len(cases)) if rows is None else np.asarray(rows)
    scope = np.flatnonzero(np.isin(cases, np.unique(cases[rows])))  # every slice of those cases, ascending
    table = scope[context_rows(cases[scope], np.asarray(slice_set.slice_index)[scope], context)]
    return np.asarray(slice_set.images[table[np.searchsorted(scope, rows)]], dtype=np.float32)


def context_of(model: Any) -> int:
    """Context slices a model expects: ``(in_channels - 1) // 2`` (0 for a plain 2D model)."""
    c = int(getattr(model, "in_channels", 1))
    if c % 2 == 0:
        raise ValueError(f"a 2.5D model has an odd number of input channels (2c + 1), got {c}")
    return (c - 1) // 2
