"""Deterministic synthetic torso CT phantoms with ground-truth label maps.

``make_phantom(seed)`` draws an abdominal CT-like volume: air outside the body (-1000 HU),
an elliptical body outline with subcutaneous fat (-110..-90 HU), an abdominal muscle wall
(45-58 HU), visceral fat, bowel loops (5-30 HU) with gas, the enhanced aorta, paraspinal
muscles, and four labelled structures with the attenuation of a contrast-enhanced
(portal-venous / nephrographic phase) abdominal CT:

====  ========  ===========================================
 1    liver     95-110 HU, patient right, upper abdomen
 2    spleen    120-135 HU, patient left, posterior
 3    kidneys   165-190 HU, both kidneys (one class), posterior
 4    spine     vertebral bodies and arches, 500-750 HU
====  ========  ===========================================

Per-organ values are drawn per seed, plus smooth texture, partial-volume blur and
Gaussian noise (sd 6-12 HU).

Every seed varies body size, position and in-plane rotation, organ sizes, positions,
orientations and boundary shapes, intensities, texture, noise and voxel spacing.
Voxels are anisotropic (about 2.0-2.7 mm in-plane, 3.5-4.4 mm between slices for the
default ``(48, 96, 96)`` grid). Geometry follows :mod:`napari_vnet.io.volume`: arrays are
``(z, y, x)``; the direction is the identity in SimpleITK's LPS frame, so x grows towards
the patient's left, y towards posterior and z towards superior (radiological display in
napari: the liver appears on the left of the screen, anterior at the top).

The anatomy is defined in millimetres; the default grid's field of view is drawn around
it, so a smaller ``shape`` gives a coarser phantom of the same physical size. When both
``shape`` and ``spacing`` are given the anatomy is shrunk if it would not fit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from napari_vnet.io.volume import Volume
from napari_vnet.models.card import ClassInfo

logger = logging.getLogger(__name__)

DEFAULT_SHAPE: tuple[int, int, int] = (48, 96, 96)

#: label value -> (name, RGBA colour); channel order of the shipped models
PHANTOM_CLASSES: tuple[ClassInfo, ...] = (
    ClassInfo(0, "background", None),
    ClassInfo(1, "liver", (0.80, 0.35, 0.25, 1.0)),
    ClassInfo(2, "spleen", (0.55, 0.25, 0.70, 1.0)),
    ClassInfo(3, "kidneys", (0.95, 0.80, 0.20, 1.0)),
    ClassInfo(4, "spine", (0.95, 0.95, 0.90, 1.0)),
)

LIVER, SPLEEN, KIDNEYS, SPINE = 1, 2, 3, 4

#: soft-tissue display window (level, width) suggested for the phantom
CT_WINDOW = (40.0, 400.0)


def phantom_classes() -> list[ClassInfo]:
    """A fresh copy of the phantom's classes (background first)."""
    return [ClassInfo(c.value, c.name, c.color) for c in PHANTOM_CLASSES]


