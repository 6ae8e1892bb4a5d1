"""napari-vnet's training recipe against nnU-Net v2's own trainer: same data, same network
widths, same patch, same wall-clock budget on this CPU.

Three splits:

* ``ct``: the shared real CT (``../shared/data/ct-dicom-patient-a``, 20 slices; labels
  stored flipped, resampled onto the image grid): z slices 0-13 (image and labels) train;
  both tools then segment the whole 20-slice image and are scored on slices 14-19, whose
  image and labels no training saw. Liver (5), spleen (1), stomach (6).
* ``phantom``: synthetic torso phantoms (:mod:`napari_vnet.phantoms`): seeds 0-3 train,
  seeds 100-102 test. Liver, spleen, kidneys, spine.
* ``finetune``: each tool's phantom model of the ``phantom`` split is fine-tuned on 5
  annotated slices (2, 6, 10, 14, 18) of the real CT and tested on its 15 other slices
  (nnU-Net: the unannotated slices carry its ignore label; its plans are the phantom
  model's, as ``nnUNetv2_move_plans_between_datasets`` does; ``load_pretrained_weights``).

nnU-Net v2 runs as its CLI prepares it (``nnUNetv2_extract_fingerprint``,
``nnUNetv2_plan_experiment``, ``nnUNetv2_preprocess`` in temporary nnUNet_raw /
preprocessed / results folders). Its plans keep nnU-Net's own patch, batch size and
topology, with the features per stage shrunk to napari-vnet's widths (``--width`` W: W,
2W, 4W, 8W, 8W, ...); ``--nnunet-patch ours`` gives it napari-vnet's planned patch and
4-stage topology instead. Its own ``nnUNetTrainer`` (fold ``all``, CPU, data augmentation
in the main process, its SGD + poly schedule) is driven epoch by epoch (10 training + 2
validation iterations) until the budget is spent, with the poly learning rate on elapsed
time like napari-vnet's.

``--parallel`` trains nnU-Net and every napari-vnet network of a split at the same time,
each with ``--threads`` torch threads (1 by default), so that whatever else loads the
machine slows all of them alike; ``--variant LABEL ARCH OPTIONS`` adds a napari-vnet
training with other ``train`` options (e.g. a larger ``--patch-memory``).
Prediction: nnU-Net's ``nnUNetPredictor`` (Gaussian, step 0.5) and napari-vnet's
``predict`` (overlap 0.5, with the card's post-processing), both without mirroring
test-time augmentation (8x the CPU time; nnU-Net's default turns it on).

napari-vnet runs ``napari-vnet train`` (3D U-Net width W, V-Net width W) with
``--minutes`` and ``--val-fraction 0.2`` (best checkpoint and the post-processing choice
on a held-out fifth of the training labels, which therefore train on 20% fewer labels).

    python benchmarks/training_vs_nnunet.py [--minutes 3] [--width 8] [--parallel]
        [--splits ct phantom finetune] [--nnunet-patch own|ours] [--variant L A OPTS]

Prints a table; writes ``benchmarks/results/training_vs_nnunet.json`` (after every run).
The machine is shared: the iterations done in the budget depend on the load (recorded).
"""

# ruff: noqa: T201  (a command-line benchmark: it reports on stdout)
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_VNET_SHARED_DATA", ROOT.parent / "shared" / "data"))
CT = DATA / "ct-dicom-patient-a"
RESULTS = ROOT / "benchmarks" / "results"
CT_CLASSES = {5: "liver", 1: "spleen", 6: "stomach"}
PHANTOM_CLASSES = {1: "liver", 2: "spleen", 3: "kidneys", 4: "spine"}
FINETUNE_SLICES = [2, 6, 10, 14, 18]
CT_TRAIN_SLAB = (0, 14)
CT_VAL_SLAB = (14, 20)

