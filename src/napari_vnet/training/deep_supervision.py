"""Deep supervision for the U-Net and V-Net decoders, used only while training (no Qt).

nnU-Net v2 trains its decoder with a loss at every resolution: each decoder stage gets a
1x1x1 convolution to class logits, the label map is down-sampled (nearest neighbour) to
that stage's size, and the losses are summed with weights 1, 1/2, 1/4, ... (the coarsest
output weighted 0), normalised to 1 (Isensee et al., Nature Methods 2021; Lee et al.,
"Deeply-supervised nets", 2015).

:class:`DeepSupervision` wraps a network without changing it: forward hooks on its
``decoder`` stages catch their outputs, the auxiliary heads live in the wrapper only, and
the checkpoint saves the wrapped network alone - so a model trained with deep
supervision has the same state dict and card as one trained without, and loads and
predicts as before. In eval mode the wrapper returns the network's own output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DeepSupervision", "DeepSupervisionLoss", "supports_deep_supervision"]


def supports_deep_supervision(model: nn.Module) -> bool:
    decoder = getattr(model, "decoder", None)
    return isinstance(decoder, nn.ModuleList) and len(decoder) >= 2 and hasattr(model, "head")


def ds_weights(n_outputs: int) -> list[float]:
    """nnU-Net's weights, full resolution first: 1/2^i, the coarsest 0, normalised."""
    w = [1.0 / 2**i for i in range(n_outputs)]
    if n_outputs > 2:
        w[-1] = 0.0
    total = sum(w)
    return [x / total for x in w]


class DeepSupervision(nn.Module):
    """``model`` plus auxiliary heads on its decoder stages; in training mode ``forward``
    returns ``[logits, aux_1, aux_2, ...]`` (full resolution first), else ``logits``."""

    def __init__(self, model: nn.Module, n_classes: int):
        super().__init__()
        if not supports_deep_supervision(model):
            raise ValueError(f"{type(model).__name__} has no decoder stages to supervise")
        self.model = model
        self._feats: list[torch.Tensor] = []
        self._active = False  # collect only in this wrapper's forward (not in validation)
        self._hooks = [stage.register_forward_hook(self._collect) for stage in model.decoder]
        # widths of the decoder stages, from a probe at the smallest size the network takes
        size = int(getattr(model, "size_multiple", 16))
        in_ch = int(getattr(model, "in_channels", 1))
        param = next(model.parameters())
        was_training = model.training
        model.eval()
        with torch.no_grad():
            self._feats.clear()
            self._active = True
            model(torch.zeros(1, in_ch, size, size, size, device=param.device))
            self._active = False
        model.train(was_training)
        widths = [int(f.shape[1]) for f in self._feats]  # deep (coarse) to shallow
        self._feats.clear()
        # outputs full resolution first; the coarsest has weight 0 and gets no head
        self.weights = ds_weights(len(widths))
        used = [w for w in self.weights[1:] if w > 0]
        coarse_to_fine = widths[:-1][::-1][: len(used)]  # stages just below full resolution
        self.heads = nn.ModuleList(
            nn.Conv3d(w, n_classes, 1).to(param.device) for w in coarse_to_fine
        )
        self.weights = [self.weights[0], *used]

    def _collect(self, _module, _inputs, output) -> None:
        if self._active:
            self._feats.append(output)

    @property
    def out_channels(self) -> int:
        return int(self.model.out_channels)

    def forward(self, x: torch.Tensor):
        self._feats.clear()
        self._active = True
        try:
            out = self.model(x)
        finally:
            self._active = False
        feats, self._feats = self._feats, []
        if not self.training:
            return out
        finer_first = feats[:-1][::-1]  # the last stage feeds the model's own head
        return [out, *(head(f) for head, f in zip(self.heads, finer_first, strict=False))]


def _down(t: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(t[:, None].float(), size=tuple(size), mode="nearest")[:, 0]


class DeepSupervisionLoss(nn.Module):
    """``base(logits, target, mask)`` summed over the outputs with their weights; the parts
    reported are the full-resolution output's."""

    def __init__(self, base: nn.Module, weights: list[float]):
        super().__init__()
        self.base = base
        self.weights = list(weights)

    def forward(self, outputs, target, mask=None):
        if not isinstance(outputs, list | tuple):
            return self.base(outputs, target, mask)
        total, parts = None, {}
        for k, (w, out) in enumerate(zip(self.weights, outputs, strict=False)):
            t, m = target, mask
            if tuple(out.shape[2:]) != tuple(target.shape[1:]):
                t = _down(target, out.shape[2:]).to(target.dtype)
                m = None if mask is None else _down(mask, out.shape[2:])  # weights kept
                if m is not None and mask.dtype == torch.bool:
                    m = m > 0.5
            loss, p = self.base(out, t, m)
            if k == 0:
                parts = p
            total = w * loss if total is None else total + w * loss
        return total, parts
