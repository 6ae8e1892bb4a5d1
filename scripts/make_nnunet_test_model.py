"""Build the tiny nnU-Net v2 model folders used by the foreign-weights tests.

Everything is made with nnU-Net's own tools: a synthetic raw dataset is fingerprinted and
planned by ``nnUNetv2_plan_and_preprocess``; the plans are then shrunk (3 stages, a small
patch) so that nnU-Net's trainer (CPU, run as ``nnUNetv2_train`` does: ``run_training``
then ``perform_actual_validation``) trains in a few minutes; finally dataset.json,
plans.json and each fold's checkpoint_final.pth are copied (without logs, validation
outputs and optimizer state) into ``tests/data/nnunet/``.

Two folders (``--dataset``):

* ``tinyphantom`` -> ``Dataset901_TinyPhantom``: synthetic torso phantoms from
  :func:`napari_vnet.phantoms.make_phantom`, 2 foreground classes (liver, spine), 3
  stages of 4/8/16 features, a 16x32x32 patch, two folds of ``nnUNetTrainer_5epochs``.
  That trainer differs from ``nnUNetTrainer`` only in its number of epochs (same
  network, same checkpoint layout), so the folder is published as
  ``nnUNetTrainer__nnUNetPlans__3d_fullres`` with ``trainer_name = "nnUNetTrainer"``.
* ``totalseg`` -> ``Dataset902_TinyTotalSeg``: shaped like TotalSegmentator's v2 CT
  models (its ``Dataset291_TotalSegmentator_part1_organs``): a 3d_fullres CT model
  (``channel_names {"0": "CT"}``, nnU-Net's CT normalisation) with TotalSegmentator's 24
  organ classes, named and numbered as its ``total`` task numbers them (spleen = 1 ...
  kidney_cyst_right = 24), one fold, published as TotalSegmentator ships a model:
  ``nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres/fold_0`` with ``trainer_name =
  "nnUNetTrainerNoMirroring"`` and ``inference_allowed_mirroring_axes = None`` (no
  test-time mirroring). It is trained by ``nnUNetTrainerNoDA`` for 8 epochs: no data
  augmentation at all, hence no mirroring either (the same network and checkpoint as
  ``nnUNetTrainerNoMirroring``'s, the same ``None`` axes); nnU-Net's intensity
  augmentations would blur the one thing that tells these classes apart in a few
  minutes of training. The raw cases are :func:`napari_vnet.phantoms.make_blob_phantom`
  volumes (one blob per class, each class its own attenuation) of 16x32x32 voxels at
  3 mm (TotalSegmentator's ``--fast`` spacing), the patch the whole volume; 3 stages of
  8/16/32 features.

nnU-Net finds a trainer by name by walking all its trainer modules, some of which import
optional packages (timm); ``nnUNetTrainer`` is found first, without them, but
``nnUNetTrainerNoMirroring`` only after them: ``nnUNetPredictor`` needs ``timm`` to open
the second folder by its trainer name (napari-vnet does not look trainers up).

Usage::

    python scripts/make_nnunet_test_model.py [--dataset totalseg] [--out tests/data/nnunet]

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CONFIG = "3d_fullres"

#: TotalSegmentator v2: the classes of its first CT part model (organs), with the names
#: and label values of its ``total`` task
TOTALSEG_ORGANS = (
    "spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "pancreas",
    "adrenal_gland_right", "adrenal_gland_left", "lung_upper_lobe_left", "lung_lower_lobe_left",
    "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right", "esophagus",
    "trachea", "thyroid_gland", "small_bowel", "duodenum", "colon", "urinary_bladder",
    "prostate", "kidney_cyst_left", "kidney_cyst_right",
)  # fmt: skip


@dataclass(frozen=True)
class Recipe:
    dataset_id: int
    name: str
    description: str
    labels: dict[str, int]
    cases: Callable[[int], tuple]  # case index -> (image Volume, label array)
    n_cases: int
    #: Python that binds ``Trainer`` (a trainer class named ``trainer``)
    trainer_code: str
    trainer: str
    published_trainer: str
    folds: tuple[str, ...]
    features: tuple[int, ...]
    patch: tuple[int, int, int] = (16, 32, 32)

    @property
    def dataset(self) -> str:
        return f"Dataset{self.dataset_id:03d}_{self.name}"


def _torso_case(i: int) -> tuple:
    from napari_vnet.phantoms import make_phantom

    image, labels, _ = make_phantom(100 + i, shape=(24, 48, 48))
    lab = np.zeros(labels.array.shape, np.uint8)
    for src, dst in {1: 1, 4: 2}.items():  # liver, spine; others become background
        lab[labels.array == src] = dst
    return image, lab


def _blob_case(i: int) -> tuple:
    from napari_vnet.phantoms import make_blob_phantom

    image, labels, _ = make_blob_phantom(200 + i, TOTALSEG_ORGANS)
    return image, labels.array


_XEPOCHS = "nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs"
_NODA = "nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoDA"
#: nnUNetTrainerNoDA for a few epochs (nnU-Net's trainers record their constructor's own
#: parameters: the signature is spelled out)
_NODA_EPOCHS = f"""
import torch
from {_NODA} import nnUNetTrainerNoDA

