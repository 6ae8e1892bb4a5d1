"""Training throughput: napari-vnet's fine-tuning engine vs a bare PyTorch loop.

For each architecture, one subprocess builds the same network twice (same card, same
seed) and alternates, step by step:

* ``bare``: a plain PyTorch loop over *pre-made* batch tensors already on the device
  (no sampling, no augmentation, no host->device copy): forward, Dice + CE loss,
  backward, gradient clipping, AdamW step;
* ``engine``: one ``next()`` of :func:`napari_vnet.training.finetune` on the phantom
  (patch sampling with foreground oversampling, flips/rotations/intensity/noise
  augmentation, host->device copy, the same loss/optimiser; Vox2Vox also updates its
  PatchGAN discriminator in both loops), with validation and checkpoints pushed past
  the timed steps.

Alternating the two loops step by step exposes both to the same load from other
processes on a shared machine. The overhead ratio is median(engine) / median(bare) s per
iteration (target <= 1.2). Peak memory: on CUDA ``max_memory_allocated`` of each loop;
on CPU the subprocess's peak RSS (VmHWM), which covers both loops (the larger one sets it).

    python benchmarks/training.py                  # all three architectures
    python benchmarks/training.py --arch unet3d --steps 20 --patch 32 64 64

Prints a table and writes ``benchmarks/results/training.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

# quarter widths so that a run on 2 shared CPU cores finishes in minutes; the structure
# (levels, kernels, bottleneck blocks) is the paper's
ARCH_KWARGS = {
    "unet3d": {"channels": [8, 16, 32, 64]},
    "vnet": {"channels": [4, 8, 16, 32, 64]},
    "vox2vox": {"channels": [8, 16, 32, 64], "bottleneck_blocks": 4},
}


def peak_rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")  # pragma: no cover


def child(arch: str, steps: int, warmup: int, patch, batch: int, device_name: str) -> dict:
    import torch

    from napari_vnet.models import ModelCard, build_discriminator, build_model
    from napari_vnet.phantoms import make_phantom
    from napari_vnet.runtime import resolve_amp, resolve_device
    from napari_vnet.training import (
        PatchSampler,
        TrainConfig,
        TrainingPair,
        finetune,
        prepare_cases,
    )
    from napari_vnet.training.losses import (
        DiceCELoss,
        generalized_dice_loss,
        least_squares_gan_loss,
        one_hot,
    )

    device = resolve_device(device_name)
    image, labels, classes = make_phantom(3, shape=(48, 96, 96))
    norm = {"kind": "window", "low": -200.0, "high": 300.0}
    config = TrainConfig(
        arch=arch,
        arch_kwargs=ARCH_KWARGS[arch],
        classes=classes,
        iterations=10**6,
        patch_size=tuple(patch),
        batch_size=batch,
        lr=1e-4,
        normalization=norm,
        eval_every=10**9,
        eval_seconds=1e12,
        device=device_name,
    )
    amp_dtype = resolve_amp(config.amp, device)

    # bare loop: same network, same loss and optimiser, batches made in advance
    card = ModelCard(arch=arch, arch_kwargs=ARCH_KWARGS[arch], classes=classes)
    torch.manual_seed(0)
    model = build_model(card).to(device).train()
    disc = (
        build_discriminator(card, channels=ARCH_KWARGS[arch]["channels"][:4]).to(device)
        if arch == "vox2vox"
        else None
    )
    betas = (0.5, 0.999) if disc is not None else (0.9, 0.999)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=betas, weight_decay=1e-4)
    d_opt = torch.optim.AdamW(disc.parameters(), lr=1e-4, betas=betas) if disc is not None else None
    cases, _, _ = prepare_cases(
        [TrainingPair(image, labels)], classes, spacing=None, normalization=norm
    )
    sampler = PatchSampler(cases, patch, augment=False, seed=1)
    batches = []
    for _ in range(4):
        x, y, _ = sampler.sample(batch)
        batches.append((torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)))
    criterion = DiceCELoss()
    ac = dict(
        device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
    )

    def bare_step(i: int) -> None:
        x, y = batches[i % len(batches)]
        with torch.autocast(**ac):
            logits = model(x)
        if disc is None:
            loss, _ = criterion(logits, y)
        else:
            probs = torch.softmax(logits.float(), 1)
            real = one_hot(y, len(classes))
            with torch.autocast(**ac):
                d_loss = 0.5 * (
                    least_squares_gan_loss(disc(x, real), True)
                    + least_squares_gan_loss(disc(x, probs.detach()), False)
                )
            d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            torch.nn.utils.clip_grad_norm_(disc.parameters(), 12.0)
            d_opt.step()
            for p in disc.parameters():
                p.requires_grad_(False)
            with torch.autocast(**ac):
                adv = least_squares_gan_loss(disc(x, probs), True)
            loss = adv + 5.0 * generalized_dice_loss(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if disc is not None:
            for p in disc.parameters():
                p.requires_grad_(True)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        opt.step()
        float(loss.detach())  # the engine reads the loss every step too (a sync on GPU)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory() as tmp:
        gen = finetune([TrainingPair(image, labels)], config, out=Path(tmp) / "m.pt")
        t_setup = time.perf_counter()
        next(gen)  # includes data preparation (resampling, normalisation, indexing)
        setup_s = time.perf_counter() - t_setup
        bare, engine = [], []
        peak_bare = peak_engine = None
        for i in range(warmup + steps):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync()
            t = time.perf_counter()
            bare_step(i)
            sync()
            tb = time.perf_counter() - t
            if device.type == "cuda":
                peak_bare = max(peak_bare or 0, torch.cuda.max_memory_allocated() / 2**20)
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            next(gen)
            sync()
            te = time.perf_counter() - t
            if device.type == "cuda":
                peak_engine = max(peak_engine or 0, torch.cuda.max_memory_allocated() / 2**20)
            if i >= warmup:
                bare.append(tb)
                engine.append(te)
        gen.close()
    mb, me = statistics.median(bare), statistics.median(engine)
    return {
        "arch": arch,
        "arch_kwargs": ARCH_KWARGS[arch],
        "parameters": sum(p.numel() for p in model.parameters()),
        "patch": list(patch),
        "batch": batch,
        "device": str(device),
        "amp": str(amp_dtype) if amp_dtype else "fp32",
        "steps": steps,
        "bare_s_per_it": mb,
        "engine_s_per_it": me,
        "overhead_ratio": me / mb,
        "bare_s_per_it_all": bare,
        "engine_s_per_it_all": engine,
        "engine_first_step_s": setup_s,
        "peak_rss_mb_process": peak_rss_mb(),
        "peak_cuda_mb_bare": peak_bare,
        "peak_cuda_mb_engine": peak_engine,
        "threads": torch.get_num_threads(),
    }


def pipeline_cost(patch, batch: int, repeats: int = 30) -> dict:
    """Median seconds the engine spends per batch outside the network: patch sampling,
    augmentation (noise included) and the host->device copy. A noise-robust bound on the
    overhead, independent of the architecture."""
    import torch

    from napari_vnet.phantoms import make_phantom
    from napari_vnet.runtime import resolve_device
    from napari_vnet.training import PatchSampler, TrainingPair, prepare_cases

    device = resolve_device("auto")
    image, labels, classes = make_phantom(3, shape=(48, 96, 96))
    norm = {"kind": "window", "low": -200.0, "high": 300.0}
    cases, _, _ = prepare_cases(
        [TrainingPair(image, labels)], classes, spacing=None, normalization=norm
    )
    sampler = PatchSampler(cases, patch, augment=True, seed=0)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        x, y, _ = sampler.sample(batch)
        torch.from_numpy(x).to(device)
        torch.from_numpy(y).to(device)
        times.append(time.perf_counter() - t)
    return {
        "patch": list(patch),
        "batch": batch,
        "device": str(device),
        "median_s": statistics.median(times),
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--arch", action="append", choices=list(ARCH_KWARGS))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--patch", type=int, nargs=3, default=[32, 64, 64])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument(
        "--pipeline-only", action="store_true",
        help="only measure the data pipeline per batch and add it to the existing JSON",
    )  # fmt: skip
    ap.add_argument("--out", default=str(RESULTS / "training.json"))
    args = ap.parse_args()
    if args.child:
        res = child(args.child, args.steps, args.warmup, args.patch, args.batch, args.device)
        print("RESULT " + json.dumps(res))
        return 0
    pipe = pipeline_cost(args.patch, args.batch)
    print(f"data pipeline (sample + augment + copy): {pipe['median_s'] * 1000:.1f} ms per batch")
    if args.pipeline_only:
        path = Path(args.out)
        data = json.loads(path.read_text())
        data["pipeline"] = pipe
        for r in data["results"]:
            if r["patch"] == pipe["patch"] and r["batch"] == pipe["batch"]:
                r["overhead_bound_from_pipeline"] = 1 + pipe["median_s"] / r["bare_s_per_it"]
        path.write_text(json.dumps(data, indent=2))
        print(f"updated {path}")
        return 0
    rows = []
    for arch in args.arch or list(ARCH_KWARGS):
        cmd = [sys.executable, __file__, "--child", arch, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--patch", *map(str, args.patch),
               "--batch", str(args.batch), "--device", args.device]  # fmt: skip
        t = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
        rows.append(json.loads(line[7:]))
        print(f"{arch}: done in {time.time() - t:.0f}s", file=sys.stderr)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(
        f"\npatch {args.patch} batch {args.batch}, {args.steps} timed steps (median), after {args.warmup} warm-up"
    )
    print(
        f"{'arch':8} {'params':>9} {'device':6} {'amp':5} {'bare s/it':>10} {'engine s/it':>12} {'ratio':>6} {'peak RSS MB':>12}"
    )
    for r in rows:
        print(
            f"{r['arch']:8} {r['parameters']:>9,} {r['device']:6} {r['amp']:5} {r['bare_s_per_it']:>10.3f} "
            f"{r['engine_s_per_it']:>12.3f} {r['overhead_ratio']:>6.2f} {r['peak_rss_mb_process']:>12.0f}"
        )
    for r in rows:
        r["overhead_bound_from_pipeline"] = 1 + pipe["median_s"] / r["bare_s_per_it"]
    out = {
        "benchmark": "training",
        "pipeline": pipe,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "loadavg_at_end": load,
        },
        "note": "shared machine: other processes ran at the same time; both loops alternate step by step so they see the same load",
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
