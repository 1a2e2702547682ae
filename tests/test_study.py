"""The 12-patient CHAOS study as configured: design, shared translators, profiles (no training on real data)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, tiny_config

from liverlab.data.manifest import patient_splits
from liverlab.errors import LiverlabError
from liverlab.sweep.space import load_space
from liverlab.tracking.writer import NullTracker
from liverlab.train.data import train_patient_subset
from liverlab.train.pipeline import cached_essnet, essnet_key
from liverlab.train.judge import judge_config, judge_key

STUDY = REPO / "search_spaces" / "chaos_study.yaml"
CHAOS_MR = ["mri_1", "mri_2", "mri_3", "mri_5", "mri_8", "mri_10", "mri_13", "mri_15", "mri_19", "mri_20", "mri_21", "mri_22"]


@pytest.fixture(scope="module")
def study() -> list:
    loaded = load_space(STUDY)
    return [loaded.config(arm, seed) for arm, seed, _ in loaded.trials()]


def test_design_arms_seeds_and_equal_recipe(study) -> None:
    assert len(study) == 4 * 4 * 3
    assert {(c.synthesis, c.data.train_patients, c.seed) for c in study} == {
        (s, n, seed) for s in ("none", "intensity", "cyclegan", "essnet") for n in (1, 2, 4, 8) for seed in (0, 1, 2)}
    # One U-Net recipe, step count and evaluation for every arm: the configs differ only in the arm and seed.
    recipes = {c.unet.model_copy(update={"mixing_ratio": 0.0}).model_dump_json() for c in study}
    assert len(recipes) == 1 and study[0].unet.iterations == 1200
    assert {c.unet.mixing_ratio for c in study} == {1.0}  # (0 for `none`, set by the pipeline itself)
    assert {c.data.split.model_dump_json() for c in study} == {study[0].data.split.model_dump_json()}


def test_fixed_test_set_and_nested_subsets_of_training_patients(study) -> None:
    split = study[0].data.split
    groups = patient_splits(CHAOS_MR, split.val, split.test, split.seed, split.folds, split.fold)
    test = sorted(p for p, s in groups.items() if s == "test")
    train = sorted(p for p, s in groups.items() if s == "train")
    assert test == ["mri_13", "mri_19", "mri_21", "mri_3"] and len(train) == 8
    for seed in (0, 1, 2):
        subsets = [set(train_patient_subset(train, n, seed)) for n in (1, 2, 4, 8)]
        assert [len(s) for s in subsets] == [1, 2, 4, 8]
        assert subsets[0] < subsets[1] < subsets[2] < subsets[3] == set(train)


def test_two_translators_for_48_trials_and_one_judge(study) -> None:
    keys = {essnet_key(c) for c in study if c.synthesis in ("cyclegan", "essnet")}
    assert len(keys) == 2  # one CycleGAN, one EssNet, whatever the size or the seed
    assert len({judge_config(c).model_dump_json() for c in study}) == 1


def test_profiles(study) -> None:
    screen = load_space(STUDY, ["profile=screen"])
    assert screen.name == "chaos-study-screen" and screen.space.seeds == [0] and len(screen.trials()) == 16
    cfg = screen.config(screen.arms()[0], 0)
    assert (cfg.unet.iterations, cfg.essnet.epochs + cfg.essnet.decay_epochs) == (400, 10)
    assert cfg.unet.model == study[0].unet.model  # a shorter screen of the same recipe
    # A user's --set wins over the profile's, whatever the order on the command line.
    again = load_space(STUDY, ["unet.iterations=20", "profile=screen"])
    assert again.config(again.arms()[0], 0).unet.iterations == 20
    baseline = load_space(STUDY, ["profile=baseline"])
    assert [c.unet.iterations for c in (baseline.config(a, s) for a, s, _ in baseline.trials())] == [3600] * 3
    ups = load_space(STUDY, ["profile=upsampling"])
    assert {(c.stage, c.synthesis, c.essnet.generator.upsample) for c in (ups.config(a, 0) for a in ups.arms())} == {
        ("essnet", s, u) for s in ("cyclegan", "essnet") for u in ("transpose", "nearest")}
    gpu = load_space(STUDY, ["profile=gpu"]).config({"synthesis": "essnet", "data.train_patients": 1}, 0)
    assert (gpu.data.size, gpu.essnet.generator.ngf, gpu.essnet.epochs + gpu.essnet.decay_epochs) == (256, 64, 200)


def test_profile_errors_name_the_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(LiverlabError, match="no such profile.*screen, baseline"):
        load_space(STUDY, ["profile=fast"])
    (tmp_path / "chaos_study.yaml").write_text((REPO / "experiments" / "chaos_study.yaml").read_text())
    text = STUDY.read_text().replace("base: ../experiments/chaos_study.yaml", "base: chaos_study.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("    seeds: [0]\n    set: {unet.iterations: 400", "    seedz: [0]\n    set: {unet.iterations: 400"))
    with pytest.raises(LiverlabError, match=r"bad.yaml: profiles.screen.seedz: not a search-space key"):
        load_space(bad)
    bad.write_text(text.replace("set: {unet.iterations: 400", "set: {unet.iteration: 400"))
    with pytest.raises(LiverlabError, match=r"bad.yaml: profiles.screen.set.unet.iteration: unknown config key"):
        load_space(bad)


def test_translator_shared_across_seeds_and_sizes_with_a_fixed_essnet_seed(phantom_root, tmp_path) -> None:
    cache = tmp_path / "cache"
    common = {"data.cache_dir": str(tmp_path / "slices"), "essnet.seed": 0}
    a = tiny_config(phantom_root, stage="pipeline", synthesis="essnet", seed=0, **{"data.train_patients": 1, **common})
    b = tiny_config(phantom_root, stage="pipeline", synthesis="essnet", seed=2, **{"data.train_patients": 3, **common})
    own = tiny_config(phantom_root, stage="pipeline", synthesis="essnet", seed=2, **{"data.cache_dir": str(tmp_path / "slices")})
    assert essnet_key(a) == essnet_key(b) != essnet_key(own)
    assert essnet_key(own) == essnet_key(tiny_config(phantom_root, stage="pipeline", synthesis="essnet", seed=2,
                                                      **{"essnet.seed": 2, "data.cache_dir": str(tmp_path / "slices")}))
    _, _, reused_a = cached_essnet(a, cache, NullTracker())
    _, metrics_b, reused_b = cached_essnet(b, cache, NullTracker())
    assert (reused_a, reused_b) == (False, True) and metrics_b["time/essnet_wall_s"] > 0
    assert len(list((cache / "essnet").glob("*/done.json"))) == 1
    # The judge is trained on every training patient, whatever the trial's data.train_patients.
    assert judge_key(a) == judge_key(own)


def test_sweep_trial_resolves_relative_data_paths_against_the_driver(tmp_path, monkeypatch) -> None:
    """A Ray trial runs in its own working directory: the study's relative data.ct / data.import paths
    must still mean the directory `liverlab sweep` ran from (found by the study's smoke run)."""
    from liverlab.config import read_yaml
    from liverlab.sweep.trainable import META, trial_config

    loaded = load_space(STUDY)
    driver = tmp_path / "checkout"
    meta = {"base": loaded.base_raw, "base_dir": str(driver), "overrides": loaded.overrides(), "space_file": str(STUDY)}
    monkeypatch.chdir(tmp_path)  # the trial's working directory is elsewhere
    cfg = trial_config({META: meta, "arm": {"synthesis": "essnet", "data.train_patients": 2}, "seed": 1}, device="cpu")
    assert cfg.data.ct == str(driver / "data" / "chaos" / "ct") and cfg.data.mri == str(driver / "data" / "chaos" / "mri")
    assert cfg.data.import_[0].root == str((driver / ".." / "shared" / "data" / "chaos-ct-full").resolve())
    assert (cfg.seed, cfg.data.train_patients, cfg.device) == (1, 2, "cpu")
    assert read_yaml(loaded.base_path)["data"]["ct"] == "data/chaos/ct"  # (the base file itself stays relative)
