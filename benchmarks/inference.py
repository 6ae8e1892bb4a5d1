"""Sliding-window inference: napari-vnet's engine vs MONAI vs a naive loop, same network.

Every engine runs the *same V-Net weights*, the *same patch size* and the *same overlap*
on the same synthetic torso CT (the shipped ``sample_data`` phantom, zoomed), each in its own subprocess so
that peak RSS (``VmHWM``) is the engine's own:

* ``napari-vnet``: :func:`napari_vnet.inference.predict` with its defaults (amp "auto",
  batch size auto, rolling-slab stitching), normalisation included in its time;
* ``monai``: ``monai.inferers.sliding_window_inference`` with MONAI's defaults
  (fp32, ``sw_batch_size=1``) and ``mode="gaussian"``, under ``torch.no_grad``; its
  predictor is the network followed by a softmax, so that MONAI blends the windows'
  class probabilities as napari-vnet and the naive loop do (given the bare network it
  blends logits, which moves ~0.5-2% of the voxels in window overlaps where the classes
  are close: the label maps then differ by the blending rule, not by the engine);
* ``naive``: a plain loop over the same windows, fp32, full-size float32 probability and
  count maps, uniform averaging.

* ``napari-vnet-fp32``: the same with ``amp=False`` (the fp32 case on a CPU with bf16);
* ``napari-vnet-onnxruntime`` / ``napari-vnet-openvino`` (opt-in with ``--engines``): the
  same engine with the network run fp32 by ONNX Runtime / OpenVINO (``predict --backend``),
  converted before the clock (``backend_setup_s``);
* ``napari-vnet-noskip``: without the reuse of uniform windows.

Label agreement is the mean foreground Dice between each engine's labels and MONAI's.

Roofline (``benchmarks/roofline.py``): each engine's convolution FLOPs (FlopCounterMode on
one window, times the windows the network computed), the achieved GFLOP/s (those FLOPs
over the engine's seconds, and over the seconds inside the convolutions) and the
fraction of the machine's peak, measured as a 2048^2 matmul on the same threads in fp32
(bf16 too where the CPU computes it natively; a bf16 run is compared with the bf16
peak), plus where the time went: reading, preprocessing, convolutions, the network's
other layers, and the rest (window extraction, stitching, argmax, restoring the grid).
The network is a V-Net (paper structure: 5x5x5 convolutions, PReLU, residual stages) whose
width is ``--channels`` (default quarter width 4-8-16-32-64: the paper's 16-256 needs
~250 GFLOP per 64^3 window, an hour per volume on 2 shared CPU cores). It is trained for
``--train-steps`` steps on another phantom first so that its label maps are meaningful.

    python benchmarks/inference.py                    # 96^3 and 128 x 256 x 256
    python benchmarks/inference.py --big              # + 300 x 512 x 512 (GPU-sized)
    python benchmarks/inference.py --big-rss          # only: peak RSS of our engine on
                                                      # 300 x 512 x 512 with a small model

Prints a table and writes ``benchmarks/results/inference.json`` (``inference_big_rss.json``
for ``--big-rss``; ``--out`` another path). Timings on a shared machine are disturbed by other processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(os.environ.get("NAPARI_VNET_BENCH_CACHE", "/tmp/napari_vnet_bench"))
WINDOW = {"kind": "window", "low": -200.0, "high": 300.0}


def peak_rss_mb() -> float:
    """Peak resident set size of this process (VmHWM), MB."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    import resource  # pragma: no cover - non-Linux fallback

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")  # pragma: no cover


# --------------------------------------------------------------------------- data, model


SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"