NNUNET_DRIVER = r"""
import json, sys, time, torch
from batchgenerators.utilities.file_and_folder_operations import load_json, join
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
name, budget, pretrained, out_json = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
images, seg_out = json.loads(sys.argv[5]), sys.argv[6]
torch.set_num_threads(int(sys.argv[7]))
max_its = float(sys.argv[8]) if len(sys.argv) > 8 else float("inf")
folder = join(nnUNet_preprocessed, name)
plans = load_json(join(folder, "nnUNetPlans.json"))
plans["continue_training"] = False  # what nnUNetv2_train adds
trainer = nnUNetTrainer(plans, "3d_fullres", "all", load_json(join(folder, "dataset.json")),
                        device=torch.device("cpu"))
trainer.num_iterations_per_epoch = 10
trainer.num_val_iterations_per_epoch = 2
trainer.initialize()
if pretrained != "-":
    load_pretrained_weights(trainer.network, pretrained, verbose=False)
trainer.on_train_start()
t0 = time.time(); its = 0; lr0 = trainer.initial_lr
while time.time() - t0 < budget and its < max_its:
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    outs = []
    for _ in range(trainer.num_iterations_per_epoch):
        frac = min(max((time.time() - t0) / budget, its / max_its), 1.0)
        for g in trainer.optimizer.param_groups:
            g["lr"] = lr0 * (1 - frac) ** 0.9
        outs.append(trainer.train_step(next(trainer.dataloader_train))); its += 1
        if time.time() - t0 >= budget or its >= max_its:
            break
    trainer.on_train_epoch_end(outs)
    with torch.no_grad():
        trainer.on_validation_epoch_start()
        vals = [trainer.validation_step(next(trainer.dataloader_val))
                for _ in range(trainer.num_val_iterations_per_epoch)]
        trainer.on_validation_epoch_end(vals)
    trainer.on_epoch_end()
seconds = time.time() - t0
trainer.on_train_end()
model_dir = join(nnUNet_results, name, "nnUNetTrainer__nnUNetPlans__3d_fullres")
pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                       device=torch.device("cpu"), verbose=False, allow_tqdm=False)
pred.initialize_from_trained_model_folder(model_dir, use_folds=("all",),
                                          checkpoint_name="checkpoint_final.pth")
outs = [join(seg_out, f"pred_{i}") for i in range(len(images))]
pred.predict_from_files_sequential([[im] for im in images], outs, False, True, None)
json.dump({"iterations": its, "seconds": seconds,
           "checkpoint": join(model_dir, "fold_all", "checkpoint_final.pth"),
           "predictions": [o + ".nii.gz" for o in outs]}, open(out_json, "w"))
"""


# ------------------------------------------------------------------ data


def _write(arr, ref_vol, path: Path, *, dtype=None) -> None:
    from napari_vnet.io import Volume, write_volume

    a = np.asarray(arr) if dtype is None else np.asarray(arr).astype(dtype)
    vol = Volume(a, spacing=ref_vol.spacing, origin=ref_vol.origin, direction=ref_vol.direction)
    write_volume(vol, path)


def _slab(path_img: Path, path_lab: Path, z0: int, z1: int, out_img: Path, out_lab: Path):
    """z slab [z0, z1) of an image/label pair (SimpleITK slicing keeps the geometry)."""
    import SimpleITK as sitk

    for src, dst in ((path_img, out_img), (path_lab, out_lab)):
        img = sitk.ReadImage(str(src))
        sitk.WriteImage(img[:, :, z0:z1], str(dst))


def stage_ct(work: Path) -> dict:
    """The CT and its labels on the image grid as NIfTI; slabs; 5-slice annotations."""
    from napari_vnet.io import read_volume
    from napari_vnet.training.data import labels_on_image_grid

    vol = read_volume(CT / "dicom") if (CT / "dicom").exists() else read_volume(CT)
    lab = labels_on_image_grid(vol, read_volume(CT / "labels.nii.gz"))
    keep = np.zeros(lab.shape, np.uint8)
    for v in CT_CLASSES:
        keep[lab == v] = v
    d = work / "ct"
    d.mkdir(parents=True, exist_ok=True)
    _write(vol.array, vol, d / "ct.nii.gz", dtype=np.int16)
    _write(keep, vol, d / "ct_labels.nii.gz")
    _slab(d / "ct.nii.gz", d / "ct_labels.nii.gz", *CT_TRAIN_SLAB, d / "train.nii.gz",
          d / "train_labels.nii.gz")  # fmt: skip
    _slab(d / "ct.nii.gz", d / "ct_labels.nii.gz", *CT_VAL_SLAB, d / "val.nii.gz",
          d / "val_labels.nii.gz")  # fmt: skip
    return {"full": (d / "ct.nii.gz", d / "ct_labels.nii.gz"),
            "train": [(d / "train.nii.gz", d / "train_labels.nii.gz")],
            "test": [(d / "val.nii.gz", d / "val_labels.nii.gz")]}  # fmt: skip


