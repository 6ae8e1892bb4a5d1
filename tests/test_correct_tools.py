"""Correction tools (napari_vnet.correct.tools) on small synthetic volumes: exact results,
scopes, other labels left alone, undo by the change's old values, speed on 512 x 512."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_vnet.correct import (
    Scope,
    fill_between,
    fill_holes,
    grow_from_seeds,
    keep_largest,
    remove_islands,
    restrict_to_range,
    smooth,
)


def square(shape, z, y0, y1, x0, x1, value=1, out=None):
    out = np.zeros(shape, np.uint8) if out is None else out
    out[z, y0:y1, x0:x1] = value
    return out


def applied(labels, change):
    out = labels.copy()
    change.apply(out)
    return out


def test_fill_between_copies_equal_keys_and_leaves_outside_alone():
    lab = np.zeros((9, 20, 20), np.uint8)
    lab[2, 5:12, 6:14] = 3
    lab[6, 5:12, 6:14] = 3
    lab[4, 0:2, 0:2] = 9  # another label: untouched
    change = fill_between(lab, 3, Scope.whole(lab.shape))
    out = applied(lab, change)
    for z in (3, 4, 5):
        assert np.array_equal(out[z] == 3, lab[2] == 3), z
    assert not (out[[0, 1, 7, 8]] == 3).any()
    assert (out[4, 0:2, 0:2] == 9).all()
    assert change.slices(0) == [3, 4, 5]
    assert set(np.unique(change.values)) == {3}


def test_fill_between_interpolates_size_linearly():
    lab = np.zeros((5, 41, 41), np.uint8)
    lab[0, 20, 20] = 1  # a point ...
    lab[4, 12:29, 12:29] = 1  # ... grows into a 17 x 17 square
    out = applied(lab, fill_between(lab, 1, Scope.whole(lab.shape)))
    areas = [(out[z] == 1).sum() for z in range(5)]
    assert areas[0] < areas[1] < areas[2] < areas[3] < areas[4]
    # the middle slice: half-way signed distances, a square of side ~9 centred
    mid = np.argwhere(out[2] == 1)
    assert mid.min(0).tolist() == [16, 16] and mid.max(0).tolist() == [24, 24]


def test_fill_between_with_keys_replaces_the_slices_between():
    lab = np.zeros((5, 16, 16), np.uint8)
    lab[:, 4:10, 4:10] = 2
    lab[2, 0:3, 0:3] = 2  # a wrong blob on a non-key slice ...
    lab[2, 4:10, 4:10] = 0  # ... and the organ missing there
    out = applied(lab, fill_between(lab, 2, Scope.whole(lab.shape), keys=[0, 4]))
    assert np.array_equal(out[2] == 2, lab[0] == 2)
    # a key slice with the label absent: the shape shrinks towards it
    lab2 = np.zeros((5, 16, 16), np.uint8)
    lab2[0, 2:14, 2:14] = 1
    out2 = applied(lab2, fill_between(lab2, 1, Scope.whole(lab2.shape), keys=[0, 4]))
    areas = [(out2[z] == 1).sum() for z in range(5)]
    assert areas[0] > areas[1] > areas[2] >= areas[3] and areas[4] == 0


def test_fill_between_along_another_axis_and_within_scope():
    lab = np.zeros((10, 12, 9), np.uint8)
    lab[2:6, 3:8, 1] = 1
    lab[2:6, 3:8, 7] = 1
    whole = applied(lab, fill_between(lab, 1, Scope(axis=2, lo=0, hi=9)))
    assert (whole[2:6, 3:8, 1:8] == 1).all() and (whole == 1).sum() == 4 * 5 * 7
    # a scope that holds only one key: nothing to interpolate
    assert fill_between(lab, 1, Scope(axis=2, lo=0, hi=5)).size == 0


def test_remove_islands_by_volume_in_mm3():
    lab = np.zeros((4, 20, 20), np.uint8)
    lab[1:3, 2:12, 2:12] = 1  # 200 voxels
    lab[1, 15:17, 15:17] = 1  # 4 voxels = 4 * 2 mm^3 = 8 mm^3
    lab[3, 18, 0] = 1  # 1 voxel = 2 mm^3
    lab[0, 0, 0] = 4
    change = remove_islands(lab, 1, Scope.whole(lab.shape), min_mm3=5.0, spacing=(2.0, 1.0, 1.0))
    out = applied(lab, change)
    assert out[3, 18, 0] == 0 and (out[1, 15:17, 15:17] == 1).all()
    assert (out == 1).sum() == 204 and out[0, 0, 0] == 4
    big = remove_islands(lab, 1, Scope.whole(lab.shape), min_mm3=9.0, spacing=(2.0, 1.0, 1.0))
    assert (applied(lab, big) == 1).sum() == 200


def test_keep_largest_per_scope():
    lab = np.zeros((3, 10, 10), np.uint8)
    lab[0, 0:5, 0:5] = 1  # slice 0: large
    lab[1, 0:2, 0:2] = 1  # slice 1: small, touches the large one through z
    lab[1, 7:9, 7:9] = 1  # slice 1: separate island
    out = applied(lab, keep_largest(lab, 1, Scope.whole(lab.shape)))
    assert (out == 1).sum() == 25 + 4 and (out[1, 7:9, 7:9] == 0).all()
    # on slice 1 alone the two islands tie: the first is kept
    one = applied(lab, keep_largest(lab, 1, Scope.slice_(1)))
    assert (one[1] == 1).sum() == 4 and (one[0] == lab[0]).all()


def test_fill_holes_slice_by_slice_background_only():
    lab = np.zeros((2, 12, 12), np.uint8)
    lab[:, 2:10, 2:10] = 1
    lab[0, 4:6, 4:6] = 0  # background hole
    lab[1, 4:6, 4:6] = 7  # another label inside
    change = fill_holes(lab, 1, Scope.whole(lab.shape))
    out = applied(lab, change)
    assert (out[0, 2:10, 2:10] == 1).all()
    assert (out[1, 4:6, 4:6] == 7).all()
    over = applied(lab, fill_holes(lab, 1, Scope.whole(lab.shape), overwrite=True))
    assert (over[1, 2:10, 2:10] == 1).all()
    assert change.size == 4


def test_smooth_removes_spur_and_fills_notch():
    lab = np.zeros((1, 20, 20), np.uint8)
    lab[0, 5:15, 5:15] = 1
    lab[0, 10, 15:19] = 1  # a one-voxel-wide spur
    lab[0, 5, 9] = 0  # a one-voxel notch in the edge
    out = applied(lab, smooth(lab, 1, Scope.slice_(0), radius=1))
    assert (out[0, 10, 16:19] == 0).all()
    assert out[0, 5, 9] == 1
    with pytest.raises(ValueError, match="radius"):
        smooth(lab, 1, Scope.slice_(0), radius=0)


def test_restrict_to_range_and_bad_range():
    image = np.zeros((2, 6, 6), np.int16)
    image[:, :, 3:] = 300  # bone-like on the right half
    lab = np.ones((2, 6, 6), np.uint8)
    out = applied(lab, restrict_to_range(lab, image, 1, Scope.slice_(1), lo=-100, hi=200))
    assert (out[1, :, 3:] == 0).all() and (out[1, :, :3] == 1).all()
    assert (out[0] == 1).all()  # outside the scope
    with pytest.raises(ValueError, match="empty"):
        restrict_to_range(lab, image, 1, Scope.slice_(0), lo=10, hi=0)


def test_grow_from_seeds_stays_in_range_and_connected():
    image = np.zeros((3, 20, 20), np.int16)
    image[:, 2:10, 2:10] = 100  # organ A
    image[:, 2:10, 12:18] = 100  # organ B, same intensity, not connected
    lab = np.zeros((3, 20, 20), np.uint8)
    seeds = np.zeros(lab.shape, bool)
    seeds[1, 5, 5] = True
    change = grow_from_seeds(lab, image, 1, Scope.slice_(1), lo=50, hi=150, seeds=seeds)
    out = applied(lab, change)
    assert (out[1, 2:10, 2:10] == 1).all() and (out == 1).sum() == 64
    # in 3D over the whole volume: all three slices of organ A
    out3 = applied(lab, grow_from_seeds(lab, image, 1, Scope.whole(lab.shape), lo=50, hi=150,
                                        seeds=seeds))  # fmt: skip
    assert (out3 == 1).sum() == 3 * 64
    # a bridge of in-range voxels one voxel wide: cut by opening=1
    image[1, 5, 10:12] = 100
    leak = applied(lab, grow_from_seeds(lab, image, 1, Scope.slice_(1), lo=50, hi=150, seeds=seeds))
    assert leak[1, 5, 14] == 1
    cut = grow_from_seeds(lab, image, 1, Scope.slice_(1), lo=50, hi=150, seeds=seeds, opening=1)
    assert applied(lab, cut)[1, 5, 14] == 0
    assert (applied(lab, cut)[1, 2:10, 2:10] == 1).all()


def test_grow_default_seeds_and_replace():
    image = np.full((1, 10, 10), 100, np.int16)
    image[0, :, 6:] = 0
    lab = np.zeros((1, 10, 10), np.uint8)
    lab[0, 0, 0] = 2  # seed (the label itself)
    lab[0, 9, 9] = 2  # outside the range, kept unless replace
    grown = applied(lab, grow_from_seeds(lab, image, 2, Scope.slice_(0), lo=50, hi=150))
    assert (grown[0, :, :6] == 2).all() and grown[0, 9, 9] == 2
    seeds = lab == 2
    seeds[0, 9, 9] = False
    rep = grow_from_seeds(lab, image, 2, Scope.slice_(0), lo=50, hi=150, seeds=seeds, replace=True)
    assert applied(lab, rep)[0, 9, 9] == 0


def test_change_old_values_restore_exactly():
    """What napari's undo does with a data_setitem atom: old values back at the indices."""
    rng = np.random.default_rng(0)
    lab = (rng.random((6, 16, 16)) > 0.6).astype(np.uint8) * 2
    lab[rng.random(lab.shape) > 0.9] = 5
    for change in (
        keep_largest(lab, 2, Scope.whole(lab.shape)),
        fill_holes(lab, 2, Scope(0, 1, 4), overwrite=True),
        smooth(lab, 2, Scope.whole(lab.shape)),
    ):
        out = lab.copy()
        old = out[change.indices].copy()
        change.apply(out)
        assert change.size > 0 and not np.array_equal(out, lab)
        out[change.indices] = old
        assert np.array_equal(out, lab)


