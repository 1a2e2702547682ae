"""A rich progress bar for interactive runs; silent inside sweeps and tests."""

from __future__ import annotations

from typing import Any


class EpochProgress:
    def __init__(self, stage: str, epochs: int, steps: int, enabled: bool = True) -> None:
        self.enabled = enabled
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
                self.task, completed=epoch * self.steps + step, info=f"epoch {epoch + 1} loss {loss:.4f}"
            )

    def epoch_done(self, epoch: int, metrics: dict[str, Any]) -> None:
        if self.enabled:
            shown = {k: v for k, v in metrics.items() if k.startswith("val/")}
            text = " ".join(f"{k}={v:.4f}" for k, v in shown.items())
            self.progress.console.print(f"{self.stage} epoch {epoch + 1}: {text}")

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()
