"""Fine-tuning trusts the corrections, and keeps what the user left as predicted at a
small weight.

On a slice the user edited, the voxels corrected or reviewed weigh 1 in the loss, the
other voxels of the slice (labels left as predicted) ``uncorrected_weight``, all others 0;
a slice marked reviewed counts whole. The weights flow from the record through the
cases, the patch sampler (both augmentation paths) and deep supervision into the Dice and
cross-entropy terms; a class shown only in untouched voxels is then still learnt (weight
0 loses it). The dock trains on "what I corrected" by default, its Mark-reviewed button
makes a slice count whole, and its status says which voxels and weight a run used.
Real tiny networks, real napari layers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_vnet.training import TrainConfig, TrainingPair, prepare_cases, run_training
from napari_vnet.training.annotation_regions import training_weights
from napari_vnet.training.losses import cross_entropy_loss, soft_dice_loss

LIVER, SPLEEN = 5, 1
S = 32


def prediction() -> np.ndarray:
    """Liver and spleen on every slice of a 32^3 volume."""
    labels = np.zeros((S, S, S), np.uint8)
    labels[:, 4:14, 4:14] = LIVER
    labels[:, 18:28, 18:28] = SPLEEN
    return labels


def liver_record(slices=(8, 10, 12)) -> dict:
    """The user painted three liver voxels on each of ``slices`` (the spleen and the
    background left as predicted)."""
    edits = {str(s): {"labels": [LIVER], "changed": [[4 * S + 4, 3]]} for s in slices}
    return {"axis": 0, "slices": list(slices), "edits": edits}


# ------------------------------------------------------------------ the weight map


def test_weights_are_one_on_corrections_low_on_untouched_zero_elsewhere():
    labels = prediction()
    record = liver_record()
    w = training_weights(labels, record, 0.25)
    assert w.dtype == np.float32
    assert not w[[0, 7, 9, 11, 13, 31]].any()  # slices not listed: 0
    s = 10
    assert (w[s][labels[s] == LIVER] == 1).all()  # the corrected (touched) label
    assert w[s, 3, 3] == 1  # the band of background around it
    assert (w[s][labels[s] == SPLEEN] == 0.25).all()  # left as predicted
    assert w[s, 31, 0] == 0.25  # background far from the corrections: as predicted too
    assert set(np.unique(w)) == {0.0, 0.25, 1.0}
    # 0: the corrections only (the opt-in of before); 1: the edited slices whole
    zero, one = training_weights(labels, record, 0.0), training_weights(labels, record, 1.0)
    from napari_vnet.training.annotation_regions import training_mask

    np.testing.assert_array_equal(zero > 0, training_mask(labels, record))
    assert one[s].all() and set(np.unique(one)) == {0.0, 1.0}
    assert training_weights(labels, None, 0.25) is None


def test_a_reviewed_slice_counts_whole():
    labels = prediction()
    record = {**liver_record(), "reviewed": [12]}
    w = training_weights(labels, record, 0.1)
    assert (w[12] == 1).all()
    assert (w[10][labels[10] == SPLEEN] == np.float32(0.1)).all()
    # a slice listed without edits (older records) counts whole as well
    w = training_weights(labels, {"axis": 0, "slices": [3]}, 0.1)
    assert (w[3] == 1).all() and not w[4].any()


def test_cases_carry_the_weights_quantised():
    labels = prediction()
    image = np.random.default_rng(0).normal(0, 1, labels.shape).astype(np.float32)
    pair = TrainingPair(image, labels, annotated=json.loads(json.dumps(liver_record())))
    kw = dict(spacing=None, normalization={"kind": "zscore"})
    (case,), classes, _ = prepare_cases([pair], None, uncorrected_weight=0.25, **kw)
    assert case.weight.dtype == np.uint8
    spleen, liver = ([c.value for c in classes].index(v) for v in (SPLEEN, LIVER))
    s = 10
    assert (case.weight[s][case.target[s] == spleen] == round(0.25 * 255)).all()
    assert (case.weight[s][case.target[s] == liver] == 255).all()
    assert case.mask[s].all() and not case.mask[9].any()
    np.testing.assert_array_equal(case.mask, case.weight > 0)
    (zero,), _, _ = prepare_cases([pair], None, uncorrected_weight=0.0, **kw)
    assert zero.weight is None and not zero.mask[s][labels[s] == SPLEEN].any()
    (one,), _, _ = prepare_cases([pair], None, uncorrected_weight=1.0, **kw)
    assert one.weight is None and one.mask[s].all()


# --------------------------------------------------------------------- the loss


def test_the_loss_weighs_each_voxel():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 6, 6)
    target = torch.randint(0, 3, (1, 4, 6, 6))
    binary = torch.rand(1, 4, 6, 6) > 0.4
    # a 0/1 float mask is the bool mask
    for loss in (cross_entropy_loss, soft_dice_loss):
        assert torch.allclose(loss(logits, target, binary), loss(logits, target, binary.float()))
    # cross entropy: a voxel at weight w pulls with w times the force
    x = logits.clone().requires_grad_(True)
    w = binary.float()
    w[0, 0] *= 0.25
    cross_entropy_loss(x, target, w).backward()
    ref = logits.clone().requires_grad_(True)
    cross_entropy_loss(ref, target, binary).backward()
    low = binary[0, 0]
    assert torch.allclose(x.grad[0, :, 0][:, low], 0.25 * ref.grad[0, :, 0][:, low], atol=1e-7)
    assert torch.equal(x.grad[0, :, 1:], ref.grad[0, :, 1:])
    assert not x.grad[0, :][:, ~binary[0]].any()  # weight 0: no gradient at all


def test_a_class_shown_at_low_weight_has_a_weak_dice_term():
    """Scaling all of a class's voxels leaves its Dice ratio unchanged; the class's term
    is scaled by the mean weight of its voxels instead."""
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 4, 6, 6)
    target = torch.randint(0, 3, (2, 4, 6, 6))
    ones = torch.ones(2, 4, 6, 6)
    for batch_dice in (True, False):
        kw = dict(include_background=False, batch_dice=batch_dice)
        full = soft_dice_loss(logits, target, ones, **kw)
        assert torch.allclose(soft_dice_loss(logits, target, 0.1 * ones, **kw), 0.1 * full)
    # one class at 0.1: its term shrinks, the other's stays (nearly: the first class's
    # predictions on the second's voxels weigh less in its denominator)
    low = ones.clone()
    low[target == 2] = 0.1
    only_1 = soft_dice_loss(logits, target, ones, include_background=False, skip=(2,))
    mixed = soft_dice_loss(logits, target, low, include_background=False)
    full = soft_dice_loss(logits, target, ones, include_background=False)
    term_2 = 2 * float(full) - float(only_1)
    assert float(mixed) == pytest.approx((float(only_1) + 0.1 * term_2) / 2, rel=0.1)


# ------------------------------------------------------------ the patch sampler


@pytest.mark.parametrize("augment", ["light", "nnunet"])
def test_the_sampler_hands_the_weights_to_the_loss(augment):
    from napari_vnet.training.augment import make_augmenter
    from napari_vnet.training.sampler import PatchSampler

    labels = prediction()
    image = np.random.default_rng(0).normal(0, 1, labels.shape).astype(np.float32)
    pair = TrainingPair(image, labels, annotated=liver_record())
    cases, _, _ = prepare_cases(
        [pair], None, spacing=None, normalization={"kind": "zscore"}, uncorrected_weight=0.25
    )  # fmt: skip
    augmenter = None
    if augment == "nnunet":
        pytest.importorskip("batchgeneratorsv2")
        augmenter = make_augmenter((16, 16, 16), TrainConfig(augment_intensity=False))
    sampler = PatchSampler(cases, (16, 16, 16), augmenter=augmenter, seed=3)
    seen = set()
    for _ in range(6):
        img, tgt, w = sampler.sample(2)
        assert w.dtype == np.float32 and w.shape == tgt.shape
        seen |= {round(float(v), 3) for v in np.unique(w)}
        assert not tgt[w == 0].any() or augment == "light"  # unknown labels: 0
    assert {0.0, 1.0, round(64 / 255, 3)} <= seen
    assert seen <= {0.0, 1.0, round(64 / 255, 3)}


def test_deep_supervision_keeps_the_weights():
    from napari_vnet.training.deep_supervision import DeepSupervisionLoss

    seen = []

    def base(logits, target, mask):
        seen.append(mask)
        return logits.sum() * 0, {}

    w = torch.full((1, 8, 8, 8), 0.25)
    DeepSupervisionLoss(base, [0.5, 0.5])(
        [torch.zeros(1, 2, 8, 8, 8), torch.zeros(1, 2, 4, 4, 4)],
        torch.zeros(1, 8, 8, 8, dtype=torch.long), w,
    )  # fmt: skip
    assert seen[1].shape == (1, 4, 4, 4) and torch.all(seen[1] == 0.25)


# ------------------------------------------------------------------ a real run

TINY = {"channels": [4, 8, 16]}


def learn(uncorrected_weight: float, out):
    """A 3D U-Net from scratch on a record whose slices correct the liver only: the
    spleen is shown in untouched voxels alone."""
    labels = prediction()
    rng = np.random.default_rng(0)
    image = rng.normal(0, 0.15, labels.shape) + 1.0 * (labels == LIVER) - 1.0 * (labels == SPLEEN)
    record = liver_record(range(8, 24, 2))
    config = TrainConfig(
        arch="unet3d", arch_kwargs=TINY, iterations=100, patch_size=(32, 32, 32),
        batch_size=1, lr=1e-2, warmup=0.0, augment=False, postprocess="none",
        classes={LIVER: "liver", SPLEEN: "spleen"}, deep_supervision=False, seed=1,
        uncorrected_weight=uncorrected_weight,
    )  # fmt: skip
    summary = run_training(
        [TrainingPair(image.astype(np.float32), labels, annotated=record)], config, out=out
    )
    from napari_vnet.inference import predict
    from napari_vnet.weights import load_weights

    model, card = load_weights(out)
    pred = np.asarray(
        predict(image.astype(np.float32), model, card, device="cpu", amp=False).labels
    )
    p, g = pred == SPLEEN, labels == SPLEEN
    return summary, card, 2 * (p & g).sum() / (p.sum() + g.sum())


def test_a_class_left_as_predicted_is_kept_at_a_low_weight_and_lost_at_zero(tmp_path):
    summary, card, spleen = learn(0.25, tmp_path / "keep.pt")
    assert spleen > 0.6
    assert card.history["run"]["partial_labels"] == []  # the spleen is learnt
    assert card.history["run"]["config"]["uncorrected_weight"] == 0.25
    voxels = summary.voxels
    assert voxels["uncorrected_weight"] == 0.25 and voxels["corrected"] > 0
    assert "at weight 0.25" in voxels["message"]
    summary, card, spleen = learn(0.0, tmp_path / "only.pt")
    assert spleen < 0.3
    assert card.history["run"]["partial_labels"] == ["spleen"]  # never shown
    assert "did not count (weight 0)" in summary.voxels["message"]


# ------------------------------------------------------------------- the dock


@pytest.fixture
def dock(make_napari_viewer, qapp):
    from napari_vnet._widgets.finetune import FinetuneWidget

    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((6, S, S), np.float32), name="ct")
    labels = viewer.add_labels(prediction()[:6].copy(), name="prediction")
    ft = FinetuneWidget(viewer)
    ft.add_pair(image, labels)
    return viewer, labels, ft


def _weights_of(spec, config):
    from napari_vnet.training.data import load_pairs, weight_code
    from napari_vnet.workflows.finetune import spec_to_pair

    (p,) = load_pairs([spec_to_pair(spec)])
    code = weight_code(p.mask, p.corrected, config.uncorrected_weight)
    return code if code is None or code.dtype != bool else code.astype(np.uint8) * 255


def test_the_dock_trains_on_the_corrections_with_untouched_labels_kept(dock):
    from napari_vnet._widgets.finetune import CORRECTED, EDITED

    _viewer, labels, ft = dock
    assert ft.voxels_combo.currentText() == CORRECTED  # the default
    labels.paint((2, 16, 8), LIVER)
    config = ft.training_config()
    assert config.uncorrected_weight == TrainConfig().uncorrected_weight
    (spec,) = ft._training_specs(True, regions=True)
    assert spec["annotated"]["slices"] == [2]  # the record travels, JSON
    w = _weights_of(spec, config)
    q = round(255 * config.uncorrected_weight)
    assert (w[2][labels.data[2] == LIVER] == 255).all()
    assert (w[2][labels.data[2] == SPLEEN] == q).all()
    assert not w[[0, 1, 3]].any()
    ft.uncorrected_spin.setValue(0.0)
    assert ft.training_config().uncorrected_weight == 0.0
    ft.voxels_combo.setCurrentText(EDITED)
    assert not ft.uncorrected_spin.isEnabled()
    assert ft.training_config().uncorrected_weight == 1.0


def test_mark_slice_reviewed_makes_the_slice_count_whole(dock):
    viewer, labels, ft = dock
    labels.paint((2, 16, 8), LIVER)
    labels.paint((3, 16, 8), LIVER)
    viewer.dims.set_point(0, 3)
    assert ft.labels_combo.currentData() is labels
    ft.mark_btn.click()  # (it unmarked before: clicked passed checked=False)
    record = labels.metadata["annotated_slices"]
    assert record["reviewed"] == [3] and record["slices"] == [2, 3]
    (spec,) = ft._training_specs(True, regions=True)
    w = _weights_of(spec, ft.training_config())
    assert (w[3] == 255).all()  # reviewed: every label on it counts as corrected
    assert (w[2][labels.data[2] == SPLEEN] < 255).all()  # only edited: kept at low weight
    ft.unmark_btn.click()
    assert "reviewed" not in labels.metadata["annotated_slices"]


def test_the_dock_status_says_which_voxels_and_weight(dock, tmp_path, monkeypatch):
    from napari_vnet.training.events import TrainingSummary

    monkeypatch.setenv("NAPARI_VNET_CONFIG_DIR", str(tmp_path / "config"))
    _viewer, _labels, ft = dock
    out = tmp_path / "m.pt"
    out.write_bytes(b"")
    monkeypatch.setattr(ft, "_publish_weights", lambda path: None)
    message = "trained on the 10 voxels you corrected or reviewed (weight 1) and the 90 left"
    summary = TrainingSummary(
        out=str(out), iterations=5, final_loss=0.1, last_loss=0.1, val_dice=None,
        best_iteration=5, seconds=1.0, cancelled=False, resume_file=None, device="cpu",
        world_size=1, rank=0, selection={"message": "kept the final weights: no validation"},
        voxels={"corrected": 10, "uncorrected": 90, "uncorrected_weight": 0.25,
                "message": message + " as predicted on those slices at weight 0.25"},
    )  # fmt: skip
    ft._on_done(summary)
    text = ft.status_label.text()
    assert "at weight 0.25." in text and "Trained on the 10 voxels you corrected" in text


# ---------------------------------------------------------------- the command line


def test_cli_takes_the_weight_and_an_edit_record(tmp_path):
    import argparse

    from napari_vnet.commands import train as cmd
    from napari_vnet.workflows.options import parse_slices

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    base = ["--image", "a.nii.gz", "--labels", "b.nii.gz", "--arch", "unet3d", "--out", "n.pt"]
    args = parser.parse_args(base)
    assert args.uncorrected_weight == TrainConfig().uncorrected_weight  # TrainConfig's
    args = parser.parse_args([*base, "--uncorrected-weight", "0.1"])
    assert cmd._config(args).uncorrected_weight == 0.1
    path = tmp_path / "record.json"
    path.write_text(json.dumps({"annotated_slices": liver_record()}))
    assert parse_slices(str(path)) == liver_record()
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="no edit record"):
        parse_slices(str(tmp_path / "bad.json"))


def test_an_exported_dataset_keeps_the_corrections_and_ignores_the_rest(tmp_path):
    """A dataset has no loss weights: what was left as predicted gets the ignore label."""
    from napari_vnet.io import read_volume
    from napari_vnet.workflows.dataset_export import export_pairs

    labels = prediction()
    image = np.zeros(labels.shape, np.float32)
    export_pairs(tmp_path / "ds", [TrainingPair(image, labels, annotated=liver_record())])
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    ignore, liver = meta["labels"]["ignore"], meta["labels"][f"class_{LIVER}"]
    out = read_volume(tmp_path / "ds" / "labelsTr" / "case_000.nii.gz").array
    assert (out[10][labels[10] == LIVER] == liver).all()
    assert (out[10][labels[10] == SPLEEN] == ignore).all()
    assert (out[9] == ignore).all()
    assert f"class_{SPLEEN}" not in meta["labels"]  # shown nowhere that counts


def test_foreign_preprocessing_carries_the_weights():
    """nnU-Net's own preparation (resampling, padding) takes the weights along as a
    second label map: the same three levels, none on the padding."""
    pytest.importorskip("nnunetv2")
    from pathlib import Path

    from napari_vnet.foreign import preprocessing_for
    from napari_vnet.weights import load_weights

    folder = (
        Path(__file__).parents[1]
        / "data/nnunet/Dataset901_TinyPhantom/nnUNetTrainer__nnUNetPlans__3d_fullres"
    )
    _, card = load_weights(folder)
    pre = preprocessing_for(card)
    labels = np.zeros((24, 48, 48), np.uint8)
    labels[:, 8:20, 8:20] = 1
    labels[:, 28:40, 28:40] = 2
    slices = list(range(4, 20))  # contiguous: the plan's 8.2-mm slices keep some
    record = {"axis": 0, "slices": slices,
              "edits": {str(s): {"labels": [1], "changed": [[8 * 48 + 8, 2]]}
                        for s in slices}}  # fmt: skip
    image = np.random.default_rng(0).normal(0, 1, labels.shape).astype(np.float32)
    (case,), _, _ = prepare_cases(
        [TrainingPair(image, labels, spacing=(2.0, 4.5, 4.5), annotated=record)],
        card.classes, spacing=None, normalization={}, producer=pre, uncorrected_weight=0.25,
    )  # fmt: skip
    assert set(np.unique(case.weight)) == {0, 64, 255}
    np.testing.assert_array_equal(case.mask, case.weight > 0)
    assert (case.weight[case.target == 2] != 255).all()  # class 2 was left as predicted
