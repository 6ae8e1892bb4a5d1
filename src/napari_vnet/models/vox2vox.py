"""Vox2Vox (Cirillo, Abramian, Eklund: "Vox2Vox: 3D-GAN for Brain Tumour Segmentation",
BrainLes/MICCAI 2020, arXiv:2003.13653): a 3D pix2pix. The generator is a 3D U-Net that
segments; a 3D PatchGAN discriminator judges (image, segmentation) pairs during training.
Inference uses the generator only.

Generator shape contract: input (B, in_channels, D, H, W) float, output LOGITS
(B, out_channels, D, H, W). The paper ends in a softmax; here the softmax is applied by
inference and by the losses (``softmax(dim=1)``), so that all networks of the package
return logits. Any D, H, W >= 1 works: the input is padded to a multiple of
``2 ** len(channels)`` (16 by default) and cropped back.

Generator (paper defaults): four encoder blocks of 4x4x4 stride-2 convolution, instance
norm and LeakyReLU(0.2) with 64-128-256-512 channels; four bottleneck blocks of 3x3x3
convolution, instance norm, LeakyReLU and dropout at constant width (512), each fed the
concatenation of the previous block's input and output; a decoder of 4x4x4 stride-2
transposed convolutions, instance norm and ReLU, each followed by concatenation with the
encoder block of the same resolution; a last transposed convolution to full resolution
gives one channel per class.

Discriminator: a 3D PatchGAN. It sees concat(image, segmentation) - the segmentation as
one-hot labels (real pairs) or softmax probabilities (generated pairs) - and returns one
raw score per patch, shape (B, 1, D', H', W') with D' = padded D / 2 ** len(channels);
use it with an MSE (least-squares GAN) loss as the paper does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from napari_vnet.models._layers import (
    SegmentationNet,
    check_norm,
    check_pad_mode,
    check_positive,
    check_widths,
    make_norm,
)
from napari_vnet.models._padding import check_input, pad_to_multiple

PAPER_CHANNELS = (64, 128, 256, 512)


class EncoderBlock(nn.Module):
    """4x4x4 stride-2 convolution -> [norm] -> LeakyReLU: halves the size."""

    def __init__(self, cin: int, cout: int, norm: str | None, slope: float):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 4, stride=2, padding=1, bias=norm is None)
        self.norm = make_norm(norm, cout)
        self.act = nn.LeakyReLU(slope, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class BottleneckBlock(nn.Module):
    """3x3x3 convolution -> norm -> LeakyReLU -> dropout at constant width."""

    def __init__(self, cin: int, cout: int, norm: str | None, slope: float, dropout: float):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 3, padding=1, bias=norm is None)
        self.norm = make_norm(norm, cout)
        self.act = nn.LeakyReLU(slope, inplace=True)
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.act(self.norm(self.conv(x))))


class DecoderBlock(nn.Module):
    """4x4x4 stride-2 transposed convolution -> norm -> ReLU, then concatenation with the
    encoder output of the same resolution: doubles the size."""

    def __init__(self, cin: int, cout: int, norm: str | None):
        super().__init__()
        self.conv = nn.ConvTranspose3d(cin, cout, 4, stride=2, padding=1, bias=norm is None)
        self.norm = make_norm(norm, cout)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.act(self.norm(self.conv(x))), skip], dim=1)


class Vox2VoxGenerator(SegmentationNet):
    """Vox2Vox generator. Keywords: ``channels`` (encoder widths, paper 64-128-256-512;
    one stride-2 block each), ``bottleneck_blocks`` (paper 4), ``norm`` ("instance" as in
    the paper, "batch", "group" or None), ``dropout`` (bottleneck, default 0.2),
    ``negative_slope`` of the LeakyReLU (0.2), ``pad_mode``."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = PAPER_CHANNELS,
        bottleneck_blocks: int = 4,
        norm: str | None = "instance",
        dropout: float = 0.2,
        negative_slope: float = 0.2,
        pad_mode: str = "replicate",
    ):
        super().__init__()
        widths = self._check_io(in_channels, out_channels, channels, min_len=1)
        nb = check_positive(bottleneck_blocks, "bottleneck_blocks")
        norm, dropout = self._check_style(norm, dropout, pad_mode)
        slope = float(negative_slope)
        self.size_multiple = 2 ** len(widths)
        self._config = dict(
            channels=widths, bottleneck_blocks=nb, norm=norm, dropout=dropout,
            negative_slope=slope, pad_mode=pad_mode,
        )  # fmt: skip

        self.encoder = nn.ModuleList(
            EncoderBlock(cin, cout, norm, slope)
            for cin, cout in zip((self.in_channels, *widths[:-1]), widths, strict=True)
        )
        c = widths[-1]
        self.bottleneck = nn.ModuleList(
            BottleneckBlock(c if i == 0 else 2 * c, c, norm, slope, dropout) for i in range(nb)
        )
        # decoder: from the bottleneck's concatenated output (2c) up to the first encoder
        # level; each block's output is concatenated with its encoder skip
        self.decoder = nn.ModuleList(
            DecoderBlock(2 * widths[i + 1], widths[i], norm) for i in range(len(widths) - 2, -1, -1)
        )
        self.head = nn.ConvTranspose3d(2 * widths[0], self.out_channels, 4, stride=2, padding=1)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for block in self.encoder:
            h = block(h)
            skips.append(h)
        skips.pop()
        prev, h = h, self.bottleneck[0](h)  # the first block takes the encoder's output
        for block in self.bottleneck[1:]:
            prev, h = h, block(torch.cat([prev, h], dim=1))
        h = torch.cat([prev, h], dim=1)  # the last block's input and output
        for block in self.decoder:
            h = block(h, skips.pop())
        return self.head(h)


