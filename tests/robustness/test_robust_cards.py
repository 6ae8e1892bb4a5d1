"""Absurd model cards and inputs: `info` refuses what `predict` refuses; a `window`
normalisation without bounds is a message, not a KeyError; an all-NaN image is refused
by the CLI as by the GUI."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import small_volume, write_image
from napari_vnet.cli import main


def _with_card(tmp_path, tiny_weights, name, **changes):
    import torch

    state = torch.load(tiny_weights, weights_only=True)
    state["card"].update(changes)
    out = tmp_path / name
    torch.save(state, out)
    return out


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"patch_size": [0, 16, 16]}, "patch size must be three positive sizes"),
        ({"spacing": [float("nan"), 1.0, 1.0]}, "spacing must be three positive finite"),
        ({"classes": [{"value": 0, "name": "background"}, {"value": 10**12, "name": "x"}]},
         "label values must be in [0, 65535]"),
        ({"normalization": {"kind": "window"}}, "window normalization needs low, high"),
    ],
)  # fmt: skip
def test_info_refuses_cards_predict_refuses(tmp_path, tiny_weights, capsys, change, says):
    weights = _with_card(tmp_path, tiny_weights, "absurd.pt", **change)
    rc = main(["info", str(weights)])
    captured = capsys.readouterr()
    assert rc == 1, captured.out + captured.err
    assert says in captured.err and str(weights) in captured.err, captured.err


def test_window_without_bounds_is_a_message(tmp_path, tiny_weights, capsys):
    from napari_vnet.transforms import normalize_intensity

    with pytest.raises(ValueError, match="window normalization needs low, high"):
        normalize_intensity(np.zeros((4, 4, 4), np.float32), {"kind": "window"})
    weights = _with_card(tmp_path, tiny_weights, "window.pt", normalization={"kind": "window"})
    image = write_image(tmp_path / "ct.nii.gz", small_volume().astype(np.float32))
    rc = main(["predict", str(image), "--weights", str(weights), "--out",
               str(tmp_path / "out.nii.gz")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc != 0 and "window normalization needs low, high" in err, err
    assert "Traceback" not in err and not (tmp_path / "out.nii.gz").exists()


def test_all_nan_image_refused_by_the_cli(tmp_path, tiny_weights, capsys):
    # MHA keeps NaN (NIfTI reads non-finite voxels as 0, as ITK does)
    image = write_image(tmp_path / "nan.mha", np.full((6, 10, 12), np.nan, np.float32))
    rc = main(["predict", str(image), "--weights", str(tiny_weights), "--out",
               str(tmp_path / "out.nii.gz")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc != 0 and "no finite values" in err and str(image) in err, err
    assert not (tmp_path / "out.nii.gz").exists()
