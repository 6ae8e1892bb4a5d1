"""nnU-Net v2 trained-model folders through napari-vnet's engine, against nnU-Net itself.

The folder under tests/data/nnunet was made by nnU-Net's own planner and trainer
(``scripts/make_nnunet_test_model.py``: 8 synthetic torso phantoms, liver + spine, two
folds). The oracle is ``nnUNetPredictor`` on the same volume, fp32 on the CPU.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nnunetv2  # noqa: F401  (installed by scripts/setup.sh)
import numpy as np
import pytest
import torch

from napari_vnet.foreign.nnunet import UnsupportedNnUNetError, load_nnunet_folder
from napari_vnet.inference import predict
from napari_vnet.models import CheckpointError
from napari_vnet.phantoms import make_phantom
from napari_vnet.weights import load_weights, read_weights_card

DATA = Path(__file__).parent / "data" / "nnunet" / "Dataset901_TinyPhantom"
FOLDER = DATA / "nnUNetTrainer__nnUNetPlans__3d_fullres"


def _dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    x, y = a == value, b == value
    return 2.0 * float((x & y).sum()) / max(1, int(x.sum() + y.sum()))


def _nnunet_predict(folder: Path, image, mirror: bool, folds=None, trainer=None) -> np.ndarray:
    """nnU-Net's own ``nnUNetPredictor`` on ``image`` (CPU, fp32). ``trainer``: the
    checkpoint's trainer class, imported by the caller, for a trainer that nnU-Net's search
    by name cannot reach without optional packages (it imports every trainer module on
    its way; the Primus ones need timm): the predictor is then set up by its
    ``manual_initialization`` with the network that trainer builds from the plans."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    pred = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=mirror,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    if trainer is None:
        pred.initialize_from_trained_model_folder(str(folder), use_folds=folds)
    else:
        _initialize_with(pred, folder, trainer, folds or ["0"])
    data = image.array[None].astype(np.float32)
    return pred.predict_single_npy_array(data, {"spacing": list(image.spacing)})


def _initialize_with(pred, folder: Path, trainer, folds) -> None:
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_json = json.loads((folder / "dataset.json").read_text())
    plans = PlansManager(json.loads((folder / "plans.json").read_text()))
    ckpts = [torch.load(folder / f"fold_{f}" / "checkpoint_final.pth", weights_only=False)
             for f in folds]  # fmt: skip
    cfg = plans.get_configuration(ckpts[0]["init_args"]["configuration"])
    network = trainer.build_network_architecture(
        plans, cfg, determine_num_input_channels(plans, cfg, dataset_json),
        plans.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=False,
    )  # fmt: skip
    params = [c["network_weights"] for c in ckpts]
    network.load_state_dict(params[0])
    pred.manual_initialization(network, plans, cfg, params, dataset_json, ckpts[0]["trainer_name"],
                               ckpts[0].get("inference_allowed_mirroring_axes"))  # fmt: skip


def test_folder_card_says_where_it_comes_from():
    card = read_weights_card(DATA)  # the dataset folder holding one trained model is enough
    assert card.origin() == "nnU-Net v2, Dataset901_TinyPhantom, 3d_fullres, folds 0-1"
    assert [c.name for c in card.classes] == ["background", "liver", "spine"]
    assert card.label_values == [0, 1, 2]
    net, card2 = load_nnunet_folder(FOLDER, folds=["1"])
    assert card2.origin().endswith("fold 1") and len(net.members) == 1
    with pytest.raises(CheckpointError, match=r"fold\(s\) 3 not found \(present: 0, 1\)"):
        load_nnunet_folder(FOLDER, folds=["3"])


@pytest.mark.parametrize(
    ("seed", "shape", "spacing", "mirror"),
    [
        # at about the plan's spacing, no mirroring
        (7, (24, 48, 48), None, False),
        # thick slices (20 mm vs 4 mm in plane): nnU-Net resamples with separate z,
        # and back from the logits; mirroring on (its axes from the checkpoint)
        (9, (10, 40, 44), (20.0, 4.0, 4.0), True),
    ],
)
def test_same_labels_as_nnunet_predictor(seed, shape, spacing, mirror):
    torch.manual_seed(0)
    image, _, _ = make_phantom(seed, shape=shape, spacing=spacing)
    expected = _nnunet_predict(FOLDER, image, mirror)
    model, card = load_weights(FOLDER)  # both folds, logits averaged
    result = predict(image, model, card, device="cpu", amp=False, tta=mirror)
    assert result.labels.shape == expected.shape == image.array.shape
    assert (expected > 0).sum() > 500  # the model does segment something
    for value in (1, 2):
        assert _dice(result.labels, expected, value) >= 0.99, value


