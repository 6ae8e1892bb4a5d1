"""The training recipe (nnU-Net's ingredients): normalisation from the data, planned
spacing and patch, augmentation, deep supervision, batch Dice, post-processing chosen on
validation. Tiny volumes and networks; real batchgeneratorsv2 transforms, real torch."""

from __future__ import annotations

import batchgeneratorsv2  # noqa: F401  (installed by scripts/setup.sh)
import numpy as np
import pytest
import torch

from napari_vnet.inference import predict
from napari_vnet.inference.preprocess import preprocessing_for
from napari_vnet.io import Volume
from napari_vnet.models import ModelCard, build_model, load_checkpoint, read_card
from napari_vnet.models.card import ClassInfo
from napari_vnet.training import TrainConfig, TrainingPair, run_training
from napari_vnet.training.augment import IGNORE, Augmenter, crop_around
from napari_vnet.training.deep_supervision import (
    DeepSupervision,
    DeepSupervisionLoss,
)
from napari_vnet.training.losses import DiceCELoss, soft_dice_loss
from napari_vnet.training.plan import plan_training
from napari_vnet.training.recipe import (
    foreground_intensity_stats,
    plan_patch,
    plan_spacing,
)

TINY = {"channels": [4, 8, 16]}


def ct_pair(shape=(16, 32, 32), seed=0):
    """A CT-like volume in HU: air (-1000) around a body (0 HU) holding a bright organ."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    c = [s // 2 for s in shape]
    body = ((y - c[1]) ** 2 + (x - c[2]) ** 2) < (shape[1] // 2 - 1) ** 2
    organ = ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2] - 2) ** 2) < 25
    image = np.where(body, 0.0, -1000.0) + rng.normal(0, 10, shape)
    image[organ] = 150 + rng.normal(0, 20, organ.sum())
    return image.astype(np.float32), organ.astype(np.uint8) * 5


# ------------------------------------------------------------------ normalisation


def test_ct_normalisation_from_foreground_is_in_the_card_and_used_by_predict(tmp_path):
    image, labels = ct_pair()
    cfg = TrainConfig(arch="unet3d", arch_kwargs=TINY, iterations=2, batch_size=1,
                      classes="5=organ", patch_size=(16, 16, 16))  # fmt: skip
    out = tmp_path / "m.pt"
    run_training([TrainingPair(image, labels)], cfg, out=out)
    norm = read_card(out).normalization
    assert norm["kind"] == "ct"
    fg = image[labels == 5]
    lo, hi = np.percentile(fg, [0.5, 99.5])
    assert norm["low"] == pytest.approx(lo, rel=1e-6) and norm["high"] == pytest.approx(hi)
    clipped = np.clip(fg, lo, hi)
    assert norm["mean"] == pytest.approx(clipped.mean(), rel=1e-5)
    assert norm["std"] == pytest.approx(clipped.std(), rel=1e-5)
    # the statistics survive save/load and inference applies exactly them
    model, card = load_checkpoint(out)
    assert card.normalization == norm
    vol, _ = preprocessing_for(card).preprocess(image[None], (1.0, 1.0, 1.0))
    expected = (np.clip(image, norm["low"], norm["high"]) - norm["mean"]) / norm["std"]
    np.testing.assert_allclose(vol[0][: image.shape[0]], expected, rtol=1e-5, atol=1e-5)
    assert predict(image, model, card, spacing=(1.0, 1.0, 1.0)).labels.shape == image.shape


def test_non_ct_data_keeps_zscore_and_the_switch_turns_statistics_off():
    image, labels = ct_pair()
    pair = TrainingPair(image, labels)
    plan = plan_training([pair], TrainConfig(arch="unet3d", intensity_from_data=False))
    assert plan.normalization == {"kind": "zscore"}
    mr = TrainingPair((image + 1000) / 10, labels)  # no air at -1000: not CT
    assert plan_training([mr], TrainConfig(arch="unet3d")).normalization == {"kind": "zscore"}
    assert foreground_intensity_stats([image], [np.zeros(image.shape, bool)]) is None


# ------------------------------------------------------------------ spacing and patch


def test_planned_spacing_is_the_median_with_nnunets_anisotropy_rule():
    assert plan_spacing([(1, 1, 1), (2, 1, 1), (3, 1, 1)]) == (2.0, 1.0, 1.0)
    # z > 3x coarser than y/x: the 10th percentile of z, not the median
    sp = plan_spacing([(5, 0.8, 0.8), (5, 0.8, 0.8), (1, 0.8, 0.8), (5, 0.8, 0.8)])
    assert sp[0] == pytest.approx(np.percentile([5, 5, 1, 5], 10)) and sp[1:] == (0.8, 0.8)


def test_planned_patch_fits_the_memory_budget_and_the_network():
    widths = [8, 16, 32, 64]
    small = plan_patch((20, 512, 512), (2.0, 0.98, 0.98), arch="unet3d", widths=widths,
                       n_classes=4, batch_size=2, memory_mb=64)  # fmt: skip
    big = plan_patch((20, 512, 512), (2.0, 0.98, 0.98), arch="unet3d", widths=widths,
                     n_classes=4, batch_size=2, memory_mb=512)  # fmt: skip
    assert np.prod(big) > np.prod(small)
    for patch in (small, big):
        assert all(p % 8 == 0 for p in patch)
        assert patch[0] <= 24  # a 20-slice scan: the z side follows the data, not memory
        assert patch[1] == patch[2] and patch[1] > patch[0]  # equal extent in mm in-plane
    # recorded in the card through the plan
    image, labels = ct_pair(shape=(16, 40, 40))
    plan = plan_training(
        [TrainingPair(image, labels)], TrainConfig(arch="unet3d", arch_kwargs=TINY)
    )
    assert plan.patch_size == plan.window and all(p % 4 == 0 for p in plan.patch_size)


# ------------------------------------------------------------------ augmentation


def cube_crop(aug: Augmenter, value=3):
    """Image and labels of a labelled cube off the centre of the augmenter's crop."""
    shape = aug.crop_size
    labels = np.zeros(shape, np.uint8)
    c = [s // 2 for s in shape]
    h = [max(2, p // 4) for p in aug.patch]
    labels[c[0] - h[0] : c[0] + 1, c[1] - h[1] : c[1] + h[1] // 2, c[2] : c[2] + h[2]] = value
    image = np.where(labels > 0, 100.0, 0.0).astype(np.float32)
    return image, labels


@pytest.mark.parametrize(
    "flags",
    [
        {"spatial": True},
        {"elastic": True},
        {"intensity": True},
        {"mirror": True},
        {"spatial": True, "intensity": True, "mirror": True},
    ],
    ids=["spatial", "elastic", "intensity", "mirror", "all"],
)
@pytest.mark.parametrize("patch", [(16, 24, 24), (8, 32, 32)], ids=["3d", "anisotropic"])
def test_augmentation_keeps_image_and_labels_aligned_and_label_values(flags, patch):
    kw = {"spatial": False, "elastic": False, "intensity": False, "mirror": False, **flags}
    aug = Augmenter(patch, always=True, **kw)
    image, labels = cube_crop(aug)
    moved = 0
    for seed in range(4):
        img, tgt, known = aug(image, labels, seed=seed)
        assert img.shape == tuple(patch) and tgt.shape == tuple(patch)
        assert set(np.unique(tgt)) <= {0, 3}  # no interpolated label value
        inside = (tgt == 3) & known
        outside = (tgt == 0) & known
        assert inside.sum() > 20
        if not kw["intensity"]:
            # the cube's intensity moved with its label (edges may differ by interpolation)
            bright = img > 50
            agree = (bright == inside)[known].mean()
            assert agree > 0.97, agree
        else:  # intensity changes keep the order cube > surroundings
            assert img[inside].mean() > img[outside].mean()
        centre = tuple(
            slice((s - p) // 2, (s - p) // 2 + p) for s, p in zip(aug.crop_size, patch, strict=True)
        )
        moved += not np.array_equal(tgt, labels[centre])
    if kw["spatial"] or kw["mirror"]:
        assert moved  # the labels did move (a weak elastic draw may move none by a voxel)


def test_crop_around_marks_outside_and_unannotated_voxels_unknown():
    image = np.arange(6 * 6 * 6, dtype=np.float32).reshape(6, 6, 6)
    target = np.ones((6, 6, 6), np.uint8)
    mask = np.ones((6, 6, 6), bool)
    mask[:, :, 0] = False
    img, tgt = crop_around(image, target, mask, (0, 2, 2), (4, 4, 4), fill=-5.0)
    assert (img[:2] == -5).all() and (tgt[:2] == IGNORE).all()  # outside the case
    assert (tgt[2:, :, 0] == IGNORE).all() and (tgt[2:, :, 1:] == 1).all()
    np.testing.assert_array_equal(img[2:], image[0:2, 0:4, 0:4])


# ------------------------------------------------------------------ deep supervision, batch Dice


@pytest.mark.parametrize("arch", ["unet3d", "vnet"])
def test_deep_supervision_trains_heads_but_saves_the_plain_network(arch, tmp_path):
    card = ModelCard(arch, {"channels": [4, 8, 16, 32]}, [ClassInfo(0, "bg"), ClassInfo(1, "a")])
    net = build_model(card)
    ds = DeepSupervision(net, 2).train()
    outs = ds(torch.randn(2, 1, 16, 16, 16))
    assert len(outs) >= 2 and outs[0].shape == (2, 2, 16, 16, 16)
    assert outs[1].shape == (2, 2, 8, 8, 8)
    y = torch.randint(0, 2, (2, 16, 16, 16))
    loss, parts = DeepSupervisionLoss(DiceCELoss(), ds.weights)(outs, y, None)
    loss.backward()
    assert all(h.weight.grad is not None for h in ds.heads)
    assert abs(sum(ds.weights) - 1) < 1e-6 and "dice" in parts
    ds.eval()
    assert ds(torch.randn(1, 1, 16, 16, 16)).shape == (1, 2, 16, 16, 16)
    # a run with deep supervision saves the network alone: it loads and predicts as before
    image, labels = ct_pair()
    out = tmp_path / "m.pt"
    cfg = TrainConfig(arch=arch, arch_kwargs={"channels": [4, 8, 16, 32]}, iterations=2,
                      batch_size=1, patch_size=(16, 16, 16), deep_supervision=True)  # fmt: skip
    run_training([TrainingPair(image, labels)], cfg, out=out)
    model, card = load_checkpoint(out)
    assert set(model.state_dict()) == set(build_model(card).state_dict())
    assert predict(image, model, card, spacing=(1, 1, 1)).labels.shape == image.shape


def test_batch_dice_differs_from_per_patch_dice():
    logits = torch.zeros(2, 2, 4, 4, 4)
    logits[0, 1] = 5.0  # patch 0 predicts foreground everywhere
    y = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    y[0, :2] = 1  # half of patch 0 is foreground, patch 1 has none
    y[1, 0, 0, 0] = 1
    a = soft_dice_loss(logits, y, include_background=False, batch_dice=True)
    b = soft_dice_loss(logits, y, include_background=False, batch_dice=False)
    assert not torch.isclose(a, b)


# ------------------------------------------------------------------ post-processing


class Threshold(torch.nn.Module):
    """Class 1 where the input is positive (a real network of one fixed layer)."""

    out_channels = 2

    def forward(self, x):
        return torch.cat([-x, x], 1) * 10


def test_postprocess_chosen_on_validation_is_recorded_and_applied_by_predict(tmp_path):
    from napari_vnet.training.data import _Case
    from napari_vnet.training.postprocess_choice import choose_postprocess

    image = -np.ones((16, 32, 32), np.float32)
    image[4:12, 4:20, 4:20] = 1  # the organ
    image[6:8, 26:29, 26:29] = 1  # a false positive far from it
    target = np.zeros(image.shape, np.uint8)
    target[4:12, 4:20, 4:20] = 1
    classes = [ClassInfo(0, "background"), ClassInfo(5, "organ")]
    choice = choose_postprocess(
        Threshold(), [_Case("val", image, target, None)], (16, 16, 16), torch.device("cpu"),
        None, classes,
    )  # fmt: skip
    assert choice["largest_component"] == [5]
    dice = choice["validation_dice"]["5"]
    assert dice["with_largest_component"] > dice["without"]
    card = ModelCard("unet3d", {"channels": [4, 8]}, classes, normalization={"kind": "none"},
                     spacing=(1.0, 1.0, 1.0), patch_size=(16, 16, 16), postprocess=choice)  # fmt: skip
    card = ModelCard.from_dict(card.to_dict())  # survives the card's JSON
    assert card.postprocess["largest_component"] == [5]
    labels = predict(image, Threshold(), card, spacing=(1, 1, 1)).labels
    assert (labels[4:12, 4:20, 4:20] == 5).all() and not labels[6:8, 26:29, 26:29].any()
    raw = predict(image, Threshold(), card, spacing=(1, 1, 1), postprocess=False).labels
    assert raw[6:8, 26:29, 26:29].all()  # without the card's choice the blob stays


def test_training_with_validation_records_its_postprocess_choice(tmp_path):
    pairs = [TrainingPair(*ct_pair(seed=s)) for s in range(3)]
    cfg = TrainConfig(arch="unet3d", arch_kwargs=TINY, iterations=2, batch_size=1,
                      patch_size=(16, 16, 16), val_fraction=0.34)  # fmt: skip
    out = tmp_path / "m.pt"
    run_training(pairs, cfg, out=out)
    choice = read_card(out).postprocess
    assert choice["chosen_on"] == "validation" and "largest_component" in choice
    cfg.postprocess = "none"
    run_training(pairs, cfg, out=tmp_path / "n.pt")
    assert read_card(tmp_path / "n.pt").postprocess == {}


def test_volume_spacing_is_used_by_the_plan():
    image, labels = ct_pair()
    pairs = [
        TrainingPair(
            Volume(image, spacing=(2.0, 1.0, 1.0)), Volume(labels, spacing=(2.0, 1.0, 1.0))
        ),
        TrainingPair(
            Volume(image, spacing=(3.0, 1.0, 1.0)), Volume(labels, spacing=(3.0, 1.0, 1.0))
        ),
        TrainingPair(
            Volume(image, spacing=(4.0, 1.0, 1.0)), Volume(labels, spacing=(4.0, 1.0, 1.0))
        ),
    ]
    # nnU-Net's rule (the context plan off: it starts from this median and coarsens)
    nnunet_rule = TrainConfig(arch="unet3d", plan_context=False)
    assert plan_training(pairs, nnunet_rule).spacing == (3.0, 1.0, 1.0)
    off = plan_training(pairs, TrainConfig(arch="unet3d", plan_spacing=False, plan_context=False))
    assert off.spacing == (2.0, 1.0, 1.0)
    ctx = plan_training(pairs, TrainConfig(arch="unet3d"))
    assert ctx.spacing[0] >= 3.0 and ctx.spacing[1] >= 1.0 and ctx.reasons


def test_single_case_validation_slab_always_holds_an_annotated_slice():
    """Sparse slices resampled to a coarser spacing can leave 3 annotated slices; the
    held-out slab must still hold one (it was empty and validation crashed)."""
    from napari_vnet.training.data import _Case, _split_validation

    image = np.zeros((10, 4, 4), np.float32)
    mask = np.zeros((10, 4, 4), bool)
    mask[[1, 3, 5]] = True
    train, val = _split_validation(
        [_Case("c", image, np.zeros((10, 4, 4), np.uint8), mask)], 0.2, np.random.default_rng(0)
    )
    assert np.flatnonzero(val[0].mask.any((1, 2))).tolist() == [5]
    assert np.flatnonzero(train[0].mask.any((1, 2))).tolist() == [1, 3]
