"""`export-weights` and `import-weights` write only where they are told.

Folder names an nnU-Net export takes from the weights (configuration, plans name, fold
names; from a card or from a folder's checkpoints) are single path components, the target
resolves inside OUT, and ``--overwrite`` replaces only an earlier export (a folder that
holds anything else is refused, never deleted). ``import-weights`` refuses an existing
``--out`` without ``--overwrite`` and never writes over its own input.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import NNUNET_FOLDER as FOLDER
from napari_vnet.cli import main


@pytest.fixture(scope="module")
def nnunet_pt(tmp_path_factory) -> Path:
    """The tiny nnU-Net test model as a napari-vnet weights file (card holds the plans)."""
    from napari_vnet.models import save_checkpoint
    from napari_vnet.weights import load_weights

    model, card = load_weights(FOLDER)
    return save_checkpoint(model, card, tmp_path_factory.mktemp("w") / "nnunet.pt")


def _edited(src: Path, dest: Path, **changes) -> Path:
    """A copy of weights file ``src`` whose card has ``changes`` (dotted keys)."""
    state = torch.load(src, weights_only=True)
    config = changes.get("preprocessing.configuration")
    if isinstance(config, str):  # the plans define it: only the name itself is wrong
        configs = state["card"]["preprocessing"]["plans"]["configurations"]
        configs[config] = configs.pop("3d_fullres")
    for key, value in changes.items():
        *path, last = key.split(".")
        node = state["card"]
        for part in path:
            node = node[part]
        node[last] = value
    torch.save(state, dest)
    return dest


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def _precious(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    keep = folder / "precious.txt"
    keep.write_text("the user's file")
    return keep


def _export(weights, out, fmt="nnunet", *extra) -> int:
    return main(["export-weights", str(weights), str(out), "--format", fmt, *extra])


def _one_line_error(capsys, *words) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


@pytest.mark.parametrize("overwrite", [False, True])
def test_configuration_with_dotdot_does_not_leave_out(tmp_path, nnunet_pt, capsys, overwrite):
    """Today: the export lands in tmp/escape and --overwrite deletes the user's file there."""
    evil = _edited(nnunet_pt, tmp_path / "evil.pt",
                   **{"preprocessing.configuration": "x/../../../../escape"})  # fmt: skip
    keep = _precious(tmp_path / "escape")
    out = tmp_path / "a" / "b" / "OUT"
    before = _tree(tmp_path)
    rc = _export(evil, out, "nnunet", *(["--overwrite"] if overwrite else []))
    _one_line_error(capsys, "x/../../../../escape", "cannot be a folder name")
    assert rc == 1
    assert keep.read_text() == "the user's file"
    assert _tree(tmp_path) == before  # nothing written anywhere (not even OUT's parents)


@pytest.mark.parametrize(
    "key, value, shown",
    [
        ("preprocessing.configuration", "..", "'..'"),
        ("preprocessing.configuration", "", "''"),
        ("preprocessing.configuration", "a\\..\\..\\b", "path separator"),
        ("preprocessing.configuration", "3d\nfullres", "control characters"),
        ("preprocessing.configuration", ["3d_fullres"], "is not a name"),
        ("source.plans_name", "../../../plans", "plans name"),
        ("source.folds", ["../../../x", "1"], "nnU-Net fold"),
    ],
)
def test_every_name_from_the_card_is_one_folder_name(
    tmp_path, nnunet_pt, capsys, key, value, shown
):
    evil = _edited(nnunet_pt, tmp_path / "evil.pt", **{key: value})
    out = tmp_path / "OUT"
    assert _export(evil, out, "nnunet", "--overwrite") == 1
    _one_line_error(capsys, shown)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt"]


def test_configuration_from_a_folders_checkpoints_does_not_leave_out(tmp_path, capsys):
    """A trained-model folder not named <Trainer>__<Plans>__<configuration>: the
    configuration comes from the checkpoints' init_args (and the plans define it)."""
    from napari_vnet.foreign.safe_load import safe_torch_load

    bad = "x/../../../escape"
    folder = tmp_path / "downloaded" / "model"
    shutil.copytree(FOLDER, folder)
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"][bad] = plans["configurations"].pop("3d_fullres")
    (folder / "plans.json").write_text(json.dumps(plans))
    for ckpt in folder.glob("fold_*/checkpoint_final.pth"):
        state = safe_torch_load(ckpt)
        state["init_args"]["configuration"] = bad
        torch.save(state, ckpt)
    keep = _precious(tmp_path / "escape")
    out = tmp_path / "results"
    assert _export(folder, out, "nnunet", "--overwrite") == 1
    _one_line_error(capsys, bad, "cannot be a folder name")
    assert keep.read_text() == "the user's file" and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["downloaded", "escape"]


@pytest.mark.parametrize(
    "extra, named",
    [
        ("training_log.txt", "training_log.txt"),
        ("fold_0/validation/case.nii.gz", "fold_0/validation"),
        ("fold_0/checkpoint_best.pth", "fold_0/checkpoint_best.pth"),
    ],
)
def test_overwrite_replaces_an_earlier_export_only(tmp_path, nnunet_pt, capsys, extra, named):
    out = tmp_path / "results"
    assert _export(nnunet_pt, out) == 0
    model_dir = out / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert capsys.readouterr().out.strip() == str(model_dir)
    layout = _tree(model_dir)
    assert _export(nnunet_pt, out) == 1  # no --overwrite: refused as before
    _one_line_error(capsys, "already exists")
    assert _export(nnunet_pt, out, "nnunet", "--overwrite") == 0  # its own earlier export
    capsys.readouterr()
    assert _tree(model_dir) == layout
    # anything the export does not write makes --overwrite refuse, changing nothing
    target = model_dir / extra
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("the user's")
    before = _tree(model_dir)
    assert _export(nnunet_pt, out, "nnunet", "--overwrite") == 1
    _one_line_error(capsys, repr(named), "nothing was changed")
    assert _tree(model_dir) == before and target.read_text() == "the user's"
    assert sorted(p.name for p in out.iterdir()) == [model_dir.name]  # no temporary left


