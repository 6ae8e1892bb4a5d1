"""Where to look: per-voxel uncertainty, per-slice scores, the next slice to review (no Qt).

The uncertainty of a prediction is the entropy of its blended class probabilities divided
by ``log C`` (0: one class certain, 1: all classes equally likely), stored as uint8 scaled
to 0..255 - one byte a voxel. :func:`napari_vnet.inference.predict` computes it slab by
slab with ``return_uncertainty=True``; :func:`entropy_map` computes it from a full
probability array.

A slice's score (:func:`slice_scores`) is the mean uncertainty of its voxels (0..1); a
:class:`SliceQueue` walks the slices from the most uncertain down, skipping the slices
the user has reviewed (edited), and back again. A scan's score (:func:`scan_score`, the
Scans dock's "Uncertainty" column) is the mean uncertainty inside the bounding box of the
predicted foreground.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["SCALE", "SliceQueue", "entropy_map", "scan_score", "slice_scores", "to_unit"]

#: the uint8 value of the largest uncertainty (all classes equally likely)
SCALE = 255


def entropy_map(probabilities: np.ndarray, *, chunk: int = 8) -> np.ndarray:
    """uint8 normalised entropy of ``(C, z, y, x)`` probabilities (computed ``chunk``
    z-slices at a time in float32, so the temporary memory stays small)."""
    p = np.asarray(probabilities)
    if p.ndim != 4:
        raise ValueError(f"probabilities must be (C, z, y, x), got shape {p.shape}")
    n = p.shape[0]
    out = np.zeros(p.shape[1:], dtype=np.uint8)
    if n < 2:
        return out
    for z in range(0, p.shape[1], max(1, int(chunk))):
        q = np.clip(p[:, z : z + chunk].astype(np.float32), 0.0, 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(q > 0, q * np.log(q), 0.0).sum(0) / np.log(n)
        out[z : z + chunk] = np.rint(np.clip(h, 0.0, 1.0) * SCALE).astype(np.uint8)
    return out


def to_unit(uncertainty: np.ndarray) -> np.ndarray:
    """The uint8 map as float32 in 0..1."""
    return np.asarray(uncertainty, dtype=np.float32) / SCALE


def slice_scores(uncertainty: np.ndarray, axis: int = 0) -> np.ndarray:
    """Mean uncertainty (0..1) of each slice along ``axis`` (float64, one per slice)."""
    u = np.asarray(uncertainty)
    if u.ndim != 3:
        raise ValueError(f"the uncertainty map must be 3-D, got shape {u.shape}")
    others = tuple(a for a in range(3) if a != axis)
    return u.astype(np.float64).mean(axis=others) / SCALE


def foreground_box(labels: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of the non-zero voxels of a 3-D label map; None when all are 0."""
    lab = np.asarray(labels)
    zs = np.flatnonzero(lab.any(axis=(1, 2)))
    if zs.size == 0:
        return None
    slab = lab[zs[0] : zs[-1] + 1]  # the y and x extents from the occupied slices only
    ys = np.flatnonzero(slab.any(axis=(0, 2)))
    xs = np.flatnonzero(slab.any(axis=(0, 1)))
    return tuple(slice(int(a[0]), int(a[-1]) + 1) for a in (zs, ys, xs))


def scan_score(uncertainty: np.ndarray, labels: np.ndarray | None = None) -> float:
    """How uncertain a whole prediction is (0..1): the mean of the uint8 ``uncertainty``
    map (:func:`entropy_map`) inside the bounding box of the predicted foreground
    (``labels != 0``); over the whole volume when ``labels`` is None or all background.

    The box, not the whole volume, so that the air and table around a patient (certain
    background) do not dilute the score of a scan with a large field of view.
    """
    u = np.asarray(uncertainty)
    if u.ndim != 3:
        raise ValueError(f"the uncertainty map must be 3-D, got shape {u.shape}")
    box = None
    if labels is not None:
        if tuple(np.shape(labels)) != u.shape:
            raise ValueError(f"labels {np.shape(labels)} and uncertainty {u.shape} differ")
        box = foreground_box(labels)
    region = u if box is None else u[box]
    return float(region.mean(dtype=np.float64) / SCALE) if region.size else 0.0


class SliceQueue:
    """The slices to review, most uncertain first; reviewed slices drop out.

    :meth:`next` goes to the most uncertain slice not yet visited through the queue (and
    not reviewed); when every such slice was visited, it starts again from the top.
    :meth:`previous` goes back through the visited ones. Slices whose score is at most
    ``min_score`` are never proposed.
    """

    def __init__(self, scores: Iterable[float], min_score: float = 0.0) -> None:
        self.scores = np.asarray(list(scores), dtype=np.float64)
        self.min_score = float(min_score)
        self.visited: list[int] = []
        self.cursor = -1

    def ranking(self, reviewed: Iterable[int] = ()) -> list[int]:
        """Unreviewed slices with a score above ``min_score``, most uncertain first (ties:
        lower index first)."""
        done = {int(s) for s in reviewed}
        order = np.lexsort((np.arange(self.scores.size), -self.scores))
        return [int(i) for i in order if self.scores[i] > self.min_score and int(i) not in done]

    def remaining(self, reviewed: Iterable[int] = ()) -> int:
        return len(self.ranking(reviewed))

    def next(self, reviewed: Iterable[int] = ()) -> int | None:
        """The next slice to look at; None when every slice is reviewed (or certain)."""
        done = {int(s) for s in reviewed}
        while self.cursor + 1 < len(self.visited):  # forward again after previous()
            self.cursor += 1
            if self.visited[self.cursor] not in done:
                return self.visited[self.cursor]
        rank = self.ranking(done)
        if not rank:
            return None
        seen = set(self.visited)
        fresh = [s for s in rank if s not in seen]
        if not fresh:  # all visited: start a new round from the most uncertain
            self.visited, fresh = [], rank
        self.visited.append(fresh[0])
        self.cursor = len(self.visited) - 1
        return fresh[0]

    def previous(self, reviewed: Iterable[int] = ()) -> int | None:
        """The slice visited before the current one (skipping reviewed ones); None at
        the start."""
        done = {int(s) for s in reviewed}
        for i in range(self.cursor - 1, -1, -1):
            if self.visited[i] not in done:
                self.cursor = i
                return self.visited[i]
        return None
