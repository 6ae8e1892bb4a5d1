"""Untrusted or broken weights files: a CheckpointError naming the file and the problem,
never code execution; in the Segment dock the file is refused (error notification) and
the previous choice stays, or the run fails cleanly without adding a layer."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_names, tiny_card
from napari_vnet.models import (
    CheckpointError,
    build_model,
    load_checkpoint,
    load_checkpoint_state,
    read_card,
    save_checkpoint,
)


class _Evil:
    """Unpickling this runs ``touch <sentinel>``, if anything unpickles it unsafely."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (os.system, (f"touch '{self.sentinel}'",))


def bad_weights(kind: str, folder: Path, good: Path) -> Path:
    """A broken/untrusted weights file of the given kind (see WEIGHT_CASES)."""
    path = folder / f"{kind}.pt"
    if kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "other_architecture":  # the card says V-Net, the weights are a 3D U-Net's
        state = load_checkpoint_state(good)
        unet = build_model(tiny_card(arch="unet3d"))
        state["state_dict"] = {k: v.clone() for k, v in unet.state_dict().items()}
        torch.save(state, path)
    elif kind == "bare_state_dict":
        torch.save(load_checkpoint_state(good)["state_dict"], path)
    elif kind == "malicious_pickle":
        # protocol 2, as torch.save writes its legacy (non-zip) format
        path.write_bytes(pickle.dumps({"state_dict": _Evil(folder / "PWNED")}, protocol=2))
    elif kind == "malicious_zip":  # torch's own zip format with a code-running object
        torch.save({"napari_vnet_checkpoint": 1, "card": _Evil(folder / "PWNED")}, path)
    elif kind == "classes_mismatch":  # card lists 3 classes, the head has 2 channels
        state = load_checkpoint_state(good)
        state["card"]["classes"].append({"value": 7, "name": "kidney"})
        torch.save(state, path)
    else:  # pragma: no cover
        raise ValueError(kind)
    return path


WEIGHT_CASES = {
    "random_bytes": "not a PyTorch checkpoint",
    "truncated": "truncated or corrupted",
    "other_architecture": "do not fit",
    "bare_state_dict": "bare state_dict",
    "malicious_pickle": "refused to load",
    "malicious_zip": "refused to load",
    "classes_mismatch": "output layer has 2 channels",
}


@pytest.mark.parametrize("kind", list(WEIGHT_CASES))
def test_bad_weights_raise_checkpoint_error(tmp_path, tiny_weights, kind):
    path = bad_weights(kind, tmp_path, tiny_weights)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert_names(message, path)
    assert WEIGHT_CASES[kind] in message, message
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("kind", ["malicious_pickle", "malicious_zip"])
def test_malicious_pickle_never_runs_anywhere(tmp_path, tiny_weights, kind, capsys):
    path = bad_weights(kind, tmp_path, tiny_weights)
    for load in (load_checkpoint, load_checkpoint_state, read_card):
        with pytest.raises(CheckpointError, match="could run code"):
            load(path)
    from napari_vnet.cli import main

    assert main(["info", str(path)]) != 0
    assert "refused to load" in capsys.readouterr().err
    assert not (tmp_path / "PWNED").exists()


def test_bare_state_dict_message_says_how_to_wrap_it(tmp_path, tiny_weights):
    path = bad_weights("bare_state_dict", tmp_path, tiny_weights)
    with pytest.raises(CheckpointError, match="save_checkpoint") as err:
        load_checkpoint(path)
    assert "without a model card" in str(err.value)


def test_card_that_does_not_describe_the_model_is_not_saved(tmp_path):
    card = tiny_card()
    wrong = tiny_card(classes=((0, "background"), (1, "liver"), (2, "spleen")))
    with pytest.raises(ValueError, match="out_channels=2 but the card says 3"):
        save_checkpoint(build_model(card), wrong, tmp_path / "x.pt")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ the Segment dock


@pytest.mark.gui
def test_segment_dock_refuses_bad_weights_and_keeps_running(
    make_napari_viewer, qtbot, tmp_path, tiny_weights, config_dir
):
    from napari.utils.notifications import NotificationSeverity, notification_manager

    from napari_vnet._widgets.segment import SegmentWidget

    notes: list[tuple] = []
    notification_manager.notification_ready.connect(lambda n: notes.append((n.severity, n.message)))
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    image = viewer.add_image(np.random.default_rng(0).normal(size=(12, 16, 16)), name="ct")
    assert widget.select_weights(tiny_weights)

    for kind in ("random_bytes", "truncated", "bare_state_dict", "malicious_pickle"):
        path = bad_weights(kind, tmp_path, tiny_weights)
        notes.clear()
        assert widget.select_weights(path) is False
        errors = [m for s, m in notes if s == NotificationSeverity.ERROR]
        assert errors and path.name in errors[-1], notes
        assert widget.current_weights == tiny_weights  # the previous choice stays
    assert not (tmp_path / "PWNED").exists()

    # files whose card reads fine but whose weights do not fit: the run fails cleanly
    for kind in ("classes_mismatch", "other_architecture"):
        path = bad_weights(kind, tmp_path, tiny_weights)
        assert widget.select_weights(path)
        notes.clear()
        widget.run()
        qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
        errors = [m for s, m in notes if s == NotificationSeverity.ERROR]
        assert errors and path.name in errors[-1] and WEIGHT_CASES[kind] in errors[-1], notes
        assert list(viewer.layers) == [image]  # no layer added

    # and the dock still works with good weights
    assert widget.select_weights(tiny_weights)
    with qtbot.waitSignal(widget.prediction_added, timeout=60_000):
        widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert len(viewer.layers) == 2
