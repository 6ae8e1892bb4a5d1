"""Weights shipped inside the package (made by the project's own `napari-vnet train`)."""
