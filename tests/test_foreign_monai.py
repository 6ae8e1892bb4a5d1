"""MONAI weights: a bare state dict wrapped from the command line, and bundle folders
run against MONAI's own bundle inference."""

from __future__ import annotations

import json

import monai  # noqa: F401  (testing extra)
import numpy as np
import pytest
import torch

from napari_vnet.cli import main
from napari_vnet.foreign.monai_bundle import UnsupportedBundleError, load_monai_bundle
from napari_vnet.inference import predict
from napari_vnet.io import read_volume, write_volume
from napari_vnet.models import CheckpointError
from napari_vnet.phantoms import make_phantom
from napari_vnet.weights import load_weights


def _dice(a, b, value):
    x, y = a == value, b == value
    return 2.0 * float((x & y).sum()) / max(1, int(x.sum() + y.sum()))


def test_bare_state_dict_wrapped_on_the_command_line(tmp_path, capsys):
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    kwargs = {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1}
    net = UNet(spatial_dims=3, in_channels=1, out_channels=3, **kwargs).eval()
    bare = tmp_path / "unet_state.pt"
    torch.save(net.state_dict(), bare)
    out = tmp_path / "unet.pt"
    argv = ["import-weights", str(bare), "--arch", "monai.UNet", "--arch-kwargs",
            json.dumps(kwargs), "--classes", "background,liver,spine", "--normalization",
            "window:-200:300", "--patch-size", "16", "32", "32", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "MONAI UNet, unet_state.pt, 3 classes" in capsys.readouterr().out

    model, card = load_weights(out)  # rebuilt offline from its card
    assert card.origin() == "MONAI UNet, unet_state.pt"
    for k, v in net.state_dict().items():
        assert torch.equal(model.net.state_dict()[k], v)

    image, _, _ = make_phantom(3, shape=(20, 40, 36))
    ours = predict(image, model, card, device="cpu", amp=False).labels
    # MONAI's own sliding window on the (x, y, z) array MONAI pipelines use
    x = np.clip((image.array.astype(np.float32) + 200.0) / 500.0, 0.0, 1.0)
    xyz = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 1, 0)))[None, None]
    with torch.no_grad():
        logits = sliding_window_inference(
            xyz, (32, 32, 16), 1, net, overlap=0.5, mode="gaussian", sigma_scale=0.125
        )
    ref = logits[0].argmax(0).numpy().transpose(2, 1, 0)
    assert ours.shape == ref.shape
    for value in (0, 1, 2):
        if (ref == value).sum() > 50:
            assert _dice(ours, ref, value) >= 0.99, value

    # the wrong network for the weights: one line naming the first mismatch, and the
    # earlier --out (replaced only with --overwrite) is left as it was
    before = out.read_bytes()
    assert main([*argv[:3], "monai.BasicUNet", *argv[6:], "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "do not fit MONAI BasicUNet" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == before


def _bundle(tmp_path):
    """A VNet bundle as MONAI's model zoo lays it out (random weights, fixed seed)."""
    from monai.networks.nets import VNet

    from napari_vnet.foreign.export import export_monai_bundle
    from napari_vnet.foreign.monai_bundle import monai_card
    from napari_vnet.models import ClassInfo

    torch.manual_seed(1)
    card = monai_card(
        "VNet",
        {},
        [ClassInfo(0, "background"), ClassInfo(1, "liver"), ClassInfo(2, "spine")],
        normalization={"kind": "window", "low": -200.0, "high": 300.0},
        spacing=(6.0, 5.0, 5.0),
        patch_size=(32, 32, 32),
    )
    net = VNet(spatial_dims=3, in_channels=1, out_channels=3).eval()

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

    card.sliding_window = {"mode": "constant", "overlap": 0.25}
    return export_monai_bundle(Wrapped(), card, tmp_path / "vnet_bundle"), net


def monai_bundle_labels(folder, path) -> np.ndarray:
    """The label map MONAI's own bundle machinery makes of the image file ``path``:
    ``ConfigParser`` reads the bundle's configs/inference.json, builds ``network_def``
    (weights: models/model.pt read with ``weights_only=True``) and runs its
    preprocessing, inferer and postprocessing; returned in (z, y, x) order."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(folder / "models" / "model.pt", weights_only=True))
    network.eval()
    data = parser.get_parsed_content("preprocessing")({"image": str(path)})
    with torch.no_grad():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], network)[0]
    ref = parser.get_parsed_content("postprocessing")(data)["pred"]
    return np.asarray(ref)[0].transpose(2, 1, 0)  # MONAI (x, y, z) -> (z, y, x)


def test_bundle_same_labels_as_monai_bundle_inference(tmp_path):
    folder, net = _bundle(tmp_path)
    image, _, _ = make_phantom(5, shape=(20, 40, 40))
    path = write_volume(image, tmp_path / "ct.nii.gz")
    ref = monai_bundle_labels(folder, path)

    model, card = load_weights(folder)
    assert card.origin().startswith("MONAI bundle")
    assert [c.name for c in card.classes] == ["background", "liver", "spine"]
    overlap = card.sliding_window["overlap"]  # the bundle inferer's
    ours = predict(read_volume(path), model, card, device="cpu", amp=False, overlap=overlap).labels
    assert ours.shape == ref.shape == image.array.shape
    for value in (0, 1, 2):
        if (ref == value).sum() > 50:
            assert _dice(ours, ref.astype(ours.dtype), value) >= 0.99, value


def test_bundle_expressions_are_never_evaluated(tmp_path):
    folder, _ = _bundle(tmp_path)
    cfg_path = folder / "configs" / "inference.json"
    cfg = json.loads(cfg_path.read_text())
    sentinel = tmp_path / "ran"
    cfg["network_def"]["dropout_dim"] = f"$__import__('os').system('touch {sentinel}')"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(
        UnsupportedBundleError, match=r"network_def.dropout_dim is a Python expression"
    ):
        load_monai_bundle(folder)
    with pytest.raises(CheckpointError):
        load_weights(folder)
    assert not sentinel.exists()
