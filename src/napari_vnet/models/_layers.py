"""Small building blocks shared by the networks: normalisation, activation, the base class."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from napari_vnet.models._padding import PAD_MODES, check_input, crop, pad_to_multiple

NORMS = (None, "batch", "instance", "group")


def check_norm(norm: str | None) -> str | None:
    norm = None if norm in (None, "none", "") else str(norm).lower()
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def make_norm(norm: str | None, channels: int) -> nn.Module:
    """A 3-D normalisation layer (or identity when ``norm`` is None)."""
    if norm is None:
        return nn.Identity()
    if norm == "batch":
        return nn.BatchNorm3d(channels)
    if norm == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def check_widths(channels: Any, name: str, min_len: int = 2) -> tuple[int, ...]:
    """Validate a widths sequence such as (16, 32, 64, 128, 256)."""
    try:
        widths = tuple(int(c) for c in channels)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of ints, got {channels!r}") from None
    if len(widths) < min_len or any(c < 1 for c in widths):
        raise ValueError(
            f"{name} must hold at least {min_len} positive widths, got {tuple(channels)}"
        )
    return widths


def check_positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_dropout(p: Any) -> float:
    if not 0.0 <= float(p) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p!r}")
    return float(p)


class SegmentationNet(nn.Module):
    """Base of the networks: validates input, pads to ``size_multiple``, crops back.

    Subclasses set ``in_channels``, ``out_channels``, ``size_multiple`` and ``pad_mode``,
    store their constructor keywords in ``self._config`` and implement
    :meth:`forward_padded`.
    """

    in_channels: int
    out_channels: int
    size_multiple: int
    pad_mode: str = "replicate"
    _config: dict[str, Any]

    @property
    def arch_kwargs(self) -> dict[str, Any]:
        """Constructor keywords (JSON-compatible) except in/out channels, for a ModelCard."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self._config.items()}

    def _check_io(self, in_channels: Any, out_channels: Any, channels: Any, min_len: int = 2):
        """Check and set ``in_channels`` / ``out_channels``; the checked ``channels`` widths."""
        self.in_channels = check_positive(in_channels, "in_channels")
        self.out_channels = check_positive(out_channels, "out_channels")
        return check_widths(channels, "channels", min_len=min_len)

    def _check_style(self, norm: Any, dropout: Any, pad_mode: str) -> tuple[str | None, float]:
        """Check ``norm`` and ``dropout`` (returned) and set ``pad_mode``."""
        norm, dropout = check_norm(norm), check_dropout(dropout)
        self.pad_mode = check_pad_mode(pad_mode)
        return norm, dropout

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, out_channels, D, H, W) for input (B, in_channels, D, H, W), any D, H, W."""
        check_input(x, self.in_channels, type(self).__name__)
        xp, slices = pad_to_multiple(x, self.size_multiple, self.pad_mode)
        return crop(self.forward_padded(xp), slices)


def check_pad_mode(mode: str) -> str:
    if mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {mode!r}")
    return mode