class nnUNetTrainerNoDA_8epochs(nnUNetTrainerNoDA):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cpu")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 8

Trainer = nnUNetTrainerNoDA_8epochs
"""

RECIPES = {
    "tinyphantom": Recipe(
        dataset_id=901,
        name="TinyPhantom",
        description="synthetic torso phantoms (napari-vnet), liver and spine",
        labels={"background": 0, "liver": 1, "spine": 2},
        cases=_torso_case,
        n_cases=8,
        trainer_code=f"from {_XEPOCHS} import nnUNetTrainer_5epochs as Trainer",
        trainer="nnUNetTrainer_5epochs",
        published_trainer="nnUNetTrainer",
        folds=("0", "1"),
        features=(4, 8, 16),
    ),
    "totalseg": Recipe(
        dataset_id=902,
        name="TinyTotalSeg",
        description="TotalSegmentator-shaped test model (napari-vnet): its 24 organ "
        "classes on synthetic blob phantoms",
        labels={"background": 0, **{n: i for i, n in enumerate(TOTALSEG_ORGANS, 1)}},
        cases=_blob_case,
        n_cases=10,
        trainer_code=_NODA_EPOCHS,
        trainer="nnUNetTrainerNoDA_8epochs",
        published_trainer="nnUNetTrainerNoMirroring",
        folds=("0",),
        features=(8, 16, 32),
    ),
}


def _tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    return str(exe) if exe.exists() else name


def write_raw(raw: Path, recipe: Recipe) -> None:
    from napari_vnet.io import Volume, write_volume

    ds = raw / recipe.dataset
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir(parents=True)
    for i in range(recipe.n_cases):
        image, lab = recipe.cases(i)
        write_volume(image, ds / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        write_volume(Volume(lab, **_geometry(image)), ds / "labelsTr" / f"case_{i:03d}.nii.gz")
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": recipe.labels,
        "numTraining": recipe.n_cases,
        "file_ending": ".nii.gz",
        "name": recipe.dataset,
        "description": recipe.description,
    }
    (ds / "dataset.json").write_text(json.dumps(dataset, indent=2))


def _geometry(vol) -> dict:
    return {"spacing": vol.spacing, "origin": vol.origin, "direction": vol.direction}


def shrink_plans(plans_file: Path, recipe: Recipe) -> None:
    plans = json.loads(plans_file.read_text())
    cfg = plans["configurations"][CONFIG]
    cfg["patch_size"] = list(recipe.patch)
    cfg["batch_size"] = 2
    arch = cfg["architecture"]["arch_kwargs"]
    arch.update(
        n_stages=3,
        features_per_stage=list(recipe.features),
        kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]],
        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        n_conv_per_stage=[1, 1, 1],
        n_conv_per_stage_decoder=[1, 1],
    )
    plans_file.write_text(json.dumps(plans, indent=2))


#: one fold, as ``nnUNetv2_train`` runs it (imported trainer class: no trainer search)
TRAIN_FOLD = """
import sys, torch
from batchgenerators.utilities.file_and_folder_operations import load_json, join
from nnunetv2.paths import nnUNet_preprocessed
{trainer_code}
folder = join(nnUNet_preprocessed, "{dataset}")
plans = load_json(join(folder, "nnUNetPlans.json"))
plans["continue_training"] = False  # what nnUNetv2_train's get_trainer_from_args adds
trainer = Trainer(plans, "{config}", int(sys.argv[1]),
                  load_json(join(folder, "dataset.json")), device=torch.device("cpu"))
