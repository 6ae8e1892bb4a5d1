"""Fine-tuning keeps what the user watched.

(a) The weights a run keeps: an earlier checkpoint only when a smoothed validation Dice
shows it better than the final weights by more than the noise; the final weights when
validation is too small to decide; which and why in the summary, the card and the
Fine-tune dock's status. (b) On an edited slice, training learns the labels the user
painted or erased (their voxels, the changed voxels, a band around them), not the labels
left as predicted; a slice marked reviewed counts whole; undo and redo keep the record
exact. Real tiny networks, real napari Labels layers, real checkpoint files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_vnet.models import load_checkpoint, load_checkpoint_state
from napari_vnet.training import TrainConfig, TrainingPair, finetune, prepare_cases, resume_path

TINY = {"channels": [4, 8, 16]}


def sphere_pair(shape=(16, 24, 24)):
    rng = np.random.default_rng(0)
    z, y, x = np.indices(shape)
    c = [s // 2 for s in shape]
    labels = (((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2] + 1) ** 2) < 30).astype(np.uint8)
    return rng.normal(0, 0.2, shape).astype(np.float32) + labels, labels


def config(**kw):
    base = dict(
        arch="unet3d", arch_kwargs=TINY, iterations=6, patch_size=(16, 16, 16), batch_size=2,
        lr=3e-3, warmup=0.0, eval_every=2, augment=False, postprocess="none",
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def state_of(path):
    return load_checkpoint_state(path)["state_dict"]


def same_weights(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------- (a) selection


def test_flat_noisy_validation_keeps_the_final_weights():
    """The dock's case: one held-out slice, 0.45-0.51 for 200 iterations, the maximum at
    iteration 20 (kept before)."""
    from napari_vnet.training.selection import Selection

    sel = Selection()
    scores = [0.508, 0.47, 0.45, 0.49, 0.46, 0.50, 0.47, 0.48, 0.45, 0.49]
    for i, v in enumerate(scores, 1):
        sel.add(20 * i, v)
    d = sel.decide(200)
    assert d["kept"] == "final" and d["iteration"] == 200
    assert d["message"].startswith("kept the final weights: the final smoothed validation")
    assert "within noise" in d["message"] or "is the best" in d["message"]


def test_a_real_drop_keeps_the_earlier_checkpoint_and_says_so():
    from napari_vnet.training.selection import Selection

    sel = Selection()
    for i, v in enumerate([0.50, 0.80, 0.85, 0.86, 0.86, 0.60, 0.40, 0.30, 0.30], 1):
        sel.add(10 * i, v)
    d = sel.decide(90)
    assert d["kept"] == "best" and d["iteration"] in (40, 50)
    assert d["message"].startswith(f"kept iteration {d['iteration']}: smoothed validation Dice")
    assert "(final 0." in d["message"]
    assert d["best_val_dice_smoothed"] - d["final_val_dice_smoothed"] > d["noise_margin"]


def test_too_small_validation_keeps_the_final_weights_and_names_the_class(drain, tmp_path):
    image, labels = sphere_pair()
    out = tmp_path / "m.pt"
    events, summary = drain(
        finetune([TrainingPair(image, labels)], config(val_fraction=0.3, keep_resume=True),
                 out=out)
    )  # fmt: skip
    sel = summary["selection"]
    assert sel["kept"] == "final" and summary["best_iteration"] == summary["iterations"] == 6
    assert "validation held only" in sel["message"] and "class_1" in sel["message"]
    assert "(fewer than 1000)" in sel["message"]
    n = int(sel["validation_voxels"]["1"])
    assert 0 < n < 1000 and f"only {n} voxels" in sel["message"]
    card = load_checkpoint(out)[1]
    assert card.history["selection"]["kept"] == "final"
    assert card.history["best_iteration"] == 6
    # the weights kept are the final ones: the resume state of iteration 6 holds the same
    assert same_weights(state_of(out), state_of(resume_path(out)))
    vals = [e["val_dice"] for e in events if "val_dice" in e]
    assert summary["val_dice"] == vals[-1]


def test_no_validation_keeps_the_final_weights(drain, tmp_path):
    image, labels = sphere_pair()
    out = tmp_path / "m.pt"
    _, summary = drain(finetune([TrainingPair(image, labels)], config(keep_resume=True), out=out))
    assert summary["selection"]["message"] == "kept the final weights: no validation held out"
    assert same_weights(state_of(out), state_of(resume_path(out)))


def test_an_earlier_checkpoint_is_kept_when_validation_shows_it(drain, tmp_path, monkeypatch):
    """Training, files and the choice are real; the validation scores are scripted (a
    drop no tiny run shows on demand)."""
    import napari_vnet.training.loop as loop

    scores = iter([0.5, 0.8, 0.9, 0.9, 0.5, 0.2, 0.2, 0.2])
    monkeypatch.setattr(loop, "validation_dice", lambda *a, **k: next(scores))
    image, labels = sphere_pair()
    out = tmp_path / "m.pt"
    cfg = config(iterations=16, val_fraction=0.3, min_val_voxels=1, keep_resume=True)
    events, summary = drain(finetune([TrainingPair(image, labels)], cfg, out=out))
    sel = summary["selection"]
    assert sel["kept"] == "best" and summary["best_iteration"] == sel["iteration"] in (6, 8)
    written = [e["iteration"] for e in events if e.get("checkpoint")]
    assert written[-1] == sel["iteration"]  # the candidate was written when found
    card = load_checkpoint(out)[1]
    assert card.history["iterations"] == sel["iteration"]
    assert card.history["selection"]["message"] == sel["message"]
    assert not same_weights(state_of(out), state_of(resume_path(out)))  # not the final


def test_dock_status_says_which_weights_were_kept(make_napari_viewer, tmp_path, monkeypatch):
    from napari_vnet._widgets.finetune import FinetuneWidget
    from napari_vnet.training import run_training

    monkeypatch.setenv("NAPARI_VNET_CONFIG_DIR", str(tmp_path / "config"))
    image, labels = sphere_pair()
    out = tmp_path / "m.pt"
    summary = run_training([TrainingPair(image, labels)], config(val_fraction=0.3), out=out)
    viewer = make_napari_viewer()
    ft = FinetuneWidget(viewer)
    ft._on_done(summary)  # the TrainingSummary the worker returns
    text = ft.status_label.text()
    assert text.startswith("Saved m.pt: kept the final weights: validation held only")
    assert "best val Dice" not in text


# ------------------------------------------------------------ (b) edit regions

LIVER, SPLEEN = 5, 1


@pytest.fixture
def predicted(qapp):
    """A prediction: liver and spleen on every slice, tracked as the docks track it."""
    from napari.layers import Labels

    from napari_vnet._widgets import _edits

    data = np.zeros((6, 32, 32), np.uint8)
    data[:, 4:14, 4:14] = LIVER
    data[:, 18:28, 18:28] = SPLEEN
    layer = Labels(data)
    tracker = _edits.EditTracker(layer)
    yield layer
    tracker.disconnect_layer()


def _mask(layer):
    from napari_vnet.training.annotations import training_mask

    return training_mask(np.asarray(layer.data), layer.metadata)


def test_only_the_corrected_label_counts_on_an_edited_slice(predicted):
    layer = predicted
    layer.data_setitem((np.full(4, 3), np.array([14, 14, 15, 15]), np.array([6, 7, 6, 7])), LIVER)
    layer.data_setitem((np.full(2, 3), np.array([4, 4]), np.array([4, 5])), 0)  # erase liver
    rec = layer.metadata["annotated_slices"]
    assert rec["slices"] == [3] and rec["edits"]["3"]["labels"] == [LIVER]
    mask = _mask(layer)
    assert not mask[[0, 1, 2, 4, 5]].any()  # other slices: not corrected
    liver_now = layer.data[3] == LIVER
    assert mask[3][liver_now].all()  # the corrected liver
    assert mask[3, 14, 6] and mask[3, 4, 4]  # painted and erased voxels
    assert not mask[3][layer.data[3] == SPLEEN].any()  # the spleen was not corrected
    assert mask[3, 16, 8] and not mask[3, 30, 2]  # a band around the liver, not the slice
    # marking the slice reviewed: every label on it counts
    from napari_vnet.training.annotations import add_slices, remove_slices

    add_slices(layer, 0, [3])
    assert _mask(layer)[3].all()
    remove_slices(layer, 0, [3])  # back to the corrections only
    np.testing.assert_array_equal(_mask(layer), mask)


def test_painting_over_another_label_does_not_make_it_corrected(predicted):
    layer = predicted
    yx = np.nonzero(np.zeros((32, 32), bool) | (np.arange(32)[:, None] == 18))
    cols = yx[1][(yx[1] >= 18) & (yx[1] < 28)]
    layer.data_setitem((np.full(cols.size, 2), np.full(cols.size, 18), cols), LIVER)
    rec = layer.metadata["annotated_slices"]["edits"]["2"]
    assert rec["labels"] == [LIVER]  # spleen was painted over, not corrected
    mask = _mask(layer)
    assert mask[2, 18, 20]  # the painted voxel
    assert not mask[2, 25, 25]  # the rest of the spleen


def test_undo_redo_and_painting_back_keep_the_record_exact(predicted):
    layer = predicted
    before = layer.data.copy()
    layer.paint((1, 16, 8), LIVER)
    assert layer.metadata["annotated_slices"]["slices"] == [1]
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)
    assert _mask(layer) is None or not _mask(layer).any()
    layer.redo()
    assert layer.metadata["annotated_slices"]["slices"] == [1]
    changed = np.argwhere(layer.data != before)
    layer.data_setitem(tuple(changed.T), before[tuple(changed.T)])  # painted back by hand
    assert not layer.metadata["annotated_slices"]["slices"]


def test_regions_travel_as_json_and_train_the_same_way(predicted, tmp_path):
    layer = predicted
    layer.paint((4, 16, 8), LIVER)
    record = json.loads(json.dumps(layer.metadata["annotated_slices"]))  # Scans autosave
    image = np.random.default_rng(0).normal(0, 1, layer.data.shape).astype(np.float32)
    cases, _, _ = prepare_cases(
        [TrainingPair(image, np.array(layer.data), annotated=record)], None, spacing=None,
        normalization={"kind": "zscore"}, uncorrected_weight=0.0,
    )  # fmt: skip
    np.testing.assert_array_equal(cases[0].mask, _mask(layer))
    assert not cases[0].mask[4][layer.data[4] == SPLEEN].any()
    # at a weight above 0 the spleen counts too, at that weight (the default)
    cases, _, _ = prepare_cases(
        [TrainingPair(image, np.array(layer.data), annotated=record)], None, spacing=None,
        normalization={"kind": "zscore"}, uncorrected_weight=0.25,
    )  # fmt: skip
    weight = cases[0].weight
    assert (weight[4][_mask(layer)[4]] == 255).all()
    assert (weight[4][layer.data[4] == SPLEEN] == 64).all()
    assert not weight[[0, 1, 2, 3, 5]].any()


def test_fine_tune_dock_trains_on_the_regions(make_napari_viewer, predicted):
    from napari_vnet._widgets.finetune import CORRECTED, EDITED, FinetuneWidget
    from napari_vnet.training.data import load_pairs
    from napari_vnet.workflows.finetune import spec_to_pair

    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros(predicted.data.shape, np.float32), name="ct")
    labels = viewer.add_labels(predicted.data.copy(), name="prediction")
    ft = FinetuneWidget(viewer)
    labels.paint((2, 16, 8), LIVER)
    ft.add_pair(image, labels)
    assert ft.voxels_combo.currentText() == CORRECTED  # the default: per label and region
    ft.voxels_combo.setCurrentText(EDITED)
    (spec,) = ft._training_specs(True)
    assert spec["annotated"][2].all() and not spec["annotated"][[0, 1, 3]].any()
    ft.voxels_combo.setCurrentText(CORRECTED)
    (spec,) = ft._training_specs(True, regions=True)
    (loaded,) = load_pairs([spec_to_pair(spec)])  # the record, read with the labels
    mask = loaded.counted(0.0)  # what counts at weight 1
    assert mask[2][labels.data[2] == LIVER].all()
    assert not mask[2][labels.data[2] == SPLEEN].any()  # left as predicted: not corrected
    assert loaded.mask[2].all()  # ... but on the edited slice, kept at the low weight


def test_records_of_whole_slices_still_count_whole():
    from napari_vnet.training.annotation_regions import training_mask

    labels = np.zeros((4, 8, 8), np.uint8)
    labels[:, 2:4, 2:4] = 1
    mask = training_mask(labels, {"axis": 0, "slices": [1, 3]})
    assert mask[1].all() and mask[3].all() and not mask[[0, 2]].any()
