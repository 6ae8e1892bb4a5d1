"""Networks (V-Net, 3D U-Net, Vox2Vox), their registry and self-describing checkpoints.

``ModelCard``, ``ClassInfo``, ``CheckpointError``, ``DISPLAY_NAMES`` and
``display_name`` import without torch; everything
else is imported (with torch) on first use, so ``napari-vnet --help`` and the napari
reader stay fast.

All networks return LOGITS (B, C, D, H, W); apply ``softmax(dim=1)`` for probabilities.
"""

from __future__ import annotations

from napari_vnet._lazy import lazy_getattr
from napari_vnet.models.card import CARD_FORMAT_VERSION, ClassInfo, ModelCard
from napari_vnet.models.errors import CheckpointError, WeightsNotFoundError
from napari_vnet.models.names import (
    DISPLAY_NAMES,
    UnknownArchitectureError,
    arch_from_display_name,
    display_name,
)

_LAZY = {
    "ARCHITECTURES": "registry",
    "architecture_class": "registry",
    "build_discriminator": "registry",
    "build_model": "registry",
    "count_parameters": "registry",
    "load_checkpoint": "checkpoint",
    "load_checkpoint_state": "checkpoint",
    "load_discriminator": "checkpoint",
    "read_card": "checkpoint",
    "save_checkpoint": "checkpoint",
    "VNet": "vnet",
    "UNet3D": "unet3d",
    "Vox2VoxGenerator": "vox2vox",
    "Vox2VoxDiscriminator": "vox2vox",
}

__all__ = [
    "CARD_FORMAT_VERSION",
    "CheckpointError",
    "ClassInfo",
    "DISPLAY_NAMES",
    "ModelCard",
    "UnknownArchitectureError",
    "WeightsNotFoundError",
    "arch_from_display_name",
    "display_name",
    *_LAZY,
]


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(__all__)
