"""Pad a 5-D batch to the size a network needs, and crop its output back.

Every network in this package down-samples ``depth`` times by 2, so each spatial size
must be a multiple of ``2 ** depth``. Rather than refusing other sizes, the networks pad
the input (``replicate`` by default, so that border statistics stay realistic), run, and
crop the logits back to the input size. Padding is split evenly before/after the data.

Thin inputs (even one voxel thick) are accepted: the thin axis is padded to one whole
multiple. When *every* axis would pad to a single multiple, the deepest level would hold
one voxel, which instance norm (any batch) and batch norm (batch of one) cannot
normalise while training; the last axis is then padded to two multiples instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAD_MODES = ("replicate", "constant", "reflect")


def padded_shape(shape: tuple[int, ...], multiple: int) -> tuple[int, int, int]:
    """The spatial shape ``shape`` (D, H, W) is padded to for a network of ``multiple``."""
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise ValueError(f"spatial shape must be 3 positive sizes (D, H, W), got {tuple(shape)}")
    if multiple < 1:
        raise ValueError(f"size multiple must be >= 1, got {multiple}")
    out = [max(1, -(-int(s) // multiple)) * multiple for s in shape]
    if multiple > 1 and all(o == multiple for o in out):
        out[-1] = 2 * multiple  # keep more than one voxel at the deepest level
    return tuple(out)  # type: ignore[return-value]


def pad_to_multiple(
    x: torch.Tensor, multiple: int, mode: str = "replicate"
) -> tuple[torch.Tensor, tuple[slice, slice, slice]]:
    """Pad ``x`` (B, C, D, H, W); return the padded tensor and the slices that undo it."""
    if mode not in PAD_MODES:
        raise ValueError(f"pad mode must be one of {PAD_MODES}, got {mode!r}")
    spatial = tuple(int(s) for s in x.shape[2:])
    target = padded_shape(spatial, multiple)
    before = [(t - s) // 2 for s, t in zip(spatial, target, strict=True)]
    after = [t - s - b for s, t, b in zip(spatial, target, before, strict=True)]
    crop = tuple(slice(b, b + s) for b, s in zip(before, spatial, strict=True))
    if target == spatial:
        return x, crop  # type: ignore[return-value]
    if mode == "reflect" and any(
        max(b, a) >= s for b, a, s in zip(before, after, spatial, strict=True)
    ):
        mode = "replicate"  # reflect cannot pad by more than the size; fall back
    # F.pad lists the last axis first: (W_before, W_after, H_before, H_after, D_before, D_after)
    pads = []
    for b, a in zip(reversed(before), reversed(after), strict=True):
        pads += [b, a]
    return F.pad(x, pads, mode=mode), crop  # type: ignore[return-value]


def crop(y: torch.Tensor, slices: tuple[slice, slice, slice]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple` on a network output (B, C, D, H, W)."""
    index = (slice(None), slice(None), *slices)
    return y[index]


def check_input(x: torch.Tensor, in_channels: int, name: str) -> None:
    """Raise a ValueError quoting the received shape when ``x`` cannot enter the network."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 5:
        raise ValueError(f"{name} expects a 5-D tensor (B, C, D, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{name} was built for {in_channels} input channel(s), got a tensor of shape "
            f"{tuple(x.shape)} ({x.shape[1]} channel(s))"
        )
    if any(s < 1 for s in x.shape[2:]) or x.shape[0] < 1:
        raise ValueError(f"{name} got an empty tensor of shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point tensor, got dtype {x.dtype}")
