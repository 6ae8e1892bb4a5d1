"""napari-vnet: 3D medical image segmentation (V-Net, 3D U-Net, Vox2Vox) for napari."""

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("napari-vnet")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
