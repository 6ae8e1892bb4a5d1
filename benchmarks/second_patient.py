"""A synthetic "second patient" made from the shared real CT, for generalisation benchmarks.

Neighbouring slices of the training scan are not a new patient. The shared data holds one
labelled CT, so the next patient is simulated by changing what differs between patients
and scanners, each by a seeded random amount within the ranges below:

* **pose and size**: rotation about the body axis by up to 15 degrees (and a tilt of up
  to 1.5 degrees, as much as a 4-cm slab allows), isotropic scaling 0.85-1.15 (a smaller or
  larger patient);
* **acquisition**: slices of 3-5 mm, in-plane spacing 0.7-1.2 mm, a different field of
  view (cropped in-plane around the body at 300-420 mm, off centre);
* **contrast phase**: organ-wise HU offsets of -60 to -30 for the enhancing organs
  (liver, spleen, kidneys, pancreas, vessels), as in a non-contrast or other-phase scan;
* **reconstruction**: a softer (Gaussian) or sharper (unsharp mask) kernel and noise of
  8-20 HU.

The label map is transformed with the same geometry (nearest neighbour), so it stays the
reference. ``make_second_patient(image, labels, seed)`` works on napari-vnet Volumes and
returns Volumes on the new grid; ``python benchmarks/second_patient.py OUT_DIR --seeds 1 2``
writes them as NIfTI with the parameters in ``params.json``.
"""

# ruff: noqa: T201  (a command-line tool: it reports on stdout)
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_VNET_SHARED_DATA", ROOT.parent / "shared" / "data"))
CT = DATA / "ct-dicom-patient-a"

#: TotalSegmentator v2 label values of organs and vessels that enhance with contrast
ENHANCING = {
    1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver", 7: "pancreas",
    52: "aorta", 63: "inferior_vena_cava", 64: "portal_vein_and_splenic_vein",
}  # fmt: skip
#: TotalSegmentator v2 vertebra values (C1..S1 and sacrum), merged as "vertebrae"
VERTEBRAE = set(range(25, 51))


def _to_itk(vol, arr=None):
    import SimpleITK as sitk

    a = np.asarray(vol.array if arr is None else arr)
    img = sitk.GetImageFromArray(a)
    img.SetSpacing([float(s) for s in vol.spacing[::-1]])
    img.SetOrigin([float(o) for o in vol.origin[::-1]])
    img.SetDirection([float(d) for d in np.asarray(vol.direction)[::-1, ::-1].ravel()])
    return img


def _from_itk(img):
    import SimpleITK as sitk

    from napari_vnet.io import Volume

    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)[::-1, ::-1]
    return Volume(
        sitk.GetArrayFromImage(img),
        spacing=tuple(img.GetSpacing()[::-1]),
        origin=tuple(img.GetOrigin()[::-1]),
        direction=direction,
    )


def draw_params(seed: int) -> dict:
    """The random changes of patient ``seed`` (all ranges in the module text)."""
    rng = np.random.default_rng(seed)
    return {
        "seed": int(seed),
        "rotation_deg": float(rng.uniform(-15, 15)),
        "tilt_deg": float(rng.uniform(-1.5, 1.5)),
        "scale": float(rng.uniform(0.85, 1.15)),
        "slice_mm": float(rng.uniform(3.0, 5.0)),
        "inplane_mm": float(rng.uniform(0.7, 1.2)),
        "fov_mm": float(rng.uniform(300, 420)),
        "fov_shift_mm": [float(v) for v in rng.uniform(-30, 30, size=2)],
        "phase_offsets_hu": {str(v): float(rng.uniform(-60, -30)) for v in ENHANCING},
        "kernel": str(rng.choice(["soft", "sharp"])),
        "noise_hu": float(rng.uniform(8, 20)),
    }


