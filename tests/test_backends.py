"""ONNX / TorchScript export and the onnxruntime / openvino backends give the torch labels.

Every network exported by ``napari-vnet export-weights --format onnx|torchscript`` (the
three shipped phantom networks, the tiny nnU-Net folder of two folds and a MONAI UNet),
run by ONNX Runtime or ``torch.jit.load`` inside napari-vnet's own sliding window, labels
a phantom as the torch network does (Dice >= 0.999 per class); ``predict --backend``
does the same with the conversion made in memory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_vnet.cli import main
from napari_vnet.inference import predict
from napari_vnet.io import read_volume, write_volume
from napari_vnet.metrics import dice_per_class
from napari_vnet.phantoms import make_phantom
from napari_vnet.weights import load_weights, resolve_weights

ort = pytest.importorskip("onnxruntime")

NNUNET = (
    Path(__file__).parent
    / "data/nnunet/Dataset901_TinyPhantom/nnUNetTrainer__nnUNetPlans__3d_fullres"
)
NETWORKS = ["vnet-phantom", "unet3d-phantom", "vox2vox-phantom", str(NNUNET)]
IDS = ["vnet", "unet3d", "vox2vox", "nnunet"]


@pytest.fixture(scope="module")
def phantom():
    image, _, _ = make_phantom(4, shape=(36, 56, 60))
    return image


def _same_labels(labels: np.ndarray, ref: np.ndarray) -> None:
    assert labels.shape == ref.shape
    values = [int(v) for v in np.unique(ref)]
    assert len(values) >= 2, "the torch network found nothing: no test"
    dice = dice_per_class(labels, ref, values)
    assert min(dice.values()) >= 0.999, dice


class OrtModule(torch.nn.Module):
    """An ONNX file run by ONNX Runtime, called as a torch network (tensor in, out)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"image": x.contiguous().numpy()})[0]
        return torch.from_numpy(out)


def _export(weights: str, out: Path, fmt: str, capsys) -> tuple[Path, dict]:
    assert main(["export-weights", weights, str(out), "--format", fmt]) == 0
    printed = capsys.readouterr().out.split()
    suffix = {"onnx": "model.onnx", "torchscript": "model.ts"}[fmt]
    assert printed == [str(out / suffix), str(out / "model.json")]
    assert sorted(p.name for p in out.iterdir()) == sorted([suffix, "model.json"])
    return out / suffix, json.loads((out / "model.json").read_text())


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("weights", NETWORKS, ids=IDS)
def test_exported_models_label_as_the_torch_network(weights, phantom, tmp_path, capsys):
    model, card = load_weights(resolve_weights(weights), map_location="cpu")
    settings = {"device": "cpu", "amp": False, "tta": [(), (2,)]}  # a flip: outside the net
    ref = predict(phantom, model, card, **settings).labels

    onnx_file, meta = _export(weights, tmp_path / "onnx", "onnx", capsys)
    _same_labels(predict(phantom, OrtModule(onnx_file), card, **settings).labels, ref)
    assert meta["classes"] == [
        {"channel": i, "value": c.value, "name": c.name} for i, c in enumerate(card.classes)
    ]

    ts_file, _ = _export(weights, tmp_path / "ts", "torchscript", capsys)
    traced = torch.jit.load(str(ts_file), map_location="cpu")
    _same_labels(predict(phantom, traced, card, **settings).labels, ref)


def test_the_json_holds_what_reproduces_the_result(tmp_path, capsys):
    _, own = _export("unet3d-ct-starter", tmp_path / "ct", "onnx", capsys)
    _, card = load_weights(resolve_weights("unet3d-ct-starter"))
    assert own["normalization"] == card.normalization and own["normalization"]["kind"] == "ct"
    assert own["spacing"] == list(card.spacing) and own["patch_size"] == list(card.patch_size)
    assert own["input"]["shape"] == ["batch", 1, *card.patch_size]
    assert own["output"]["shape"][:2] == ["batch", len(card.classes)]
    assert own["sliding_window"]["blend"] == "softmax" and own["ensemble"]["members"] == 1
    assert any("normalised" in s and "(ct)" in s for s in own["steps"])

    _, nn = _export(str(NNUNET), tmp_path / "nn", "onnx", capsys)
    assert (
        nn["preprocessing"]["kind"] == "nnunet" and "configurations" in nn["preprocessing"]["plans"]
    )
    assert nn["sliding_window"]["blend"] == "logits" and nn["sliding_window"]["steps"] == "even"
    assert nn["sliding_window"]["mirror_axes"] == [0, 1, 2]
    assert nn["ensemble"] == {"members": 2, "how": "the graph averages the members' logits"}
    assert nn["model_card"]["arch"] == "nnunet"


