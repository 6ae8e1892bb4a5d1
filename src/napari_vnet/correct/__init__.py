"""Correcting a predicted label map: where to look and tools for the tedious part (no Qt).

:mod:`.uncertainty`: per-voxel uncertainty, per-slice and per-scan scores, the queue of
slices to review. :mod:`.tools`: fill between slices, islands, holes, smoothing, intensity-limited
edits and region growing, each returning a :class:`~.tools.Change` on one label.
:mod:`napari_vnet.workflows.propagate` (a use case above the training engine) adapts the
model to the corrected slices and re-predicts the voxels the user has not touched.
"""

from napari_vnet.correct.tools import (
    Change,
    Scope,
    fill_between,
    fill_holes,
    grow_from_seeds,
    keep_largest,
    remove_islands,
    restrict_to_range,
    smooth,
)
from napari_vnet.correct.uncertainty import SliceQueue, entropy_map, scan_score, slice_scores

__all__ = [
    "Change",
    "Scope",
    "SliceQueue",
    "entropy_map",
    "fill_between",
    "fill_holes",
    "grow_from_seeds",
    "keep_largest",
    "remove_islands",
    "restrict_to_range",
    "scan_score",
    "slice_scores",
    "smooth",
]
