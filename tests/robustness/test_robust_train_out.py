"""`napari-vnet train --out`: an existing file is replaced only with --overwrite, and the
base weights themselves never (any spelling of their path)."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from conftest import write_image
from napari_vnet.cli import main


def _pair(tmp_path):
    labels = np.zeros((8, 16, 16), np.uint8)
    labels[2:6, 4:12, 4:12] = 1
    image = (labels * 100 + np.random.default_rng(0).normal(0, 5, labels.shape)).astype(np.int16)
    return (
        str(write_image(tmp_path / "ct.nii.gz", image)),
        str(write_image(tmp_path / "seg.nii.gz", labels)),
    )


def _train(image, labels, *extra):
    return main(
        ["train", "--image", image, "--labels", labels, "--iterations", "2",
         "--patch-size", "8", "16", "16", "--batch-size", "1", "--device", "cpu", *extra]
    )  # fmt: skip


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_out_equal_to_base_weights_is_refused(tmp_path, tiny_weights, capsys):
    image, labels = _pair(tmp_path)
    before = _digest(tiny_weights)
    spellings = [
        str(tiny_weights),
        os.path.relpath(tiny_weights),
        str(tiny_weights.parent / ".." / tiny_weights.parent.name / tiny_weights.name),
    ]
    for out in spellings:
        for extra in ((), ("--overwrite",)):
            rc = _train(image, labels, "--weights", str(tiny_weights), "--out", out, *extra)
            err = capsys.readouterr().err
            assert rc == 2 and "is the base --weights file" in err, err
    assert _digest(tiny_weights) == before


def test_existing_out_needs_overwrite(tmp_path, tiny_weights, capsys):
    image, labels = _pair(tmp_path)
    out = tmp_path / "tuned.pt"
    out.write_bytes(b"an earlier result the user keeps")
    rc = _train(image, labels, "--weights", str(tiny_weights), "--out", str(out))
    err = capsys.readouterr().err
    assert rc == 2 and "exists; pass --overwrite" in err and str(out) in err, err
    assert out.read_bytes() == b"an earlier result the user keeps"
    rc = _train(image, labels, "--weights", str(tiny_weights), "--out", str(out), "--overwrite")
    assert rc == 0, capsys.readouterr().err
    from napari_vnet.models import load_checkpoint

    load_checkpoint(out)


@pytest.mark.parametrize("n", [243])
def test_long_legal_out_name_saves(tmp_path, tiny_weights, capsys, n):
    """A legal 243-character name: the temporary file beside it must stay under 255 bytes."""
    image, labels = _pair(tmp_path)
    out = tmp_path / ("w" * (n - 3) + ".pt")
    rc = _train(image, labels, "--weights", str(tiny_weights), "--out", str(out))
    assert rc == 0, capsys.readouterr().err
    assert out.exists()