def test_export_errors_are_one_clear_line(tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        main(["export-weights", "unet3d-phantom", str(out), "--format", "tflite"])
    assert exit_.value.code == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err and not out.exists()

    _export("unet3d-phantom", out, "onnx", capsys)
    assert main(["export-weights", "unet3d-phantom", str(out), "--format", "torchscript"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and "--overwrite" in err
    assert (out / "model.onnx").exists() and not (out / "model.ts").exists()

    # --overwrite replaces an earlier export, never a folder holding something else
    argv = ["export-weights", "unet3d-phantom", str(out), "--format", "torchscript", "--overwrite"]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.ts"]
    capsys.readouterr()
    (out / "notes.txt").write_text("mine")
    assert main(argv) == 1
    assert "notes.txt" in capsys.readouterr().err and (out / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no leftovers


def test_monai_network_exports(tmp_path, capsys, phantom):
    pytest.importorskip("monai")
    from monai.networks.nets import UNet

    kwargs = {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1}
    net = UNet(spatial_dims=3, in_channels=1, out_channels=3, **kwargs)
    torch.save(net.state_dict(), tmp_path / "state.pt")
    argv = ["import-weights", str(tmp_path / "state.pt"), "--arch", "monai.UNet",
            "--arch-kwargs", json.dumps(kwargs), "--classes", "background,liver,spine",
            "--normalization", "window:-200:300", "--patch-size", "16", "32", "32",
            "--out", str(tmp_path / "unet.pt")]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    model, card = load_weights(tmp_path / "unet.pt")
    ref = predict(phantom, model, card, device="cpu", amp=False).labels
    onnx_file, meta = _export(str(tmp_path / "unet.pt"), tmp_path / "onnx", "onnx", capsys)
    assert meta["preprocessing"]["kind"] == "array_order"
    _same_labels(predict(phantom, OrtModule(onnx_file), card, device="cpu", amp=False).labels, ref)


# ------------------------------------------------------------------- predict --backend


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_predict_backend_on_the_command_line(backend, phantom, tmp_path, capsys):
    pytest.importorskip(backend)
    src = write_volume(phantom.array, tmp_path / "ct.nii.gz", like=phantom)
    masks = {}
    for name in ("torch", backend):
        out = tmp_path / f"{name}.nii.gz"
        argv = ["predict", str(src), "-w", "unet3d-phantom", "--out", str(out),
                "--backend", name, "--no-amp", "--threads", "1", "--json"]  # fmt: skip
        assert main(argv) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["backend"] == name and summary["amp"] is None
        masks[name] = read_volume(out).array
    _same_labels(masks[backend], masks["torch"])


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_backend_runs_an_nnunet_ensemble_mirrored(backend, phantom):
    pytest.importorskip(backend)
    from napari_vnet.workflows.segment import JobDone, Segmenter

    seg = Segmenter.load(NNUNET)
    settings = {"device": "auto", "tta": True, "threads": 1}  # the plans' mirror axes
    done = {}
    # torch in fp32; the runtime is given "auto" (bf16 where native) and runs fp32 anyway
    for name, amp in (("torch", False), (backend, "auto")):
        outcome = seg.segment(phantom, name="phantom", spacing=phantom.spacing,
                              settings={**settings, "backend": name, "amp": amp})  # fmt: skip
        assert isinstance(outcome, JobDone), outcome
        done[name] = outcome
    assert done[backend].device == "cpu" and done[backend].amp is None  # fp32 on the CPU
    _same_labels(done[backend].labels, done["torch"].labels)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_backend_threads_follow_torch(backend):
    pytest.importorskip(backend)
    from napari_vnet.inference.backends import runtime_model

    model, card = load_weights(NNUNET)
    runtime = runtime_model(model, card, backend, torch.device("cpu"))
    assert runtime_model(model, card, backend, "cpu") is runtime  # converted once
    x = torch.zeros(1, 1, *card.patch_size)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        runtime(x)
        if backend == "onnxruntime":
            opts = runtime.runtime.get_session_options()
            assert opts.intra_op_num_threads == threads
        else:
            assert runtime.runtime.get_property("INFERENCE_NUM_THREADS") == threads
            assert (
                str(runtime.runtime.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
            )
    with torch.no_grad():
        next(model.parameters()).mul_(1.5)  # changed weights: converted again
    assert runtime_model(model, card, backend, "cpu") is not runtime


def test_backend_refusals_say_what_to_do(monkeypatch, tmp_path, capsys):
    from napari_vnet.inference.backends import BackendError, check_backend

    with pytest.raises(BackendError, match="CPU only, not on cuda:0; use --device cpu"):
        check_backend("onnxruntime", torch.device("cuda:0"))
    with pytest.raises(BackendError, match="unknown backend 'tensorrt'"):
        check_backend("tensorrt")
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    with pytest.raises(BackendError, match=r"pip install 'napari-vnet\[openvino\]'"):
        check_backend("openvino", torch.device("cpu"))

    image, _, _ = make_phantom(1, shape=(8, 16, 16))
    src = write_volume(image.array, tmp_path / "ct.nii.gz", like=image)
    argv = ["predict", str(src), "-w", "unet3d-phantom", "--out", str(tmp_path / "m.nii.gz"),
            "--backend", "openvino"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "napari-vnet[openvino]" in err and "Traceback" not in err
    assert not (tmp_path / "m.nii.gz").exists()


def test_cli_backend_choices_are_the_backends():
    from napari_vnet.commands.predict import BACKEND_CHOICES
    from napari_vnet.inference.backends import BACKENDS

    assert BACKEND_CHOICES == BACKENDS
