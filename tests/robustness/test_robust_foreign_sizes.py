"""Foreign weights are bounded before anything is allocated, like our own files.

* nnU-Net ``checkpoint_final.pth`` and a bundle's ``models/model.pt`` (and a bare state
  dict given to ``import-weights``) get the archive-size check of our own ``.pt`` files: a
  zip bomb of a few MB that unpacks to 1.1 GiB is refused from its zip directory;
* a network described by ``plans.json``, a bundle config or a card (absurd features,
  output channels, window sizes, ensemble members) is sized on PyTorch's ``meta`` device
  and refused before it is built;
* nnU-Net's and a bundle's preprocessing compute the resampled grid (a tiny target
  spacing) and the padded window grid (a huge patch) before resampling or padding.

Each case runs in a child process that reports its peak memory (``VmHWM``) and carries
an address-space limit of 6 GB; ``NAPARI_VNET_MEMORY_LIMIT`` pretends a smaller machine
where a case needs it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import NNUNET_FOLDER as FOLDER
from conftest import inflate_tensor_claim, run_limited_child, small_volume, write_image

_PRELUDE = """
import contextlib, io, json, os, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
def report(**kw):
    with open("/proc/self/status") as fh:
        hwm = [ln for ln in fh if ln.startswith("VmHWM:")]
    kw["peak_mib"] = int(hwm[0].split()[1]) / 1024
    print("RESULT " + json.dumps(kw))
def load(path):
    from napari_vnet.weights import load_weights
    try:
        load_weights(path)
        report(outcome="loaded")
    except BaseException as exc:
        report(outcome="refused", message=f"{type(exc).__name__}: {exc}")
def cli(*argv):
    from napari_vnet.cli import main
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(list(argv))
    except BaseException as exc:
        rc, err = -1, io.StringIO(f"raised {type(exc).__name__}: {exc}")
    report(rc=rc, message=err.getvalue())
