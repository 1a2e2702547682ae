"""After a driver's kill -9, Tune's trial list and the searcher's state may come from different saves.

Tune uploads the files of one experiment-state save in parallel, so a driver
killed mid-upload can leave a searcher state newer than the trial list (a
slot handed out to a trial Tune no longer holds: without care it never runs)
or older (a slot Tune holds would be handed out twice). A real Tune run makes
the experiment folder; the test then edits it into each of those states and
restores ``ArmSearcher`` from it the way ``Tuner.restore`` does.
"""

from __future__ import annotations

import json
from pathlib import Path

from ray import tune
from ray.tune.search import Searcher

from liverlab.sweep.search import ArmSearcher
from liverlab.sweep.space import load_space
from test_sweep import _write_space


def _finished_experiment(tmp_path: Path, phantom_root: Path) -> tuple[object, Path]:
    space = _write_space(tmp_path, phantom_root, "slots", arms={"unet.model.norm": ["batch", "instance"]}, seeds=[0, 1])
    loaded = load_space(str(space), [])

    def trainable(config: dict) -> None:  # nested: Ray pickles it by value
        tune.report({"val/iou": 0.5})

    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=ArmSearcher(loaded, max_concurrent=2), num_samples=-1,
                                    metric="val/iou", mode="max"),
        run_config=tune.RunConfig(name="slots", storage_path=str(tmp_path / "ray"), verbose=0),
    )
    results = tuner.fit()
    assert sorted(r.config["slot"] for r in results) == [0, 1, 2, 3]  # the searcher ended the sweep itself
    return loaded, tmp_path / "ray" / "slots"


def test_restored_searcher_hands_out_exactly_the_slots_tune_does_not_hold(tmp_path, phantom_root, ray_session):
    loaded, exp = _finished_experiment(tmp_path, phantom_root)

    # Tune's trial list from an earlier save than the searcher's: the trial of slot 2 is missing.
    state_file = max(exp.glob("experiment_state-*.json"))
    original = state_file.read_text()
    state = json.loads(original)
    lost = next(json.loads(t[0])["config"] for t in state["trial_data"] if json.loads(t[0])["config"]["slot"] == 2)
    state["trial_data"] = [t for t in state["trial_data"] if json.loads(t[0])["config"]["slot"] != 2]
    state_file.write_text(json.dumps(state))
    searcher = ArmSearcher(loaded, max_concurrent=2)
    searcher.restore_from_dir(str(exp))
    again = searcher.suggest("new00001")
    assert (again["slot"], again["arm_id"], again["seed"]) == (2, lost["arm_id"], lost["seed"])
    assert searcher.suggest("new00002") is None  # nothing else to do while slot 2 runs
    searcher.on_trial_complete("new00002")  # an id it never handed out changes nothing
    assert searcher.suggest("new00003") is None
    searcher.on_trial_complete("new00001", result={"val/iou": 0.5})
    assert searcher.suggest("new00004") == Searcher.FINISHED

    # The searcher's state from an earlier save than Tune's trial list: it had handed out slots 0-2 only,
    # while Tune holds the finished trials of all four.
    state_file.write_text(original)
    earlier = ArmSearcher(loaded, max_concurrent=4)
    assert [earlier.suggest(f"old0000{i}")["slot"] for i in range(3)] == [0, 1, 2]
    earlier.save_to_dir(str(exp), session_str="zzzz")  # the newest searcher file of the folder
    restored = ArmSearcher(loaded, max_concurrent=2)
    restored.restore_from_dir(str(exp))
    assert restored.suggest("new00005") == Searcher.FINISHED  # slot 3 is not handed out a second time