class Vox2VoxDiscriminator(nn.Module):
    """3D PatchGAN: ``forward(image, segmentation)`` -> patch scores (B, 1, D', H', W').

    Keywords: ``image_channels`` (the generator's in_channels), ``seg_channels`` (its
    out_channels), ``channels`` (widths of the 4x4x4 stride-2 blocks, paper 64-128-256-512;
    the first block has no norm, as in pix2pix), ``norm``, ``negative_slope``,
    ``pad_mode``. A last 3x3x3 convolution gives one raw score per patch.
    """

    def __init__(
        self,
        image_channels: int = 1,
        seg_channels: int = 2,
        channels: Sequence[int] = PAPER_CHANNELS,
        norm: str | None = "instance",
        negative_slope: float = 0.2,
        pad_mode: str = "replicate",
    ):
        super().__init__()
        self.image_channels = check_positive(image_channels, "image_channels")
        self.seg_channels = check_positive(seg_channels, "seg_channels")
        widths = check_widths(channels, "channels", min_len=1)
        norm = check_norm(norm)
        slope = float(negative_slope)
        self.pad_mode = check_pad_mode(pad_mode)
        self.size_multiple = 2 ** len(widths)
        self._config = dict(channels=widths, norm=norm, negative_slope=slope, pad_mode=pad_mode)
        cins = (self.image_channels + self.seg_channels, *widths[:-1])
        self.blocks = nn.ModuleList(
            EncoderBlock(cin, cout, norm if i else None, slope)
            for i, (cin, cout) in enumerate(zip(cins, widths, strict=True))
        )
        self.head = nn.Conv3d(widths[-1], 1, 3, padding=1)

    @property
    def arch_kwargs(self) -> dict:
        """Constructor keywords except image/seg channels (JSON-compatible)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self._config.items()}

    def forward(self, image: torch.Tensor, segmentation: torch.Tensor) -> torch.Tensor:
        check_input(image, self.image_channels, "Vox2VoxDiscriminator image")
        check_input(segmentation, self.seg_channels, "Vox2VoxDiscriminator segmentation")
        if image.shape[0] != segmentation.shape[0] or image.shape[2:] != segmentation.shape[2:]:
            raise ValueError(
                f"Vox2VoxDiscriminator: image {tuple(image.shape)} and segmentation "
                f"{tuple(segmentation.shape)} differ in batch or spatial size"
            )
        x, _ = pad_to_multiple(
            torch.cat([image, segmentation], dim=1), self.size_multiple, self.pad_mode
        )
        for block in self.blocks:
            x = block(x)
        return self.head(x)
