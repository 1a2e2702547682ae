"""Shared fixtures: paths to ../shared/data (skip with a reason when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    return SHARED_DATA


TINY = REPO / "experiments" / "tiny.yaml"


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six tiny phantom patients (32 x 32 x 8), both modalities, made once per session."""
    from liverlab.data.phantoms import generate_phantoms

    root = tmp_path_factory.mktemp("phantoms") / "tiny"
    generate_phantoms(root, patients=6, size=32, slices=8, seed=0, progress=False)
    return root


def tiny_config(root: Path, **overrides: object):
    """experiments/tiny.yaml pointed at ``root``, with dotted overrides."""
    from liverlab.config import config_from_dict, read_yaml

    raw = read_yaml(TINY)
    raw["data"]["root"] = str(root)
    raw["data"].pop("phantom", None)
    return config_from_dict(raw, dict(overrides), source=str(TINY))


class ReportLog:
    """A ``report`` callback that keeps what it was given (what the tests inspect)."""

    def __init__(self) -> None:
        self.metrics: list[dict] = []
        self.checkpoints: list[str | None] = []

    def __call__(self, metrics: dict, checkpoint: str | None = None) -> None:
        self.metrics.append(dict(metrics))
        self.checkpoints.append(checkpoint)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (never a bare ray.init(): see STACK-NOTES)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
