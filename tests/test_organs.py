"""unet.organs: other organs imported as labels 2.. and learnt as auxiliary classes, the liver still label 1.

Known answers on literal tensors (the loss, the liver-only view of a K-class
model), the import and cache on tiny NIfTI files, and one real training run
on phantoms whose labels gain an organ: its checkpoint has 3 outputs, and
everything after it (test metrics, segment, evaluate) sees the liver only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import tiny_config
from data_helpers import write_pair

from liverlab.data import layout
from liverlab.data.cache import load_slices
from liverlab.data.importers import ensure_imported, import_nifti
from liverlab.data.nifti import load_volume, save_volume
from liverlab.errors import LiverlabError
from liverlab.losses import dice_ce_loss, soft_dice_loss
from liverlab.models import LiverOnly, UNet, liver_only

# ----------------------------------------------------------------------------- labels and import


def test_organ_labels_number_organs_after_the_liver_in_order():
    assert layout.organ_labels(("spleen", "kidneys")) == {"background": 0, "liver": 1, "spleen": 2, "kidneys": 3}
    assert layout.organ_labels(()) == layout.LIVER_ONLY
    for bad in (("liver",), ("Spleen",), ("spleen", "spleen"), ("2kidney",)):
        with pytest.raises(LiverlabError):
            layout.organ_labels(bad)


def test_import_keeps_the_named_organs_as_2_3_and_the_rest_as_background(tmp_path):
    src = tmp_path / "src"
    img, lab = write_pair(src, "1")  # liver 1 in a block, another organ (7) elsewhere
    raw = np.asarray(nib.load(lab).dataobj).copy()
    raw[0:2, 8:10, 4:6] = 9  # a third structure, not asked for
    save_volume(lab, raw, nib.load(lab).affine)
    out = import_nifti(str(src / "image_*.nii.gz"), str(src / "label_*.nii.gz"), "mri", 1, tmp_path / "ds",
                       progress=False, organs={"spleen": [7]})
    assert layout.dataset_labels(out) == {"background": 0, "liver": 1, "spleen": 2}
    (_, image, label), = layout.list_cases(out)
    vol = load_volume(image, label)
    got = np.rint(vol.label).astype(int)
    assert np.unique(got).tolist() == [0, 1, 2]
    assert (got == 1).sum() == (raw == 1).sum() and (got == 2).sum() == (raw == 7).sum()  # 9 became background
    # Appending liver-only cases to it would mix two labellings: refused, naming the folder.
    write_pair(tmp_path / "src2", "2")
    with pytest.raises(LiverlabError, match="labelled"):
        import_nifti(str(tmp_path / "src2" / "image_*.nii.gz"), str(tmp_path / "src2" / "label_*.nii.gz"), "mri", 1,
                     out, progress=False)


def test_organ_values_that_clash_are_refused(tmp_path):
    write_pair(tmp_path / "src", "1")
    for organs in ({"spleen": [1]}, {"spleen": [7], "kidneys": [7]}, {"spleen": [0]}):
        with pytest.raises(LiverlabError, match="organs"):
            import_nifti(str(tmp_path / "src" / "image_*.nii.gz"), str(tmp_path / "src" / "label_*.nii.gz"), "mri",
                         1, tmp_path / "ds", progress=False, organs=organs)
    assert not (tmp_path / "ds").exists()  # nothing half-written


def test_a_liver_only_import_is_stale_once_the_config_asks_for_organs(tmp_path):
    write_pair(tmp_path / "src", "1")
    spec = {"kind": "nifti", "images": str(tmp_path / "src" / "image_*.nii.gz"),
            "labels": str(tmp_path / "src" / "label_*.nii.gz"), "modality": "mri", "liver_label": 1}
    target = ensure_imported(tmp_path / "mri", [spec], log=False)
    with pytest.raises(LiverlabError, match="delete"):
        ensure_imported(target, [{**spec, "organs": {"spleen": [7]}}], log=False)


def test_config_validates_organs_and_refuses_them_with_synthetic_mixing(phantom_root):
    from liverlab.config import config_from_dict, read_yaml

    with pytest.raises(LiverlabError, match="organs needs mixing_ratio 0"):
        tiny_config(phantom_root, **{"unet.organs": True, "unet.mixing_ratio": 0.5, "unet.synthetic": "x"})
    raw = read_yaml(Path(__file__).resolve().parents[1] / "experiments" / "chaos_unet.yaml")
    raw["data"]["import"]["organs"] = {"liver": [4]}
    with pytest.raises(LiverlabError, match="organs: names"):
        config_from_dict(raw, {}, source="chaos_unet.yaml")


# ----------------------------------------------------------------------------- loss and liver-only view


def test_soft_dice_of_the_liver_with_three_classes_known_answer():
    # Two pixels; softmax of (0, ln 3, ln 4)/(0, 0, 0) gives p_liver 3/8 and 1/3; the liver is pixel 0 only.
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3.0), 0.0]], [[math.log(4.0), 0.0]]]])  # (1, 3, 1, 2)
    target = torch.tensor([[[1, 2]]])
    p0, p1 = 3 / 8, 1 / 3
    want = 1 - (2 * p0 + 1e-5) / (p0 + p1 + 1 + 1e-5)
    assert soft_dice_loss(logits, target).item() == pytest.approx(want, rel=1e-6)
    # Cross-entropy counts the organ class: -(ln 3/8 + ln 1/3) / 2.
    ce = -(math.log(p0) + math.log(1 / 3)) / 2
    assert dice_ce_loss(logits, target).item() == pytest.approx(want + ce, rel=1e-6)
    with pytest.raises(ValueError, match=">= 2 classes"):
        soft_dice_loss(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 2, dtype=torch.long))


def test_liver_only_gives_back_the_liver_probability_exactly():
    model = UNet(in_channels=1, out_channels=4, depth=2, base_features=4).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1)
        two = torch.softmax(LiverOnly(model)(x), dim=1)
    assert two.shape == (2, 2, 8, 8)
    assert torch.allclose(two[:, 1], p[:, 1], atol=1e-6)
    assert torch.allclose(two[:, 0], 1 - p[:, 1], atol=1e-6)
    # Liver where p_liver > 0.5, even where another organ is the argmax of the K classes.
    assert torch.equal(two.argmax(1) == 1, p[:, 1] > 0.5)
    plain = UNet(in_channels=1, out_channels=2, depth=2, base_features=4)
    assert liver_only(plain) is plain and isinstance(liver_only(model), LiverOnly)
    with pytest.raises(ValueError, match="out_channels"):
        LiverOnly(plain)


# ----------------------------------------------------------------------------- cache and training


@pytest.fixture(scope="module")
def organ_root(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The phantom MRI relabelled with an 'organ' (source value 4) beside the liver, imported with organs."""
    src = tmp_path_factory.mktemp("organ_src")
    mri = phantom_root / "mri"
    for case, img, lab in layout.list_cases(mri):
        vol = load_volume(img, lab)
        label = np.asarray(vol.label, dtype=np.uint8).copy()
        organ = np.zeros_like(label, dtype=bool)
        organ[2:10, 20:28, :] = True  # a block in every slice, where the phantom liver is not
        label[organ & (label == 0)] = 4
        save_volume(src / f"image_{case.split('_')[-1]}.nii.gz", vol.image, vol.affine)
        save_volume(src / f"label_{case.split('_')[-1]}.nii.gz", label, vol.affine)
    root = tmp_path_factory.mktemp("organ_root")
    import_nifti(str(src / "image_*.nii.gz"), str(src / "label_*.nii.gz"), "mri", 1, root / "mri", progress=False,
                 organs={"spleen": [4]})
    (root / "ct").symlink_to(phantom_root / "ct")
    return root