def stage_phantoms(work: Path) -> dict:
    from napari_vnet.io import write_volume
    from napari_vnet.phantoms import make_phantom

    d = work / "phantoms"
    d.mkdir(parents=True, exist_ok=True)
    out = {"train": [], "test": []}
    for key, seeds in (("train", range(4)), ("test", range(100, 103))):
        for s in seeds:
            img, lab, _ = make_phantom(s)
            write_volume(img, d / f"p{s}.nii.gz")
            write_volume(lab, d / f"p{s}_labels.nii.gz")
            out[key].append((d / f"p{s}.nii.gz", d / f"p{s}_labels.nii.gz"))
    return out


# ------------------------------------------------------------------ scoring


def score(pred: np.ndarray, gt: np.ndarray, spacing, classes: dict, valid_z=None) -> dict:
    from napari_vnet.metrics import dice_per_class, hd95_per_class

    if valid_z is not None:
        pred, gt = pred[valid_z], gt[valid_z]
    values = list(classes)
    dice = dice_per_class(pred, gt, values)
    try:
        hd = hd95_per_class(pred, gt, spacing, values)
    except Exception:  # noqa: BLE001 - an empty class has no surface
        hd = {}
    out = {}
    for v, name in classes.items():
        h = hd.get(v)
        out[name] = {
            "dice": round(float(dice[v]), 4) if v in dice else None,
            "hd95": None if h is None or not np.isfinite(h) else round(float(h), 1),
        }
    return out


def pooled(scores: list[dict]) -> dict:
    """Mean over test cases per class."""
    out = {}
    for name in scores[0]:
        ds = [s[name]["dice"] for s in scores if s[name]["dice"] is not None]
        hs = [s[name]["hd95"] for s in scores if s[name]["hd95"] is not None]
        out[name] = {
            "dice": round(float(np.mean(ds)), 4) if ds else None,
            "hd95": round(float(np.mean(hs)), 1) if hs else None,
        }
    return out


# ------------------------------------------------------------------ napari-vnet


def start_ours(arch, width, train, minutes, out: Path, classes, *, threads, base=None,
               annotated=None, val_fraction=0.2, extra=()):  # fmt: skip
    """``napari-vnet train`` started in its own process (``threads`` torch threads);
    :func:`finish_ours` waits for it."""
    cmd = [sys.executable, "-m", "napari_vnet.cli", "train", "--out", str(out), "--overwrite",
           "--minutes", str(minutes), "--val-fraction", str(val_fraction), "--json",
           "--classes", ",".join(f"{v}={n}" for v, n in classes.items()), *extra]  # fmt: skip
    if base:
        cmd += ["--weights", str(base)]
    else:  # width None: the architecture's planned default
        cmd += ["--arch", arch] + ([] if width is None else ["--width", str(width)])
    for i, (img, lab) in enumerate(train):
        cmd += ["--image", str(img), "--labels", str(lab)]
        if annotated is not None:
            cmd += ["--annotated-slices", ",".join(str(z) for z in annotated[i])]
    print("+", " ".join(cmd[2:]), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    return proc, time.time()


def finish_ours(started) -> dict:
    proc, t = started
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        print(stdout[-3000:], stderr[-3000:])
        raise RuntimeError(f"napari-vnet train failed ({proc.returncode})")
    summary = json.loads(stdout.strip().splitlines()[-1])
    summary["wall_s"] = round(time.time() - t, 1)
    return summary


def predict_ours(weights: Path, image: Path) -> np.ndarray:
    from napari_vnet.inference import predict
    from napari_vnet.io import read_volume
    from napari_vnet.weights import load_weights

    model, card = load_weights(weights, map_location="cpu")
    return predict(read_volume(image), model, card).labels


# ------------------------------------------------------------------ nnU-Net


def nnunet_env(work: Path) -> dict:
    env = dict(os.environ)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[key] = str(work / "nnunet" / key)
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    # planning needs nnUNet_n_proc_DA >= 1; training sets 0 (augmentation in-process)
    env.update(nnUNet_n_proc_DA="1", nnUNet_compile="false")
    return env


def _tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    return str(exe) if exe.exists() else name


def nnunet_dataset(env, did: int, tag: str, train, classes: dict, *, annotated=None) -> str:
    """Raw dataset: labels renumbered 1..K in class order (K+1 = ignore for sparse)."""
    from napari_vnet.io import read_volume

    name = f"Dataset{did:03d}_{tag}"
    ds = Path(env["nnUNet_raw"]) / name
    (ds / "imagesTr").mkdir(parents=True, exist_ok=True)
    (ds / "labelsTr").mkdir(parents=True, exist_ok=True)
    labels = {"background": 0, **{n: k + 1 for k, n in enumerate(classes.values())}}
    if annotated is not None:
        labels["ignore"] = len(classes) + 1
    for i, (img, lab) in enumerate(train):
        vol = read_volume(img)
        lv = read_volume(lab)
        arr = np.zeros(lv.shape, np.uint8)
        for k, v in enumerate(classes, start=1):
            arr[lv.array == v] = k
        if annotated is not None:
            keep = np.zeros(arr.shape[0], bool)
            keep[annotated[i]] = True
            arr[~keep] = labels["ignore"]
        _write(vol.array, vol, ds / "imagesTr" / f"case_{i:03d}_0000.nii.gz", dtype=np.int16)
        _write(arr, vol, ds / "labelsTr" / f"case_{i:03d}.nii.gz")
    (ds / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": labels, "numTraining": len(train),
        "file_ending": ".nii.gz", "name": name,
    }, indent=2))  # fmt: skip
    return name


