"""Fixtures of the robustness suite: bad files made in tmp_path, tiny models and weights.

Every bad input is built here from real files (SimpleITK writes them; the shared CT DICOM
series is copied into tmp_path when a DICOM case needs it), never checked in.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

# --------------------------------------------------------------------------- files



#: the tiny nnU-Net v2 model folder (made by nnU-Net's own planner and trainer)
NNUNET_FOLDER = (
    Path(__file__).parents[1]
    / "data"
    / "nnunet"
    / "Dataset901_TinyPhantom"
    / "nnUNetTrainer__nnUNetPlans__3d_fullres"
)


def inflate_tensor_claim(plain: Path, dest: Path, marker: int, numel: int) -> Path:
    """A zip bomb: ``plain`` (a ``torch.save`` archive holding one ``marker``-element
    float32 tensor) rewritten as ``dest``, where that tensor claims ``numel`` elements and
    its record is ``numel`` deflated zeros (zeros compress about 1000:1)."""
    big_key = None
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(dest, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                old = b"J" + struct.pack("<i", marker)
                assert old in data
                data = data.replace(old, b"J" + struct.pack("<i", numel))
            if len(data) == marker * 4:
                big_key = info.filename
                continue
            dst.writestr(info, data, compress_type=info.compress_type)
    assert big_key is not None
    with zipfile.ZipFile(dest, "a", compression=zipfile.ZIP_DEFLATED) as dst:
        info = zipfile.ZipInfo(big_key)
        info.compress_type = zipfile.ZIP_DEFLATED
        with dst.open(info, "w", force_zip64=True) as fh:
            chunk = b"\0" * (64 << 20)
            for _ in range(numel * 4 // len(chunk)):
                fh.write(chunk)
            fh.write(b"\0" * (numel * 4 % len(chunk)))
    return dest


def run_limited_child(prelude: str, code: str, *args: str, limit: str | None = "512M") -> dict:
    """Run ``prelude`` + ``code`` (dedented) in a fresh Python with ``args`` as its argv and
    ``NAPARI_VNET_MEMORY_LIMIT=limit`` (none: unset); the dict its last ``RESULT {json}``
    line reports."""
    env = {k: v for k, v in os.environ.items() if k != "NAPARI_VNET_MEMORY_LIMIT"}
    if limit:
        env["NAPARI_VNET_MEMORY_LIMIT"] = limit
    proc = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"rc {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT ") :])

def write_image(path: Path, array: np.ndarray, *, vector: bool = False, spacing=None) -> Path:
    """Write ``array`` (numpy z, y, x order) with SimpleITK; returns the path."""
    image = sitk.GetImageFromArray(array, isVector=vector)
    if spacing is not None:
        image.SetSpacing([float(s) for s in reversed(spacing)])
    sitk.WriteImage(image, str(path))
    return Path(path)


def small_volume(shape=(6, 10, 12), dtype=np.int16) -> np.ndarray:
    return (np.arange(int(np.prod(shape))) % 97).reshape(shape).astype(dtype)


def nifti_with_dims(path: Path, dims: tuple[int, ...]) -> Path:
    """A real uncompressed NIfTI whose header then claims ``dims`` (x, y, z) instead."""
    write_image(path, small_volume())
    raw = bytearray(path.read_bytes())
    dim = list(struct.unpack("<8h", raw[40:56]))
    dim[0] = len(dims)
    dim[1 : 1 + len(dims)] = dims
    raw[40:56] = struct.pack("<8h", *dim)
    path.write_bytes(bytes(raw))
    return path


def copy_dicom_series(shared_data: Path, dest: Path, *, skip: tuple[int, ...] = ()) -> list[Path]:
    """Copy the shared CT series into ``dest`` (optionally without some slices, by
    position order); returns the copied files in position order."""
    from napari_vnet.io import list_dicom_series

    (series,) = list_dicom_series(shared_data / "ct-dicom-patient-a" / "dicom")
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for i, f in enumerate(series.files):
        if i in skip:
            continue
        target = dest / Path(f).name
        shutil.copyfile(f, target)
        out.append(target)
    return out


def write_dicom_series(
    dest: Path, array: np.ndarray, *, uid: str, description: str, z_positions=None
) -> list[Path]:
    """Write a (z, y, x) int16 array as a DICOM series of one file per slice (SimpleITK's
    "series from array" recipe: the slice position and orientation tags set by hand)."""
    dest.mkdir(parents=True, exist_ok=True)
    zs = list(z_positions) if z_positions is not None else [2.0 * i for i in range(len(array))]
    out = []
    for i, (plane, z) in enumerate(zip(array, zs, strict=True)):
        image = sitk.GetImageFromArray(plane[None].astype(np.int16))
        image.SetSpacing((0.8, 0.8, 2.0))
        tags = {
            "0008|0060": "CT",
            "0008|103e": description,
            "0020|000d": "1.2.826.0.1.3680043.8.498.10",
            "0020|000e": uid,
            "0020|0011": "7",
            "0020|0013": str(i + 1),
            "0020|0032": f"0\\0\\{z}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0008|0018": f"{uid}.{i + 1}",
        }
        for key, value in tags.items():
            image.SetMetaData(key, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        path = dest / f"{description.replace(' ', '_')}_{i:03d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(image)
        out.append(path)
    return out


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return (
            struct.pack("<HH", group, elem) + vr + b"\0\0" + struct.pack("<I", len(value)) + value
        )
    return struct.pack("<HH", group, elem) + vr + struct.pack("<H", len(value)) + value


def non_image_dicom(path: Path) -> Path:
    """A valid DICOM Basic Text SR (a report: no pixel data), explicit VR little endian."""
    sop_class = b"1.2.840.10008.5.1.4.1.1.88.11"
    sop_uid = b"1.2.826.0.1.3680043.8.498.1"
    body = b"".join(
        [
            _element(0x0002, 0x0001, b"OB", b"\0\1"),
            _element(0x0002, 0x0002, b"UI", sop_class),
            _element(0x0002, 0x0003, b"UI", sop_uid),
            _element(0x0002, 0x0010, b"UI", b"1.2.840.10008.1.2.1"),
        ]
    )
    meta = _element(0x0002, 0x0000, b"UL", struct.pack("<I", len(body))) + body
    data = b"".join(
        [
            _element(0x0008, 0x0016, b"UI", sop_class),
            _element(0x0008, 0x0018, b"UI", sop_uid),
            _element(0x0008, 0x0060, b"CS", b"SR"),
            _element(0x0010, 0x0010, b"PN", b"Test^Report"),
            _element(0x0020, 0x000D, b"UI", b"1.2.826.0.1.3680043.8.498.2"),
            _element(0x0020, 0x000E, b"UI", b"1.2.826.0.1.3680043.8.498.3"),
            _element(0x0040, 0xA040, b"CS", b"CONTAINER"),
        ]
    )
    path.write_bytes(b"\0" * 128 + b"DICM" + meta + data)
    return path


BAD_FILE_CASES = [
    "empty",
    "truncated",
    "gzip_of_garbage",
    "wrong_extension",
    "header_larger_than_data",
    "non_image_dicom",
]


def make_bad_file(kind: str, folder: Path) -> Path:
    """One of :data:`BAD_FILE_CASES`, written into ``folder``."""
    if kind == "empty":
        path = folder / "empty.nii.gz"
        path.write_bytes(b"")
    elif kind == "truncated":
        full = write_image(folder / "full.nii.gz", small_volume((16, 32, 32))).read_bytes()
        path = folder / "truncated.nii.gz"
        path.write_bytes(full[: len(full) // 2])
    elif kind == "gzip_of_garbage":
        path = folder / "garbage.nii.gz"
        path.write_bytes(gzip.compress(np.random.default_rng(0).bytes(4000)))
    elif kind == "wrong_extension":  # an MHA file saved under a NIfTI name
        mha = write_image(folder / "real.mha", small_volume())
        path = folder / "really_mha.nii"
        path.write_bytes(mha.read_bytes())
    elif kind == "header_larger_than_data":
        path = nifti_with_dims(folder / "claims_more.nii", (200, 200, 200))
    elif kind == "non_image_dicom":
        path = non_image_dicom(folder / "report.dcm")
    else:  # pragma: no cover
        raise ValueError(kind)
    return path


# --------------------------------------------------------------------------- models

TINY_VNET = {"channels": [4, 8], "convs": [1, 1], "kernel_size": 3}


def tiny_card(classes=((0, "background"), (1, "liver")), patch=(16, 16, 16), arch="vnet"):
    from napari_vnet.models import ClassInfo, ModelCard

    return ModelCard(
        arch=arch,
        arch_kwargs=dict(TINY_VNET) if arch == "vnet" else {},
        classes=[ClassInfo(v, n) for v, n in classes],
        patch_size=patch,
        spacing=(1.0, 1.0, 1.0),
        normalization={"kind": "zscore"},
    )


@pytest.fixture
def tiny_weights(tmp_path) -> Path:
    """A real, tiny V-Net checkpoint (two classes, 16^3 patch, 1 mm)."""
    import torch

    from napari_vnet.models import build_model, save_checkpoint

    torch.manual_seed(0)
    card = tiny_card()
    return save_checkpoint(build_model(card), card, tmp_path / "weights" / "tiny.pt")


def assert_names(message: str, path: os.PathLike) -> None:
    """The message names the file (full path or at least its name)."""
    p = Path(path)
    assert str(p) in message or p.name in message, f"{p.name!r} not named in {message!r}"
