"""Architecture names without torch: registry names, display names, conversions.

Menus (widgets) and the CLI can use these without importing torch.
"""

from __future__ import annotations

from napari_vnet.errors import NapariVnetError

#: registry name (stored in ModelCard.arch) -> human name for menus and reports
DISPLAY_NAMES: dict[str, str] = {"vnet": "V-Net", "unet3d": "3D U-Net", "vox2vox": "Vox2Vox"}


class UnknownArchitectureError(NapariVnetError, ValueError):
    """The card names an architecture this version does not know."""


def display_name(arch: str) -> str:
    """Human name of a registry name ("vnet" -> "V-Net"); unknown names are returned as is."""
    return DISPLAY_NAMES.get(arch, arch)


def arch_from_display_name(name: str) -> str:
    """Registry name of a display or registry name ("3D U-Net" or "unet3d" -> "unet3d")."""
    for key, shown in DISPLAY_NAMES.items():
        if name in (key, shown):
            return key
    raise UnknownArchitectureError(
        f"unknown architecture {name!r}; known: "
        + ", ".join(f"{k} ({v})" for k, v in DISPLAY_NAMES.items())
    )