"""


def _child(code: str, *args: str, limit: str | None = "512M") -> dict:
    return run_limited_child(_PRELUDE, code, *args, limit=limit)


def _refused_in_one_line(out: dict, *words: str) -> None:
    """Refused, with one error line (``predict`` may warn about the input first)."""
    # warnings and notes (e.g. which defaults a foreign model runs with) are not errors
    lines = [
        ln for ln in out["message"].strip().splitlines()
        if ": warning: " not in ln and ": note: " not in ln
    ]
    assert out.get("rc", 1) not in (0, -1) and out.get("outcome") != "loaded", out
    assert len(lines) == 1 and "Traceback" not in out["message"], out
    text = lines[0]
    for word in words:
        assert word in text, out


# --------------------------------------------------------------------------- zip bombs

MARKER = 1_048_573  # an unusual element count, easy to find in the pickle
NUMEL = 300_000_000  # 1.1 GiB of float32 zeros, deflated to about a megabyte


def _bomb(plain: Path, dest: Path) -> Path:
    """``plain`` (a torch.save holding one ``MARKER``-element zero tensor) rewritten so
    that this tensor claims ``NUMEL`` elements, its record deflated."""
    inflate_tensor_claim(plain, dest, MARKER, NUMEL)
    plain.unlink()
    assert dest.stat().st_size < 5_000_000
    return dest


def test_nnunet_checkpoint_zip_bomb_refused_before_unpacking(tmp_path):
    from napari_vnet.foreign.safe_load import safe_torch_load

    folder = tmp_path / FOLDER.name
    shutil.copytree(FOLDER, folder)
    ckpt = folder / "fold_0" / "checkpoint_final.pth"
    state = safe_torch_load(ckpt)
    state["network_weights"]["padding"] = torch.zeros(MARKER)
    torch.save(state, tmp_path / "plain.pth")
    ckpt.unlink()
    _bomb(tmp_path / "plain.pth", ckpt)
    out = _child("load(sys.argv[1])", str(folder))
    _refused_in_one_line(out, str(ckpt), "refused before allocating", "1.1 GiB")
    assert out["peak_mib"] < 800, out


@pytest.fixture()
def bundle(tmp_path) -> Path:
    """A tiny MONAI UNet bundle as export-weights writes it (spacing 2 mm, 16^3 ROI)."""
    from monai.networks.nets import UNet

    from napari_vnet.foreign.export import export_monai_bundle
    from napari_vnet.foreign.monai_bundle import monai_card
    from napari_vnet.models import ClassInfo

    kwargs = {"channels": [4, 8], "strides": [2], "num_res_units": 0}
    card = monai_card("UNet", kwargs, [ClassInfo(0, "background"), ClassInfo(1, "liver")],
                      spacing=(2.0, 2.0, 2.0), patch_size=(16, 16, 16))  # fmt: skip
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, **kwargs)

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

    return export_monai_bundle(Wrapped(), card, tmp_path / "bundle")


def test_bundle_model_and_bare_state_dict_zip_bombs_refused(tmp_path, bundle):
    model_pt = bundle / "models" / "model.pt"
    state = torch.load(model_pt, weights_only=True)
    state["padding"] = torch.zeros(MARKER)
    torch.save(state, tmp_path / "plain.pt")
    model_pt.unlink()
    _bomb(tmp_path / "plain.pt", model_pt)
    out = _child("load(sys.argv[1])", str(bundle))
    _refused_in_one_line(out, str(model_pt), "refused before allocating", "1.1 GiB")
    assert out["peak_mib"] < 800, out
    # the same file as a bare state dict to wrap with a card
    argv = ["import-weights", str(model_pt), "--arch", "monai.UNet", "--arch-kwargs",
            json.dumps({"channels": [4, 8], "strides": [2], "num_res_units": 0}),
            "--classes", "background,liver", "--out", str(tmp_path / "new.pt")]  # fmt: skip
    out = _child("cli(*sys.argv[1:])", *argv)
    _refused_in_one_line(out, str(model_pt), "refused before allocating")
    assert out["peak_mib"] < 800 and not (tmp_path / "new.pt").exists(), out


# --------------------------------------------------------------------------- networks


def _nnunet_folder(tmp_path: Path, **config_changes) -> Path:
    folder = tmp_path / FOLDER.name
    shutil.copytree(FOLDER, folder)
    plans = json.loads((folder / "plans.json").read_text())
    cfg = plans["configurations"]["3d_fullres"]
    for key, value in config_changes.items():
        if key in cfg["architecture"]["arch_kwargs"]:
            cfg["architecture"]["arch_kwargs"][key] = value
        else:
            cfg[key] = value
    (folder / "plans.json").write_text(json.dumps(plans))
    return folder


def _image(tmp_path: Path) -> str:
    return str(write_image(tmp_path / "ct.nii.gz", small_volume(), spacing=(4.0, 4.0, 4.0)))


def test_plans_with_absurd_features_refused_before_building(tmp_path):
    """1,000,000 features a stage, two folds: 1 PB of parameters (no pretend limit needed)."""
    folder = _nnunet_folder(tmp_path, features_per_stage=[10**6] * 3)
    out = _child(
        "cli('predict', sys.argv[1], '--weights', sys.argv[2], '--out', sys.argv[3])",
        _image(tmp_path),
        str(folder),
        str(tmp_path / "seg.nii.gz"),
        limit=None,
    )
    _refused_in_one_line(out, str(folder), "284,000,064,000,012 parameters in 2 members")
    assert "refused before allocating" in out["message"], out
    assert out["peak_mib"] < 1500 and not (tmp_path / "seg.nii.gz").exists(), out


def test_plans_with_a_huge_patch_refused_before_allocating(tmp_path):
    """A 100000^3 window: refused when the network is sized, and by the preprocessing
    alone (which may run before the network is built) before padding to it."""
    folder = _nnunet_folder(tmp_path, patch_size=[100000] * 3)
    image = _image(tmp_path)
    out = _child(
        "cli('predict', sys.argv[1], '--weights', sys.argv[2], '--out', sys.argv[3])",
        image,
        str(folder),
        str(tmp_path / "seg.nii.gz"),
    )
    _refused_in_one_line(out, "(100000, 100000, 100000) window", "refused before allocating")
    out = _child(
        """
        from napari_vnet.inference.predict import prepare
        from napari_vnet.io import read_volume
        from napari_vnet.weights import read_weights_card
        try:
            prepare(read_volume(sys.argv[1]), read_weights_card(sys.argv[2]))
            report(outcome="prepared")
        except Exception as exc:
            report(outcome="refused", message=f"{type(exc).__name__}: {exc}")
        """,
        image,
        str(folder),
    )
    _refused_in_one_line(out, "ResampleMemoryError", "padded to 100000 x 100000 x 100000")
    assert out["peak_mib"] < 800, out


def test_card_with_a_huge_ensemble_refused_before_building(tmp_path):
    """A card (a weights file) claiming 4,000 fold networks: 153 MB of parameters on a
    pretend 64 MB machine, refused before one member is built for real."""
    from napari_vnet.models import save_checkpoint
    from napari_vnet.weights import load_weights

    model, card = load_weights(FOLDER)
    saved = save_checkpoint(model, card, tmp_path / "nnunet.pt")
    state = torch.load(saved, weights_only=True)
    state["card"]["arch_kwargs"]["members"] = 4_000
    torch.save(state, saved)
    out = _child("load(sys.argv[1])", str(saved), limit="64M")
    _refused_in_one_line(out, str(saved), "in 4,000 members", "refused before allocating")
    assert out["peak_mib"] < 700, out


def test_bundle_with_absurd_output_channels_refused(tmp_path, bundle):
    """10,000,000 output channels: refused before a class per channel is made (today
    about 2 GB of class names, then a 2-billion-parameter layer)."""
    cfg_path = bundle / "configs" / "inference.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["network_def"]["out_channels"] = 10**7
    cfg_path.write_text(json.dumps(cfg))
    out = _child("load(sys.argv[1])", str(bundle))
    _refused_in_one_line(out, str(bundle), "10,000,000 output channels", "65536")
    assert out["peak_mib"] < 700, out


def test_bundle_with_many_classes_and_a_big_roi_refused_when_sized(tmp_path, bundle):
    """60,000 channels (a legal count) on a 96^3 window: 212 GB of output logits."""
    cfg_path = bundle / "configs" / "inference.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["network_def"]["out_channels"] = 60_000
    cfg["inferer"]["roi_size"] = [96, 96, 96]
    cfg_path.write_text(json.dumps(cfg))
    out = _child("load(sys.argv[1])", str(bundle), limit=None)
    _refused_in_one_line(out, str(bundle), "60000 out channels", "refused before allocating")
    assert out["peak_mib"] < 700, out


# --------------------------------------------------------------------------- grids


def test_nnunet_plans_with_a_tiny_spacing_refused_before_resampling(tmp_path):
    folder = _nnunet_folder(tmp_path, spacing=[1e-4, 1e-4, 1e-4])
    image = _image(tmp_path)
    out = _child(
        "cli('predict', sys.argv[1], '--weights', sys.argv[2], '--out', sys.argv[3])",
        image,
        str(folder),
        str(tmp_path / "seg.nii.gz"),
    )
    _refused_in_one_line(out, image, "nnU-Net preprocessing", "refused before allocating")
    assert "to (0.0001, 0.0001, 0.0001) mm (240000 x 400000 x 480000 voxels" in out["message"]
    assert out["peak_mib"] < 1500 and not (tmp_path / "seg.nii.gz").exists(), out


def test_nnunet_training_pair_with_a_tiny_spacing_refused(tmp_path):
    """Fine-tuning preprocesses image and labels the same way: refused the same way."""
    folder = _nnunet_folder(tmp_path, spacing=[1e-4, 1e-4, 1e-4])
    out = _child(
        """
        import numpy as np
        from napari_vnet.foreign import preprocessing_for
        from napari_vnet.weights import read_weights_card
        pre = preprocessing_for(read_weights_card(sys.argv[1]))
        img = np.zeros((6, 10, 12), np.float32)
        try:
            pre.prepare_training(img, img.astype(np.uint8), None, (4.0, 4.0, 4.0))
            report(outcome="prepared")
        except Exception as exc:
            report(outcome="refused", message=f"{type(exc).__name__}: {exc}")
        """,
        str(folder),
    )
    _refused_in_one_line(out, "ResampleMemoryError", "refused before allocating")
    assert out["peak_mib"] < 800, out


def test_bundle_with_a_tiny_pixdim_refused_before_resampling(tmp_path, bundle):
    cfg_path = bundle / "configs" / "inference.json"
    cfg = json.loads(cfg_path.read_text())
    steps = cfg["preprocessing"]["transforms"]
    (spacing,) = [t for t in steps if t["_target_"] == "Spacingd"]
    spacing["pixdim"] = [1e-3, 1e-3, 1e-3]
    cfg_path.write_text(json.dumps(cfg))
    image = _image(tmp_path)
    out = _child(
        "cli('predict', sys.argv[1], '--weights', sys.argv[2], '--out', sys.argv[3])",
        image,
        str(bundle),
        str(tmp_path / "seg.nii.gz"),
    )
    _refused_in_one_line(out, image, "the bundle's Spacingd", "refused before allocating")
    assert out["peak_mib"] < 1500 and not (tmp_path / "seg.nii.gz").exists(), out


def test_legal_foreign_models_still_run_under_a_small_limit(tmp_path, bundle):
    """The estimates count only what must be allocated: the tiny models still predict on
    a pretend 512 MB machine."""
    image = _image(tmp_path)
    for i, weights in enumerate((FOLDER, bundle)):
        seg = tmp_path / f"seg{i}.nii.gz"
        out = _child(
            "cli('predict', sys.argv[1], '--weights', sys.argv[2], '--out', sys.argv[3])",
            image,
            str(weights),
            str(seg),
        )
        assert out["rc"] == 0 and seg.exists(), out
