"""Self-describing checkpoints: bit-for-bit round trips, atomic writes, safe loading,
and a clear one-line error for every kind of wrong file."""

from __future__ import annotations

import dataclasses
import pickle
import random
import zipfile

import pytest
import torch

from napari_vnet.models import (
    ARCHITECTURES,
    CheckpointError,
    ClassInfo,
    ModelCard,
    build_discriminator,
    build_model,
    load_checkpoint,
    load_checkpoint_state,
    load_discriminator,
    read_card,
    save_checkpoint,
)
from napari_vnet.weights import (
    SHIPPED_NAMES,
    WeightsNotFoundError,
    resolve_weights,
    shipped_weights,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Two OpenMP threads on a loaded, shared 2-core machine run several times slower."""
    torch.set_num_threads(1)


TINY = {
    "vnet": {"channels": [4, 8, 8], "convs": [1, 2, 2], "norm": "batch"},
    "unet3d": {"channels": [4, 8, 8]},
    "vox2vox": {"channels": [4, 8], "bottleneck_blocks": 2},
}


def _card(arch: str = "unet3d", **overrides) -> ModelCard:
    fields = dict(
        arch=arch,
        arch_kwargs=TINY[arch],
        classes=[
            ClassInfo(0, "background"),
            ClassInfo(5, "liver", (0.8, 0.3, 0.2, 1.0)),
            ClassInfo(7, "spleen", (0.2, 0.4, 0.9, 1.0)),
        ],
        normalization={"kind": "window", "low": -200.0, "high": 300.0},
        spacing=(2.0, 1.5, 1.5),
        patch_size=(32, 48, 48),
        history={
            "iterations": 120,
            "data": ["phantom-0", "phantom-1"],
            "final_dice": {"liver": 0.91},
        },
        description="a tiny test network",
    )
    fields.update(overrides)
    return ModelCard(**fields)


def _trained(model: torch.nn.Module) -> torch.nn.Module:
    """A few optimiser steps so the weights (and BN running stats) are not the init."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(2, model.in_channels, 16, 16, 16)).square().mean().backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_round_trip_is_bit_for_bit(tmp_path, arch):
    card = _card(arch)
    model = _trained(build_model(card))
    path = save_checkpoint(model, card, tmp_path / "sub" / "net.pt")
    loaded, card2 = load_checkpoint(path)
    # the saved card is the given card with every constructor keyword written out
    assert card2.arch_kwargs == model.arch_kwargs and "pad_mode" not in card.arch_kwargs
    assert card2 == dataclasses.replace(
        ModelCard.from_dict(card.to_dict()), arch_kwargs=model.arch_kwargs
    )
    assert card2.class_names == {0: "background", 5: "liver", 7: "spleen"}
    assert not loaded.training
    x = torch.randn(1, 1, 21, 18, 25)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert read_card(path) == card2


def test_discriminator_and_extra_round_trip(tmp_path):
    card = _card("vox2vox")
    gen = build_model(card)
    disc = build_discriminator(card, channels=[4, 8], norm="batch")
    opt = torch.optim.Adam(gen.parameters(), lr=1e-3)
    gen(torch.randn(1, 1, 8, 8, 8)).mean().backward()
    opt.step()
    extra = {"optimizer": opt.state_dict(), "iteration": 7, "losses": [0.5, 0.25], "note": None}
    path = save_checkpoint(gen, card, tmp_path / "v.pt", discriminator=disc, extra=extra)
    state = load_checkpoint_state(path)
    assert state["extra"]["iteration"] == 7 and state["extra"]["losses"] == [0.5, 0.25]
    opt2 = torch.optim.Adam(build_model(card).parameters(), lr=1e-3)
    opt2.load_state_dict(state["extra"]["optimizer"])  # resumable
    assert state["discriminator"]["kwargs"]["norm"] == "batch"
    disc2 = load_discriminator(path)
    for a, b in zip(disc.state_dict().values(), disc2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    plain = save_checkpoint(gen, card, tmp_path / "plain.pt")
    assert load_discriminator(plain) is None


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    card = _card()
    model = build_model(card)
    path = save_checkpoint(model, card, tmp_path / "net.pt")
    before = path.read_bytes()
    import numpy as np
    with pytest.raises(ValueError, match=r"extra\['step'\] is a numpy.int64"):
        save_checkpoint(model, card, path, extra={"step": np.int64(3)})
    assert path.read_bytes() == before  # the old file survives a refused save
    with pytest.raises(ValueError, match=r"card says 3"):
        save_checkpoint(
            build_model(_card(classes=[ClassInfo(0, "bg"), ClassInfo(1, "x")])), card, path
        )
    with pytest.raises(
        ValueError, match=r"model card says 'vnet' \(VNet\) but the model is a UNet3D"
    ):
        save_checkpoint(model, _card("vnet"), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.pt"]
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # the usual mode, not mkstemp's


def test_saves_the_bare_network_inside_wrappers(tmp_path):
    card = _card()
    model = build_model(card)
    wrapped = torch.nn.DataParallel(model)
    path = save_checkpoint(wrapped, card, tmp_path / "dp.pt")
    assert all(not k.startswith("module.") for k in load_checkpoint_state(path)["state_dict"])
    load_checkpoint(path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_never_runs(tmp_path):
    sentinel = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    zipped = tmp_path / "evil.pt"
    torch.save({"napari_vnet_checkpoint": 1, "card": {}, "payload": Evil()}, zipped)
    legacy = tmp_path / "evil.pkl"
    legacy.write_bytes(pickle.dumps(Evil()))
    for path in (zipped, legacy):
        with pytest.raises(CheckpointError) as exc:
            load_checkpoint(path)
        assert not sentinel.exists(), "loading ran code from the file"
        assert str(path) in str(exc.value)
    with pytest.raises(
        CheckpointError,
        match=r"refused to load: .*pickled Python objects \(GLOBAL (builtins|io).open\)",
    ):
        load_checkpoint(zipped)
    # a whole pickled model (torch.save(model)) is refused the same way, with a way out
    whole = tmp_path / "whole.pt"
    torch.save(build_model(_card()), whole)
    with pytest.raises(
        CheckpointError, match=r"UNet3D.*re-save the network's state_dict with save_checkpoint"
    ):
        load_checkpoint(whole)


def test_wrong_files_give_one_line_errors(tmp_path):
    card = _card()
    model = build_model(card)
    good = save_checkpoint(model, card, tmp_path / "good.pt")

    cases = {}
    cases["missing"] = (tmp_path / "nope.pt", r"no such file")
    cases["folder"] = (tmp_path, r"is a folder")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    cases["empty"] = (empty, r"the file is empty")
    for seed in range(4):
        noise = tmp_path / f"noise{seed}.pt"
        noise.write_bytes(random.Random(seed).randbytes(4096))
        cases[f"random bytes {seed}"] = (noise, r"not a PyTorch checkpoint")
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    cases["text"] = (text, r"not a PyTorch checkpoint")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases["truncated"] = (truncated, r"truncated or corrupted")
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    cases["bare state_dict"] = (
        bare,
        r"bare state_dict \(\d+ tensors\) without a model card.*save_checkpoint\(model, card, new\)",
    )
    foreign = tmp_path / "lightning.ckpt"
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, foreign)
    cases["foreign"] = (
        foreign,
        r"another program \(weights under 'state_dict'.*without a napari-vnet model card",
    )
    listing = tmp_path / "list.pt"
    torch.save([1, 2, 3], listing)
    cases["list"] = (listing, r"holds a list")

    def crafted(name: str, **change) -> None:
        state = load_checkpoint_state(good)
        state.update(change)
        torch.save(state, tmp_path / name)

    crafted("arch.pt", card={**card.to_dict(), "arch": "segformer"})
    cases["unknown arch"] = (
        tmp_path / "arch.pt",
        r"unknown architecture 'segformer'; known: vnet, unet3d, vox2vox",
    )
    crafted("widths.pt", card={**card.to_dict(), "arch_kwargs": {"channels": [8, 16, 16]}})
    cases["card/weights mismatch"] = (
        tmp_path / "widths.pt",
        r"do not fit the unet3d network described by the model card: \d+ of another shape \(first 'encoder.0.block.0.weight': file \(4, 1, 3, 3, 3\) vs card \(8, 1, 3, 3, 3\)\)",
    )
    crafted("arch2.pt", card={**card.to_dict(), "arch": "vnet", "arch_kwargs": TINY["vnet"]})
    cases["other arch"] = (tmp_path / "arch2.pt", r"\d+ missing \(first '.*'\); \d+ unexpected")
    two = [ClassInfo(0, "bg").to_dict(), ClassInfo(1, "liver").to_dict()]
    crafted("classes.pt", card={**card.to_dict(), "classes": two})
    cases["classes vs output"] = (
        tmp_path / "classes.pt",
        r"the model card lists 2 classes \(bg, liver\) but the network's output layer has 3 channels",
    )
    crafted("badcard.pt", card={**card.to_dict(), "colour": "red"})
    cases["invalid card"] = (
        tmp_path / "badcard.pt",
        r"invalid model card: model card has unknown fields \['colour'\]",
    )
    crafted("future.pt", napari_vnet_checkpoint=99)
    cases["newer format"] = (tmp_path / "future.pt", r"format 99 is newer .* upgrade napari-vnet")

    for what, (path, pattern) in cases.items():
        with pytest.raises(CheckpointError, match=pattern) as exc:
            load_checkpoint(path)
        message = str(exc.value)
        print(f"{what}: {message}")
        assert str(path) in message, what
        assert "\n" not in message, f"{what}: the error should be one line"
        assert len(message) < 600, what


def test_map_location_and_zipfile_layout(tmp_path):
    card = _card()
    path = save_checkpoint(build_model(card), card, tmp_path / "net.pt")
    assert zipfile.is_zipfile(path)  # torch's standard format, readable by plain torch.load
    model, _ = load_checkpoint(path, map_location="cpu")
    assert next(model.parameters()).device.type == "cpu"
    raw = torch.load(path, weights_only=True)
    assert raw["card"]["arch"] == "unet3d" and raw["saved_with"]["torch"] == str(torch.__version__)


def test_shipped_weights_registry(tmp_path, monkeypatch):
    import napari_vnet.weights as weights

    assert set(SHIPPED_NAMES) == {
        "vnet-phantom", "unet3d-phantom", "vox2vox-phantom", "unet3d-ct-starter"
    }  # fmt: skip
    for name, path in shipped_weights().items():  # whatever is installed loads and is named by stem
        assert path.stem == name
        assert resolve_weights(name) == path
    card = _card()
    fake_dir = tmp_path / "shipped"
    save_checkpoint(build_model(card), card, fake_dir / "unet3d-phantom.pt")
    monkeypatch.setattr(weights, "WEIGHTS_DIR", fake_dir)
    assert weights.shipped_weights() == {"unet3d-phantom": fake_dir / "unet3d-phantom.pt"}
    assert weights.resolve_weights("unet3d-phantom") == fake_dir / "unet3d-phantom.pt"
    assert weights.resolve_weights("unet3d-phantom.pt") == fake_dir / "unet3d-phantom.pt"
    other = save_checkpoint(build_model(card), card, tmp_path / "mine.pt")
    assert weights.resolve_weights(str(other)) == other
    with pytest.raises(WeightsNotFoundError, match=r"no-such-net: .*available: unet3d-phantom\)"):
        weights.resolve_weights("no-such-net")
    with pytest.raises(
        FileNotFoundError, match=r"'vnet-phantom' are not installed .*available: unet3d-phantom"
    ):
        weights.resolve_weights("vnet-phantom")
    # a folder may hold foreign weights (nnU-Net / MONAI bundle): the loader decides
    assert weights.resolve_weights(tmp_path) == tmp_path
    with pytest.raises(CheckpointError, match="is a folder but neither an nnU-Net"):
        weights.load_weights(tmp_path)
