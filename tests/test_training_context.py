"""The context-first training plan: a new model's spacing, patch and width are chosen so
that its patch sees the body's in-plane extent (what tells a liver from a spleen)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_vnet.io import Volume
from napari_vnet.models import read_card
from napari_vnet.training import TrainConfig, TrainingPair, run_training
from napari_vnet.training.plan import plan_training
from napari_vnet.training.recipe import (
    CONTEXT_WIDTHS,
    body_extent_mm,
    plan_context,
)


def wide_ct(shape=(12, 64, 96), spacing=(2.0, 1.0, 1.0)):
    """A thin CT slab in HU whose body (0 HU in -1000 HU air) spans 56 x 88 voxels."""
    z, y, x = np.indices(shape)
    image = np.full(shape, -1000.0, np.float32)
    image[:, 4:60, 4:92] = 0.0
    labels = np.zeros(shape, np.uint8)
    labels[:, 10:30, 10:40] = 5
    image[labels == 5] = 100.0
    return Volume(image, spacing=spacing), Volume(labels, spacing=spacing)


@pytest.mark.parametrize(
    "extent, spacing",
    [((40, 322, 492), (2.0, 0.977, 0.977)), ((300, 350, 500), (1.0, 0.8, 0.8)),
     ((90, 303, 366), (3.0, 3.0, 3.0)), ((150, 250, 250), (5.0, 0.7, 0.7))],
)  # fmt: skip
def test_context_patch_covers_the_body_in_plane_and_holds_real_slices(extent, spacing):
    plan = plan_context(extent, spacing, divisor=8, voxels=80_000, fov_mm=380)
    wanted = np.minimum(np.asarray(extent[1:], float), 380)
    fov = np.asarray(plan.patch) * np.asarray(plan.spacing)
    assert np.all(fov[1:] >= wanted - 1e-6)  # the body's width, up to 380 mm, in one patch
    assert all(p % 8 == 0 for p in plan.patch)
    assert np.prod(plan.patch) <= 80_000 * 1.15
    assert all(s >= d - 1e-9 for s, d in zip(plan.spacing, spacing, strict=True))
    # z: no more slices than the body holds (training windows of real slices, not padding)
    assert plan.patch[0] * plan.spacing[0] <= extent[0] + 1e-6
    assert len(plan.reasons) == 2 and "field of view" in plan.reasons[1]


def test_small_field_keeps_the_data_spacing():
    plan = plan_context((32, 40, 40), (1.0, 1.0, 1.0), divisor=8, voxels=80_000)
    assert plan.spacing == (1.0, 1.0, 1.0)
    assert plan.patch[1] * plan.spacing[1] >= 40


def test_body_extent_ignores_air_around_the_body():
    image, _ = wide_ct()
    ext = body_extent_mm([image.array], [image.spacing])
    assert ext.tolist() == [24.0, 56.0, 88.0]


def test_new_model_plan_is_context_first_and_says_why(tmp_path):
    image, labels = wide_ct()
    cfg = TrainConfig(arch="unet3d", classes="5=organ", iterations=2, batch_size=1,
                      context_voxels=4096, context_fov_mm=80)  # fmt: skip
    plan = plan_training([TrainingPair(image, labels)], cfg)
    assert plan.arch_kwargs == {"channels": CONTEXT_WIDTHS["unet3d"]}
    assert plan.patch_size[1] * plan.spacing[1] >= 56 and plan.patch_size[2] * plan.spacing[2] >= 80
    assert plan.reasons and json.loads(json.dumps(plan.to_dict()))["reasons"] == plan.reasons
    # a spacing or patch given by the user is kept (nnU-Net's rule), and so is a width
    given = plan_training([TrainingPair(image, labels)],
                          TrainConfig(arch="unet3d", classes="5=organ", spacing=(2.0, 1.0, 1.0)))  # fmt: skip
    assert given.spacing == (2.0, 1.0, 1.0) and not given.reasons and not given.arch_kwargs
    narrow = plan_training(
        [TrainingPair(image, labels)],
        TrainConfig(arch="unet3d", classes="5=organ", arch_kwargs={"channels": [4, 8]}),
    )
    assert narrow.arch_kwargs == {} and narrow.patch_size[0] % 2 == 0
    # the trained card holds the plan's width and reasons
    out = tmp_path / "m.pt"
    run_training([TrainingPair(image, labels)], cfg, out=out)
    card = read_card(out)
    assert card.arch_kwargs["channels"] == CONTEXT_WIDTHS["unet3d"]
    assert card.history["run"]["plan"] == plan.reasons
    assert tuple(card.spacing) == plan.spacing and tuple(card.patch_size) == plan.window


def test_train_dry_run_prints_the_reasons(tmp_path, capsys):
    from napari_vnet.cli import main
    from napari_vnet.io import write_volume

    image, labels = wide_ct()
    write_volume(image, tmp_path / "ct.nii.gz")
    write_volume(labels, tmp_path / "lab.nii.gz")
    rc = main(["train", "--image", str(tmp_path / "ct.nii.gz"), "--labels",
               str(tmp_path / "lab.nii.gz"), "--arch", "vnet", "--classes", "5=organ",
               "--out", str(tmp_path / "m.pt"), "--dry-run", "--json", "--fov", "60"])  # fmt: skip
    assert rc == 0
    plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plan["arch_kwargs"] == {"channels": CONTEXT_WIDTHS["vnet"]}
    assert any("field of view" in r for r in plan["reasons"])
    assert plan["patch_size"][2] * plan["spacing"][2] >= 60


@pytest.mark.gui
def test_fine_tune_dock_new_model_gets_the_planned_width(make_napari_viewer):
    from napari_vnet._widgets.finetune import FinetuneWidget

    dock = FinetuneWidget(make_napari_viewer())
    dock.new_model_radio.setChecked(True)
    assert dock.training_config().arch_kwargs == {}  # the plan decides: CONTEXT_WIDTHS
    dock.width_spin.setValue(4)
    assert dock.training_config().arch_kwargs["channels"][0] == 4
