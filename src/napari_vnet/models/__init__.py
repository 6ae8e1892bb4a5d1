"""Networks (V-Net, 3D U-Net, Vox2Vox), their registry and self-describing checkpoints."""

from napari_vnet.models.card import ClassInfo, ModelCard

__all__ = ["ClassInfo", "ModelCard"]
