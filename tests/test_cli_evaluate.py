"""`napari-vnet evaluate`: value mapping (--map), the absent-label warning, and folders of
predictions against folders of references (per case and class, mean/std, JSON and CSV)."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest

from napari_vnet.cli import main
from napari_vnet.io import Volume, write_volume
from napari_vnet.workflows.evaluate import EvaluationError, apply_map, parse_map

SPACING = (2.0, 1.0, 0.5)


def labels_volume(shape=(10, 24, 20)):
    gt = np.zeros(shape, np.uint8)
    gt[2:8, 4:16, 3:12] = 5  # "liver"
    gt[3:6, 17:22, 13:18] = 1  # "spleen"
    return gt


def save(path, array):
    return write_volume(Volume(array, spacing=SPACING), path, is_label=True)


def last_json(text):
    return json.loads(text.strip().splitlines()[-1])


def test_parse_and_apply_map():
    assert parse_map("1=5, 2=1") == {1: 5, 2: 1}
    for bad in ("1:5", "a=1", "1=5,1=6", "-1=2"):
        with pytest.raises(EvaluationError):
            parse_map(bad)
    a = np.array([0, 1, 2, 3], np.uint8)
    np.testing.assert_array_equal(apply_map(a, {1: 2, 2: 1}), [0, 2, 1, 3])  # a swap


def test_map_scores_other_values_and_absent_labels_warn(tmp_path, capsys, caplog):
    gt = labels_volume()
    pred = np.zeros_like(gt)
    pred[gt == 5] = 1  # the prediction calls the liver 1 ...
    pred[gt == 1] = 2  # ... and the spleen 2
    gt_path, pred_path = save(tmp_path / "gt.nii.gz", gt), save(tmp_path / "pred.nrrd", pred)

    with caplog.at_level(logging.WARNING, logger="napari_vnet"):
        rc = main(["evaluate", str(pred_path), str(gt_path), "--labels", "5,1", "--json"])
    out = last_json(capsys.readouterr().out)
    assert rc == 0
    assert out["dice"] == {"5": 0.0, "1": 0.0}
    assert out["absent"] == {"pred": [5], "gt": []}
    text = caplog.text
    assert "label 5 is absent from PRED" in text and "--map" in text

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="napari_vnet"):
        rc = main(["evaluate", str(pred_path), str(gt_path), "--map", "1=5,2=1", "--json"])
    out = last_json(capsys.readouterr().out)
    assert rc == 0
    assert out["dice"] == {"1": 1.0, "5": 1.0} and out["hd95_mm"] == {"1": 0.0, "5": 0.0}
    assert out["absent"] == {"pred": [], "gt": []} and out["map"] == {"1": 5, "2": 1}
    assert "absent" not in caplog.text

    # a requested label in neither map: warned for both sides
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="napari_vnet"):
        rc = main(["evaluate", str(pred_path), str(gt_path), "--map", "1=5", "--labels", "7,5"])
    assert rc == 0
    assert "label 7 is absent from PRED" in caplog.text
    assert "label 7 is absent from GT" in caplog.text
    assert "check --map" in caplog.text
    assert main(["evaluate", str(pred_path), str(gt_path), "--map", "1-5"]) == 1
    assert "PRED=GT" in capsys.readouterr().err


def test_folders_per_case_and_class_with_mean_std(tmp_path, capsys, caplog):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    gt = labels_volume()
    expected = {}
    for i, name in enumerate(("case1", "case2", "sub/case3")):
        pred = gt.copy()
        pred[2 : 2 + i, :, :12] = 0  # drop i slices of the liver: its Dice falls with i
        (gt_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (pred_dir / name).parent.mkdir(parents=True, exist_ok=True)
        save(gt_dir / f"{name}.nii.gz", gt)
        save(pred_dir / f"{name}.nrrd", pred)  # another format: pairs by name
        n5, lost = np.count_nonzero(gt == 5), np.count_nonzero(gt[2 : 2 + i] == 5)
        expected[name] = 2 * (n5 - lost) / (2 * n5 - lost)
    save(gt_dir / "only_gt.nii.gz", gt)  # no prediction: listed, not fatal
    (gt_dir / "labels.json").write_text('{"5": "liver", "1": "spleen"}')  # class names
    (gt_dir / "sub" / "labels.json").write_text('{"5": "liver", "1": "spleen"}')
    with caplog.at_level(logging.WARNING, logger="napari_vnet"):
        rc = main(["evaluate", str(pred_dir), str(gt_dir), "--labels", "5,1", "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "no prediction for" in caplog.text and "only_gt" in caplog.text
    summary = json.loads((pred_dir / "evaluation.json").read_text())
    assert summary["cases"] == 3 and summary["unpaired_gt"][0].endswith("only_gt.nii.gz")
    for name, dice in expected.items():
        assert summary["per_case"][name]["dice"]["5"] == pytest.approx(dice, abs=1e-6)
        assert summary["per_case"][name]["dice"]["1"] == 1.0
    liver = summary["per_label"]["5"]
    assert liver["cases"] == 3
    assert liver["dice_mean"] == pytest.approx(np.mean(list(expected.values())), abs=1e-6)
    assert liver["dice_std"] == pytest.approx(np.std(list(expected.values())), abs=1e-6)
    assert summary["per_label"]["1"]["dice_std"] == 0.0
    assert liver["name"] == "liver" and summary["per_case"]["case1"]["names"]["1"] == "spleen"
    assert last_json(captured.out)["per_label"] == summary["per_label"]
    rows = list(csv.DictReader(open(pred_dir / "evaluation.csv", encoding="utf-8")))
    assert len(rows) == 3 * 2
    assert {(r["case"], r["label"], r["name"]) for r in rows} == {
        (c, v, n) for c in expected for v, n in (("5", "liver"), ("1", "spleen"))
    }


def test_folders_in_nnunet_layout(tmp_path, capsys):
    """References in labelsTr beside imagesTr are label maps here, not scans."""
    gt = labels_volume()
    (tmp_path / "Dataset001" / "imagesTr").mkdir(parents=True)
    (tmp_path / "Dataset001" / "labelsTr").mkdir(parents=True)
    (tmp_path / "pred").mkdir()
    save(tmp_path / "Dataset001" / "imagesTr" / "case_001_0000.nii.gz", gt.astype(np.int16))
    save(tmp_path / "Dataset001" / "labelsTr" / "case_001.nii.gz", gt)
    save(tmp_path / "pred" / "case_001.nii.gz", gt)
    rc = main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "Dataset001" / "labelsTr"),
               "--json"])  # fmt: skip
    out = last_json(capsys.readouterr().out)
    assert rc == 0 and out["cases"] == 1 and out["per_label"]["5"]["dice_mean"] == 1.0
