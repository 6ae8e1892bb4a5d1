"""V-Net (Milletari, Navab, Ahmadi: "V-Net: Fully Convolutional Neural Networks for
Volumetric Medical Image Segmentation", 3DV 2016, arXiv:1606.04797).

Shape contract: input (B, in_channels, D, H, W) float, output LOGITS
(B, out_channels, D, H, W) - apply ``softmax(dim=1)`` for probabilities (the paper's last
layer; inference and the losses do it). Any D, H, W >= 1 works: the input is padded to a
multiple of ``2 ** (len(channels) - 1)`` (16 with the paper widths) and cropped back.

Architecture (paper defaults): five resolution stages of 16-32-64-128-256 channels with
1-2-3-3-3 convolutions of 5x5x5, each followed by PReLU; each stage adds its input to its
output (residual learning); 2x2x2 stride-2 convolutions replace pooling; the decoder
up-samples with 2x2x2 stride-2 transposed convolutions, concatenates the encoder stage of
the same resolution and runs a residual stage of 3-3-2-1 convolutions; a 1x1x1
convolution gives one channel per class. The first stage's residual replicates the input
channels to its width (as the paper does for its one-channel input).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from napari_vnet.models._layers import SegmentationNet, check_positive, make_norm

PAPER_CHANNELS = (16, 32, 64, 128, 256)
PAPER_CONVS = (1, 2, 3, 3, 3)


def _conv_unit(cin: int, cout: int, kernel: int, norm: str | None) -> nn.Sequential:
    """conv(k) -> [norm]; the activation is applied by the caller."""
    return nn.Sequential(
        nn.Conv3d(cin, cout, kernel, padding=kernel // 2, bias=norm is None),
        make_norm(norm, cout),
    )


class ResidualStage(nn.Module):
    """``n`` 5x5x5 conv-PReLU units at constant width; the stage input is added before
    the last PReLU (``out = PReLU(convs(x) + x)``), as in the paper."""

    def __init__(self, channels: int, n_convs: int, kernel: int, norm: str | None, dropout: float):
        super().__init__()
        self.convs = nn.ModuleList(
            _conv_unit(channels, channels, kernel, norm) for _ in range(n_convs)
        )
        self.acts = nn.ModuleList(nn.PReLU(channels) for _ in range(n_convs))
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i, (conv, act) in enumerate(zip(self.convs, self.acts, strict=True)):
            h = conv(h)
            h = act(h + x) if i == len(self.convs) - 1 else act(h)
        return self.dropout(h)


class InputStage(nn.Module):
    """First stage: in_channels -> width; its residual repeats the input channels to the
    width when it divides it, else projects them with a 1x1x1 convolution."""

    def __init__(self, cin: int, width: int, n_convs: int, kernel: int, norm: str | None):
        super().__init__()
        self.first = _conv_unit(cin, width, kernel, norm)
        self.rest = nn.ModuleList(
            _conv_unit(width, width, kernel, norm) for _ in range(n_convs - 1)
        )
        self.acts = nn.ModuleList(nn.PReLU(width) for _ in range(n_convs))
        self.repeat = width // cin if width % cin == 0 else 0
        self.project = None if self.repeat else nn.Conv3d(cin, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x.repeat(1, self.repeat, 1, 1, 1) if self.project is None else self.project(x)
        convs = [self.first, *self.rest]
        h = x
        for i, (conv, act) in enumerate(zip(convs, self.acts, strict=True)):
            h = conv(h)
            h = act(h + skip) if i == len(convs) - 1 else act(h)
        return h


class Down(nn.Module):
    """2x2x2 stride-2 convolution (doubling the width) + [norm] + PReLU."""

    def __init__(self, cin: int, cout: int, norm: str | None):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 2, stride=2, bias=norm is None)
        self.norm = make_norm(norm, cout)
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class Up(nn.Module):
    """2x2x2 stride-2 transposed convolution + [norm] + PReLU, then concatenation with the
    encoder stage of the same resolution."""

    def __init__(self, cin: int, cout: int, norm: str | None):
        super().__init__()
        self.conv = nn.ConvTranspose3d(cin, cout, 2, stride=2, bias=norm is None)
        self.norm = make_norm(norm, cout)
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.act(self.norm(self.conv(x))), skip], dim=1)


class VNet(SegmentationNet):
    """V-Net. Keywords: ``channels`` (one width per resolution, paper 16-32-64-128-256;
    depth = len - 1), ``convs`` (5x5x5 convolutions per stage, int or one per level, paper
    1-2-3-3-3; the decoder reuses the count of its level), ``kernel_size`` (odd, paper 5),
    ``norm`` (None as in the paper, "batch", "instance" or "group"), ``dropout``
    (Dropout3d after every stage but the first), ``pad_mode`` for odd sizes."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = PAPER_CHANNELS,
        convs: int | Sequence[int] | None = None,
        kernel_size: int = 5,
        norm: str | None = None,
        dropout: float = 0.0,
        pad_mode: str = "replicate",
    ):
        super().__init__()
        widths = self._check_io(in_channels, out_channels, channels)
        n = len(widths)
        if convs is None:
            convs = tuple(PAPER_CONVS[min(i, len(PAPER_CONVS) - 1)] for i in range(n))
        elif isinstance(convs, int):
            convs = (convs,) * n
        convs = tuple(check_positive(c, "convs") for c in convs)
        if len(convs) != n:
            raise ValueError(f"convs must have one entry per level ({n}), got {convs}")
        kernel_size = check_positive(kernel_size, "kernel_size")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        norm, dropout = self._check_style(norm, dropout, pad_mode)
        self.size_multiple = 2 ** (n - 1)
        self._config = dict(
            channels=widths, convs=convs, kernel_size=kernel_size, norm=norm,
            dropout=dropout, pad_mode=pad_mode,
        )  # fmt: skip

        k = kernel_size
        self.input_stage = InputStage(self.in_channels, widths[0], convs[0], k, norm)
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1], norm) for i in range(n - 1))
        self.encoder = nn.ModuleList(
            ResidualStage(widths[i], convs[i], k, norm, dropout) for i in range(1, n)
        )
        # decoder level i (deep to shallow) has width 2 * widths[i]; the bottom has widths[-1]
        dec_in = [widths[-1]] + [2 * widths[i] for i in range(n - 2, 0, -1)]
        self.ups = nn.ModuleList(
            Up(cin, widths[i], norm) for cin, i in zip(dec_in, range(n - 2, -1, -1), strict=True)
        )
        self.decoder = nn.ModuleList(
            ResidualStage(2 * widths[i], convs[i], k, norm, dropout) for i in range(n - 2, -1, -1)
        )
        self.head = nn.Conv3d(2 * widths[0], self.out_channels, 1)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.input_stage(x)]
        h = skips[0]
        for down, stage in zip(self.downs, self.encoder, strict=True):
            h = stage(down(h))
            skips.append(h)
        skips.pop()  # the bottom stage is not a skip
        for up, stage in zip(self.ups, self.decoder, strict=True):
            h = stage(up(h, skips.pop()))
        return self.head(h)
