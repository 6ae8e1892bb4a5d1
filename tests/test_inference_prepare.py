"""``prepare`` (the preprocessing stage alone) + ``predict(prepared, ...)`` gives the same
labels as ``predict(image, ...)``; the batch pipeline runs ``prepare`` on its read-ahead
threads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from napari_vnet.inference import Prepared, predict, prepare
from napari_vnet.io.volume import Volume
from napari_vnet.models.card import ClassInfo, ModelCard

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py

NNUNET = (
    Path(__file__).parent
    / "data"
    / "nnunet"
    / "Dataset901_TinyPhantom"
    / "nnUNetTrainer__nnUNetPlans__3d_fullres"
)


def _net(seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 3, padding=1))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.7)
    return net


def _card(**kw) -> ModelCard:
    return ModelCard(
        arch="tiny",
        classes=[ClassInfo(0, "background"), ClassInfo(5, "liver"), ClassInfo(7, "tumour")],
        patch_size=(16, 16, 16),
        spacing=(1.5, 1.5, 1.5),
        normalization={"kind": "zscore"},
        **kw,
    )


def test_prepared_gives_the_same_labels_with_resampling():
    rng = np.random.default_rng(3)
    image = rng.normal(100.0, 30.0, size=(13, 41, 45)).astype(np.float32)
    spacing = (3.0, 0.8, 0.8)  # not the card's 1.5 mm: resampled there and back
    card, net = _card(), _net()
    run = dict(device="cpu", amp=False, overlap=0.5, return_probabilities=True)
    direct = predict(image, net, card, spacing=spacing, **run)
    prepared = prepare(image, card, spacing=spacing, overlap=0.5)
    assert isinstance(prepared, Prepared) and prepared.input_shape == image.shape
    assert prepared.volume.dtype == np.float32
    assert prepared.volume.shape[1:] != image.shape  # the card's grid
    staged = predict(prepared, net, card, **run)
    assert direct.stats["resampled"] and staged.stats["resampled"]
    assert len(np.unique(direct.labels)) > 1  # something to compare
    np.testing.assert_array_equal(staged.labels, direct.labels)
    np.testing.assert_array_equal(staged.probabilities, direct.probabilities)
    assert staged.stats["model_grid_shape"] == direct.stats["model_grid_shape"]

    # a Volume: its spacing and geometry travel with the prepared input
    vol = Volume(image, spacing=spacing)
    from_vol = predict(prepare(vol, card), net, card, device="cpu", amp=False)
    np.testing.assert_array_equal(from_vol.labels, direct.labels)


def test_prepare_refuses_what_predict_refuses():
    card = _card()
    with pytest.raises(ValueError, match="does not fit model"):
        prepare(np.zeros((2, 3, 8, 8, 8), np.float32), card)
    with pytest.raises(ValueError, match="overlap must be"):
        prepare(np.zeros((8, 8, 8), np.float32), card, overlap=1.5)
    prepared = prepare(np.zeros((8, 8, 8), np.float32), card, spacing=(1.5, 1.5, 1.5))
    with pytest.raises(ValueError, match="batch_size must be"):
        predict(prepared, _net(), card, device="cpu", batch_size=0)
    other = _card(description="another model")
    with pytest.raises(ValueError, match="prepared for model"):
        predict(prepared, _net(), other, device="cpu")


def test_prepared_nnunet_folder_gives_the_same_labels():
    pytest.importorskip("nnunetv2")
    if not NNUNET.is_dir():
        pytest.skip(f"{NNUNET} is absent")
    from napari_vnet.phantoms import make_phantom
    from napari_vnet.weights import load_weights

    image, _, _ = make_phantom(9, shape=(10, 40, 44), spacing=(20.0, 4.0, 4.0))
    model, card = load_weights(NNUNET)
    direct = predict(image, model, card, device="cpu", amp=False)
    staged = predict(prepare(image, card), model, card, device="cpu", amp=False)
    assert (direct.labels > 0).sum() > 100
    np.testing.assert_array_equal(staged.labels, direct.labels)


@pytest.mark.parametrize("workers", [0, 2])
def test_batch_prepares_on_the_read_ahead_threads(tmp_path, workers):
    """The folder pipeline preprocesses each case when it reads it (``prepare_s`` is
    recorded) and writes the same labels as ``predict`` on the volume."""
    from napari_vnet.io import read_volume, write_volume
    from napari_vnet.workflows.batch import discover_cases
    from napari_vnet.workflows.batch_run import predict_cases

    rng = np.random.default_rng(5)
    src = tmp_path / "in"
    src.mkdir()
    for k in range(3):
        image = rng.normal(100.0, 30.0, size=(10, 24, 28)).astype(np.float32)
        write_volume(Volume(image, spacing=(3.0, 0.8, 0.8)), src / f"case{k}.nii.gz")
    card, net = _card(), _net()
    results = list(
        predict_cases(
            discover_cases(src),
            net,
            card,
            tmp_path / "out",
            workers=workers,
            predict_kwargs={"device": "cpu", "amp": False, "overlap": 0.5},
        )
    )
    assert [r.status for r in results] == ["written"] * 3
    for r in results:
        assert r.prepare_s > 0
        expected = predict(
            read_volume(src / f"{r.stem}.nii.gz"), net, card, device="cpu", amp=False
        ).labels
        assert len(np.unique(expected)) > 1
        np.testing.assert_array_equal(read_volume(r.outputs[-1]).array, expected)