def test_tools_are_fast_on_a_512_slice():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:512, :512]
    organ = ((yy - 250) ** 2 / 150**2 + (xx - 240) ** 2 / 120**2) < 1
    lab = np.zeros((3, 512, 512), np.uint8)
    lab[0], lab[2] = organ, organ
    lab[1] = organ & (rng.random((512, 512)) > 0.05)
    image = (organ * 100 + rng.normal(0, 10, (512, 512))).astype(np.int16)[None].repeat(3, 0)
    s = Scope.slice_(1)
    calls = {
        "fill_between": lambda: fill_between(lab, 1, Scope(0, 0, 3), keys=[0, 2]),
        "remove_islands": lambda: remove_islands(lab, 1, s, min_mm3=10),
        "keep_largest": lambda: keep_largest(lab, 1, s),
        "fill_holes": lambda: fill_holes(lab, 1, s),
        "smooth": lambda: smooth(lab, 1, s, radius=2),
        "restrict": lambda: restrict_to_range(lab, image, 1, s, lo=50, hi=200),
        "grow": lambda: grow_from_seeds(lab, image, 1, s, lo=50, hi=200, opening=1),
    }
    for name, call in calls.items():
        t0 = time.perf_counter()
        call()
        assert time.perf_counter() - t0 < 0.5, name
