"""Stage name -> the function that runs it: one table for ``liverlab train`` and the sweep trainable.

Every entry takes the same arguments, so no caller branches on the stage.
The imports sit inside the entries: choosing a stage imports nothing heavy
(``liverlab --help`` and the sweep driver stay fast); running one imports
torch and the stage's module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from liverlab.config import ExperimentConfig
    from liverlab.train.common import Report


class StageFn(Protocol):
    def __call__(
        self, config: ExperimentConfig, report: Report, tracker: Any, workdir: Path,
        cache_root: str | Path | None, progress: bool,
    ) -> dict[str, float]: ...


def _essnet(config: ExperimentConfig, report: Report, tracker: Any, workdir: Path,
            cache_root: str | Path | None, progress: bool) -> dict[str, float]:
    from liverlab.train.essnet import train_essnet

    return train_essnet(config, report, tracker, workdir, progress=progress)


def _unet(config: ExperimentConfig, report: Report, tracker: Any, workdir: Path,
          cache_root: str | Path | None, progress: bool) -> dict[str, float]:
    from liverlab.train.unet import train_unet

    return train_unet(config, report, tracker, workdir, progress=progress)


def _pipeline(config: ExperimentConfig, report: Report, tracker: Any, workdir: Path,
              cache_root: str | Path | None, progress: bool) -> dict[str, float]:
    from liverlab.train.pipeline import run_pipeline

    return run_pipeline(config, report, tracker, workdir, cache_root=cache_root, progress=progress)


#: ``config.stage`` -> its function; the keys are the config's ``stage`` values.
STAGES: dict[str, StageFn] = {"essnet": _essnet, "unet": _unet, "pipeline": _pipeline}


def run_stage(
    config: ExperimentConfig,
    report: Report | None = None,
    tracker: Any = None,
    workdir: str | Path = ".",
    cache_root: str | Path | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Run ``config.stage`` and return its final metrics.

    ``report`` None drops the reports (plain CLI runs show a progress bar
    instead); ``cache_root`` is where the pipeline keeps its translators and
    synthetic sets (default ``workdir/cache``); the other stages ignore it.
    """
    if report is None:
        from liverlab.train.common import no_report

        report = no_report
    return STAGES[config.stage](config, report, tracker, Path(workdir), cache_root, progress)