def shrink_plans(plans_file: Path, patch, width: int, depth: int = 4) -> dict:
    """nnU-Net's plans with a network of napari-vnet's U-Net widths.

    ``patch=None`` (the default, ``--nnunet-patch own``): nnU-Net's own planned patch,
    batch size and topology (stages, kernels, strides), only the features per stage
    shrunk to W, 2W, 4W, 8W, 8W, ... (the issue's "planned by its own planner, network
    shrunk to 8-64 features"). Otherwise (``--nnunet-patch ours``): napari-vnet's
    ``depth`` stages of W..(2^(d-1))W features, 2 convolutions per stage, the given
    patch, batch 2; kernel sizes and strides are the planner's first stages (the patch
    is rounded to their product)."""
    plans = json.loads(plans_file.read_text())
    cfg = plans["configurations"]["3d_fullres"]
    arch = cfg["architecture"]["arch_kwargs"]
    if patch is None:
        n = int(arch["n_stages"])
        arch["features_per_stage"] = [width * 2 ** min(i, depth - 1) for i in range(n)]
        plans_file.write_text(json.dumps(plans, indent=2))
        return {"patch_size": cfg["patch_size"], "batch_size": cfg["batch_size"],
                "strides": arch["strides"], "features": arch["features_per_stage"],
                "spacing": cfg["spacing"], "normalization": cfg["normalization_schemes"]}  # fmt: skip
    strides = [list(s) for s in arch["strides"][:depth]]
    kernels = [list(k) for k in arch["kernel_sizes"][:depth]]
    while len(strides) < depth:
        strides.append([2, 2, 2])
        kernels.append([3, 3, 3])
    div = np.prod(np.asarray(strides), axis=0)
    patch = [int(max(d, round(p / d) * d)) for p, d in zip(patch, div, strict=True)]
    cfg["patch_size"] = patch
    cfg["batch_size"] = 2
    arch.update(
        n_stages=depth, features_per_stage=[width * 2**i for i in range(depth)],
        kernel_sizes=kernels, strides=strides, n_conv_per_stage=[2] * depth,
        n_conv_per_stage_decoder=[2] * (depth - 1),
    )  # fmt: skip
    plans_file.write_text(json.dumps(plans, indent=2))
    return {"patch_size": patch, "strides": strides, "kernel_sizes": kernels,
            "spacing": cfg["spacing"], "normalization": cfg["normalization_schemes"]}  # fmt: skip