def volume_path(shape: tuple[int, int, int]) -> Path:
    """The shipped phantom CT (48 x 96 x 96) zoomed (linear) to ``shape`` (z, y, x), int16
    .npy, cached. Like a real CT, ~60% of it is air (-1000 HU)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"phantom_{'x'.join(map(str, shape))}.npy"
    if path.exists():
        return path
    from scipy import ndimage

    from napari_vnet.io import read_volume

    small = np.asarray(read_volume(SAMPLE / "phantom_ct.nii.gz").array, dtype=np.float32)
    zoom = [s / t for s, t in zip(shape, small.shape, strict=True)]
    arr = ndimage.zoom(small, zoom, order=1)[: shape[0], : shape[1], : shape[2]]
    # CT noise, so that only true air (clipped by the window) is uniform
    arr += np.random.default_rng(0).normal(0, 8, size=arr.shape).astype(np.float32)
    np.save(path, np.round(arr).astype(np.int16))
    return path


def train_weights(channels, kernel, patch, steps, shapes, norm="instance") -> Path:
    """A V-Net of the given width trained on the benchmark volumes themselves (cached).

    This is a speed benchmark: the network only needs confident label maps on these
    volumes so that the agreement between engines is not decided by near-ties."""
    import torch
    from scipy import ndimage

    from napari_vnet.io import read_volume
    from napari_vnet.models import ClassInfo, ModelCard, build_model, save_checkpoint
    from napari_vnet.transforms import normalize_intensity

    tag = f"vnet_{'-'.join(map(str, channels))}_k{kernel}_p{patch}_s{steps}_{norm}"
    tag += "_" + "_".join("x".join(map(str, s)) for s in shapes)
    path = CACHE / f"{tag}.pt"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    labels_small = read_volume(SAMPLE / "phantom_labels.nii.gz").array
    names = json.loads((SAMPLE / "phantom_classes.json").read_text())["classes"]
    card = ModelCard(
        arch="vnet",
        arch_kwargs={"channels": list(channels), "kernel_size": kernel, "norm": norm},
        classes=[ClassInfo.from_dict(c) for c in names],
        normalization=dict(WINDOW),
        spacing=None,
        patch_size=(patch, patch, patch),
        description="benchmark model (trained briefly on the benchmark volumes)",
    )
    pairs = []
    for shape in shapes:
        image = np.load(volume_path(shape))
        zoom = [s / t for s, t in zip(shape, labels_small.shape, strict=True)]
        lab = ndimage.zoom(labels_small, zoom, order=0)[: shape[0], : shape[1], : shape[2]]
        x = torch.from_numpy(normalize_intensity(image, WINDOW))[None, None]
        pairs.append((x, torch.from_numpy(lab.astype(np.int64))[None], np.argwhere(lab > 0)))
    torch.manual_seed(0)
    model = build_model(card)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    crop = 32
    t0 = time.perf_counter()
    for step in range(steps):
        x, y, fg = pairs[step % len(pairs)]
        dims = x.shape[2:]
        if rng.random() < 0.7 and len(fg):  # foreground-centred crops
            centre = fg[rng.integers(len(fg))]
            corner = [
                int(np.clip(c - crop // 2, 0, n - crop)) for c, n in zip(centre, dims, strict=True)
            ]
        else:
            corner = [int(rng.integers(0, n - crop + 1)) for n in dims]
        sl = (..., *(slice(c, c + crop) for c in corner))
        loss = torch.nn.functional.cross_entropy(model(x[sl]), y[sl])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0:
            print(f"  train step {step}/{steps} loss {loss.item():.3f}", file=sys.stderr)
    print(f"  trained {steps} steps in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    save_checkpoint(model.eval(), card, path)
    return path


# --------------------------------------------------------------------------- engines

#: the engine with another fp32 CPU runtime for the network (``predict --backend``)
BACKEND_ENGINES = {"napari-vnet-onnxruntime": "onnxruntime", "napari-vnet-openvino": "openvino"}
FP32_ENGINES = {"napari-vnet-fp32", *BACKEND_ENGINES}


def starts(length, patch, overlap):
    from napari_vnet.inference import sliding_window_starts

    return sliding_window_starts(length, patch, overlap)


def run_naive(x, model, patch, overlap, n_classes):
    import torch

    shape = x.shape[2:]
    prob = torch.zeros((n_classes, *shape))
    count = torch.zeros(shape)
    grid = [starts(s, patch, overlap) for s in shape]
    with torch.no_grad():
        for z in grid[0]:
            for r in grid[1]:
                for c in grid[2]:
                    sl = (slice(z, z + patch), slice(r, r + patch), slice(c, c + patch))
                    prob[(slice(None), *sl)] += torch.softmax(model(x[(..., *sl)]), 1)[0]
                    count[sl] += 1
    return torch.argmax(prob / count, 0).numpy()


def child(args) -> int:
    """Run one engine on one volume; print one JSON line."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from roofline import Profile, run_flops

    from napari_vnet.weights import load_weights

    model, card = load_weights(args.weights)
    patch = card.patch_size[0]
    # a CPU runtime behind the same engine: converted once, before the clock; the
    # convolution FLOPs are still counted on the torch network (same windows)
    net, setup_s = model, 0.0
    if args.child in BACKEND_ENGINES:
        from napari_vnet.inference.backends import runtime_model

        t_setup = time.perf_counter()
        net = runtime_model(model, card, BACKEND_ENGINES[args.child], torch.device("cpu"))
        setup_s = time.perf_counter() - t_setup
    t_io = time.perf_counter()
    raw = np.load(args.volume)
    io_s = time.perf_counter() - t_io
    values = np.asarray(card.label_values, np.uint8)
    base_rss = current_rss_mb()
    times, best = [], None
    for _ in range(max(1, args.repeats)):
        t0 = time.perf_counter()
        with Profile(net) as prof:
            labels, extra = run_engine(args, raw, net, card, values, patch)
        times.append(time.perf_counter() - t0)
        if times[-1] == min(times):
            best = (prof, extra)
    seconds = min(times)
    prof, extra = best
    np.save(args.labels_out, labels)
    pre_s = extra.pop("preprocess_s", 0.0)
    result = {
        "engine": args.child,
        "seconds": seconds,
        "seconds_all": times,
        "voxels": int(raw.size),
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": base_rss,
        "threads": torch.get_num_threads(),
        "conv_gflop": run_flops(model, prof.shapes) / 1e9,
        "windows_computed": prof.windows,
        # where the time went (the fastest run): reading the .npy (not in "seconds"),
        # normalisation/resampling, the network (its convolutions, its other layers),
        # and the rest: window extraction, stitching/blending, argmax, restoring the grid
        "breakdown_s": {
            "io_read": io_s,
            "preprocess": pre_s,
            "convolutions": prof.conv_s,
            "other_layers": prof.network_s - prof.conv_s,
            "stitching_and_rest": seconds - pre_s - prof.network_s,
        },
        **extra,
    }
    if args.child in BACKEND_ENGINES:
        result["backend_setup_s"] = setup_s
    print(json.dumps(result))
    return 0