def test_overwrite_never_deletes_a_user_folder_given_as_out(tmp_path, nnunet_pt, capsys):
    """`--format nnunet OUT` where OUT is the model folder itself, and a MONAI bundle OUT:
    a folder holding the user's files is refused, not replaced."""
    model_dir = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    keep = _precious(model_dir)
    assert _export(nnunet_pt, model_dir, "nnunet", "--overwrite") == 1
    _one_line_error(capsys, "precious.txt", "nothing was changed")
    assert keep.read_text() == "the user's file" and _tree(model_dir) == {"precious.txt"}


def test_target_linked_outside_out_is_refused(tmp_path, nnunet_pt, capsys):
    """OUT/<Trainer>__<Plans>__<configuration> a link to a folder elsewhere: refused (it
    resolves outside OUT), the folder it points to untouched, also with --overwrite."""
    home = tmp_path / "home"
    keep = _precious(home)
    out = tmp_path / "results"
    out.mkdir()
    (out / "nnUNetTrainer__nnUNetPlans__3d_fullres").symlink_to(home, target_is_directory=True)
    assert _export(nnunet_pt, out, "nnunet", "--overwrite") == 1
    _one_line_error(capsys, "outside", "refusing to write there")
    assert _tree(home) == {"precious.txt"} and keep.read_text() == "the user's file"
    assert sorted(p.name for p in out.iterdir()) == ["nnUNetTrainer__nnUNetPlans__3d_fullres"]


@pytest.fixture()
def monai_pt(tmp_path) -> Path:
    from monai.networks.nets import UNet

    kwargs = {"channels": [4, 8], "strides": [2], "num_res_units": 0}
    bare = tmp_path / "in" / "unet_state.pt"
    bare.parent.mkdir()
    torch.save(UNet(spatial_dims=3, in_channels=1, out_channels=2, **kwargs).state_dict(), bare)
    out = tmp_path / "in" / "unet.pt"
    argv = ["import-weights", str(bare), "--arch", "monai.UNet", "--arch-kwargs",
            json.dumps(kwargs), "--classes", "background,liver", "--patch-size", "16", "16",
            "16", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    return out


def test_bundle_overwrite_keeps_a_folder_with_other_files(tmp_path, monai_pt, capsys):
    out = tmp_path / "bundle"
    assert _export(monai_pt, out, "monai-bundle") == 0
    assert _tree(out) == {"configs", "models", "configs/inference.json",
                          "configs/metadata.json", "models/model.pt"}  # fmt: skip
    assert _export(monai_pt, out, "monai-bundle", "--overwrite") == 0
    capsys.readouterr()
    (out / "configs" / "train.json").write_text("{}")  # the user's training config
    assert _export(monai_pt, out, "monai-bundle", "--overwrite") == 1
    _one_line_error(capsys, "configs/train.json", "nothing was changed")
    assert (out / "configs" / "train.json").read_text() == "{}"
    # OUT a link to another folder, or a file: refused, the target untouched
    home = tmp_path / "home"
    keep = _precious(home)
    link = tmp_path / "link"
    link.symlink_to(home, target_is_directory=True)
    assert _export(monai_pt, link, "monai-bundle", "--overwrite") == 1
    _one_line_error(capsys, "not a folder an export wrote")
    assert keep.read_text() == "the user's file" and link.is_symlink()
    assert _tree(home) == {"precious.txt"}


# --------------------------------------------------------------------------- import


def _import(state: Path, out, *extra) -> int:
    return main(["import-weights", str(state), "--arch", "monai.UNet", "--arch-kwargs",
                 json.dumps({"channels": [4, 8], "strides": [2], "num_res_units": 0}),
                 "--classes", "background,liver", "--out", str(out), *extra])  # fmt: skip


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_import_needs_overwrite_for_an_existing_out(tmp_path, monai_pt, capsys):
    state = monai_pt.parent / "unet_state.pt"
    out = tmp_path / "kept.pt"
    out.write_bytes(b"an earlier result the user keeps")
    assert _import(state, out) == 2
    _one_line_error(capsys, "exists; pass --overwrite", str(out))
    assert out.read_bytes() == b"an earlier result the user keeps"
    assert _import(state, out, "--overwrite") == 0
    from napari_vnet.weights import load_weights

    assert load_weights(out)[1].arch == "monai"


def test_import_never_writes_over_its_input(tmp_path, monai_pt, capsys, monkeypatch):
    state = monai_pt.parent / "unet_state.pt"
    before = _digest(state)
    link = tmp_path / "link.pt"
    link.symlink_to(state)
    hard = tmp_path / "hard.pt"
    os.link(state, hard)
    monkeypatch.chdir(tmp_path)
    spellings = [str(state), os.path.relpath(state), str(state.parent / ".." / "in" / state.name),
                 str(link), str(hard)]  # fmt: skip
    for out in spellings:
        for extra in ((), ("--overwrite",)):
            assert _import(state, out, *extra) == 2, out
            _one_line_error(capsys, "is the STATE_DICT being imported")
    assert _digest(state) == before and link.is_symlink()