def prepare_nnunet(env, did, name, *, patch, width, plans_from=None) -> dict:
    """nnU-Net's fingerprint, plans (shrunk, or the base's) and preprocessing: outside
    the training budget, as ``nnUNetv2_plan_and_preprocess`` runs before training."""

    def run(*cmd):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-4000:], flush=True)
            raise RuntimeError(f"{cmd[0]} failed ({proc.returncode})")

    t = time.time()
    pre = Path(env["nnUNet_preprocessed"]) / name
    run(_tool("nnUNetv2_extract_fingerprint"), "-d", str(did), "-np", "1")
    if plans_from is None:
        run(_tool("nnUNetv2_plan_experiment"), "-d", str(did))
        plan_info = shrink_plans(pre / "nnUNetPlans.json", patch, width)
    else:  # the base model's plans, as nnUNetv2_move_plans_between_datasets does
        plans = json.loads(Path(plans_from).read_text())
        plans["dataset_name"] = name
        pre.mkdir(parents=True, exist_ok=True)
        (pre / "nnUNetPlans.json").write_text(json.dumps(plans, indent=2))
        raw_json = Path(env["nnUNet_raw"]) / name / "dataset.json"
        (pre / "dataset.json").write_text(raw_json.read_text())
        cfg = plans["configurations"]["3d_fullres"]
        plan_info = {
            "patch_size": cfg["patch_size"],
            "spacing": cfg["spacing"],
            "plans_from": str(plans_from),
        }
    run(_tool("nnUNetv2_preprocess"), "-d", str(did), "-c", "3d_fullres", "-np", "1")
    return {"preprocess_s": round(time.time() - t, 1), "plans": plan_info,
            "plans_file": str(pre / "nnUNetPlans.json")}  # fmt: skip


