"""`napari-vnet list`: shipped weights and the recently used ones (the list the docks
keep), with what their cards say; an unreadable file is listed with its reason."""

from __future__ import annotations

import json

import pytest

from napari_vnet.cli import main
from napari_vnet.models import ClassInfo, ModelCard, build_model, save_checkpoint
from napari_vnet.weights import shipped_weights


@pytest.fixture()
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_VNET_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "config"


def test_list_shows_shipped_and_recent_weights_with_cards(config_dir, tmp_path, capsys):
    from napari_vnet._widgets._session import add_recent_weights  # what the docks write

    card = ModelCard(
        arch="unet3d",
        arch_kwargs={"channels": [2, 4]},
        classes=[ClassInfo(0, "background"), ClassInfo(3, "kidney")],
        spacing=(2.0, 1.5, 1.5),
        patch_size=(16, 24, 24),
        history={"iterations": 42},
    )
    mine = save_checkpoint(build_model(card), card, tmp_path / "my-kidney.pt")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    add_recent_weights(broken)
    add_recent_weights(mine)
    add_recent_weights(next(iter(shipped_weights().values())))  # shipped: listed once
    add_recent_weights(tmp_path / "deleted.pt")  # gone: not listed

    assert main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    shipped = [r for r in rows if r["source"] == "shipped"]
    recent = [r for r in rows if r["source"] == "recent"]
    assert [r["name"] for r in shipped] == list(shipped_weights())
    assert all("error" not in r and r["classes"]["0"] == "background" for r in shipped)
    assert [r["path"] for r in recent] == [str(mine.resolve()), str(broken.resolve())]
    kidney = recent[0]
    assert kidney["arch"] == "unet3d" and kidney["classes"] == {"0": "background", "3": "kidney"}
    assert kidney["spacing"] == [2.0, 1.5, 1.5] and kidney["patch_size"] == [16, 24, 24]
    assert kidney["iterations"] == 42
    assert "broken.pt" in recent[1]["error"]

    assert main(["list"]) == 0
    table = capsys.readouterr().out
    assert "vnet-phantom" in table and "3=kidney" in table and "16x24x24" in table
    assert "unreadable" in table