def test_fast_way_back_and_batched_windows_keep_the_labels(monkeypatch):
    """The way back resamples the blended logits once, in torch (plan's linear
    resampling, no separate z here): the same labels as nnU-Net's own resampling
    function and as nnU-Net itself; windows batched on the CPU (the default for a small
    patch) give the same labels as one window per pass."""
    from napari_vnet.foreign.nnunet_preprocessing import NnUNetPreprocessing

    torch.manual_seed(0)
    image, _, _ = make_phantom(5, shape=(16, 64, 72), spacing=(6.0, 3.0, 3.0))
    model, card = load_weights(FOLDER)
    fast = predict(image, model, card, device="cpu", amp=False)
    assert fast.stats["resampled"] and fast.batch_size > 1
    one = predict(image, model, card, device="cpu", amp=False, batch_size=1)
    monkeypatch.setattr(NnUNetPreprocessing, "_linear_way_back", lambda self, target: False)
    slow = predict(image, model, card, device="cpu", amp=False, batch_size=1)
    assert (fast.labels > 0).sum() > 500
    np.testing.assert_array_equal(fast.labels, one.labels)
    assert (fast.labels != slow.labels).sum() <= 1e-4 * fast.labels.size
    expected = _nnunet_predict(FOLDER, image, mirror=False)
    for value in (1, 2):
        assert _dice(fast.labels, expected, value) >= 0.99, value


def test_unsupported_variants_refused_in_one_line(tmp_path):
    def variant(name: str, edit) -> Path:
        folder = tmp_path / name / FOLDER.name
        shutil.copytree(FOLDER, folder)
        plans = json.loads((folder / "plans.json").read_text())
        dataset = json.loads((folder / "dataset.json").read_text())
        edit(plans, dataset)
        (folder / "plans.json").write_text(json.dumps(plans))
        (folder / "dataset.json").write_text(json.dumps(dataset))
        return folder

    def cascade(plans, _):
        plans["configurations"]["3d_fullres"]["previous_stage"] = "3d_lowres"

    def regions(_, dataset):
        dataset["labels"] = {"background": 0, "body": [1, 2], "spine": 2}
        dataset["regions_class_order"] = [1, 2]

    def two_d(plans, _):
        plans["configurations"]["3d_fullres"]["patch_size"] = [32, 32]

    for name, edit, match in [
        ("cascade", cascade, r"cascade stage"),
        ("regions", regions, r"region-based training"),
        ("2d", two_d, r"is 2D; napari-vnet runs 3D configurations only"),
    ]:
        with pytest.raises(UnsupportedNnUNetError, match=match) as info:
            load_weights(variant(name, edit))
        assert "\n" not in str(info.value)


def test_plans_cannot_import_outside_the_network_packages(tmp_path):
    folder = tmp_path / FOLDER.name
    shutil.copytree(FOLDER, folder)
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["nonlin"] = "os.system"
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(CheckpointError, match=r"'os.system' is not inside torch.nn; refusing"):
        load_weights(folder)


def test_weights_file_rebuilds_offline_and_exports_back_to_nnunet(tmp_path, capsys):
    from napari_vnet.cli import main
    from napari_vnet.models import save_checkpoint

    model, card = load_weights(FOLDER)
    saved = save_checkpoint(model, card, tmp_path / "tiny-nnunet.pt")
    model2, card2 = load_weights(saved)  # no folder needed: the card has the plans
    assert card2.origin() == card.origin() and card2.preprocessing == card.preprocessing
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model2(x))

    assert (
        main(["export-weights", str(saved), str(tmp_path / "results"), "--format", "nnunet"]) == 0
    )
    out = tmp_path / "results" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert capsys.readouterr().out.strip() == str(out)
    assert sorted(p.name for p in out.iterdir()) == [
        "dataset.json",
        "fold_0",
        "fold_1",
        "plans.json",
    ]
    # nnU-Net's own predictor loads the exported folder and predicts what the original does
    image, _, _ = make_phantom(7, shape=(24, 48, 48))
    exported = _nnunet_predict(out, image, mirror=False)
    original = _nnunet_predict(FOLDER, image, mirror=False)
    assert np.array_equal(exported, original)
    # an existing folder is not overwritten by accident
    assert main(["export-weights", str(saved), str(out), "--format", "nnunet"]) == 1
    assert "already exists" in capsys.readouterr().err