def run_engine(args, raw, model, card, values, patch):
    import torch

    from napari_vnet.transforms import normalize_intensity

    if args.child.startswith("napari-vnet"):
        from napari_vnet.inference import predict, prepare

        t0 = time.perf_counter()
        prepared = prepare(raw, card, spacing=None, overlap=args.overlap)
        pre_s = time.perf_counter() - t0
        pred = predict(
            prepared,
            model,
            card,
            overlap=args.overlap,
            device="cpu",
            amp=False if args.child in FP32_ENGINES else "auto",
            skip_uniform=args.child != "napari-vnet-noskip",
        )
        labels = pred.labels
        extra = {
            "preprocess_s": pre_s,
            "amp": pred.amp,
            "batch_size": pred.batch_size,
            "windows": pred.windows,
            "uniform_windows_reused": pred.stats.get("uniform_windows_reused", 0),
            "channels_last": pred.stats.get("channels_last"),
        }
    else:
        t0 = time.perf_counter()
        x = torch.from_numpy(normalize_intensity(raw, card.normalization))[None, None]
        pre_s = time.perf_counter() - t0
        if args.child == "monai":
            from monai.inferers import sliding_window_inference

            with torch.no_grad():
                out = sliding_window_inference(
                    x,
                    card.patch_size,
                    1,
                    lambda t: torch.softmax(model(t), dim=1),
                    overlap=args.overlap,
                    mode="gaussian",
                )
            labels = values[torch.argmax(out[0], 0).numpy()]
            del out
        else:
            labels = values[run_naive(x, model, patch, args.overlap, len(values))]
        extra = {"amp": None, "preprocess_s": pre_s}
    return labels, extra