def start_nnunet(env, did, name, minutes, test_images, work: Path, *, threads,
                 pretrained=None, max_iterations=None, tag=""):  # fmt: skip
    """nnU-Net's trainer (then its predictor on the test images) in its own process;
    it stops at ``minutes`` or ``max_iterations``, whichever comes first (the poly
    learning rate follows the nearer of the two)."""
    out_json = work / f"nnunet_{did}{tag}.json"
    seg_out = work / f"nnunet_pred_{did}{tag}"
    seg_out.mkdir(exist_ok=True)
    cap = "inf" if max_iterations is None else str(int(max_iterations))
    proc = subprocess.Popen(
        [sys.executable, "-c", NNUNET_DRIVER, name, str(60 * minutes), str(pretrained or "-"),
         str(out_json), json.dumps([str(p) for p in test_images]), str(seg_out), str(threads),
         cap],
        env={**env, "nnUNet_n_proc_DA": "0", "OMP_NUM_THREADS": str(threads)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return proc, out_json


def finish_nnunet(started, prepared: dict) -> dict:
    proc, out_json = started
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        print(stdout[-3000:], stderr[-3000:])
        raise RuntimeError("nnU-Net run failed")
    return {**json.loads(out_json.read_text()), **prepared}


def read_nnunet_pred(path, classes: dict) -> np.ndarray:
    from napari_vnet.io import read_volume

    arr = np.asarray(read_volume(path).array)
    out = np.zeros(arr.shape, np.uint8)
    for k, v in enumerate(classes, start=1):
        out[arr == k] = v
    return out


# ------------------------------------------------------------------ splits


def planned_patch(train, classes, width) -> list[int]:
    from napari_vnet.training import TrainConfig, TrainingPair
    from napari_vnet.training.plan import plan_training

    cfg = TrainConfig(arch="unet3d", arch_kwargs={"channels": [width * 2**i for i in range(4)]},
                      classes=classes)  # fmt: skip
    plan = plan_training([TrainingPair(str(i), str(lab)) for i, lab in train], cfg)
    return list(plan.patch_size)


def evaluate(preds: dict, tests, classes, valid_z=None) -> dict:
    from napari_vnet.io import read_volume

    out = {}
    for tool, maps in preds.items():
        scores = []
        for pred, (_img, lab) in zip(maps, tests, strict=True):
            gt = read_volume(lab)
            scores.append(score(pred, np.asarray(gt.array), gt.spacing, classes, valid_z))
        out[tool] = pooled(scores)
    return out


def our_variants(args) -> list[tuple[str, str, list[str]]]:
    """(label, architecture, extra ``train`` options) of each napari-vnet training."""
    out = [(a, a, []) for a in args.archs]
    for label, arch, extra in args.variant or []:
        out.append((label, arch, extra.split()))
    return out


def split_run(key, train, tests, classes, args, work, env, did, *, annotated=None,
              bases=None, valid_z=None) -> dict:  # fmt: skip
    patch = planned_patch(train, classes, args.width)
    record = {"patch": patch, "nnunet_patch": args.nnunet_patch, "runs": {},
              "minutes": args.minutes, "parallel": args.parallel, "threads": args.threads,
              "load_before": os.getloadavg()}  # fmt: skip
    preds = {}
    name = nnunet_dataset(env, did, key, train, classes, annotated=annotated)
    prepared = prepare_nnunet(env, did, name, width=args.width,
                              patch=patch if args.nnunet_patch == "ours" else None,
                              plans_from=(bases or {}).get("nnunet_plans"))  # fmt: skip
    tests_in = [t[0] for t in tests]

    def nnunet():
        return start_nnunet(env, did, name, args.minutes, tests_in, work, threads=args.threads,
                            pretrained=(bases or {}).get("nnunet"))  # fmt: skip

    def ours(variant):
        label, arch, extra = variant
        return start_ours(arch, args.width, train, args.minutes, work / f"{key}_{label}.pt",
                          classes, threads=args.threads, base=(bases or {}).get(label),
                          annotated=annotated, extra=extra)  # fmt: skip

    variants = our_variants(args)
    if args.parallel:  # all trainings at once: the machine's load is shared alike
        started = [nnunet()] + [ours(v) for v in variants]
        nn = finish_nnunet(started[0], prepared)
        summaries = [finish_ours(s) for s in started[1:]]
    else:
        nn = finish_nnunet(nnunet(), prepared)
        summaries = [finish_ours(ours(v)) for v in variants]
    record["load_after"] = os.getloadavg()
    preds["nnU-Net"] = [read_nnunet_pred(p, classes) for p in nn["predictions"]]
    record["runs"]["nnU-Net"] = {
        k: nn[k] for k in ("iterations", "seconds", "preprocess_s", "plans")
    }
    record["nnunet_checkpoint"], record["nnunet_plans"] = nn["checkpoint"], nn["plans_file"]
    print(f"  nnU-Net: {nn['iterations']} iterations in {nn['seconds']:.0f}s", flush=True)
    for (label, _arch, extra), s in zip(variants, summaries, strict=True):
        out = work / f"{key}_{label}.pt"
        preds[f"napari-vnet {label}"] = [predict_ours(out, t[0]) for t in tests]
        from napari_vnet.models import read_card

        card = read_card(out)
        record["runs"][f"napari-vnet {label}"] = {
            "iterations": s.get("iterations"), "seconds": s.get("seconds"), "options": extra,
            "patch_size": s.get("patch_size"), "spacing": s.get("spacing"),
            "normalization": card.normalization, "postprocess": card.postprocess,
            "weights": str(out),
        }  # fmt: skip
        print(f"  napari-vnet {label}: {s.get('iterations')} iterations", flush=True)
    record["scores"] = evaluate(preds, tests, classes, valid_z)
    return record


def table(results: dict) -> str:
    lines = ["| split | tool | iterations | " + "class Dice / HD95 mm | " + "ratio to nnU-Net |",
             "|---|---|---|---|---|"]  # fmt: skip
    for key, rec in results["splits"].items():
        ref = rec["scores"].get("nnU-Net", {})
        for tool, sc in rec["scores"].items():
            its = rec["runs"][tool]["iterations"]
            cells, ratios = [], []
            for cls, v in sc.items():
                d, h = v["dice"], v["hd95"]
                shown = "-" if d is None else (f"{d:.3f}" if d >= 0.01 or d == 0 else f"{d:.4f}")
                cells.append(f"{cls} {shown} / {'-' if h is None else h}")
                r = ref.get(cls, {}).get("dice")
                if d is None or r is None:
                    continue
                # nnU-Net at 0: "inf" when this tool found the class, "0/0" when neither did
                ratios.append(f"{d / r:.2f}" if r else ("inf" if d else "0/0"))
            lines.append(f"| {key} | {tool} | {its} | {'; '.join(cells)} | {' '.join(ratios)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=3.0, help="training budget per run")
    p.add_argument("--width", type=int, default=8)
    p.add_argument(
        "--parallel", action="store_true",
        help="train nnU-Net and each napari-vnet network at the same time (each --threads "
        "torch threads), so that a shared machine's load falls on all of them alike",
    )  # fmt: skip
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per training (default: CPUs, or 1 with --parallel)",
    )
    p.add_argument("--archs", nargs="+", default=["unet3d", "vnet"])
    p.add_argument(
        "--variant", nargs=3, action="append", metavar=("LABEL", "ARCH", "OPTIONS"),
        help="one more napari-vnet training: a label, its architecture and extra train "
        "options in one string (e.g. unet3d-1g unet3d '--patch-memory 1024'); repeatable",
    )  # fmt: skip
    p.add_argument(
        "--nnunet-patch", choices=["own", "ours"], default="own",
        help="own: nnU-Net's planned patch and topology, features shrunk to --width (the "
        "default); ours: napari-vnet's planned patch and 4-stage topology",
    )  # fmt: skip
    p.add_argument("--splits", nargs="+", default=["ct", "phantom", "finetune"])
    p.add_argument("--work", default=None)
    p.add_argument("--out", default=str(RESULTS / "training_vs_nnunet.json"))
    p.add_argument(
        "--keep", action="store_true",
        help="keep the splits already in --out (e.g. rerun finetune on the phantom split's "
        "models, which must still be in --work)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.threads is None:
        args.threads = 1 if args.parallel else (os.cpu_count() or 1)
    work = Path(args.work or tempfile.mkdtemp(prefix="vnet_vs_nnunet_"))
    env = nnunet_env(work)
    results = {
        "minutes_per_run": args.minutes, "width": args.width, "archs": args.archs,
        "load_before": os.getloadavg(), "cpus": os.cpu_count(), "splits": {},
    }  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.keep and out.exists():
        kept = json.loads(out.read_text())
        results["splits"] = kept.get("splits", {})
        results["load_before_kept"] = kept.get("load_before")

    def save():
        results["load_after"] = os.getloadavg()
        out.write_text(json.dumps(results, indent=2, default=str))

    have_ct = CT.exists()
    ct = stage_ct(work) if have_ct and ({"ct", "finetune"} & set(args.splits)) else None
    if "ct" in args.splits and ct:
        print("split ct", flush=True)
        # both tools segment the whole 20-slice image (the test slab inside its scan, as a
        # clinical scan holds it); Dice and HD95 on the test slab only. (Segmenting the
        # 6-slice slab alone pads it to the 14-slice patch with 8 slices of air, an input
        # unlike any training window: napari-vnet's U-Net gave liver 0.74 in one run and
        # 0.002 in the next, same settings.)
        results["splits"]["ct"] = split_run(
            "ct", ct["train"], [ct["full"]], CT_CLASSES, args, work, env, 601,
            valid_z=np.arange(*CT_VAL_SLAB),
        )  # fmt: skip
        save()
    phantom_rec = results["splits"].get("phantom") if "phantom" not in args.splits else None
    if "phantom" in args.splits or ("finetune" in args.splits and phantom_rec is None):
        print("split phantom", flush=True)
        ph = stage_phantoms(work)
        phantom_rec = split_run("phantom", ph["train"], ph["test"], PHANTOM_CLASSES, args, work,
                                env, 602)  # fmt: skip
        results["splits"]["phantom"] = phantom_rec
        save()
    if "finetune" in args.splits and ct and phantom_rec:
        print("split finetune", flush=True)
        bases = {
            label: phantom_rec["runs"][f"napari-vnet {label}"]["weights"]
            for label, _a, _e in our_variants(args)
        }
        bases["nnunet"] = phantom_rec["nnunet_checkpoint"]
        bases["nnunet_plans"] = phantom_rec["nnunet_plans"]
        n_z = CT_VAL_SLAB[1]
        others = np.setdiff1d(np.arange(n_z), FINETUNE_SLICES)
        results["splits"]["finetune"] = split_run(
            "finetune", [ct["full"]], [ct["full"]], CT_CLASSES, args, work, env, 603,
            annotated=[FINETUNE_SLICES], bases=bases, valid_z=others,
        )  # fmt: skip
        save()
    print(table(results))
    results["table"] = table(results)
    save()
    print(f"wrote {out} (work folder {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
