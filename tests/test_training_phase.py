"""Contrast-phase augmentation: each labelled structure's intensity is shifted on its own
(organs enhance differently between contrast phases and scanners)."""

from __future__ import annotations

import numpy as np

from napari_vnet.models.card import ClassInfo
from napari_vnet.training import TrainingPair
from napari_vnet.training.data import intensity_unit, prepare_cases, structure_regions
from napari_vnet.training.sampler import PHASE_HU, PatchSampler


def _ct_case():
    """A 'CT' with a liver (value 5, learnt) and a spleen (value 1, not learnt) of known HU."""
    img = np.full((16, 32, 32), -100.0, np.float32)
    lab = np.zeros(img.shape, np.uint8)
    lab[4:12, 4:16, 4:16] = 5
    img[lab == 5] = 90.0
    lab[4:12, 18:28, 18:28] = 1
    img[lab == 1] = 80.0
    norm = {"kind": "ct", "low": -200.0, "high": 300.0, "mean": 50.0, "std": 40.0}
    classes = [ClassInfo(0, "background"), ClassInfo(5, "liver")]
    cases, _, _ = prepare_cases(
        [TrainingPair(img, lab, spacing=(1.0, 1.0, 1.0))], classes, spacing=None,
        normalization=norm,
    )  # fmt: skip
    return cases[0], lab


def test_structure_regions_keep_every_label_value_apart():
    lab = np.array([[[0, 5, 5, 1, 300, 7]]], np.int32)
    reg = structure_regions(lab, ignore_index=7)
    assert reg[0, 0, 0] == 0 and reg[0, 0, 5] == 0  # background and the ignore value
    assert reg[0, 0, 1] == reg[0, 0, 2] != 0
    assert len({reg[0, 0, 1], reg[0, 0, 3], reg[0, 0, 4]}) == 3
    assert intensity_unit({"kind": "ct", "std": 40.0}) == 40.0
    assert intensity_unit({"kind": "window", "low": -100, "high": 300}) == 400.0
    assert intensity_unit({"kind": "zscore"}) is None


def test_phase_shift_moves_each_structure_alone_and_keeps_the_labels():
    case, _lab = _ct_case()
    assert case.regions is not None and case.intensity_unit == 40.0
    sampler = PatchSampler([case], (16, 32, 32), augment=True, phase=True, seed=3)
    shifted = 0
    liver_ch = case.target == 1
    spleen = case.regions == case.regions[6, 20, 20]
    for _ in range(40):
        img = sampler._phase_shift(case.image.copy(), case.regions, case)
        d = (img - case.image) * case.intensity_unit  # HU
        dl, ds = np.unique(np.round(d[liver_ch], 3)), np.unique(np.round(d[spleen], 3))
        assert len(dl) == 1 and len(ds) == 1  # one offset per structure
        assert np.all(d[case.regions == 0] == 0)  # unlabelled tissue untouched
        if dl[0] or ds[0]:
            shifted += 1
            assert PHASE_HU[0] - 1e-3 <= dl[0] <= PHASE_HU[1] + 1e-3
            assert dl[0] != ds[0]  # structures move apart, not together
    assert 8 <= shifted <= 32  # about half the patches
    # the sampled batches: targets untouched by the intensity change
    imgs, tgts, _ = sampler.sample(4)
    assert imgs.shape == (4, 1, 16, 32, 32) and set(np.unique(tgts)) <= {0, 1}