def test_cache_keeps_organs_only_when_asked(organ_root):
    liver = load_slices(organ_root / "mri", "mri", size=32)
    both = load_slices(organ_root / "mri", "mri", size=32, organs=True)
    assert liver.key != both.key
    assert np.unique(np.asarray(liver.masks)).tolist() == [0, 1]
    assert np.unique(np.asarray(both.masks)).tolist() == [0, 1, 2]
    assert np.array_equal(np.asarray(liver.masks) == 1, np.asarray(both.masks) == 1)  # the same liver


def test_training_with_organs_learns_three_classes_and_reports_the_liver(organ_root, tmp_path):
    from liverlab.infer.evaluate import evaluate_files
    from liverlab.infer.segment import segment_dataset
    from liverlab.train.common import load_checkpoint
    from liverlab.train.unet import train_unet

    config = tiny_config(organ_root, **{"unet.organs": True, "unet.iterations": 4, "unet.val_every": 4})
    metrics = train_unet(config, workdir=tmp_path)
    weights = load_checkpoint(tmp_path / "best.pt")
    assert weights["out_channels"] == 3 and weights["model"]["head.weight"].shape[0] == 3
    assert 0.0 <= metrics["val/iou"] <= 1.0 and 0.0 <= metrics["test/iou"] <= 1.0
    rows = segment_dataset(tmp_path / "best.pt", organ_root / "mri", tmp_path / "pred", split="test")
    assert rows and all(0.0 <= r["iou"] <= 1.0 for r in rows)
    for r in rows:  # written masks are the liver alone, scored against label 1 of the multi-organ labels
        pred = tmp_path / "pred" / f"{r['case_id']}.nii.gz"
        assert set(np.unique(nib.load(pred).get_fdata())) <= {0.0, 1.0}
        (again,) = evaluate_files(pred, layout.label_path(organ_root / "mri", r["case_id"]))
        assert again["iou"] == pytest.approx(r["iou"])


def test_organs_on_a_liver_only_dataset_is_a_clear_error(phantom_root, tmp_path):
    from liverlab.train.unet import train_unet

    config = tiny_config(phantom_root, **{"unet.organs": True})
    with pytest.raises(LiverlabError, match="dataset.json"):
        train_unet(config, workdir=tmp_path)
    assert not (tmp_path / "best.pt").exists()


def test_dataset_json_lists_the_organs(organ_root):
    data = json.loads((organ_root / "mri" / "dataset.json").read_text())
    assert data["labels"] == {"background": 0, "liver": 1, "spleen": 2}
