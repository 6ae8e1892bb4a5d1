"""A network's class probabilities instead of its logits.

napari-vnet's engine blends the softmax of each window's logits where windows overlap.
A MONAI ``SlidingWindowInferer`` blends whatever the network returns, so a MONAI bundle
of napari-vnet's own weights names :class:`Probabilities` around the network: MONAI then
blends what napari-vnet blends, and the labels are the same.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Probabilities"]


class Probabilities(nn.Module):
    """``softmax(network(x), dim=1)``; the weights are the network's (``network.*``)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.network(x), dim=1)
