"""Qt-free medical volume IO on SimpleITK (see :mod:`napari_vnet.io.volume` for geometry).

Reading shares SimpleITK's pixel buffer (no extra copy); writing is atomic and restores
the source geometry; :func:`volume_to_layer_kwargs` / :func:`layer_to_volume` map the
geometry to napari layer transforms and back (napari world = LPS mm, z y x).
"""

from napari_vnet.io.dicom import DicomSeries, find_series_of_file, is_dicom_file, list_dicom_series
from napari_vnet.io.errors import VolumeReadError, VolumeWriteError
from napari_vnet.io.headers import READ_EXTENSIONS, split_extension
from napari_vnet.io.layers import (
    META_KEY,
    display_range,
    layer_to_volume,
    layer_world_matrix,
    looks_like_labels,
    volume_to_layer_kwargs,
)
from napari_vnet.io.reading import (
    image_to_volume,
    read_dicom_series,
    read_file_header,
    read_header,
    read_volume,
)
from napari_vnet.io.volume import Volume
from napari_vnet.io.writing import (
    WRITE_EXTENSIONS,
    as_label_array,
    smallest_unsigned_dtype,
    volume_to_image,
    write_volume,
)

__all__ = [
    "META_KEY",
    "READ_EXTENSIONS",
    "WRITE_EXTENSIONS",
    "DicomSeries",
    "Volume",
    "VolumeReadError",
    "VolumeWriteError",
    "as_label_array",
    "display_range",
    "find_series_of_file",
    "image_to_volume",
    "is_dicom_file",
    "layer_to_volume",
    "layer_world_matrix",
    "list_dicom_series",
    "looks_like_labels",
    "read_dicom_series",
    "read_file_header",
    "read_header",
    "read_volume",
    "smallest_unsigned_dtype",
    "split_extension",
    "volume_to_image",
    "volume_to_layer_kwargs",
    "write_volume",
]
