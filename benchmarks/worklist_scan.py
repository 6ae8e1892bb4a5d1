"""How fast does the Scans dock list a folder, and does it read pixel data? (It must not.)

Generates N (default 500) small volumes in mixed formats (.nii, .nii.gz, .mha, .mhd+.raw,
.nrrd; 24 x 64 x 64 int16, ~190 kB of pixels each) in a temporary folder, then:

1. lists them with :func:`napari_vnet.workflows.worklist_scan.discover_scans` (headers
   only), timing the whole listing and the first entry, and counting the bytes the
   process read from disk for each entry (Linux ``/proc/self/io`` ``rchar``: every
   read(2), SimpleITK's C++ reads included);
2. does the same for 10 big volumes (96 x 256 x 256 int16, 12.6 MB of pixels each): a
   header-only reader reads about as many bytes from a big file as from a small one;
3. deletes the pixel data (removes every ``.raw``, truncates ``.nii``/``.mha``/``.nrrd`` to
   their headers, cuts ``.nii.gz`` to its first 4 kB) and lists again: every entry must
   still be listed, unbroken, with the same shape - which only a header-only reader can;
4. for comparison, reads every small volume's pixels with SimpleITK;
5. with ``--gui``, times the Scans dock itself (a real napari viewer) listing the folder.

Prints a table and writes ``benchmarks/results/worklist_scan.json``.

    python benchmarks/worklist_scan.py            # 500 volumes (~1 min incl. generating)
    python benchmarks/worklist_scan.py -n 100
    xvfb-run -a python benchmarks/worklist_scan.py --gui   # also time the dock itself
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

FORMATS = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd")
SHAPE = (24, 64, 64)  # z, y, x
BIG_SHAPE = (96, 256, 256)
N_BIG = 10
TARGET_SECONDS = 5.0
RESULTS = Path(__file__).resolve().parent / "results" / "worklist_scan.json"


def _rchar() -> int | None:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _fmt(name: str) -> str:
    return next(f for f in sorted(FORMATS, key=len, reverse=True) if name.endswith(f))


def generate(folder: Path, n: int, shape=SHAPE, per_folder: int = 100) -> dict[str, int]:
    """Write n volumes cycling through FORMATS; returns {file name: bytes incl. .raw}."""
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0 : shape[0], 0 : shape[1], 0 : shape[2]]
    base = (z * 7 + y * 3 + x).astype(np.int16)
    sizes = {}
    for i in range(n):
        arr = base + rng.integers(0, 4, shape, dtype=np.int16)
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((0.8, 0.8, 2.0 + (i % 3)))
        ext = FORMATS[i % len(FORMATS)]
        sub = folder / f"batch{i // per_folder:02d}"
        sub.mkdir(exist_ok=True)
        path = sub / f"scan{i:04d}{ext}"
        sitk.WriteImage(img, str(path), ext == ".nii.gz")
        size = path.stat().st_size
        if ext == ".mhd":
            size += path.with_suffix(".raw").stat().st_size
        sizes[path.name] = size
    return sizes


def strip_pixel_data(folder: Path) -> int:
    """Remove the pixel data of every volume, keeping its header. Returns the count."""
    stripped = 0
    for p in sorted(folder.rglob("*")):
        name = p.name
        if name.endswith(".raw"):
            p.unlink()
        elif name.endswith(".nii"):
            p.write_bytes(p.read_bytes()[:352])  # NIfTI-1 header + extension flag
        elif name.endswith(".nii.gz"):
            p.write_bytes(p.read_bytes()[:4096])  # a truncated gzip stream
        elif name.endswith((".mha", ".nrrd")):
            data = p.read_bytes()
            marker = b"ElementDataFile = LOCAL\n" if name.endswith(".mha") else b"\n\n"
            p.write_bytes(data[: data.index(marker) + len(marker)])
        else:
            continue
        stripped += 1
    return stripped


def list_folder(folder: Path):
    """Entries, seconds, seconds to the first entry, {entry path: bytes read for it}."""
    from napari_vnet.workflows.worklist_scan import discover_scans

    per_entry: dict[str, int] = {}
    t0 = time.perf_counter()
    first = None
    entries = []
    last = _rchar()
    for entry in discover_scans(folder):
        now = _rchar()
        if first is None:
            first = time.perf_counter() - t0
        if now is not None and last is not None:
            per_entry[Path(entry.path).name] = now - last
        last = now
        entries.append(entry)
    return entries, time.perf_counter() - t0, first, per_entry


def per_format(read: dict[str, int], sizes: dict[str, int]) -> dict[str, dict[str, float]]:
    out = {}
    for ext in FORMATS:
        names = [n for n in sizes if _fmt(n) == ext and n in read]
        if names:
            out[ext] = {
                "files": len(names),
                "mean_file_kB": round(sum(sizes[n] for n in names) / len(names) / 1e3, 1),
                "mean_read_kB": round(sum(read[n] for n in names) / len(names) / 1e3, 1),
            }
    return out


def list_in_dock(folder: Path, work: Path) -> tuple[float, int]:
    """Seconds until the Scans dock (real napari viewer, worker thread) has listed folder."""
    os.environ.setdefault("NAPARI_VNET_CONFIG_DIR", str(work / "config"))
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_vnet._widgets.scans import ScansWidget

    viewer = napari.Viewer(show=False)
    app = QApplication.instance()
    widget = ScansWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Scans")
    widget.set_work_folder(work)
    done: list[int] = []
    widget.discovery_finished.connect(done.append)
    t0 = time.perf_counter()
    widget.set_scans_folder(folder)
    while not done and time.perf_counter() - t0 < 120:
        app.processEvents()
        time.sleep(0.005)
    seconds = time.perf_counter() - t0
    rows = widget.table.rowCount()
    viewer.close()
    return seconds, rows


def read_all_pixels(entries) -> float:
    import SimpleITK as sitk

    t0 = time.perf_counter()
    for e in entries:
        sitk.ReadImage(e.path)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=500, help="number of small volumes (default 500)")
    ap.add_argument(
        "--gui", action="store_true", help="also time the Scans dock (needs a display/Xvfb)"
    )
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="worklist-bench-"))
    try:
        folder, big = tmp / "scans", tmp / "big"
        folder.mkdir()
        big.mkdir()
        t0 = time.perf_counter()
        sizes = generate(folder, args.n)
        big_sizes = generate(big, N_BIG, BIG_SHAPE)
        gen_s = time.perf_counter() - t0
        total_bytes = sum(sizes.values())
        warm = tmp / "warm"  # imports and SimpleITK's IO factories: not part of a listing
        warm.mkdir()
        generate(warm, len(FORMATS))
        list_folder(warm)

        entries, seconds, first, read = list_folder(folder)
        broken = [e for e in entries if e.broken]
        shapes_ok = len(entries) == args.n and all(e.shape == SHAPE for e in entries)
        big_entries, big_seconds, _, big_read = list_folder(big)
        big_ok = all(e.shape == BIG_SHAPE for e in big_entries)
        pixels_s = read_all_pixels(entries)
        dock_s, dock_rows = list_in_dock(folder, tmp / "work") if args.gui else (None, None)

        stripped = strip_pixel_data(folder) + strip_pixel_data(big)
        entries2, seconds2, _, _ = list_folder(folder)
        big2, _, _, _ = list_folder(big)
        still_ok = (
            len(entries2) == args.n
            and not any(e.broken for e in entries2 + big2)
            and all(e.shape == SHAPE for e in entries2)
            and all(e.shape == BIG_SHAPE for e in big2)
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    read_total = sum(read.values()) if read else None
    result = {
        "n_volumes": args.n,
        "formats": list(FORMATS),
        "shape_zyx": list(SHAPE),
        "folder_bytes": total_bytes,
        "generate_seconds": round(gen_s, 2),
        "list_seconds": round(seconds, 3),
        "first_entry_seconds": round(first or 0.0, 4),
        "per_volume_ms": round(1000 * seconds / max(args.n, 1), 3),
        "bytes_read_while_listing": read_total,
        "small_files_by_format": per_format(read, sizes),
        "big_shape_zyx": list(BIG_SHAPE),
        "big_list_seconds": round(big_seconds, 3),
        "big_files_by_format": per_format(big_read, big_sizes),
        "listed": len(entries),
        "broken": len(broken),
        "shapes_correct": shapes_ok and big_ok,
        "read_all_pixels_seconds": round(pixels_s, 3),
        "dock_list_seconds": None if dock_s is None else round(dock_s, 3),
        "dock_rows": dock_rows,
        "pixel_data_removed_from": stripped,
        "list_after_removing_pixels_seconds": round(seconds2, 3),
        "all_listed_without_pixel_data": still_ok,
        "target_seconds": TARGET_SECONDS,
        "meets_target": seconds < TARGET_SECONDS and still_ok and not broken and shapes_ok,
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "note": "2 shared CPU cores with other engineers' jobs running: timings are disturbed",
    }
    print(
        f"listed {len(entries)} volumes ({len(broken)} broken) in {seconds:.2f} s "
        f"(target < {TARGET_SECONDS:.0f} s); first entry after {1000 * (first or 0):.1f} ms; "
        f"{result['per_volume_ms']:.2f} ms per volume; reading all pixels instead: "
        f"{pixels_s:.2f} s"
    )
    print(
        f"pixel data removed from {stripped} volumes: all still listed with their shape: "
        f"{still_ok} ({seconds2:.2f} s)"
    )
    if dock_s is not None:
        print(f"Scans dock (napari viewer, worker thread): {dock_rows} rows in {dock_s:.2f} s")
    print()
    print(f"{'format':<8} {'small file kB':>13} {'read kB':>8} {'big file kB':>12} {'read kB':>8}")
    small_f, big_f = result["small_files_by_format"], result["big_files_by_format"]
    for ext in FORMATS:
        s_, b_ = small_f.get(ext, {}), big_f.get(ext, {})
        print(
            f"{ext:<8} {s_.get('mean_file_kB', 0):>13.1f} {s_.get('mean_read_kB', 0):>8.1f} "
            f"{b_.get('mean_file_kB', 0):>12.1f} {b_.get('mean_read_kB', 0):>8.1f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {RESULTS}")
    return 0 if result["meets_target"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
