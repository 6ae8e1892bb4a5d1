"""Qt-free medical volume IO on SimpleITK (see :mod:`napari_vnet.io.volume` for geometry)."""

from napari_vnet.io.volume import Volume

__all__ = ["Volume"]
