"""3D U-Net (Cicek, Abdulkadir, Lienkamp, Brox, Ronneberger: "3D U-Net: Learning Dense
Volumetric Segmentation from Sparse Annotation", MICCAI 2016, arXiv:1606.06650).

Shape contract: input (B, in_channels, D, H, W) float, output LOGITS
(B, out_channels, D, H, W) - apply ``softmax(dim=1)`` for probabilities. Any D, H, W >= 1
works: the input is padded to a multiple of ``2 ** (len(channels) - 1)`` (8 with the
default widths) and cropped back.

Architecture: at each level two 3x3x3 convolutions, each followed by normalisation
(instance norm by default; batch norm as in the paper is an option) and ReLU; 2x2x2 max-pooling down;
2x2x2 stride-2 transposed convolutions up, concatenation with the encoder level of the
same resolution, two more conv-norm-ReLU; a 1x1x1 convolution per class. Unlike the
paper, convolutions are padded ("same"), so the output has the input's size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from napari_vnet.models._layers import SegmentationNet, make_norm

DEFAULT_CHANNELS = (32, 64, 128, 256)


class DoubleConv(nn.Module):
    """(3x3x3 conv -> norm -> ReLU) x 2, optional Dropout3d at the end."""

    def __init__(self, cin: int, cout: int, norm: str | None, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        for c in (cin, cout):
            layers += [
                nn.Conv3d(c, cout, 3, padding=1, bias=norm is None),
                make_norm(norm, cout),
                nn.ReLU(inplace=True),
            ]
        if dropout > 0:
            layers.append(nn.Dropout3d(dropout))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class UpConcat(nn.Module):
    """2x2x2 stride-2 transposed convolution, concatenation with the skip, DoubleConv."""

    def __init__(self, cin: int, cout: int, norm: str | None, dropout: float):
        super().__init__()
        self.up = nn.ConvTranspose3d(cin, cout, 2, stride=2)
        self.conv = DoubleConv(2 * cout, cout, norm, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNet3D(SegmentationNet):
    """3D U-Net. Keywords: ``channels`` (one width per level, default 32-64-128-256;
    depth = len - 1), ``norm`` ("instance" default; "batch" as in the paper, which needs
    batches of several patches to give good running statistics; "group" or None),
    ``dropout`` (Dropout3d after each decoder level and the bottom), ``pad_mode``."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        norm: str | None = "instance",
        dropout: float = 0.0,
        pad_mode: str = "replicate",
    ):
        super().__init__()
        widths = self._check_io(in_channels, out_channels, channels)
        norm, dropout = self._check_style(norm, dropout, pad_mode)
        n = len(widths)
        self.size_multiple = 2 ** (n - 1)
        self._config = dict(channels=widths, norm=norm, dropout=dropout, pad_mode=pad_mode)

        self.encoder = nn.ModuleList(
            DoubleConv(cin, cout, norm, dropout if i == n - 1 else 0.0)
            for i, (cin, cout) in enumerate(
                zip((self.in_channels, *widths[:-1]), widths, strict=True)
            )
        )
        self.pool = nn.MaxPool3d(2)
        self.decoder = nn.ModuleList(
            UpConcat(widths[i + 1], widths[i], norm, dropout) for i in range(n - 2, -1, -1)
        )
        self.head = nn.Conv3d(widths[0], self.out_channels, 1)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for i, level in enumerate(self.encoder):
            h = level(self.pool(h) if i else h)
            skips.append(h)
        skips.pop()
        for up in self.decoder:
            h = up(h, skips.pop())
        return self.head(h)