def make_second_patient(image, labels, seed: int = 1, params: dict | None = None):
    """-> (image Volume, labels Volume, params): ``image``/``labels`` (Volumes on one
    grid, labels in TotalSegmentator values) as another patient on another scanner."""
    import SimpleITK as sitk
    from scipy import ndimage

    p = draw_params(seed) if params is None else params
    rng = np.random.default_rng(p["seed"] + 1000)
    hu = np.asarray(image.array, np.float32).copy()
    lab = np.asarray(labels.array)
    # contrast phase: organ-wise offsets (softened at the organ border by one voxel)
    offset = np.zeros(hu.shape, np.float32)
    for value, d in p["phase_offsets_hu"].items():
        offset[lab == int(value)] = d
    offset = ndimage.uniform_filter(offset, size=(1, 3, 3))
    hu += offset
    img = _to_itk(image, hu)
    lab_img = _to_itk(image, lab.astype(np.uint8))
    # pose and size: a similarity transform about the volume's centre
    size = np.asarray(img.GetSize(), np.float64)
    centre = img.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2).tolist())
    tf = sitk.Similarity3DTransform()
    tf.SetCenter(centre)
    tilt, rot = math.radians(p["tilt_deg"]), math.radians(p["rotation_deg"])
    tf.SetRotation((0.0, 0.0, 1.0), rot)  # about the body (z) axis
    tf2 = sitk.VersorRigid3DTransform()
    tf2.SetCenter(centre)
    tf2.SetRotation((1.0, 0.0, 0.0), tilt)
    tf.SetScale(1.0 / p["scale"])  # the output samples the input: inverse scale
    composite = sitk.CompositeTransform([tf, tf2])
    # the new grid: slices of slice_mm over the part of the slab every tilt keeps,
    # in-plane inplane_mm over a field of view of fov_mm around the body's centre
    sp_in = img.GetSpacing()
    z_extent = (size[2] - 1) * sp_in[2] * p["scale"]
    margin = math.tan(abs(tilt)) * 0.5 * min(p["fov_mm"], 300) + 0.5 * sp_in[2]
    nz = max(3, int((z_extent - 2 * margin) // p["slice_mm"]) + 1)
    n_xy = int(round(p["fov_mm"] / p["inplane_mm"]))
    body = np.argwhere(np.asarray(image.array) > -500)
    cz, cy, cx = body.mean(axis=0)
    body_centre = img.TransformContinuousIndexToPhysicalPoint((float(cx), float(cy), float(cz)))
    out_sp = (p["inplane_mm"], p["inplane_mm"], p["slice_mm"])
    origin = (
        body_centre[0] + p["fov_shift_mm"][0] - 0.5 * (n_xy - 1) * out_sp[0],
        body_centre[1] + p["fov_shift_mm"][1] - 0.5 * (n_xy - 1) * out_sp[1],
        centre[2] - 0.5 * (nz - 1) * out_sp[2],
    )
    ref = sitk.Image([n_xy, n_xy, nz], sitk.sitkUInt8)
    ref.SetSpacing(out_sp)
    ref.SetOrigin(origin)
    # a thick slice averages the thin ones: smooth along z before sampling (partial volume)
    sigma_z = max(0.0, (p["slice_mm"] ** 2 - sp_in[2] ** 2)) ** 0.5 / 2.355
    if sigma_z > 0:
        img = sitk.RecursiveGaussian(img, sigma=sigma_z, direction=2)
    out = sitk.Resample(img, ref, composite, sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    out_lab = sitk.Resample(lab_img, ref, composite, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    a = sitk.GetArrayFromImage(out)
    # reconstruction kernel and noise
    if p["kernel"] == "soft":
        a = ndimage.gaussian_filter(a, sigma=(0, 0.8, 0.8))
    else:
        blur = ndimage.gaussian_filter(a, sigma=(0, 1.0, 1.0))
        a = a + 0.6 * (a - blur)
    a = a + rng.normal(0, p["noise_hu"], size=a.shape).astype(np.float32)
    out = sitk.GetImageFromArray(np.clip(np.round(a), -1024, 3071).astype(np.int16))
    out.CopyInformation(out_lab)
    return _from_itk(out), _from_itk(out_lab), p


def load_shared_ct():
    """(image Volume, labels Volume on the image grid) of the shared CT."""
    from napari_vnet.io import Volume, read_volume
    from napari_vnet.training.data import labels_on_image_grid

    vol = read_volume(CT / "dicom")
    lab = labels_on_image_grid(vol, read_volume(CT / "labels.nii.gz"))
    return vol, Volume(lab, spacing=vol.spacing, origin=vol.origin, direction=vol.direction)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    args = ap.parse_args(argv)
    from napari_vnet.io import write_volume

    vol, lab = load_shared_ct()
    args.out.mkdir(parents=True, exist_ok=True)
    params = {}
    for s in args.seeds:
        img2, lab2, p = make_second_patient(vol, lab, s)
        write_volume(img2, args.out / f"patient{s}.nii.gz")
        write_volume(lab2, args.out / f"patient{s}_labels.nii.gz")
        params[s] = p
        print(f"patient{s}: {img2.shape} at {tuple(round(v, 2) for v in img2.spacing)} mm")
    (args.out / "params.json").write_text(json.dumps(params, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
