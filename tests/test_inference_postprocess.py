"""Post-processing: largest connected component per class and hole filling."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vnet.inference.postprocess import (
    apply_postprocess,
    fill_holes,
    keep_largest_component,
    parse_operations,
)


def test_largest_component_per_class():
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[1:5, 1:5, 1:5] = 5  # big liver
    lab[8, 8, 8] = 5  # stray liver voxel
    lab[7:9, 1:3, 1:3] = 1  # spleen (8 voxels)
    lab[1, 8, 8] = 1  # stray spleen voxel
    lab[5, 5, 5] = 5  # touches the big block diagonally (26-connected): kept
    out = keep_largest_component(lab.copy())
    assert out[8, 8, 8] == 0 and out[1, 8, 8] == 0
    assert out[5, 5, 5] == 5
    assert np.count_nonzero(out == 5) == 4**3 + 1
    assert np.count_nonzero(out == 1) == 8


def test_fill_holes_only_fills_background():
    lab = np.zeros((9, 9, 9), np.uint8)
    lab[1:8, 1:8, 1:8] = 5
    lab[3:6, 3:6, 3:6] = 0  # cavity
    lab[4, 4, 4] = 7  # a tumour inside the cavity stays a tumour
    out = fill_holes(lab.copy())
    assert out[4, 4, 4] == 7
    assert np.count_nonzero(out == 5) == 7**3 - 1
    open_box = np.zeros((9, 9, 9), np.uint8)
    open_box[1:8, 1:8, 1:8] = 5
    open_box[3:6, 3:6, 3:9] = 0  # tunnel to the border: not a hole
    np.testing.assert_array_equal(fill_holes(open_box.copy()), open_box)


def test_apply_postprocess_copies_and_parses():
    lab = np.zeros((6, 6, 6), np.uint16)
    lab[0, 0, 0] = 300
    lab[2:5, 2:5, 2:5] = 300
    out = apply_postprocess(lab, True)
    assert lab[0, 0, 0] == 300  # input untouched
    assert out[0, 0, 0] == 0 and out.dtype == np.uint16
    assert apply_postprocess(lab, None) is lab
    assert parse_operations("lcc, fill") == ["largest_component", "fill_holes"]
    assert parse_operations("all") == ["largest_component", "fill_holes"]
    with pytest.raises(ValueError, match="unknown post-processing"):
        parse_operations("smooth")
    with pytest.raises(TypeError, match="integer"):
        apply_postprocess(lab.astype(np.float32), True)
