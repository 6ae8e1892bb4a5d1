"""Propagate corrections (napari_vnet.workflows.propagate): the kept voxels, the merge, a
short fine-tune on a few corrected slices that lifts Dice on the untouched slices of a
scan the start model segments badly, and cancel."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from napari_vnet.annotation_regions import encode_runs, training_mask
from napari_vnet.models import ClassInfo, ModelCard, build_model
from napari_vnet.workflows.propagate import (
    kept_mask,
    merge,
    propagate,
    propagate_config,
)

SPACING = (2.0, 1.0, 1.0)
CORRECTED = [4, 8, 12]


def scene(shape=(16, 32, 32), seed=0):
    """A noisy image with a bright ellipsoid organ and its reference mask."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    ref = ((z - 8) / 6.0) ** 2 + ((y - 16) / 9.0) ** 2 + ((x - 16) / 8.0) ** 2 <= 1
    image = np.where(ref, 100.0, 0.0) + rng.normal(0, 15, shape)
    return image.astype(np.float32), ref


def dice(a, b) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


@pytest.fixture
def start_model():
    """A tiny untrained U-Net: it finds no organ (a poor start, as a model from another
    domain is)."""
    card = ModelCard(
        arch="unet3d", arch_kwargs={"channels": [4, 8], "norm": "instance"},
        classes=[ClassInfo(0, "background"), ClassInfo(1, "organ")],
        normalization={"kind": "zscore"}, spacing=SPACING, patch_size=(16, 16, 16),
    )  # fmt: skip
    torch.manual_seed(0)
    return build_model(card), card


def test_kept_mask_is_the_training_mask_of_the_record():
    lab = np.zeros((5, 20, 20), np.uint8)
    lab[2, 5:10, 5:10] = 1
    lab[2, 15:18, 15:18] = 2  # a label the user did not touch on that slice
    edit = {"labels": [1], "changed": encode_runs(np.ravel_multi_index(
        np.nonzero(lab[2] == 1), (20, 20)))}  # fmt: skip
    record = {"axis": 0, "slices": [2, 4], "edits": {"2": edit}, "reviewed": [4]}
    kept = kept_mask(lab, record)
    assert np.array_equal(kept, training_mask(lab, record))
    assert kept[4].all() and kept[2, 5:10, 5:10].all() and not kept[2, 16, 16]
    assert not kept[[0, 1, 3]].any()
    assert not kept_mask(lab, None).any()
    assert np.array_equal(kept_mask(lab, [1, 3]), np.isin(np.arange(5), [1, 3])[:, None, None]
                          & np.ones((5, 20, 20), bool))  # fmt: skip


def test_merge_changes_only_free_voxels_that_differ():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, (4, 6, 6)).astype(np.uint16)
    prediction = rng.integers(0, 3, (4, 6, 6)).astype(np.uint8)
    kept = rng.random((4, 6, 6)) < 0.4
    change = merge(labels, prediction, kept)
    out = labels.copy()
    change.apply(out)
    assert out.dtype == np.uint16
    assert np.array_equal(out[kept], labels[kept])
    assert np.array_equal(out[~kept], prediction[~kept])
    assert change.size == int(((labels != prediction) & ~kept).sum())
    with pytest.raises(ValueError, match="shape"):
        merge(labels, prediction[:2], kept)


def test_propagate_keeps_edits_and_lifts_untouched_slices(start_model):
    image, ref = scene()
    model, card = start_model
    from napari_vnet.inference import predict

    start = predict(image, model, card, spacing=SPACING, device="cpu").labels
    labels = start.copy()
    labels[CORRECTED] = ref[CORRECTED]  # the user painted the reference on 3 slices
    untouched = np.ones(ref.shape[0], bool)
    untouched[CORRECTED] = False
    before = dice(labels[untouched] == 1, ref[untouched])
    events = []
    change, result = propagate(
        image, labels, {"axis": 0, "slices": CORRECTED}, weights=(copy.deepcopy(model), card),
        spacing=SPACING, config=propagate_config(15, None, lr=1e-2), progress=events.append,
    )  # fmt: skip
    assert not result.cancelled and result.iterations == 15
    assert [e.stage for e in events][:15] == ["adapt"] * 15 and events[-1].stage == "predict"
    out = labels.copy()
    change.apply(out)
    # every edited voxel kept exactly; the others take the new prediction where it differs
    assert np.array_equal(out[CORRECTED], labels[CORRECTED])
    free = np.ones(out.shape, bool)
    free[CORRECTED] = False
    assert np.array_equal(out[free], result.prediction[free])
    moved = out != labels
    assert np.array_equal(moved, free & (result.prediction != labels))
    after = dice(out[untouched] == 1, ref[untouched])
    assert after >= before and after > 0.6, (before, after)


def test_cancel_leaves_the_labels_alone(start_model):
    image, ref = scene()
    model, card = start_model
    labels = np.zeros(ref.shape, np.uint8)
    labels[CORRECTED] = ref[CORRECTED]
    original = labels.copy()
    for stop_after in (0, 3):  # before the first step, and during the fine-tune
        calls = []

        def should_stop(calls=calls, n=stop_after):
            calls.append(1)
            return len(calls) > n

        change, result = propagate(
            image, labels, {"axis": 0, "slices": CORRECTED}, weights=(copy.deepcopy(model), card),
            spacing=SPACING, config=propagate_config(15, None), should_stop=should_stop,
        )  # fmt: skip
        assert result.cancelled and result.prediction is None and change.size == 0
        assert result.iterations == stop_after
        change.apply(labels)
        assert np.array_equal(labels, original)


def test_nothing_corrected_is_refused(start_model):
    image, ref = scene()
    with pytest.raises(ValueError, match="correct a slice"):
        propagate(image, np.zeros(ref.shape, np.uint8), None, weights=start_model,
                  spacing=SPACING)  # fmt: skip
