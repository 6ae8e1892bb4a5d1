"""Foreign checkpoints are pickles: loading one never runs code from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_vnet.foreign.safe_load import UnsafeCheckpointError, safe_torch_load
from napari_vnet.models import CheckpointError
from napari_vnet.weights import load_weights, read_weights_card


class _RunsCode:
    """Unpickling this would create a sentinel file (as a malicious checkpoint would)."""

    def __init__(self, sentinel: str) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def _nnunet_looking_folder(root, sentinel):
    model = root / "Dataset999_Evil" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True)
    (model / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}})
    )
    (model / "plans.json").write_text(
        json.dumps({"dataset_name": "Dataset999_Evil", "configurations": {"3d_fullres": {}}})
    )
    torch.save(
        {
            "network_weights": {"w": torch.zeros(2)},
            "trainer_name": "nnUNetTrainer",
            "logging": {"payload": _RunsCode(str(sentinel))},
        },
        model / "fold_0" / "checkpoint_final.pth",
    )
    return model


def test_crafted_nnunet_folder_does_not_run_code(tmp_path):
    sentinel = tmp_path / "ran"
    folder = _nnunet_looking_folder(tmp_path / "models", sentinel)
    for load in (load_weights, read_weights_card):
        target = folder if load is load_weights else folder.parent
        try:
            load(target)
        except CheckpointError:
            pass
    with pytest.raises(UnsafeCheckpointError, match=r"checkpoint_final\.pth: refused.*system"):
        load_weights(folder)
    assert not sentinel.exists()
    # the command line says so in one line and fails, and runs nothing either
    cli = subprocess.run(
        [sys.executable, "-m", "napari_vnet.cli", "info", str(folder.parent)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 1
    assert "refused to load" in cli.stderr and "system" in cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1
    assert not sentinel.exists()


def test_allowlist_admits_the_plain_types_of_nnunet_checkpoints(tmp_path):
    path = tmp_path / "plain.pth"
    torch.save(
        {
            "network_weights": {"w": torch.ones(3)},
            "init_args": {"device": torch.device("cpu"), "fold": 0},
            "logging": {"dice": [np.float64(0.5), np.float32(0.25)], "epoch": np.int64(4)},
            "dtype": np.dtype("float32"),
        },
        path,
    )
    obj = safe_torch_load(path)
    assert obj["logging"]["dice"][0] == 0.5 and obj["logging"]["epoch"] == 4
    assert obj["init_args"]["device"] == torch.device("cpu")
    # a numpy *array* is not among them (its reconstructor is not allowlisted)
    torch.save({"a": np.zeros(3)}, tmp_path / "array.pth")
    with pytest.raises(UnsafeCheckpointError, match=r"array\.pth: refused.*numpy"):
        safe_torch_load(tmp_path / "array.pth")
