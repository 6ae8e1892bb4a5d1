"""`napari-vnet predict FOLDER`: nnU-Net's multi-channel cases (``CASE_0000``,
``CASE_0001`` files) grouped into one case, named by the case id, channels in order; a
case with a missing channel or channels on different grids fails alone; a single-channel
nnU-Net folder (``imagesTs/CASE_0000.nii.gz``) gives ``CASE.nii.gz``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_vnet.cli import main
from napari_vnet.inference import predict
from napari_vnet.io import Volume, read_volume, write_volume
from napari_vnet.models import ClassInfo, ModelCard, build_model, load_checkpoint, save_checkpoint
from napari_vnet.workflows.batch import discover_cases

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py

SHAPE = (8, 12, 10)
SPACING = (2.0, 0.8, 0.9)
ORIGIN = (5.0, -3.0, 7.5)


def _card(in_channels: int) -> ModelCard:
    return ModelCard(
        arch="unet3d",  # no residual from the input: one convolution sees the channels
        arch_kwargs={"channels": [2, 4]},
        classes=[ClassInfo(0, "background"), ClassInfo(1, "lesion")],
        normalization={"kind": "zscore"},
        spacing=None,
        patch_size=(8, 8, 8),
        in_channels=in_channels,
    )


@pytest.fixture(scope="module")
def channel1_model(tmp_path_factory):
    """A tiny 2-channel 3D U-Net whose first convolution ignores channel 0: its output
    depends on channel 1 only."""
    import torch

    torch.manual_seed(5)
    card = _card(2)
    model = build_model(card)
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv3d))
    assert first.in_channels == 2
    with torch.no_grad():
        first.weight[:, 0] = 0.0
    return save_checkpoint(model, card, tmp_path_factory.mktemp("m") / "two.pt")


def _image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 1, SHAPE).astype(np.float32)
    image[2:6, 3:9, 2:8] += 4.0 * (seed % 3 + 1)
    return image


def _write(path, array, origin=ORIGIN):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_volume(Volume(array, spacing=SPACING, origin=origin), path)


def _run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_two_channel_cases_grouped_in_order_and_a_broken_case_fails_alone(
    channel1_model, tmp_path, capsys
):
    src = tmp_path / "imagesTs"
    chans = {"caseA": (_image(1), _image(2)), "caseB": (_image(3), _image(4))}
    for case, (c0, c1) in chans.items():
        _write(src / f"{case}_0000.nii.gz", c0)
        _write(src / f"{case}_0001.nii.gz", c1)
    _write(src / "lonely_0000.nii.gz", _image(6))  # channel 0001 missing
    _write(src / "shifted_0000.nii.gz", _image(7))
    _write(src / "shifted_0001.nii.gz", _image(8), origin=(50.0, 0.0, 0.0))  # other grid

    cases = discover_cases(src, in_channels=2)
    assert [c.stem for c in cases] == ["caseA", "caseB", "lonely", "shifted"]
    assert [len(c.channels) for c in cases] == [2, 2, 1, 2]
    assert cases[0].channels[1].endswith("caseA_0001.nii.gz")
    assert "lonely_0001" in cases[2].error and "lonely_0000.nii.gz" in cases[2].error

    out = tmp_path / "out"
    argv = ["predict", str(src), "-w", str(channel1_model), "--out", str(out), "--device", "cpu"]
    rc, stdout, err = _run([*argv, "--save-probabilities", "--statistics", "--json"], capsys)
    assert rc == 1  # two cases failed, the others were written
    summary = json.loads((out / "summary.json").read_text())
    status = {r["stem"]: r for r in summary["results"]}
    assert status["caseA"]["status"] == status["caseB"]["status"] == "written"
    assert status["lonely"]["status"] == "failed" and "missing lonely_0001" in err
    assert status["shifted"]["status"] == "failed"
    assert "another voxel grid" in status["shifted"]["error"]
    assert "shifted_0001.nii.gz" in status["shifted"]["error"]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["caseA.nii.gz", "caseB.nii.gz"]

    model, card = load_checkpoint(channel1_model)
    for case, (c0, c1) in chans.items():
        mask = read_volume(out / f"{case}.nii.gz")
        assert mask.shape == SHAPE
        stats = json.loads((out / f"{case}_statistics.json").read_text())
        assert stats["shape"] == list(SHAPE)  # intensities: channel 0
        lesion = stats["classes"][0]
        if lesion["voxels"]:
            mean = float(c0[mask.array == 1].astype(np.float64).mean())
            assert lesion["intensity_mean"] == pytest.approx(mean, rel=1e-5, abs=1e-4)
        np.testing.assert_allclose(mask.origin, ORIGIN, atol=1e-4)
        with np.load(out / f"{case}_probabilities.npz") as npz:
            got = npz["probabilities"].astype(np.float32)
        ordered = predict(np.stack([c0, c1]), model, card, spacing=SPACING, device="cpu",
                          return_probabilities=True)  # fmt: skip
        other0 = predict(np.stack([3.0 * c0[::-1], c1]), model, card, spacing=SPACING,
                         device="cpu", return_probabilities=True)  # fmt: skip
        swapped = predict(np.stack([c1, c0]), model, card, spacing=SPACING, device="cpu",
                          return_probabilities=True)  # fmt: skip
        np.testing.assert_allclose(got, ordered.probabilities.astype(np.float32), atol=2e-3)
        # channel 0 does not matter, channel 1 does: the files went in suffix order
        np.testing.assert_allclose(got, other0.probabilities.astype(np.float32), atol=2e-3)
        assert np.abs(got - swapped.probabilities.astype(np.float32)).max() > 1e-2
        np.testing.assert_array_equal(mask.array, ordered.labels)
    record = json.loads((out / "caseA_provenance.json").read_text())
    assert [p.split("/")[-1] for p in record["channel_files"]] == [
        "caseA_0000.nii.gz",
        "caseA_0001.nii.gz",
    ]


def test_single_channel_nnunet_folder_named_by_case_id(tmp_path, tiny_checkpoint, capsys):
    src = tmp_path / "imagesTs"
    for i in range(2):
        _write(src / f"pat{i}_0000.nii.gz", _image(i))
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    assert [c.stem for c in discover_cases(src, in_channels=1)] == ["pat0", "pat1"]
    out = tmp_path / "out"
    rc, _, err = _run(["predict", str(src), "-w", str(ckpt), "--out", str(out),
                       "--device", "cpu"], capsys)  # fmt: skip
    assert rc == 0, err
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["pat0.nii.gz", "pat1.nii.gz"]
    # the same file run alone gives the same mask
    single = tmp_path / "single.nii.gz"
    assert main(["predict", str(src / "pat1_0000.nii.gz"), "-w", str(ckpt), "-o", str(single),
                 "--device", "cpu"]) == 0  # fmt: skip
    np.testing.assert_array_equal(read_volume(single).array, read_volume(out / "pat1.nii.gz").array)


def test_mixed_folder_keeps_files_as_cases_for_a_one_channel_model(tmp_path):
    src = tmp_path / "scans"
    _write(src / "ct_0001.nii.gz", _image(1))  # a date-like suffix, no channel 0000
    _write(src / "mr.nii.gz", _image(2))
    _write(src / "nn" / "a_0000.nii.gz", _image(3))
    _write(src / "nn" / "a_0001.nii.gz", _image(4))
    cases = discover_cases(src, in_channels=1)
    assert [c.stem for c in cases] == ["ct_0001", "mr", "nn/a"]
    assert cases[2].channels and len(cases[2].channels) == 2  # refused later: 2 channels
    assert [c.stem for c in discover_cases(src, in_channels=2)] == ["ct", "mr", "nn/a"]
    assert "missing ct_0000" in discover_cases(src, in_channels=2)[0].error