trainer.run_training()
trainer.perform_actual_validation(False)
"""


def publish_checkpoint(src: Path, dst: Path, trainer_name: str) -> None:
    """Copy a fold checkpoint under the published trainer name (same network)."""
    import torch

    from napari_vnet.foreign.safe_load import safe_torch_load

    ckpt = safe_torch_load(src)
    ckpt["trainer_name"] = trainer_name
    ckpt.pop("optimizer_state", None)  # not needed to predict or fine-tune; halves the size
    torch.save(ckpt, dst)


def _environment(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[key] = str(work / key)
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    env.update(nnUNet_n_proc_DA="1", nnUNet_compile="false", OMP_NUM_THREADS="2")
    return env


def train(recipe: Recipe, work: Path, folds: list[str]) -> Path:
    """Plan, preprocess and train ``folds`` in ``work``; the trained-model folder."""
    env = _environment(work)

    def run(*cmd: str) -> None:
        print("+", " ".join(cmd[:3]), flush=True)
        subprocess.run(cmd, env=env, check=True)

    ds_id = str(recipe.dataset_id)
    trained = Path(env["nnUNet_results"]) / recipe.dataset / f"{recipe.trainer}__nnUNetPlans__{CONFIG}"
    plans_file = Path(env["nnUNet_preprocessed"]) / recipe.dataset / "nnUNetPlans.json"
    if not plans_file.exists():  # a reused --work folder keeps what was done
        write_raw(Path(env["nnUNet_raw"]), recipe)
        run(_tool("nnUNetv2_extract_fingerprint"), "-d", ds_id, "-np", "1")
        run(_tool("nnUNetv2_plan_experiment"), "-d", ds_id)
        shrink_plans(plans_file, recipe)
        run(_tool("nnUNetv2_preprocess"), "-d", ds_id, "-c", CONFIG, "-np", "1")
    code = TRAIN_FOLD.format(trainer_code=recipe.trainer_code, dataset=recipe.dataset,
                             config=CONFIG)  # fmt: skip
    for fold in folds:
        if not (trained / f"fold_{fold}" / "checkpoint_final.pth").exists():
            run(sys.executable, "-c", code, str(fold))
    return trained


def publish(recipe: Recipe, trained: Path, out_root: Path, folds: list[str]) -> Path:
    out = out_root / recipe.dataset / f"{recipe.published_trainer}__nnUNetPlans__{CONFIG}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in ("dataset.json", "plans.json", "dataset_fingerprint.json"):
        shutil.copy2(trained / name, out / name)
    for fold in folds:
        (out / f"fold_{fold}").mkdir()
        publish_checkpoint(
            trained / f"fold_{fold}" / "checkpoint_final.pth",
            out / f"fold_{fold}" / "checkpoint_final.pth",
            recipe.published_trainer,
        )
        summary = trained / f"fold_{fold}" / "validation" / "summary.json"
        if summary.exists():
            result = json.loads(summary.read_text())
            mean = result["foreground_mean"]["Dice"]
            per_class = {k: round(v["Dice"], 2) for k, v in result["mean"].items()}
            print(f"fold {fold}: validation foreground mean Dice {mean:.3f}; per class {per_class}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(RECIPES), default="tinyphantom")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests/data/nnunet"))
    p.add_argument("--folds", nargs="+", default=None, help="default: the dataset's")
    p.add_argument("--work", default=None, help="keep nnU-Net's folders here (default: temp)")
    args = p.parse_args(argv)

    recipe = RECIPES[args.dataset]
    folds = list(args.folds or recipe.folds)
    work = Path(args.work or tempfile.mkdtemp(prefix="nnunet_tiny_"))
    trained = train(recipe, work, folds)
    out = publish(recipe, trained, Path(args.out), folds)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
