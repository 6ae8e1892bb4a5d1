"""Build the tiny nnU-Net v2 model folder used by the foreign-weights tests.

Everything is made with nnU-Net's own tools: the raw dataset (synthetic torso phantoms
from :mod:`napari_vnet.phantoms`, 2 foreground classes: liver and spine) is fingerprinted
and planned by ``nnUNetv2_plan_and_preprocess``; the plans are then shrunk (3 stages of
4/8/16 features, a 16x32x32 patch) so that nnU-Net's trainer (``nnUNetTrainer_5epochs``, CPU,
run as ``nnUNetv2_train`` does: ``run_training`` then ``perform_actual_validation``) trains
two folds in a few minutes; finally dataset.json, plans.json and each fold's
checkpoint_final.pth are copied (without logs and validation outputs) into
``tests/data/nnunet/``.

The 5-epoch trainer differs from ``nnUNetTrainer`` only in its number of epochs (same
network, same checkpoint layout), so the folder is published as
``nnUNetTrainer__nnUNetPlans__3d_fullres`` with ``trainer_name = "nnUNetTrainer"``: nnU-Net
2.8 looks a trainer up by walking all its trainer modules, some of which import optional
packages (timm); ``nnUNetTrainer`` is found first, without them.

Usage::

    python scripts/make_nnunet_test_model.py [--out tests/data/nnunet] [--folds 0 1]

Needs the ``[nnunet]`` extra (``pip install nnunetv2``). Takes ~5-10 minutes on 2 cores.
"""

# ruff: noqa: T201  (a command-line script: it reports on stdout)
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

DATASET_ID = 901
DATASET_NAME = f"Dataset{DATASET_ID:03d}_TinyPhantom"
TRAINER = "nnUNetTrainer_5epochs"
PUBLISHED_TRAINER = "nnUNetTrainer"
CONFIG = "3d_fullres"
#: phantom label value -> label value in the nnU-Net dataset (others become background)
KEEP = {1: 1, 4: 2}  # liver, spine
LABELS = {"background": 0, "liver": 1, "spine": 2}
N_CASES = 8
SHAPE = (24, 48, 48)


def _tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    return str(exe) if exe.exists() else name


def write_raw(raw: Path) -> None:
    from napari_vnet.io import Volume, write_volume
    from napari_vnet.phantoms import make_phantom

    ds = raw / DATASET_NAME
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir(parents=True)
    for i in range(N_CASES):
        image, labels, _ = make_phantom(100 + i, shape=SHAPE)
        lab = np.zeros(labels.array.shape, np.uint8)
        for src, dst in KEEP.items():
            lab[labels.array == src] = dst
        write_volume(image, ds / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        write_volume(Volume(lab, **_geometry(labels)), ds / "labelsTr" / f"case_{i:03d}.nii.gz")
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": LABELS,
        "numTraining": N_CASES,
        "file_ending": ".nii.gz",
        "name": DATASET_NAME,
        "description": "synthetic torso phantoms (napari-vnet), liver and spine",
    }
    (ds / "dataset.json").write_text(json.dumps(dataset, indent=2))


def _geometry(vol) -> dict:
    return {"spacing": vol.spacing, "origin": vol.origin, "direction": vol.direction}


def shrink_plans(plans_file: Path) -> None:
    plans = json.loads(plans_file.read_text())
    cfg = plans["configurations"][CONFIG]
    cfg["patch_size"] = [16, 32, 32]
    cfg["batch_size"] = 2
    arch = cfg["architecture"]["arch_kwargs"]
    arch.update(
        n_stages=3,
        features_per_stage=[4, 8, 16],
        kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]],
        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        n_conv_per_stage=[1, 1, 1],
        n_conv_per_stage_decoder=[1, 1],
    )
    plans_file.write_text(json.dumps(plans, indent=2))


#: one fold, as ``nnUNetv2_train`` runs it (imported trainer class: no trainer search)
TRAIN_FOLD = f"""
import sys, torch
from batchgenerators.utilities.file_and_folder_operations import load_json, join
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs import (
    {TRAINER} as Trainer,
)
folder = join(nnUNet_preprocessed, "{DATASET_NAME}")
plans = load_json(join(folder, "nnUNetPlans.json"))
plans["continue_training"] = False  # what nnUNetv2_train's get_trainer_from_args adds
trainer = Trainer(plans, "{CONFIG}", int(sys.argv[1]),
                  load_json(join(folder, "dataset.json")), device=torch.device("cpu"))
trainer.run_training()
trainer.perform_actual_validation(False)
"""


def publish_checkpoint(src: Path, dst: Path) -> None:
    """Copy a fold checkpoint under the published trainer name (same network)."""
    import torch

    from napari_vnet.foreign.safe_load import safe_torch_load

    ckpt = safe_torch_load(src)
    ckpt["trainer_name"] = PUBLISHED_TRAINER
    ckpt.pop("optimizer_state", None)  # not needed to predict or fine-tune; halves the size
    torch.save(ckpt, dst)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests/data/nnunet"))
    p.add_argument("--folds", nargs="+", default=["0", "1"])
    p.add_argument("--work", default=None, help="keep nnU-Net's folders here (default: temp)")
    args = p.parse_args(argv)

    work = Path(args.work or tempfile.mkdtemp(prefix="nnunet_tiny_"))
    env = dict(os.environ)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[key] = str(work / key)
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    env.update(nnUNet_n_proc_DA="1", nnUNet_compile="false", OMP_NUM_THREADS="2")

    def run(*cmd: str) -> None:
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, env=env, check=True)

    trained = Path(env["nnUNet_results"]) / DATASET_NAME / f"{TRAINER}__nnUNetPlans__{CONFIG}"
    plans_file = Path(env["nnUNet_preprocessed"]) / DATASET_NAME / "nnUNetPlans.json"
    if not plans_file.exists():  # a reused --work folder keeps what was done
        write_raw(Path(env["nnUNet_raw"]))
        run(_tool("nnUNetv2_extract_fingerprint"), "-d", str(DATASET_ID), "-np", "1")
        run(_tool("nnUNetv2_plan_experiment"), "-d", str(DATASET_ID))
        shrink_plans(plans_file)
        run(_tool("nnUNetv2_preprocess"), "-d", str(DATASET_ID), "-c", CONFIG, "-np", "1")
    for fold in args.folds:
        if not (trained / f"fold_{fold}" / "checkpoint_final.pth").exists():
            run(sys.executable, "-c", TRAIN_FOLD, str(fold))

    out = Path(args.out) / DATASET_NAME / f"{PUBLISHED_TRAINER}__nnUNetPlans__{CONFIG}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in ("dataset.json", "plans.json", "dataset_fingerprint.json"):
        shutil.copy2(trained / name, out / name)
    for fold in args.folds:
        (out / f"fold_{fold}").mkdir()
        publish_checkpoint(
            trained / f"fold_{fold}" / "checkpoint_final.pth",
            out / f"fold_{fold}" / "checkpoint_final.pth",
        )
        summary = trained / f"fold_{fold}" / "validation" / "summary.json"
        if summary.exists():
            result = json.loads(summary.read_text())["foreground_mean"]
            print(f"fold {fold}: validation foreground mean Dice {result['Dice']:.3f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
