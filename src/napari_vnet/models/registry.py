"""Architecture registry: name -> class, display names, building a network from a card.

napari-vnet's own networks are listed here; networks of other programs (nnU-Net v2 plans,
MONAI) are added by :func:`register_architecture` when :mod:`napari_vnet.foreign.networks`
is imported, which the weights dispatch (:mod:`napari_vnet.weights.loading`) does. This
package never imports ``napari_vnet.foreign``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from napari_vnet.models.card import ModelCard
from napari_vnet.models.names import (  # noqa: F401 (re-exported)
    DISPLAY_NAMES,
    UnknownArchitectureError,
    arch_from_display_name,
    display_name,
)
from napari_vnet.models.unet3d import UNet3D
from napari_vnet.models.vnet import VNet
from napari_vnet.models.vox2vox import Vox2VoxDiscriminator, Vox2VoxGenerator

#: registry name (stored in ModelCard.arch) -> network class
ARCHITECTURES: dict[str, type[nn.Module]] = {
    "vnet": VNet,
    "unet3d": UNet3D,
    "vox2vox": Vox2VoxGenerator,
}

#: ``check(card, cls, reserved, kwargs)``: ValueError with the figures when the network
#: would not fit in the available memory (called before it is built)
MemoryCheck = Callable[[ModelCard, type[nn.Module], dict[str, int], dict[str, Any]], None]

#: networks of other programs (nnU-Net v2 plans, MONAI), rebuilt from a card like ours but
#: not offered for training from scratch; filled by :func:`register_architecture`
FOREIGN_ARCHITECTURES: dict[str, type[nn.Module]] = {}
_FOREIGN_MEMORY_CHECKS: dict[str, MemoryCheck] = {}


def register_architecture(name: str, cls: type[nn.Module], memory_check: MemoryCheck) -> None:
    """Let cards whose ``arch`` is ``name`` build ``cls`` (a network of another program),
    sized by ``memory_check`` before it is built. Our own names cannot be replaced."""
    if name in ARCHITECTURES:
        raise ValueError(f"architecture {name!r} is napari-vnet's own")
    FOREIGN_ARCHITECTURES[name] = cls
    _FOREIGN_MEMORY_CHECKS[name] = memory_check


def architecture_class(arch: str) -> type[nn.Module]:
    cls = ARCHITECTURES.get(arch) or FOREIGN_ARCHITECTURES.get(arch)
    if cls is None:
        known = ", ".join([*ARCHITECTURES, *FOREIGN_ARCHITECTURES])
        raise UnknownArchitectureError(f"unknown architecture {arch!r}; known: {known}")
    return cls


def _clean_kwargs(card: ModelCard, reserved: dict[str, int]) -> dict[str, Any]:
    kwargs = dict(card.arch_kwargs)
    for key, value in reserved.items():
        if key in kwargs:
            if int(kwargs[key]) != value:
                raise ValueError(
                    f"model card arch_kwargs[{key!r}] = {kwargs[key]!r} contradicts the card "
                    f"({value}, from its in_channels / classes)"
                )
            del kwargs[key]
    return kwargs


def _check_network_memory(card: ModelCard, cls, reserved, kwargs) -> None:
    """Refuse (ValueError with the figures) a card whose network would not fit in the
    available memory: the network is first built on PyTorch's "meta" device, which
    allocates nothing, to count its parameters."""
    import torch

    from napari_vnet.io.memory import memory_problem

    with torch.device("meta"):
        probe = cls(**reserved, **kwargs)
    tensors = [*probe.parameters(), *probe.buffers()]
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    count = sum(t.numel() for t in probe.parameters())
    problem = memory_problem(
        nbytes, f"the {card.arch} network of the model card ({count:,} parameters)"
    )
    if problem:
        raise ValueError(problem + f" (arch_kwargs {dict(card.arch_kwargs)})")


def build_model(card: ModelCard) -> nn.Module:
    """A fresh (randomly initialised) network as described by ``card``.

    ``card.arch_kwargs`` are the constructor keywords; ``in_channels`` comes from the card
    and ``out_channels`` from ``len(card.classes)``. Raises UnknownArchitectureError or
    ValueError (quoting the offending keyword) when the card cannot be built.
    """
    cls = architecture_class(card.arch)
    if card.out_channels < 1:
        raise ValueError(f"model card for {card.arch!r} lists no classes")
    reserved = {"in_channels": card.in_channels, "out_channels": card.out_channels}
    kwargs = _clean_kwargs(card, reserved)
    try:
        check = _FOREIGN_MEMORY_CHECKS.get(card.arch, _check_network_memory)
        check(card, cls, reserved, kwargs)
        return cls(**reserved, **kwargs)
    except TypeError as exc:  # unexpected keyword
        raise ValueError(
            f"model card arch_kwargs {kwargs} do not fit {cls.__name__}: {exc}"
        ) from None


def build_discriminator(card: ModelCard, **kwargs: Any) -> Vox2VoxDiscriminator:
    """The Vox2Vox PatchGAN discriminator matching ``card`` (image channels = card
    in_channels, segmentation channels = number of classes); ``kwargs`` go to
    :class:`Vox2VoxDiscriminator` (``channels``, ``norm``...)."""
    for key in ("image_channels", "seg_channels"):
        kwargs.pop(key, None)
    try:
        return Vox2VoxDiscriminator(
            image_channels=card.in_channels, seg_channels=card.out_channels, **kwargs
        )
    except TypeError as exc:
        raise ValueError(f"discriminator keywords {kwargs} do not fit: {exc}") from None


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
