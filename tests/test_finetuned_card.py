"""A fine-tuned checkpoint's card describes the fine-tune (description, classes, metrics)
and names its base as the origin; the dock's card view and demo note follow it."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vnet.models import ClassInfo, ModelCard, build_model, load_checkpoint, save_checkpoint
from napari_vnet.training import TrainConfig, TrainingPair, finetune
from napari_vnet.workflows.input_check import demo_note

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pair():
    z, y, x = np.indices((16, 24, 24))
    img = np.where((z - 8) ** 2 + (y - 12) ** 2 + (x - 12) ** 2 < 36, 200, -800).astype(np.float32)
    lab = np.zeros(img.shape, np.uint8)
    lab[img > 0] = 1
    lab[:3] = 7  # a class the base does not have
    return img, lab


def test_finetuned_card_describes_the_finetune(tmp_path):
    base = ModelCard(
        arch="unet3d",
        arch_kwargs={"channels": [4, 8, 16]},
        classes=[ClassInfo(0, "background"), ClassInfo(1, "liver")],
        spacing=(1.0, 1.0, 1.0),
        description="3D U-Net trained on 16 synthetic torso phantoms. Mean Dice 0.93.",
        history={"evaluation": {"mean_foreground_dice": 0.93, "cases": 8}, "val_dice": 0.9},
    )
    save_checkpoint(build_model(base), base, tmp_path / "base-phantom.pt")
    img, lab = _pair()
    gen = finetune(
        [TrainingPair(img, lab)],
        TrainConfig(iterations=2, classes="1=liver,7=slab", patch_size=(16, 16, 16)),
        base=tmp_path / "base-phantom.pt",
        out=tmp_path / "tuned.pt",
    )
    for _ in gen:
        pass
    _, card = load_checkpoint(tmp_path / "tuned.pt")
    assert card.description.startswith("Fine-tuned with napari-vnet from base-phantom.pt")
    assert "synthetic" not in card.description and "0.93" not in card.description
    assert card.history["base"]["description"] == base.description
    assert card.history["base"]["weights"] == "base-phantom.pt"
    assert card.class_names == {0: "background", 1: "liver", 7: "slab"}
    assert "evaluation" not in card.history  # the base's Dice is not shown as the fine-tune's
    assert card.history["base"]["evaluation"]["mean_foreground_dice"] == 0.93
    assert demo_note(card) is None and demo_note(base) is not None

    from napari_vnet._widgets._weights_panel import card_html

    text = card_html(card, tmp_path / "tuned.pt")
    assert "Fine-tuned with napari-vnet from base-phantom.pt" in text
    assert "0.930" not in text and "slab (7)" in text
