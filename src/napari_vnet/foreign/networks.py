"""Networks of other programs, wrapped so that a model card rebuilds them.

* :class:`NnUNetEnsemble`: one or more (fold) networks of an nnU-Net v2 plan, built by
  ``dynamic_network_architectures`` from the plan's architecture entry; the forward pass
  returns the members' mean logits (nnU-Net's fold ensemble averages the folds' logits).
* :class:`MonaiNetwork`: one of MONAI's segmentation networks (``VNet``, ``UNet``,
  ``BasicUNet``, ``DynUNet``, ...) by name, its constructor keywords stored in the card.

The field libraries are imported only when such a network is built; a missing one raises
:class:`MissingExtraError` saying what to install. Class names read from a plans file are
resolved only inside ``dynamic_network_architectures`` and ``torch.nn`` (a plans file
cannot make napari-vnet import anything else).
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from napari_vnet.models.errors import CheckpointError

__all__ = [
    "MONAI_NETWORKS",
    "MissingExtraError",
    "MonaiNetwork",
    "NnUNetEnsemble",
    "ensemble_members",
]


class MissingExtraError(CheckpointError, ImportError):
    """An optional dependency needed by these weights is not installed."""


def require(module: str, extra: str, what: str) -> Any:
    """``import module`` or MissingExtraError saying which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{what} needs the {module.split('.')[0]!r} package, which is not installed "
            f"({exc}); install it with: pip install 'napari-vnet[{extra}]'"
        ) from None


_ALLOWED_PREFIXES = {
    "network": ("dynamic_network_architectures.",),
    "layer": ("torch.nn.",),
}


def locate(dotted: str, kind: str) -> Any:
    """The class named ``dotted`` (e.g. ``torch.nn.modules.conv.Conv3d``), only from the
    packages allowed for ``kind`` ("network" or "layer")."""
    prefixes = _ALLOWED_PREFIXES[kind]
    if not isinstance(dotted, str) or not dotted.startswith(prefixes):
        raise ValueError(
            f"{kind} class {dotted!r} is not inside {' or '.join(p[:-1] for p in prefixes)}; "
            "refusing to import it"
        )
    module_name, _, attr = dotted.rpartition(".")
    if prefixes == ("dynamic_network_architectures.",):
        require("dynamic_network_architectures", "nnunet", "an nnU-Net network")
    try:
        value = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        raise ValueError(
            f"{kind} class {dotted!r} does not exist in the installed packages"
        ) from None
    if not isinstance(value, type):
        raise ValueError(f"{dotted!r} is not a class")
    return value


def ensemble_members(model: nn.Module) -> list[nn.Module]:
    """The networks of an ensemble (:class:`NnUNetEnsemble`'s folds), or ``[model]``."""
    members = getattr(model, "members", None)
    return list(members) if members is not None else [model]


class NnUNetEnsemble(nn.Module):
    """The fold networks of an nnU-Net v2 configuration; returns their mean logits.

    Args:
        in_channels / out_channels: input modalities / segmentation heads.
        network_class_name: the plan's ``architecture.network_class_name``.
        network_kwargs: the plan's ``architecture.arch_kwargs``.
        requires_import: the plan's ``architecture._kw_requires_import``.
        members: number of fold networks (1 for a single fold or a fine-tuned network).

    Shape contract ``(B, C_in, D, H, W) -> (B, C_out, D, H, W)`` for sizes divisible by
    the product of the plan's strides.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        network_class_name: str,
        network_kwargs: dict[str, Any],
        requires_import: list[str] | tuple[str, ...] = (),
        members: int = 1,
    ) -> None:
        super().__init__()
        cls = locate(network_class_name, "network")
        kwargs = dict(network_kwargs)
        for key in requires_import:
            if kwargs.get(key) is not None:
                kwargs[key] = locate(kwargs[key], "layer")
        kwargs["deep_supervision"] = False
        if int(members) < 1:
            raise ValueError(f"members must be >= 1, got {members!r}")
        try:
            self.members = nn.ModuleList(
                cls(input_channels=int(in_channels), num_classes=int(out_channels), **kwargs)
                for _ in range(int(members))
            )
        except TypeError as exc:
            raise ValueError(f"nnU-Net network kwargs do not fit {cls.__name__}: {exc}") from None
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.arch_kwargs = {
            "network_class_name": network_class_name,
            "network_kwargs": dict(network_kwargs),
            "requires_import": list(requires_import),
            "members": int(members),
        }

    def set_deep_supervision(self, enabled: bool) -> None:
        for m in self.members:
            m.decoder.deep_supervision = bool(enabled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.members[0](x)
        if len(self.members) == 1:
            return out
        for member in self.members[1:]:
            out = out + member(x)
        return out / len(self.members)


#: MONAI networks napari-vnet rebuilds by name (``monai.networks.nets.<name>``)
MONAI_NETWORKS = ("VNet", "UNet", "BasicUNet", "DynUNet", "AttentionUnet", "SegResNet", "UNETR")


class MonaiNetwork(nn.Module):
    """A MONAI segmentation network by class name; keys of its weights are ``net.*``.

    Args:
        in_channels / out_channels: passed to MONAI's constructor.
        name: one of :data:`MONAI_NETWORKS`.
        network_kwargs: the other constructor keywords (``spatial_dims`` defaults to 3).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        name: str = "VNet",
        network_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if name not in MONAI_NETWORKS:
            raise ValueError(
                f"MONAI network {name!r} is not supported; supported: {MONAI_NETWORKS}"
            )
        nets = require("monai.networks.nets", "monai", f"the MONAI network {name}")
        kwargs = dict(network_kwargs or {})
        kwargs.setdefault("spatial_dims", 3)
        try:
            self.net = getattr(nets, name)(
                in_channels=int(in_channels), out_channels=int(out_channels), **kwargs
            )
        except TypeError as exc:
            raise ValueError(f"MONAI {name} keywords {kwargs} do not fit: {exc}") from None
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.arch_kwargs = {"name": name, "network_kwargs": dict(network_kwargs or {})}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if isinstance(out, (list, tuple)):  # deep supervision outputs: the full-size one
            out = out[0]
        return out


def _register() -> None:
    """Cards naming ``nnunet`` or ``monai`` build these networks (parameters and one
    window's activations sized on ``meta`` first)."""
    from napari_vnet.foreign.sizing import check_foreign_network
    from napari_vnet.models.registry import register_architecture

    register_architecture("nnunet", NnUNetEnsemble, check_foreign_network)
    register_architecture("monai", MonaiNetwork, check_foreign_network)


_register()