def test_finetune_an_nnunet_folder_and_hand_it_back(tmp_path):
    """`train --weights FOLDER`: nnU-Net's network trained on nnU-Net-preprocessed pairs;
    the result rebuilds offline, predicts through the engine and goes back to nnU-Net."""
    from napari_vnet.cli import main
    from napari_vnet.io import Volume, write_volume

    image, labels, _ = make_phantom(21, shape=(24, 48, 48))
    lab = np.zeros(labels.array.shape, np.uint8)
    lab[labels.array == 1], lab[labels.array == 4] = 1, 2  # liver, spine as in the dataset
    geometry = {"spacing": labels.spacing, "origin": labels.origin, "direction": labels.direction}
    img_path = write_volume(image, tmp_path / "ct.nii.gz")
    lab_path = write_volume(Volume(lab, **geometry), tmp_path / "labels.nii.gz")
    out = tmp_path / "finetuned.pt"
    argv = ["train", "--image", str(img_path), "--labels", str(lab_path), "--weights",
            str(FOLDER), "--iterations", "6", "--batch-size", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    model, card = load_weights(out)
    assert card.arch == "nnunet" and card.preprocessing["kind"] == "nnunet"
    assert card.origin() == "nnU-Net v2, Dataset901_TinyPhantom, 3d_fullres, folds 0-1, fine-tuned"
    base, _ = load_weights(FOLDER)
    changed = [k for k, v in base.state_dict().items() if not torch.equal(v, model.state_dict()[k])]
    assert changed  # it trained
    result = predict(image, model, card, device="cpu", amp=False)
    assert result.labels.shape == image.array.shape
    assert _dice(result.labels, lab, 1) > 0.5  # still a liver model
    assert main(["export-weights", str(out), str(tmp_path / "back"), "--format", "nnunet"]) == 0
    back = tmp_path / "back" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    theirs = _nnunet_predict(back, image, mirror=False)  # nnU-Net's own predictor
    for value in (1, 2):
        assert _dice(theirs, result.labels, value) >= 0.99, value


def test_cli_info_and_predict_take_the_folder(tmp_path, capsys):
    from napari_vnet.cli import main
    from napari_vnet.io import read_volume, write_volume

    assert main(["info", str(FOLDER)]) == 0
    text = capsys.readouterr().out
    assert "origin:        nnU-Net v2, Dataset901_TinyPhantom, 3d_fullres, folds 0-1" in text
    assert "1 liver" in text and "2 spine" in text
    image, _, _ = make_phantom(7, shape=(24, 48, 48))
    src = write_volume(image, tmp_path / "ct.nii.gz")
    out = tmp_path / "mask.nii.gz"
    # by default as nnUNetv2_predict: mirrored over the checkpoint's axes, float32 on a CPU
    assert main(["predict", str(src), "--weights", str(FOLDER), "--out", str(out)]) == 0
    assert "nnU-Net default: mirroring on (8x slower), float32" in capsys.readouterr().err
    theirs = _nnunet_predict(FOLDER, read_volume(src), mirror=True)
    ours = read_volume(out).array
    assert np.count_nonzero(ours != theirs) <= 0.0001 * ours.size  # float rounding only
    for value in (1, 2):
        assert _dice(ours, theirs, value) >= 0.995, value
    model, card = load_weights(FOLDER)
    vol = read_volume(src)
    expected = predict(vol, model, card, device="cpu", amp=False, tta=True).labels
    assert np.array_equal(ours, expected)
    # --disable-tta (nnU-Net's spelling too): one pass, still float32
    argv = ["predict", str(src), "-w", str(FOLDER), "-o", str(out), "--overwrite", "--json"]
    assert main([*argv, "--disable_tta"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["tta"] is False and summary["amp"] is None
    expected = predict(vol, model, card, device="cpu", amp=False, tta=False).labels
    assert np.array_equal(read_volume(out).array, expected)
    # --fast: napari-vnet's own defaults (no mirroring, mixed precision where fast)
    assert main([*argv, "--fast"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["tta"] is False
    expected = predict(vol, model, card, device="cpu", amp="auto", tta=False).labels
    assert np.array_equal(read_volume(out).array, expected)


def test_producer_defaults_per_weights_and_device():
    from napari_vnet.models import ClassInfo, ModelCard
    from napari_vnet.workflows.producer import producer_defaults, run_defaults

    card = read_weights_card(FOLDER)
    own = producer_defaults(card, "cpu")
    assert (own.tta, own.amp, own.passes) == (True, False, 8)
    assert run_defaults(card, "cpu") == {"tta": True, "amp": False}
    assert run_defaults(card, "cpu", tta=False) == {"tta": False, "amp": False}
    assert run_defaults(card, "cpu", fast=True) == {"tta": False, "amp": "auto"}
    native = ModelCard(arch="vnet", classes=[ClassInfo(0, "bg"), ClassInfo(1, "x")])
    assert producer_defaults(native) is None
    assert run_defaults(native, "cpu") == {"tta": False, "amp": "auto"}
    card.source["fine_tuned"] = True  # fine-tuned here: napari-vnet's defaults
    assert producer_defaults(card) is None
    bundle = ModelCard(arch="monai", classes=native.classes,
                       source={"format": "monai_bundle", "amp": True})  # fmt: skip
    assert producer_defaults(bundle, "cpu").describe() == "MONAI bundle default: mirroring off, float32"


def test_cli_folds_and_checkpoint(tmp_path, capsys):
    from napari_vnet.cli import main
    from napari_vnet.io import read_volume, write_volume

    image, _, _ = make_phantom(7, shape=(24, 48, 48))
    src = write_volume(image, tmp_path / "ct.nii.gz")
    out = tmp_path / "mask.nii.gz"
    argv = ["predict", str(src), "-w", str(FOLDER), "-o", str(out), "--disable-tta"]
    assert main([*argv, "--folds", "1", "--checkpoint", "final"]) == 0
    model, card = load_nnunet_folder(FOLDER, folds=["1"], checkpoint="checkpoint_final.pth")
    expected = predict(image, model, card, device="cpu", amp=False).labels
    assert np.array_equal(read_volume(out).array, expected)
    capsys.readouterr()
    assert main([*argv, "--overwrite", "--folds", "3"]) == 1
    assert "fold(s) 3 not found (present: 0, 1)" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--checkpoint", "best"]) == 1
    assert "no checkpoint_best.pth" in capsys.readouterr().err


def _model_copy(tmp_path: Path) -> Path:
    folder = tmp_path / FOLDER.name
    shutil.copytree(FOLDER, folder)
    return folder


def test_postprocessing_pkl_written_by_nnunet_is_applied(tmp_path):
    from batchgenerators.utilities.file_and_folder_operations import save_pickle
    from nnunetv2.postprocessing.remove_connected_components import (
        apply_postprocessing,
    )
    from nnunetv2.postprocessing.remove_connected_components import (
        remove_all_but_largest_component_from_segmentation as largest,
    )
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = _model_copy(tmp_path)
    plans = json.loads((folder / "plans.json").read_text())
    dataset = json.loads((folder / "dataset.json").read_text())
    fg = PlansManager(plans).get_label_manager(dataset).foreground_labels  # numpy ints
    fns, kwargs = [largest, largest], [{"labels_or_regions": fg}, {"labels_or_regions": fg[0]}]
    crossval = folder / "crossval_results_folds_0_1"
    crossval.mkdir()
    save_pickle((fns, kwargs), crossval / "postprocessing.pkl")  # where nnU-Net writes it

    card = read_weights_card(folder)
    assert card.postprocess == {"largest_region": [[1, 2], [1]]}
    assert card.source["postprocessing"].endswith("applied (largest component of 1+2; "
                                                  "largest component of 1)")  # fmt: skip
    model, card = load_weights(folder)
    image, _, _ = make_phantom(7, shape=(24, 48, 48))
    raw = predict(image, model, card, device="cpu", amp=False, postprocess=False).labels
    stray = raw.copy()
    stray[0:2, 0:2, 0:2] = 1  # a liver blob apart from the liver
    stray[-2:, -2:, -2:] = 2  # a spine blob apart from everything
    from napari_vnet.inference.postprocess import apply_card_postprocess

    assert np.array_equal(
        apply_card_postprocess(stray, card.postprocess), apply_postprocessing(stray, fns, kwargs)
    )
    with_pp = predict(image, model, card, device="cpu", amp=False).labels
    assert np.array_equal(with_pp, apply_postprocessing(raw, fns, kwargs))
    # only for the folds it was made for
    assert read_weights_card(folder).postprocess and not load_nnunet_folder(
        folder, folds=["1"]
    )[1].postprocess


def test_malicious_postprocessing_pkl_is_refused_without_running(tmp_path, capsys):
    import os
    import pickle

    from napari_vnet.cli import main
    from napari_vnet.io import write_volume

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = _model_copy(tmp_path)
    (folder / "postprocessing.pkl").write_bytes(pickle.dumps(([Evil()], [{}])))
    card = read_weights_card(folder)
    assert not marker.exists() and card.postprocess == {}
    reason = card.source["postprocessing"]
    assert "not applied, refused" in reason and "system" in reason and "\n" not in reason
    image, _, _ = make_phantom(7, shape=(24, 48, 48))
    src = write_volume(image, tmp_path / "ct.nii.gz")
    argv = ["predict", str(src), "-w", str(folder), "-o", str(tmp_path / "m.nii.gz"), "--fast"]
    assert main(argv) == 0  # predicted without it, saying so
    assert "postprocessing.pkl" in capsys.readouterr().err and not marker.exists()
    # other shapes of pickle: refused with their reason
    for data, why in [
        (pickle.dumps({"a": 1}), "not the (functions, keyword arguments) pair"),
        (pickle.dumps(([print], [{}])), "builtins.print"),
        (b"not a pickle", ""),
    ]:
        (folder / "postprocessing.pkl").write_bytes(data)
        card = read_weights_card(folder)
        assert card.postprocess == {} and why in card.source["postprocessing"]