def run_child(engine, volume, weights, overlap, threads, labels_out, timeout, repeats=1):
    cmd = [
        sys.executable,
        __file__,
        "--child",
        engine,
        "--volume",
        str(volume),
        "--weights",
        str(weights),
        "--overlap",
        str(overlap),
        "--labels-out",
        str(labels_out),
        "--threads",
        str(threads),
        "--repeats",
        str(repeats),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def agreement(a, b) -> dict:
    """Label agreement: Dice over all foreground voxels (a voxel agrees when both maps
    give it the same non-zero label) and the mean of the per-class Dice."""
    from napari_vnet.metrics import dice_per_class, label_values

    same = np.count_nonzero((a == b) & (a != 0))
    total = np.count_nonzero(a) + np.count_nonzero(b)
    per_class = dice_per_class(a, b, label_values(a, b))
    return {
        "dice_foreground": 2.0 * same / total if total else 1.0,
        "dice_per_class": {str(k): v for k, v in per_class.items()},
        "dice_mean_per_class": float(np.mean(list(per_class.values()))) if per_class else 1.0,
    }


# --------------------------------------------------------------------------- roofline


def roofline_row(res: dict, peaks: dict) -> dict:
    """Achieved GFLOP/s (convolution FLOPs over the engine's seconds) and the fraction of
    the matmul peak of the run's dtype (bf16 where it ran bf16 and the CPU has it)."""
    gflops = res["conv_gflop"] / res["seconds"]
    conv_s = res["breakdown_s"]["convolutions"]
    bf16 = res.get("amp") == "bf16" and peaks.get("bf16_gflops")
    peak = peaks["bf16_gflops"] if bf16 else peaks["fp32_gflops"]
    return {
        "gflops": gflops,
        "gflops_in_convolutions": res["conv_gflop"] / conv_s if conv_s > 0 else None,
        "peak_dtype": "bf16" if bf16 else "fp32",
        "fraction_of_peak": gflops / peak,
        "fraction_of_fp32_peak": gflops / peaks["fp32_gflops"],
    }


def print_table(rows: list[dict]) -> None:
    print(
        f"{'volume':>14} {'engine':>18} {'amp':>5} {'s':>7} {'Mvox/s':>7} {'xMONAI':>6} "
        f"{'peakRSS MB':>10} {'Dice/MONAI':>10} {'fg %':>5} {'GFLOP':>7} {'GFLOP/s':>7} "
        f"{'%peak':>6}"
    )
    for r in rows:
        print(
            f"{'x'.join(map(str, r['shape'])):>14} {r['engine']:>18} {r.get('amp') or 'fp32':>5} "
            f"{r['seconds']:>7.1f} {r['voxels_per_s'] / 1e6:>7.3f} "
            f"{r.get('speed_vs_monai', float('nan')):>6.2f} {r['peak_rss_mb']:>10.0f} "
            f"{r.get('dice_vs_monai', float('nan')):>10.4f} "
            f"{100 * r['foreground_fraction']:>5.1f} {r['conv_gflop']:>7.1f} "
            f"{r['gflops']:>7.1f} {100 * r['fraction_of_peak']:>5.1f}%"
        )


def print_breakdown(rows: list[dict]) -> None:
    keys = ("io_read", "preprocess", "convolutions", "other_layers", "stitching_and_rest")
    print(f"\n{'volume':>14} {'engine':>18} " + " ".join(f"{k:>18}" for k in keys) + "  (s)")
    for r in rows:
        b = r["breakdown_s"]
        print(
            f"{'x'.join(map(str, r['shape'])):>14} {r['engine']:>18} "
            + " ".join(f"{b[k]:>18.2f}" for k in keys)
        )


# --------------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--volume", default=None, help=argparse.SUPPRESS)
    p.add_argument("--labels-out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--weights", default=None, help="use this checkpoint instead of training one")
    p.add_argument("--channels", default="4,8,16,32,64", help="V-Net widths")
    p.add_argument("--kernel", type=int, default=5)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--overlap", type=float, default=0.25, help="MONAI's default, for all")
    p.add_argument("--train-steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument(
        "--engines", default="napari-vnet,napari-vnet-fp32,napari-vnet-noskip,monai,naive"
    )
    p.add_argument(
        "--naive-max-voxels", type=int, default=96**3, help="skip the naive loop above this"
    )
    p.add_argument(
        "--shapes", default="96,96,96;128,256,256", help="volumes (z,y,x), ';'-separated"
    )
    p.add_argument("--big", action="store_true", help="also 300 x 512 x 512")
    p.add_argument("--big-rss", action="store_true", help="only our engine on 300 x 512 x 512")
    p.add_argument("--timeout", type=int, default=3600)
    p.add_argument("--repeats", type=int, default=2, help="runs per engine; the fastest counts")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: results/...)")
    args = p.parse_args()
    if args.child:
        return child(args)

    import torch

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    channels = [int(c) for c in args.channels.split(",")]
    if args.big_rss:
        # time is not the point here: a small network (3x3x3, 4-8-16) and large windows
        channels, kernel, patch = (channels if args.weights else [4, 8, 16]), 3, 128
        shapes = [(300, 512, 512)]
        engines = ["napari-vnet"]
    else:
        kernel, patch = args.kernel, args.patch
        shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";")]
        shapes += [(300, 512, 512)] if args.big else []
        engines = args.engines.split(",")
    weights = (
        Path(args.weights)
        if args.weights
        else train_weights(channels, kernel, patch, args.train_steps, shapes)
    )
    from roofline import machine_peaks

    from napari_vnet.runtime import cpu_has_native_bf16

    native_bf16 = cpu_has_native_bf16()
    peaks = machine_peaks(native_bf16)
    print(f"weights {weights}; threads {threads}; overlap {args.overlap}; native bf16 "
          f"{native_bf16}; matmul peaks {peaks}", file=sys.stderr)  # fmt: skip
    rows = []
    for shape in shapes:
        vol = volume_path(shape)
        labels = {}
        for engine in engines:
            if engine == "naive" and int(np.prod(shape)) > args.naive_max_voxels:
                continue
            out = CACHE / f"labels_{engine}_{'x'.join(map(str, shape))}.npy"
            print(f"  {engine} on {shape} ...", file=sys.stderr)
            res = run_child(
                engine, vol, weights, args.overlap, threads, out, args.timeout, args.repeats
            )
            res["shape"] = list(shape)
            res["voxels_per_s"] = res["voxels"] / res["seconds"]
            res.update(roofline_row(res, peaks))
            labels[engine] = np.load(out)
            res["foreground_fraction"] = float(
                np.count_nonzero(labels[engine]) / labels[engine].size
            )
            rows.append(res)
        ref = labels.get("monai")
        for res in rows:
            if res["shape"] == list(shape) and ref is not None:
                agree = agreement(labels[res["engine"]], ref)
                res["dice_vs_monai"] = agree["dice_foreground"]
                res["agreement_vs_monai"] = agree
                monai_row = next(
                    r for r in rows if r["shape"] == list(shape) and r["engine"] == "monai"
                )
                res["speed_vs_monai"] = res["voxels_per_s"] / monai_row["voxels_per_s"]

    print_table(rows)
    print_breakdown(rows)
    import monai  # noqa: F401 - version in the record

    record = {
        "benchmark": "inference",
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "monai": sys.modules["monai"].__version__,
            "threads": threads,
            "native_bf16": native_bf16,
            "matmul_peak_gflops": peaks,
            "load_average_at_end": os.getloadavg(),
            "note": os.environ.get("BENCH_NOTE", "shared machine: other engineers' jobs ran at the same time"),
        },
        "model": {
            "arch": "vnet",
            "channels": channels,
            "kernel_size": kernel,
            "patch": patch,
            "overlap": args.overlap,
            "weights": str(weights),
        },
        "results": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "inference_big_rss.json" if args.big_rss else "inference.json"
    out = args.out or RESULTS / name
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
