"""A rich progress bar for interactive runs; silent inside sweeps and tests."""

from __future__ import annotations

from typing import Any


class IterationProgress:
    """A bar over ``iterations`` optimiser steps, and one summary line per validation.

    Positions are counted in steps done (``it``). The U-Net prints them as
    "iteration N"; EssNet, which validates once per epoch of ``per_epoch``
    steps, as "epoch N".
    """

    def __init__(self, stage: str, iterations: int, enabled: bool = True, per_epoch: int | None = None) -> None:
        self.enabled = enabled
        self.stage = stage
        self.per_epoch = per_epoch
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        )
        self.progress.start()
        self.task = self.progress.add_task(stage, total=iterations, info="")

    def step(self, it: int, loss: float) -> None:
        """After step ``it`` (1-based: steps done so far)."""
        if self.enabled:
            self.progress.update(self.task, completed=it, info=f"{self._where(it)} loss {loss:.4f}")

    def report(self, it: int, metrics: dict[str, Any]) -> None:
        """The summary line of the validation after step ``it``."""
        if self.enabled:
            # Validation metrics when there are any; otherwise (no validation patients) the training loss.
            shown = {k: v for k, v in metrics.items() if k.startswith("val/")}
            if not shown:
                shown = {k: v for k, v in metrics.items() if k in ("train/loss", "train/lr")}
            text = " ".join(f"{k}={v:.4f}" for k, v in shown.items())
            self.progress.console.print(f"{self.stage} {self._where(it)}: {text}")

    def _where(self, it: int) -> str:
        if self.per_epoch:
            return f"epoch {-(-it // self.per_epoch)}"
        return f"iteration {it}"

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()
