"""Ensembles of U-Nets (``liverlab.infer.ensemble``, ``liverlab evaluate --checkpoint A --checkpoint B``):
known-answer probability averaging, member checks, and the command on phantoms."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from liverlab.cli import main
from liverlab.config import config_from_dict
from liverlab.errors import LiverlabError
from liverlab.infer.ensemble import Ensemble
from liverlab.infer.evaluate import native_case_metrics
from liverlab.infer.segment import load_ensemble
from liverlab.train import common
from liverlab.train import data as tdata
from liverlab.train.unet import build_unet


class _Constant(torch.nn.Module):
    """Logits ``values`` at every pixel: (B, C, H, W) -> (B, K, H, W)."""

    def __init__(self, values: list[float], in_channels: int = 1) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, len(values)
        self.values = torch.tensor(values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return self.values.view(1, -1, 1, 1).expand(b, -1, h, w).clone()


def test_ensemble_averages_probabilities_not_logits() -> None:
    # p_a = (0.5, 0.5), p_b = (0.25, 0.75): the mean is (0.375, 0.625). Averaging logits instead would give
    # softmax(0, ln(3) / 2) = (0.366, 0.634).
    ens = Ensemble([_Constant([0.0, 0.0]), _Constant([0.0, math.log(3.0)])])
    probs = torch.softmax(ens(torch.zeros(2, 1, 4, 4)), dim=1)
    assert probs.shape == (2, 2, 4, 4)
    assert torch.allclose(probs[:, 0], torch.full((2, 4, 4), 0.375), atol=1e-6)
    assert torch.allclose(probs[:, 1], torch.full((2, 4, 4), 0.625), atol=1e-6)
    # A confident member outvotes an unsure one: (0.9, 0.1) and (0.4, 0.6) -> class 0.
    ens = Ensemble([_Constant([math.log(9.0), 0.0]), _Constant([0.0, math.log(1.5)])])
    assert int(ens(torch.zeros(1, 1, 2, 2)).argmax(1).unique()) == 0
    assert ens.in_channels == 1 and ens.out_channels == 2


def test_one_member_ensemble_is_the_model() -> None:
    torch.manual_seed(0)
    cfg = _config(Path("/nonexistent"))
    model = build_unet(cfg).eval()
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(torch.softmax(Ensemble([model])(x), 1), torch.softmax(model(x), 1), atol=1e-6)


def test_members_must_agree_on_channels() -> None:
    with pytest.raises(ValueError, match="in_channels, out_channels"):
        Ensemble([_Constant([0.0, 0.0]), _Constant([0.0, 0.0], in_channels=3)])
    with pytest.raises(ValueError, match="out_channels"):
        Ensemble([_Constant([0.0, 0.0]), _Constant([0.0, 0.0, 0.0])])
    with pytest.raises(ValueError, match="at least one model"):
        Ensemble([])


def _config(root: Path, size: int = 32, split_seed: int = 0):
    split = {"val": 0.2, "test": 0.2, "seed": split_seed}
    return config_from_dict({
        "name": "ens", "data": {"root": str(root), "size": size, "split": split},
        "unet": {"model": {"depth": 2, "base_features": 4}},
    })


def _checkpoint(path: Path, root: Path, seed: int, size: int = 32, split_seed: int = 0) -> Path:
    """A real U-Net with seeded random weights saved as best.pt, with its training patients."""
    cfg = _config(root, size, split_seed)
    table = tdata.split_table(root / "mri", cfg)
    torch.manual_seed(seed)
    state = {"kind": "unet_weights", "model": build_unet(cfg).state_dict(), "config": cfg.model_dump(mode="json"),
             "train_patients": sorted(set(table.filter(table["split"] != "test")["patient_id"].to_list()))}
    path.parent.mkdir(parents=True, exist_ok=True)
    common.atomic_torch_save(state, path)
    return path


def test_members_must_see_the_same_input(phantom_root, tmp_path) -> None:
    a = _checkpoint(tmp_path / "a" / "best.pt", phantom_root, seed=0)
    b = _checkpoint(tmp_path / "b" / "best.pt", phantom_root, seed=1, size=64)
    with pytest.raises(LiverlabError, match=r"b/best.pt: data.size = 64, but .*a/best.pt has 32"):
        load_ensemble([a, b], torch.device("cpu"))
    model, config = load_ensemble([a], torch.device("cpu"))
    assert not isinstance(model, Ensemble) and config.data.size == 32


def test_evaluate_scores_the_ensemble_of_several_checkpoints(phantom_root, tmp_path, capsys) -> None:
    a = _checkpoint(tmp_path / "a" / "best.pt", phantom_root, seed=0)
    b = _checkpoint(tmp_path / "b" / "best.pt", phantom_root, seed=1)
    assert main(["evaluate", "--checkpoint", str(a), "--checkpoint", str(b), "--data", str(phantom_root / "mri"),
                 "--out", str(tmp_path / "pred"), "--json"]) == 0
    cap = capsys.readouterr()
    result = json.loads(cap.out)
    assert result["split"] == "test" and result["n_cases"] == 1
    assert "ensemble of 2 checkpoints" in cap.err
    # The same number as the mean of the two models' probabilities computed here.
    model, config = load_ensemble([a, b], torch.device("cpu"))
    cases = tdata.cases_in(phantom_root / "mri", config, "test")
    slices = tdata.load(config, phantom_root / "mri", "mri", None, all_slices=True, cases=cases)
    rows = native_case_metrics(model, slices, phantom_root / "mri", torch.device("cpu"))
    assert [r["case_id"] for r in result["cases"]] == [r["case_id"] for r in rows]
    assert result["cases"][0]["iou"] == pytest.approx(rows[0]["iou"])
    assert (tmp_path / "pred" / f"{cases[0]}.nii.gz").is_file()


def test_ensemble_members_that_saw_every_case_between_them_is_an_error(phantom_root, tmp_path, capsys) -> None:
    mri = phantom_root / "mri"
    tests = {s: set(tdata.cases_in(mri, _config(phantom_root, split_seed=s), "test")) for s in range(8)}
    s0, s1 = next((x, y) for x in tests for y in tests if not tests[x] & tests[y])
    a = _checkpoint(tmp_path / "a" / "best.pt", phantom_root, seed=0, split_seed=s0)
    b = _checkpoint(tmp_path / "b" / "best.pt", phantom_root, seed=1, split_seed=s1)
    assert main(["evaluate", "--checkpoint", str(a), "--checkpoint", str(b), "--data", str(phantom_root / "mri"),
                 "--split", "test", "--out", str(tmp_path / "pred")]) != 0
    err = capsys.readouterr().err
    assert "no case is in every checkpoint's --split test choice" in err and "Traceback" not in err
    assert not (tmp_path / "pred").exists() or not list((tmp_path / "pred").glob("*.nii.gz"))
