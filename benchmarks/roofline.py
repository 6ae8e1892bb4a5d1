"""CPU roofline helpers for the inference benchmark: convolution FLOPs, the machine's
matmul peak, and where an engine's time goes.

* :class:`Profile` hooks a network for one run: the windows it computes (counted per
  input shape), the seconds in its forward passes and in its 3-D (transposed)
  convolutions (on the CPU every op is synchronous, so host clocks around the hooks
  measure the work);
* :func:`conv_flops`: FLOPs of the convolutions of one forward pass on one window,
  counted by ``torch.utils.flop_counter.FlopCounterMode`` (``2 * Cin/groups * Cout *
  k^3`` per output voxel of a convolution, per *input* voxel of a transposed one);
* :func:`matmul_peak`: GFLOP/s of a large matmul on the threads given, the practical
  peak of this CPU (fp32, and bf16 where the CPU computes it natively).
"""

from __future__ import annotations

import time
from collections import Counter

import torch

CONV_TYPES = (torch.nn.Conv3d, torch.nn.ConvTranspose3d)


class Profile:
    """Hooks on ``model`` while active (``with Profile(model) as prof``)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.shapes: Counter = Counter()  # (C, D, H, W) of a window -> windows computed
        self.network_s = 0.0
        self.conv_s = 0.0
        self._handles: list = []
        self._t: dict[int, float] = {}

    def _pre(self, module, args):
        self._t[id(module)] = time.perf_counter()
        if module is self.model and args:
            x = args[0]
            self.shapes[tuple(int(s) for s in x.shape[1:])] += int(x.shape[0])

    def _post(self, module, args, output):
        dt = time.perf_counter() - self._t.pop(id(module), time.perf_counter())
        if module is self.model:
            self.network_s += dt
        else:
            self.conv_s += dt

    def __enter__(self) -> Profile:
        for m in [self.model, *(m for m in self.model.modules() if isinstance(m, CONV_TYPES))]:
            self._handles.append(m.register_forward_pre_hook(self._pre))
            self._handles.append(m.register_forward_hook(self._post))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @property
    def windows(self) -> int:
        return sum(self.shapes.values())


def conv_flops(model: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """FLOPs of the convolutions in one forward pass of ``model`` on one window of
    ``shape`` ``(C, D, H, W)``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros((1, *shape)))
    total = 0
    for op, n in counter.get_flop_counts().get("Global", {}).items():
        if "convolution" in str(op):
            total += int(n)
    return total


def run_flops(model: torch.nn.Module, shapes: Counter) -> int:
    """Convolution FLOPs of every window a run computed."""
    return sum(conv_flops(model, s) * n for s, n in shapes.items())


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 4) -> float:
    """Best GFLOP/s of an ``n x n`` matmul in ``dtype`` on torch's current threads."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def machine_peaks(native_bf16: bool) -> dict[str, float | None]:
    """fp32 (and bf16 where native) matmul peaks, GFLOP/s."""
    return {
        "fp32_gflops": matmul_peak(torch.float32),
        "bf16_gflops": matmul_peak(torch.bfloat16) if native_bf16 else None,
    }
