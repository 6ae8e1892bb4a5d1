"""Sizes that a foreign file decides, checked against the available memory before
anything of that size is allocated.

* :func:`check_foreign_network`: the network an nnU-Net plan, a MONAI bundle or a card
  describes - its parameters (one member built on PyTorch's ``meta`` device, which
  allocates nothing, times the ensemble members) and the activations of one window (the
  input and output windows plus the largest layer output of a ``meta`` forward pass);
* :func:`check_class_count`: a bundle's output channels, before one class per channel is
  made (label values are 0..65535);
* :func:`check_nnunet_grid` / :func:`check_bundle_grid`: the grid nnU-Net's or a
  bundle's preprocessing resamples to (the input's extent at the target spacing, padded
  to the window), before resampling.

Each refuses with one line (:func:`napari_vnet.io.memory.memory_problem`'s figures) and
estimates low rather than high: only what certainly has to be allocated is counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "MAX_CLASSES",
    "check_bundle_grid",
    "check_class_count",
    "check_foreign_network",
    "check_nnunet_grid",
]

#: label values are stored as uint16, so at most this many output channels
MAX_CLASSES = 65536


def _problem(nbytes: int, what: str) -> str | None:
    from napari_vnet.io.memory import memory_problem

    return memory_problem(nbytes, what)


def _ints(values: Any, what: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {values!r} is not a list of whole numbers") from None
    if len(out) != 3 or min(out) < 1:
        raise ValueError(f"{what} {values!r} must be three positive whole numbers")
    return out


def check_class_count(n_classes: Any, where: object) -> int:
    """``n_classes`` as an int; CheckpointError (naming ``where``) when it is not a whole
    number or more than :data:`MAX_CLASSES`."""
    from napari_vnet.models.errors import CheckpointError

    try:
        n = int(n_classes)
    except (TypeError, ValueError):
        raise CheckpointError(
            f"{where}: out_channels {n_classes!r} is not a whole number"
        ) from None
    if n > MAX_CLASSES:
        raise CheckpointError(
            f"{where}: the network has {n:,} output channels, more than the {MAX_CLASSES} "
            "label values (0..65535) a segmentation can hold; refused before allocating"
        )
    return n


# --------------------------------------------------------------------------- networks


def _meta_probe(cls, reserved: dict[str, int], kwargs: dict[str, Any], arch: str):
    """One member of the network built on the ``meta`` device, or None when the keywords
    do not fit (the real build then says why)."""
    import torch

    try:
        with torch.device("meta"):
            return cls(**reserved, **kwargs)
    except (TypeError, ValueError, ImportError):
        return None
    except Exception as exc:  # noqa: BLE001 - e.g. sizes that overflow PyTorch's counters
        text = str(exc).strip().splitlines()
        raise ValueError(
            f"the {arch} network of the model card cannot be sized before building "
            f"({type(exc).__name__}: {text[0][:120] if text else ''}); refused"
        ) from None


def _largest_activation(probe, n_in: int, patch: tuple[int, ...]) -> int:
    """Bytes of the largest tensor a layer returns for one window (a ``meta`` forward
    pass: shapes only); 0 when the network cannot run such a window on ``meta``."""
    import torch

    peak = 0

    def hook(_module, _inputs, output) -> None:
        nonlocal peak
        for t in output if isinstance(output, (list, tuple)) else (output,):
            if isinstance(t, torch.Tensor):
                peak = max(peak, t.numel() * t.element_size())

    handles = [m.register_forward_hook(hook) for m in probe.modules()]
    try:
        with torch.no_grad():
            probe.eval()(torch.empty((1, n_in, *patch), device="meta"))
    except Exception:  # noqa: BLE001 - a window the network does not take: count the rest
        pass
    finally:
        for h in handles:
            h.remove()
    return peak


def check_foreign_network(card, cls, reserved: dict[str, int], kwargs: dict[str, Any]) -> None:
    """ValueError with the figures when the network of ``card`` (``cls`` built with
    ``reserved`` and ``kwargs``) would not fit in the available memory: its parameters
    and the activations of one ``card.patch_size`` window (see the module text)."""
    n_in, n_out = int(reserved["in_channels"]), int(reserved["out_channels"])
    patch = _ints(card.patch_size, "model card patch_size")
    voxels = math.prod(patch)
    window = 4 * (n_in + n_out) * voxels  # one float32 input and output window
    what = f"one {patch} window of the {card.arch} network ({n_in} in, {n_out} out channels)"
    problem = _problem(window, what)
    if problem:
        raise ValueError(problem)
    members, one = 1, dict(kwargs)
    if "members" in kwargs:
        try:
            members = max(1, int(kwargs["members"]))
        except (TypeError, ValueError):
            return  # the real build words it
        one["members"] = 1
    probe = _meta_probe(cls, reserved, one, card.arch)
    if probe is None:
        return
    tensors = [*probe.parameters(), *probe.buffers()]
    weights = members * sum(t.numel() * t.element_size() for t in tensors)
    count = members * sum(t.numel() for t in probe.parameters())
    act = 2 * _largest_activation(probe, n_in, patch)  # a layer's input and output
    from napari_vnet.io.memory import human_bytes

    ensemble = f" in {members:,} members" if members > 1 else ""
    problem = _problem(
        weights + window + act,
        f"the {card.arch} network of the model card ({count:,} parameters{ensemble}, "
        f"{human_bytes(window + act)} of activations for one {patch} window)",
    )
    if problem:
        raise ValueError(problem)


# --------------------------------------------------------------------------- grids


def _grid_check(
    n_channels: int,
    shape: Sequence[int],
    spacing: Sequence[float],
    target: Sequence[float],
    patch: Sequence[int],
    what: str,
) -> None:
    """ResampleMemoryError when resampling ``n_channels`` of ``shape`` voxels of
    ``spacing`` to ``target`` (same axis order), then padding to ``patch``, does not fit:
    the resampled float32 grid and its working copy, plus the padded window grid."""
    from napari_vnet.transforms import ResampleMemoryError

    sp = [float(s) for s in spacing]
    tg = [float(t) for t in target]
    if not all(math.isfinite(v) and v > 0 for v in sp + tg):
        raise ValueError(f"{what}: spacings must be positive numbers, got {sp} -> {tg} mm")
    new = [max(1, round(n * s / t)) for n, s, t in zip(shape, sp, tg, strict=True)]
    padded = [max(n, int(p)) for n, p in zip(new, patch, strict=True)]
    nbytes = 4 * int(n_channels) * (2 * math.prod(new) + math.prod(padded))
    problem = _problem(
        nbytes,
        f"{what}: resampling {tuple(int(n) for n in shape)} voxels of spacing "
        f"{tuple(round(s, 6) for s in sp)} mm to {tuple(round(t, 6) for t in tg)} mm "
        f"({' x '.join(map(str, new))} voxels, padded to {' x '.join(map(str, padded))})",
    )
    if problem:
        raise ResampleMemoryError(problem)


def check_nnunet_grid(pre, shape: Sequence[int], spacing, extra_channels: int = 0) -> None:
    """Before nnU-Net's preprocessing of a ``(C, z, y, x)`` input of ``shape`` (input
    ``spacing`` in z, y, x; None: already at the plan's spacing): the plan's grid (axes
    in ``transpose_forward`` order) fits. ``pre`` is an ``NnUNetPreprocessing``."""
    forward = [int(a) for a in pre.plans_manager.transpose_forward]
    spatial = [int(s) for s in shape[1:]]
    target = [float(t) for t in pre.config.spacing]
    given = target if spacing is None else [float(spacing[a]) for a in forward]
    _grid_check(
        int(shape[0]) + extra_channels,
        [spatial[a] for a in forward],
        given,  # None: taken as at the plan's spacing (only padded to the window)
        target,
        pre.patch_size,
        "nnU-Net preprocessing",
    )


def check_bundle_grid(compose, shape: Sequence[int], spacing: Sequence[float], patch) -> None:
    """Before a MONAI bundle's preprocessing (``compose``, MONAI transforms) of a
    ``(C, z, y, x)`` input: each ``Spacing`` step's grid fits. The bundle works on
    ``(x, y, z)`` arrays; a non-positive ``pixdim`` keeps the input's spacing."""
    from monai.transforms import Spacing

    xyz = [int(s) for s in shape[1:]][::-1]
    sp = [float(s) for s in spacing][::-1]
    for step in getattr(compose, "transforms", ()):
        if not isinstance(step, Spacing):
            continue
        pixdim = np.atleast_1d(np.asarray(step.pixdim, dtype=float))[:3]
        if pixdim.size == 0:
            continue
        pixdim = np.concatenate([pixdim, np.repeat(pixdim[-1], 3 - pixdim.size)])
        target = [p if p > 0 else s for p, s in zip(pixdim.tolist(), sp, strict=True)]
        _grid_check(int(shape[0]), xyz, sp, target, patch, "the bundle's Spacingd")
        xyz = [max(1, round(n * s / t)) for n, s, t in zip(xyz, sp, target, strict=True)]
        sp = target
