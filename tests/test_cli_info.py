"""`napari-vnet info WEIGHTS [--json]` prints a checkpoint's card; bad files exit 1."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from napari_vnet.cli import main
from napari_vnet.models import (
    ClassInfo,
    ModelCard,
    build_discriminator,
    build_model,
    save_checkpoint,
)


@pytest.fixture
def weights(tmp_path):
    torch.set_num_threads(1)
    card = ModelCard(
        arch="vox2vox",
        arch_kwargs={"channels": [4, 8], "bottleneck_blocks": 1},
        classes=[
            ClassInfo(0, "background"),
            ClassInfo(5, "liver", (0.8, 0.3, 0.2, 1.0)),
            ClassInfo(7, "spleen"),
        ],
        normalization={"kind": "window", "low": -200.0, "high": 300.0},
        spacing=(2.0, 1.5, 1.5),
        patch_size=(32, 48, 48),
        history={"iterations": 120, "final_dice": {"liver": 0.91}},
        description="tiny test network",
    )
    model = build_model(card)
    disc = build_discriminator(card, channels=[4])
    return save_checkpoint(
        model, card, tmp_path / "net.pt", discriminator=disc, extra={"iteration": 120}
    )


def test_info_prints_the_card(weights, capsys):
    assert main(["info", str(weights)]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "architecture:  Vox2Vox (vox2vox)  channels=[4, 8], bottleneck_blocks=1" in out
    assert "  1:   5 liver #cc4c33" in out and "  2:   7 spleen" in out
    assert "window [-200.0, 300.0]" in out
    assert "spacing:       2 x 1.5 x 1.5 mm (z, y, x)" in out
    assert "patch size:    32 x 48 x 48 (z, y, x)" in out
    assert "iterations: 120" in out and 'final_dice: {"liver": 0.91}' in out
    assert "description:   tiny test network" in out
    n = sum(
        p.numel()
        for p in build_model(
            ModelCard(
                arch="vox2vox",
                arch_kwargs={"channels": [4, 8], "bottleneck_blocks": 1},
                classes=[ClassInfo(i, str(i)) for i in range(3)],
            )
        ).parameters()
    )
    assert f"parameters:    {n:,}" in out
    assert "discriminator:" in out and "resume state:  iteration" in out


def test_info_json(weights, capsys):
    assert main(["info", str(weights), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "Vox2Vox"
    assert info["card"]["arch"] == "vox2vox"
    assert info["card"]["classes"][1] == {
        "value": 5,
        "name": "liver",
        "color": [0.8, 0.3, 0.2, 1.0],
    }
    assert info["card"]["spacing"] == [2.0, 1.5, 1.5]
    assert info["parameters"] > 0 and info["discriminator_parameters"] > 0
    assert info["extra_keys"] == ["iteration"]
    assert ModelCard.from_dict(info["card"]).class_names == {
        0: "background",
        5: "liver",
        7: "spleen",
    }


def test_info_refuses_bad_files_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not weights at all")
    assert main(["info", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("napari-vnet info: error: ") and str(bad) in err
    assert err.count("\n") == 1
    assert main(["info", "no-such-weights"]) == 1
    err = capsys.readouterr().err
    assert "not the name of shipped weights (available: " in err


def test_info_console_script(weights):
    """The real entry point in a fresh process (imports torch only inside run())."""
    res = subprocess.run(
        [sys.executable, "-m", "napari_vnet.cli", "info", str(weights), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(res.stdout)["card"]["patch_size"] == [32, 48, 48]
