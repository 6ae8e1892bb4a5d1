"""Each architecture overfits one small synthetic volume: the seeds' sanity check.

A network that cannot drive the training loss on a single case to (almost) zero has a
bug (a broken skip, a detached branch, a wrong crop). Reduced widths keep it under a
minute on 2 CPU cores for all three networks together.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from napari_vnet.models import ClassInfo, ModelCard, build_model, count_parameters

LR = {"vnet": 2e-2, "unet3d": 1e-2, "vox2vox": 2e-2}
SMALL = {
    "vnet": {"channels": [4, 8, 16], "convs": [1, 2, 2], "norm": "instance"},
    "unet3d": {"channels": [4, 8, 16], "norm": "instance"},
    "vox2vox": {"channels": [8, 16, 32], "bottleneck_blocks": 2, "dropout": 0.0},
}


def _phantom(shape=(20, 22, 21)) -> tuple[torch.Tensor, torch.Tensor]:
    """A noisy volume with a bright ball (class 1) and a dark box (class 2)."""
    g = torch.Generator().manual_seed(1)
    z, y, x = torch.meshgrid(*(torch.arange(s, dtype=torch.float32) for s in shape), indexing="ij")
    labels = torch.zeros(shape, dtype=torch.long)
    labels[(z - 7) ** 2 + (y - 8) ** 2 + (x - 13) ** 2 <= 25] = 1
    labels[12:17, 12:19, 3:10] = 2
    image = torch.tensor([0.0, 1.0, -1.0])[labels] + 0.3 * torch.randn(shape, generator=g)
    return image[None, None], labels[None]


def _dice(pred: torch.Tensor, target: torch.Tensor, cls: int) -> float:
    p, t = pred == cls, target == cls
    return float(2 * (p & t).sum() / (p.sum() + t.sum()).clamp(min=1))


@pytest.mark.parametrize("arch", list(SMALL))
def test_overfits_one_volume(arch):
    # one thread: on a shared, loaded 2-core machine two OpenMP threads run ~5x slower
    torch.set_num_threads(1)
    image, labels = _phantom()
    card = ModelCard(
        arch=arch,
        arch_kwargs=SMALL[arch],
        classes=[ClassInfo(0, "background"), ClassInfo(1, "ball"), ClassInfo(2, "box")],
    )
    model = build_model(card)
    opt = torch.optim.Adam(model.parameters(), lr=LR[arch])
    onehot = F.one_hot(labels, 3).permute(0, 4, 1, 2, 3).float()
    start, dices, step = time.perf_counter(), [0.0, 0.0], 0
    for step in range(1, 151):
        model.train()
        logits = model(image)
        probs = logits.softmax(1)
        inter = (probs * onehot).sum((0, 2, 3, 4))
        soft_dice = 2 * inter / (probs.sum((0, 2, 3, 4)) + onehot.sum((0, 2, 3, 4)) + 1e-5)
        loss = F.cross_entropy(logits, labels) + 1 - soft_dice.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            model.eval()
            with torch.no_grad():
                pred = model(image).argmax(1)
            dices = [_dice(pred, labels, c) for c in (1, 2)]
            if min(dices) > 0.95:
                break
    seconds = time.perf_counter() - start
    print(
        f"{arch}: {count_parameters(model):,} parameters, Dice ball {dices[0]:.3f} "
        f"box {dices[1]:.3f} after {step} steps in {seconds:.1f} s"
    )
    assert min(dices) > 0.95, f"{arch} did not overfit: Dice {dices} after {step} steps"
