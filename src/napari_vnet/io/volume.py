"""The in-memory volume shared by IO, inference, training and the widgets.

Conventions (the geometry contract of the whole package):

* ``array`` is indexed ``(z, y, x)`` = ``(k, j, i)``, as ``SimpleITK.GetArrayFromImage``;
* ``spacing`` and ``origin`` are in the same ``(z, y, x)`` order, in mm, in SimpleITK's
  LPS physical frame (i.e. ITK's ``(x, y, z)`` tuples reversed);
* ``direction`` is the 3x3 direction-cosine matrix in the same reversed order:
  ``direction_zyx = direction_itk[::-1, ::-1]``.
  The physical point of index ``(k, j, i)`` is
  ``origin + direction @ (spacing * (k, j, i))`` (all in z, y, x order), which equals
  ``reversed(itk_image.TransformContinuousIndexToPhysicalPoint((i, j, k)))``.
* In napari, world coordinates are these physical (z, y, x) mm coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Volume:
    array: np.ndarray
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0)
    origin: tuple[float, ...] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    pixel_type: str = ""  # SimpleITK pixel type string, e.g. "16-bit signed integer"
    metadata: dict[str, Any] = field(default_factory=dict)  # modality, window, series...
    path: str | None = None  # source path (file or DICOM folder)

    @property
    def ndim(self) -> int:
        return len(self.spacing)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def index_to_physical(self, index) -> np.ndarray:
        """Physical (z, y, x) mm point of a continuous array index (k, j, i)."""
        idx = np.asarray(index, dtype=float)
        return np.asarray(self.origin) + np.asarray(self.direction) @ (
            np.asarray(self.spacing) * idx
        )

    def with_array(self, array: np.ndarray, **changes) -> Volume:
        """A volume on the same grid holding another array (e.g. a predicted mask)."""
        kw: dict[str, Any] = dict(
            spacing=self.spacing,
            origin=self.origin,
            direction=self.direction,
            pixel_type="",
            metadata=dict(self.metadata),
            path=None,
        )
        kw.update(changes)
        return Volume(array=array, **kw)
