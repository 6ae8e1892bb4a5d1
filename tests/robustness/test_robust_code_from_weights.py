"""No code from weights, ever: a MONAI bundle's ``inference.json`` or a card's
``preprocessing`` names transforms and arguments, and napari-vnet builds them only from an
allowlist of (class, argument names, plain-data types). Each attack below makes the
unpatched code run a shell command (it creates a sentinel file); now it is refused in one
line naming the file, the transform and the argument, and the sentinel never appears: for
a bundle and a ``.pt`` card at ``predict`` and ``info``, for ``train --weights``, and when a
fine-tuned card is written. ``info`` flags every card ``predict`` refuses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import small_volume, tiny_card, write_image
from napari_vnet.cli import main

pytest.importorskip("monai")

UNET = {"spatial_dims": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0}


def _bundle(root, *transforms, extra=None):
    """A tiny MONAI UNet bundle whose preprocessing lists ``transforms`` after loading."""
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(in_channels=1, out_channels=2, **UNET)
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    torch.save(net.state_dict(), root / "models" / "model.pt")
    inference = {
        "network_def": {"_target_": "UNet", "in_channels": 1, "out_channels": 2, **UNET},
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"}, *transforms]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16],
                    "sw_batch_size": 1, "overlap": 0.25},
        **(extra or {}),
    }  # fmt: skip
    (root / "configs" / "inference.json").write_text(json.dumps(inference))
    (root / "configs" / "metadata.json").write_text(json.dumps({"name": "tiny", "version": "1"}))
    return root


def _swap_class(sentinel):
    """A supported transform whose extra keys replace its class by one that calls a
    function named in the data (MONAI's LoadImage locates its ``reader`` by name)."""
    return {"_target_": "ScaleIntensityd", "keys": "image", "name": "LoadImage",
            "reader": "os.system", "command": f"touch {sentinel}"}  # fmt: skip


def _card_weights(tmp_path, tiny_weights, name, **changes):
    state = torch.load(tiny_weights, weights_only=True)  # plain data: it loads this way
    state["card"].update(changes)
    out = tmp_path / name
    torch.save(state, out)
    torch.load(out, weights_only=True)
    return out


def _payload_card(sentinel):
    return {"kind": "monai_bundle", "transforms": [
        {"name": "LoadImage", "reader": "os.system", "command": f"touch {sentinel}"}]}  # fmt: skip


def _image(tmp_path):
    return write_image(tmp_path / "ct.nii.gz", small_volume((16, 16, 16)).astype(np.float32))


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if "Warning" not in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bundle_transform_cannot_replace_its_class(tmp_path, capsys):
    sentinel = tmp_path / "ran"
    bundle = _bundle(tmp_path / "bundle", _swap_class(sentinel))
    out = tmp_path / "mask.nii.gz"
    rc = main(["predict", str(_image(tmp_path)), "-w", str(bundle), "--out", str(out)])
    line = _one_line(capsys.readouterr().err)
    assert rc == 1 and not sentinel.exists() and not out.exists()
    assert "inference.json" in line and "ScaleIntensityd" in line and "'name'" in line, line
    assert main(["info", str(bundle)]) == 1 and not sentinel.exists()
    assert "'reader' is not allowed" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("step", "argument"),
    [
        ({"_target_": "Spacingd", "pixdim": [1, 1, 1], "mode": "os.system"}, "mode"),
        ({"_target_": "Spacingd", "pixdim": [1, 1, 1],
          "mode": {"_target_": "os.system", "command": "true"}}, "mode"),
        ({"_target_": "Orientationd", "axcodes": "RAS", "reader": "monai.data.ITKReader"},
         "reader"),
        ({"_target_": "Spacingd", "pixdim": [1, 1, 1], "padding_mode": "@evil"}, "padding_mode"),
        ({"_target_": "ScaleIntensityd", "_target_x": "subprocess.run"}, "_target_x"),
        ({"_target_": "NormalizeIntensityd", "_requires_": "@evil"}, "_requires_"),
        ({"_target_": "ScaleIntensityRanged", "a_min": 0, "a_max": 1, "dtype": "builtins.eval"},
         "dtype"),
        ({"_target_": "Spacingd", "pixdim": "%configs/other.json#pixdim"}, "pixdim"),
    ],
    ids=["dotted-mode", "target-argument", "reader", "ref-to-callable", "target-like-key",
         "requires", "dtype-callable", "macro"],
)  # fmt: skip
def test_bundle_arguments_are_plain_data(tmp_path, capsys, step, argument):
    bundle = _bundle(tmp_path / "b", {"keys": "image", **step},
                     extra={"evil": "subprocess.getoutput"})  # fmt: skip
    assert main(["info", str(bundle)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "inference.json" in line and step["_target_"] in line and argument in line, line


def test_bundle_transform_outside_monai_refused(tmp_path, capsys):
    bundle = _bundle(tmp_path / "b", {"_target_": "evil.module.Spacingd", "keys": "image",
                                      "pixdim": [1, 1, 1]})  # fmt: skip
    assert main(["info", str(bundle)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "inference.json" in line and "evil.module.Spacingd" in line, line


def test_plain_pt_card_cannot_name_code(tmp_path, tiny_weights, capsys):
    sentinel = tmp_path / "ran"
    weights = _card_weights(
        tmp_path, tiny_weights, "evil.pt", preprocessing=_payload_card(sentinel)
    )
    out = tmp_path / "mask.nii.gz"
    rc = main(["predict", str(_image(tmp_path)), "-w", str(weights), "--out", str(out)])
    line = _one_line(capsys.readouterr().err)
    assert rc == 1 and not sentinel.exists() and not out.exists()
    assert str(weights) in line and "LoadImage" in line, line
    assert main(["info", str(weights)]) == 1 and not sentinel.exists()
    assert "LoadImage" in capsys.readouterr().err


def test_pt_card_allowed_class_with_a_reader_argument(tmp_path, tiny_weights, capsys):
    pre = {"kind": "monai_bundle", "transforms": [
        {"name": "Spacing", "pixdim": [1, 1, 1], "reader": "os.system"}]}  # fmt: skip
    weights = _card_weights(tmp_path, tiny_weights, "reader.pt", preprocessing=pre)
    assert main(["info", str(weights)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert str(weights) in line and "Spacing" in line and "'reader'" in line, line


def _pair(tmp_path):
    labels = np.zeros((16, 16, 16), np.uint8)
    labels[4:12, 4:12, 4:12] = 1
    image = write_image(tmp_path / "img.nii.gz", (labels * 100.0 + 5).astype(np.float32))
    return image, write_image(tmp_path / "seg.nii.gz", labels)


@pytest.mark.parametrize("source", ["bundle", "card"])
def test_train_weights_never_runs_code(tmp_path, tiny_weights, capsys, source):
    sentinel = tmp_path / "ran"
    if source == "bundle":
        weights = _bundle(tmp_path / "bundle", _swap_class(sentinel))
    else:
        weights = _card_weights(tmp_path, tiny_weights, "evil.pt",
                                preprocessing=_payload_card(sentinel))  # fmt: skip
    image, labels = _pair(tmp_path)
    out = tmp_path / "tuned.pt"
    rc = main(["train", "--image", str(image), "--labels", str(labels), "--weights",
               str(weights), "--iterations", "1", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc != 0 and not sentinel.exists() and not out.exists(), err
    assert "Traceback" not in err and ("LoadImage" in err or "'name'" in err), err


def test_fine_tuned_card_with_code_is_never_written(tmp_path):
    from napari_vnet.inference.preprocess import preprocessing_for
    from napari_vnet.models import build_model, save_checkpoint

    sentinel = tmp_path / "ran"
    card = tiny_card()
    card.preprocessing = _payload_card(sentinel)
    card.source = {"format": "monai_bundle", "fine_tuned": True}
    out = tmp_path / "tuned.pt"
    with pytest.raises(ValueError, match=r"tuned\.pt: the model card cannot be saved.*LoadImage"):
        save_checkpoint(build_model(tiny_card()), card, out)
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))
    # an in-memory card (the GUI's fine-tune base) is refused before anything is built
    with pytest.raises(ValueError, match="LoadImage"):
        preprocessing_for(card)
    assert not sentinel.exists()


BAD_CARDS = {
    "unknown-normalization": ({"normalization": {"kind": "fancy"}}, "normalization kind 'fancy'"),
    "percentile-200": ({"normalization": {"kind": "percentile", "low": 0.5, "high": 200}},
                       "in [0, 100]"),
    "duplicate-values": ({"classes": [{"value": 0, "name": "background"},
                                      {"value": 0, "name": "liver"}]}, "repeated: 0"),
    "classes-string": ({"classes": "background,liver"}, "classes must be a list"),
    "value-string": ({"classes": [{"value": 0, "name": "background"},
                                  {"value": "one", "name": "liver"}]}, "whole number"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_CARDS))
def test_info_flags_what_predict_refuses(tmp_path, tiny_weights, capsys, case):
    change, says = BAD_CARDS[case]
    weights = _card_weights(tmp_path, tiny_weights, f"{case}.pt", **change)
    assert main(["info", str(weights)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert says in line and str(weights) in line, line
    out = tmp_path / "mask.nii.gz"
    rc = main(["predict", str(_image(tmp_path)), "-w", str(weights), "--out", str(out)])
    line = _one_line(capsys.readouterr().err)
    assert rc == 1 and says in line and not out.exists(), line


def test_info_one_line_per_problem(tmp_path, tiny_weights, capsys):
    weights = _card_weights(
        tmp_path, tiny_weights, "two.pt", normalization={"kind": "fancy"},
        classes=[{"value": 1, "name": "a"}, {"value": 1, "name": "b"}],
    )  # fmt: skip
    assert main(["info", str(weights)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(str(weights) in line for line in lines), lines
