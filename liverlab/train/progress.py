"""A rich progress bar for interactive runs; silent inside sweeps and tests."""

from __future__ import annotations

from typing import Any


class EpochProgress:
    """``epochs`` rounds of ``steps`` optimiser steps; ``unit`` names a round in the text.

    EssNet counts epochs; the U-Net counts iterations and reports every ``val_every``
    of them, so its rounds are printed as "iteration N" (the last step of the round).
    """

    def __init__(self, stage: str, epochs: int, steps: int, enabled: bool = True, unit: str = "epoch") -> None:
        self.enabled = enabled
        self.unit = unit
        self.steps = steps
        self.stage = stage
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
        self.task = self.progress.add_task(stage, total=epochs * steps, info="")

    def step(self, epoch: int, step: int, loss: float) -> None:
        if self.enabled:
            self.progress.update(
                self.task, completed=epoch * self.steps + step, info=f"{self._where(epoch, step)} loss {loss:.4f}"
            )

    def epoch_done(self, epoch: int, metrics: dict[str, Any]) -> None:
        if self.enabled:
            # Validation metrics when there are any; otherwise (no validation patients) the training loss.
            shown = {k: v for k, v in metrics.items() if k.startswith("val/")}
            if not shown:
                shown = {k: v for k, v in metrics.items() if k in ("train/loss", "train/lr")}
            text = " ".join(f"{k}={v:.4f}" for k, v in shown.items())
            self.progress.console.print(f"{self.stage} {self._where(epoch, self.steps)}: {text}")

    def _where(self, epoch: int, step: int) -> str:
        if self.unit == "iteration":
            return f"iteration {epoch * self.steps + step}"
        return f"{self.unit} {epoch + 1}"

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()