class _Sampler:
    """Physical coordinates of a grid plus seeded random helpers."""

    def __init__(self, rng: np.random.Generator, shape, spacing, center_offset, angle):
        self.rng = rng
        self.shape = tuple(int(s) for s in shape)
        self.spacing = np.asarray(spacing, dtype=float)
        # physical coordinates (mm) relative to the grid centre, then to the body frame
        axes = [
            (np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * float(s)
            for n, s in zip(self.shape, self.spacing, strict=True)
        ]
        z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
        x = x - np.float32(center_offset[1])
        y = y - np.float32(center_offset[0])
        c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        # body frame: xb towards patient left, yb towards posterior
        self.z = np.broadcast_to(z, self.shape)
        self.x = (c * x + s * y).astype(np.float32)
        self.y = (-s * x + c * y).astype(np.float32)
        self.x = np.broadcast_to(self.x, self.shape)
        self.y = np.broadcast_to(self.y, self.shape)

    def smooth_field(self, sigma_mm: float) -> np.ndarray:
        """Zero-mean, unit-std random field smoothed with a Gaussian of ``sigma_mm``."""
        noise = self.rng.standard_normal(self.shape).astype(np.float32)
        sigma = [max(sigma_mm / float(s), 0.5) for s in self.spacing]
        field = ndimage.gaussian_filter(noise, sigma, mode="wrap")
        std = float(field.std())
        return field / std if std > 0 else field

    def ellipsoid(
        self,
        center,
        semi_axes,
        angle: float = 0.0,
        bump: np.ndarray | None = None,
        bump_amp: float = 0.0,
    ) -> np.ndarray:
        """Boolean ellipsoid (body frame, mm), rotated by ``angle`` about z, with a
        boundary deformed by ``bump_amp`` times the smooth field ``bump``."""
        cz, cy, cx = center
        az, ay, ax = semi_axes
        dx = self.x - np.float32(cx)
        dy = self.y - np.float32(cy)
        c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        u = (c * dx + s * dy) / np.float32(ax)
        v = (-s * dx + c * dy) / np.float32(ay)
        w = (self.z - np.float32(cz)) / np.float32(az)
        r2 = u * u + v * v + w * w
        limit = np.float32(1.0)
        if bump is not None and bump_amp:
            limit = (1.0 + np.float32(bump_amp) * bump) ** 2
        return r2 <= limit


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 6-connected component (drops slivers cut off by other organs)."""
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def _draw_geometry(rng: np.random.Generator, shape, spacing):
    """Body size (mm), field of view and spacing for one seed."""
    body_ax = rng.uniform(88.0, 110.0)  # lateral semi-axis
    body_ay = body_ax * rng.uniform(0.66, 0.78)  # antero-posterior semi-axis
    fov_xy = 2.0 * body_ax * rng.uniform(1.08, 1.18)
    fov_z = rng.uniform(170.0, 210.0)
    if shape is None and spacing is None:
        shape = DEFAULT_SHAPE
    if spacing is None:
        spacing = (fov_z / shape[0], fov_xy / shape[1], fov_xy / shape[2])
    spacing = tuple(float(s) for s in spacing)
    if shape is None:
        shape = (
            max(8, round(fov_z / spacing[0])),
            max(8, round(fov_xy / spacing[1])),
            max(8, round(fov_xy / spacing[2])),
        )
    shape = tuple(int(s) for s in shape)
    extent = np.asarray(shape, float) * np.asarray(spacing, float)
    # shrink the anatomy if an explicit grid is too small for it
    scale = min(1.0, extent[1] / (2.25 * body_ax), extent[2] / (2.25 * body_ax))
    return shape, spacing, extent, body_ax * scale, body_ay * scale, scale


def make_phantom(
    seed: int,
    *,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
) -> tuple[Volume, Volume, list[ClassInfo]]:
    """A synthetic torso CT (int16 HU) and its label map (uint8), deterministic per seed.

    Parameters
    ----------
    seed : int
        Non-negative seed; the same seed always gives the same phantom.
    shape : (z, y, x), optional
        Grid size. Default ``(48, 96, 96)`` (or derived from ``spacing`` if given).
    spacing : (z, y, x) mm, optional
        Voxel spacing. Default: drawn per seed so that the body fits the grid.

    Returns
    -------
    image, labels, classes
        ``image.array`` int16 HU, ``labels.array`` uint8 with values in
        ``{0, 1, 2, 3, 4}`` (see :data:`PHANTOM_CLASSES`), both on the same grid;
        ``classes`` lists background first.
    """
    if int(seed) < 0:
        raise ValueError(f"phantom seed must be >= 0, got {seed}")
    if shape is not None and (len(shape) != 3 or min(shape) < 8):
        raise ValueError(f"phantom shape must be 3 sizes >= 8 (z, y, x), got {shape}")
    if spacing is not None and (len(spacing) != 3 or min(spacing) <= 0):
        raise ValueError(f"phantom spacing must be 3 positive mm values (z, y, x), got {spacing}")
    rng = np.random.default_rng([int(seed), 20261123])
    shape, spacing, extent, body_ax, body_ay, scale = _draw_geometry(rng, shape, spacing)
    margin_x = max(0.0, extent[2] / 2 - body_ax * 1.08)
    margin_y = max(0.0, extent[1] / 2 - body_ay * 1.08)
    center_offset = (
        rng.uniform(-0.6, 0.6) * margin_y,
        rng.uniform(-0.6, 0.6) * margin_x,
    )
    angle = np.deg2rad(rng.uniform(-8.0, 8.0))
    g = _Sampler(rng, shape, spacing, center_offset, angle)
    # every stage draws from ``rng`` in turn: their order makes the phantom of a seed
    m = _body(g, body_ax, body_ay, scale, extent)
    _spine(g, m, body_ax, scale)
    _organs(g, m)
    _bowel(g, m)
    image = _intensities(g, m)
    labels = np.zeros(shape, np.uint8)
    labels[m["liver"]] = LIVER
    labels[m["spleen"]] = SPLEEN
    labels[m["kidneys"]] = KIDNEYS
    labels[m["spine"]] = SPINE
    image_vol, labels_vol = _volumes(rng, int(seed), image, labels, spacing, extent)
    logger.debug("phantom seed %s: shape %s spacing %s", seed, shape, spacing)
    return image_vol, labels_vol, phantom_classes()


def _body(g: _Sampler, body_ax: float, body_ay: float, scale: float, extent) -> dict[str, Any]:
    """The body outline (an ellipse whose size breathes slowly along z), its muscle wall
    and the abdominal cavity; the stages after add their parts to the dict returned."""
    rng, x, y, shape, spacing = g.rng, g.x, g.y, g.shape, g.spacing
    zs = (np.arange(shape[0]) - (shape[0] - 1) / 2.0) * spacing[0]
    phase = rng.uniform(0, 2 * np.pi)
    breathe = (1.0 + 0.04 * np.sin(zs / 60.0 + phase)).astype(np.float32)[:, None, None]
    outline_bump = g.smooth_field(25.0)
    r_body = np.sqrt((x / (body_ax * breathe)) ** 2 + (y / (body_ay * breathe)) ** 2)
    r_body = r_body * (1.0 + 0.015 * outline_bump)
    fat_mm = rng.uniform(9.0, 20.0) * scale
    muscle_mm = rng.uniform(7.0, 11.0) * scale
    mean_axis = 0.5 * (body_ax + body_ay)
    r_wall = 1.0 - fat_mm / mean_axis
    r_cavity = r_wall - muscle_mm / mean_axis
    return {
        "zs": zs,
        "zmax": extent[0] / 2.0,
        "body": r_body <= 1.0,
        "wall": r_body <= r_wall,
        "cavity": r_body <= r_cavity,
        "in_ax": body_ax * r_cavity,  # cavity semi-axes
        "in_ay": body_ay * r_cavity,
    }


def _spine(g: _Sampler, m: dict[str, Any], body_ax: float, scale: float) -> None:
    """Vertebral bodies (with discs), posterior arches, paraspinal muscles, and the
    aorta (unlabelled) anterior-left of the spine."""
    rng, x, y, zs, wall = g.rng, g.x, g.y, m["zs"], m["wall"]
    rv = rng.uniform(0.13, 0.16) * body_ax  # vertebral body radius
    vy = m["in_ay"] - rv * rng.uniform(0.85, 1.05)  # vertebral body centre (posterior)
    vx = rng.uniform(-0.03, 0.03) * body_ax
    vert_body = ((x - vx) / rv) ** 2 + ((y - vy) / (rv * 0.85)) ** 2 <= 1.0
    level = rng.uniform(24.0, 30.0) * scale  # vertebral level height (mm)
    disc_mm = rng.uniform(4.5, 6.5) * scale
    disc_phase = rng.uniform(0, level)
    zmod = np.mod(zs + disc_phase, level)
    disc_rows = (zmod < disc_mm)[:, None, None]
    vert_body_bone = vert_body & ~disc_rows
    arch_y = vy + rv * 1.55
    arch = ((x - vx) / (rv * 1.05)) ** 2 + ((y - arch_y) / (rv * 0.55)) ** 2 <= 1.0
    canal = ((x - vx) / (rv * 0.45)) ** 2 + ((y - (vy + rv * 1.25)) / (rv * 0.35)) ** 2 <= 1.0
    spinous = (np.abs(x - vx) <= rv * 0.22) & (y >= arch_y) & (y <= arch_y + rv * 1.2)
    arch_rows = (zmod >= disc_mm * 0.5)[:, None, None]
    m["spine"] = (vert_body_bone | ((arch | spinous) & ~canal & arch_rows)) & wall
    m["paraspinal"] = (
        ((np.abs(x - vx) - rv * 1.5) / (rv * 1.1)) ** 2 + ((y - (arch_y + rv * 0.6)) / rv) ** 2
        <= 1.0
    ) & wall
    m["vert_body"], m["disc"], m["vx"], m["vy"], m["rv"] = vert_body, vert_body & disc_rows, vx, vy, rv
    ra = rng.uniform(7.0, 10.0) * scale
    m["aorta"] = ((x - (vx + rv * 0.45)) ** 2 + (y - (vy - rv - ra * 1.1)) ** 2) <= ra**2


def _organs(g: _Sampler, m: dict[str, Any]) -> None:
    """Liver (with its left lobe across the midline), spleen and the two kidneys."""
    rng, zmax, in_ax, in_ay, cavity = g.rng, m["zmax"], m["in_ax"], m["in_ay"], m["cavity"]
    m["bump_a"] = bump_a = g.smooth_field(18.0)
    m["bump_b"] = bump_b = g.smooth_field(14.0)

    def u(lo, hi):
        return float(rng.uniform(lo, hi))

    liver = g.ellipsoid(
        center=(zmax * u(0.05, 0.35), in_ay * u(-0.15, 0.05), -in_ax * u(0.38, 0.50)),
        semi_axes=(zmax * u(0.45, 0.6), in_ay * u(0.62, 0.75), in_ax * u(0.42, 0.52)),
        angle=np.deg2rad(u(-15, 15)),
        bump=bump_a,
        bump_amp=0.10,
    )
    # the left lobe reaches across the midline, anteriorly
    liver |= g.ellipsoid(
        center=(zmax * u(0.25, 0.45), -in_ay * u(0.25, 0.40), -in_ax * u(0.0, 0.12)),
        semi_axes=(zmax * u(0.2, 0.3), in_ay * u(0.25, 0.35), in_ax * u(0.30, 0.40)),
        angle=np.deg2rad(u(-20, 10)),
        bump=bump_b,
        bump_amp=0.10,
    )
    m["liver"] = liver = _largest_component(liver & cavity)
    spleen = g.ellipsoid(
        center=(zmax * u(0.10, 0.35), in_ay * u(0.15, 0.35), in_ax * u(0.58, 0.68)),
        semi_axes=(zmax * u(0.27, 0.36), in_ay * u(0.38, 0.48), in_ax * u(0.22, 0.28)),
        angle=np.deg2rad(u(20, 45)),
        bump=bump_b,
        bump_amp=0.12,
    )
    m["spleen"] = spleen = _largest_component(spleen & cavity & ~liver)
    kidneys = np.zeros(g.shape, bool)
    kidney_z = zmax * u(-0.30, -0.05)
    vx, vy, rv = m["vx"], m["vy"], m["rv"]
    for side in (-1.0, 1.0):
        offset = zmax * u(0.0, 0.12) * (1.0 if side > 0 else -1.0)  # left one higher
        kidney = g.ellipsoid(
            center=(
                kidney_z + offset,
                vy - rv * u(0.1, 0.4),
                vx + side * (rv + in_ax * u(0.27, 0.33)),
            ),
            semi_axes=(zmax * u(0.30, 0.38), in_ay * u(0.24, 0.30), in_ax * u(0.15, 0.19)),
            angle=side * np.deg2rad(u(15, 35)),
            bump=bump_a,
            bump_amp=0.08,
        )
        kidney &= cavity & ~liver & ~spleen & ~m["vert_body"] & ~m["aorta"] & ~m["paraspinal"]
        kidneys |= _largest_component(kidney)
    m["kidneys"] = kidneys
    m["organs"] = liver | spleen | kidneys


def _bowel(g: _Sampler, m: dict[str, Any]) -> None:
    """Bowel loops with gas (unlabelled), in the anterior cavity."""
    rng, zmax, in_ax, in_ay = g.rng, m["zmax"], m["in_ax"], m["in_ay"]
    bowel = np.zeros(g.shape, bool)
    for _ in range(int(rng.integers(8, 14))):
        bowel |= g.ellipsoid(
            center=(
                zmax * rng.uniform(-0.9, 0.3), -in_ay * rng.uniform(-0.1, 0.7),
                in_ax * rng.uniform(-0.6, 0.6),
            ),
            semi_axes=(
                zmax * rng.uniform(0.15, 0.3), in_ay * rng.uniform(0.14, 0.26),
                in_ax * rng.uniform(0.12, 0.22),
            ),
            angle=np.deg2rad(rng.uniform(0, 180)),
            bump=m["bump_b"],
            bump_amp=0.15,
        )  # fmt: skip
    m["bowel"] = bowel & m["cavity"] & ~m["organs"] & ~m["aorta"] & ~m["vert_body"]
    m["gas"] = m["bowel"] & (g.smooth_field(6.0) > 1.6)


def _intensities(g: _Sampler, m: dict[str, Any]) -> np.ndarray:
    """The int16 HU image: each tissue's value, texture, partial-volume blur and noise."""
    rng = g.rng
    tex = g.smooth_field(3.0)
    names = ("fat", "visceral", "muscle", "bowel", "liver", "spleen", "kidneys", "disc",
             "bone", "aorta")  # fmt: skip
    ranges = ((-110, -90), (-100, -80), (45, 58), (5, 30), (95, 110), (120, 135), (165, 190),
              (60, 85), (500, 750), (200, 230))  # fmt: skip
    hu = {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in zip(names, ranges, strict=True)}
    img = np.full(g.shape, -1000.0, np.float32)
    img[m["body"]] = hu["fat"]
    img[m["wall"]] = hu["muscle"]
    img[m["cavity"]] = hu["visceral"]
    img[m["paraspinal"]] = hu["muscle"]
    img[m["bowel"]] = hu["bowel"]
    img[m["gas"]] = float(rng.uniform(-900, -700))
    img[m["aorta"] & m["cavity"]] = hu["aorta"]
    for organ in ("liver", "spleen", "kidneys"):
        img[m[organ]] = hu[organ]
    img[m["disc"] & m["wall"]] = hu["disc"]
    bone_field = hu["bone"] * (0.9 + 0.1 * np.clip(g.smooth_field(4.0), -2, 2))
    img[m["spine"]] = bone_field[m["spine"]]
    # soft texture inside the body (stronger in bowel, weaker in organs)
    amp = np.where(m["body"], 8.0, 0.0).astype(np.float32)
    amp[m["bowel"]] = 18.0
    amp[m["organs"]] = 5.0
    img += amp * tex
    # partial-volume blur (about half a voxel), then scanner noise
    img = ndimage.gaussian_filter(img, sigma=(0.5, 0.6, 0.6))
    noise_sd = float(rng.uniform(6.0, 12.0))
    img += rng.standard_normal(g.shape).astype(np.float32) * np.float32(noise_sd)
    return np.clip(np.rint(img), -1024, 3071).astype(np.int16)


def _volumes(rng, seed: int, image, labels, spacing, extent) -> tuple[Volume, Volume]:
    """The image and label volumes on one grid (a table position drawn for the origin)."""
    origin = (
        float(rng.uniform(-60.0, 60.0)) - extent[0] / 2.0,  # table position (z)
        -extent[1] / 2.0,
        -extent[2] / 2.0,
    )
    meta = {
        "modality": "CT",
        "window_center": CT_WINDOW[0],
        "window_width": CT_WINDOW[1],
        "description": f"napari-vnet synthetic torso CT phantom, seed {seed}",
        "phantom_seed": seed,
        "class_names": {c.value: c.name for c in PHANTOM_CLASSES},
    }
    common = dict(spacing=tuple(spacing), origin=origin, direction=np.eye(3))
    image_vol = Volume(
        array=image, pixel_type="16-bit signed integer", metadata=dict(meta), **common
    )
    labels_vol = Volume(
        array=labels,
        pixel_type="8-bit unsigned integer",
        metadata={**meta, "is_label": True},
        **common,
    )
    return image_vol, labels_vol


def write_phantoms(
    out_dir: str | Path,
    seeds: Iterable[int],
    *,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    suffix: str = ".nii.gz",
) -> list[tuple[Path, Path]]:
    """Write ``phantom_SEED_ct`` / ``phantom_SEED_labels`` files for each seed.

    Returns the ``(image_path, labels_path)`` pairs. Also writes ``classes.json``.
    """
    import json

    from napari_vnet.io import write_volume

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs = []
    for seed in seeds:
        image, labels, classes = make_phantom(int(seed), shape=shape, spacing=spacing)
        ip = write_volume(image, out / f"phantom_{int(seed):03d}_ct{suffix}")
        lp = write_volume(labels, out / f"phantom_{int(seed):03d}_labels{suffix}")
        pairs.append((Path(ip), Path(lp)))
    (out / "classes.json").write_text(json.dumps(classes_to_json(phantom_classes()), indent=2))
    return pairs


def classes_to_json(classes: Sequence[ClassInfo]) -> dict:
    """The JSON document written beside phantom files: ``{"classes": [...]}``."""
    return {
        "description": "napari-vnet synthetic torso CT phantom label values",
        "classes": [c.to_dict() for c in classes],
    }


def make_blob_phantom(
    seed: int,
    names: Sequence[str],
    *,
    shape: Sequence[int] = (16, 32, 32),
    spacing: Sequence[float] = (3.0, 3.0, 3.0),
) -> tuple[Volume, Volume, list[ClassInfo]]:
    """A CT-like volume (int16 HU) with one ellipsoidal blob per class of ``names``
    (label values 1..n in that order) and its label map, deterministic per seed.

    The grid is cut into 2 x 3 x k cells (as many as needed); each seed shuffles the
    classes over the cells and draws each blob's size and position inside its cell.
    Every class has its own attenuation: n + 1 levels evenly spaced over -950..1250 HU,
    the middle one for the background, the others for the classes in order; Gaussian
    noise (sd 12 HU) over all. Meant for models with many classes that must learn in a
    few minutes (the TotalSegmentator-shaped nnU-Net test model, trained on whole
    volumes: every window then holds every class, so a network that normalises each
    window, as nnU-Net's does, still tells the levels apart).
    """
    n = len(names)
    shape = tuple(int(s) for s in shape)
    if n < 1 or len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"blob phantom needs >= 1 class and 3 sizes >= 8, got {n}, {shape}")
    rng = np.random.default_rng([int(seed), 20260902])
    levels = list(np.linspace(-950.0, 1250.0, n + 1))
    background = levels.pop(n // 2)
    grid = (2, 3, -(-n // 6))
    cell = [s / g for s, g in zip(shape, grid, strict=True)]
    cells = rng.permutation(int(np.prod(grid)))[:n]
    zz, yy, xx = np.meshgrid(*(np.arange(s, dtype=np.float32) for s in shape), indexing="ij")
    image = np.full(shape, background, np.float32)
    labels = np.zeros(shape, np.uint8)
    for value, (level, where) in enumerate(zip(levels, cells, strict=True), start=1):
        index = np.unravel_index(int(where), grid)
        r2 = np.zeros(shape, np.float32)
        for coords, i, size in zip((zz, yy, xx), index, cell, strict=True):
            radius = size * rng.uniform(0.3, 0.42)
            centre = (i + 0.5) * size + rng.uniform(-1, 1) * (size / 2 - radius)
            r2 += ((coords - centre) / radius) ** 2
        image[r2 <= 1.0] = level
        labels[r2 <= 1.0] = value
    image += rng.normal(0.0, 12.0, shape).astype(np.float32)
    geometry = dict(spacing=tuple(float(s) for s in spacing), origin=(0.0, 0.0, 0.0),
                    direction=np.eye(3))  # fmt: skip
    classes = [ClassInfo(0, "background"), *(ClassInfo(i, str(c)) for i, c in enumerate(names, 1))]
    return (
        Volume(np.round(image).astype(np.int16), pixel_type="16-bit signed integer", **geometry),
        Volume(labels, pixel_type="8-bit unsigned integer", **geometry),
        classes,
    )
