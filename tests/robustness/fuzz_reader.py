"""Fuzz the napari reader entry point with mutated headers of real files (hypothesis).

Run by ``test_robust_fuzz.py`` in a child process, twice: once with its address space
limited (``RLIMIT_AS``, 3 GB), so a header that talks the reader into a huge allocation
fails there as a MemoryError finding instead of filling a shared machine; and once
without that cap (``NAPARI_VNET_FUZZ_CAP=0``), where the reader's own memory guard
(``NAPARI_VNET_MEMORY_LIMIT``) must refuse big headers before allocating and the
process's peak memory (``VmHWM``) is checked after every example, so an allocation
the cap would have turned into an ordinary error is seen. Standalone::

    python tests/robustness/fuzz_reader.py WORKDIR [SECONDS] [SHARED_DATA]

Every example writes one real file (NIfTI, gzipped NIfTI, MHA, NRRD, or a DICOM slice of
the shared CT series) with some header bytes replaced and maybe truncated, then does what
napari does: ``napari_get_reader(path)`` (must never raise) and, if it offers a reader,
calls it: the result must be layer data or a :class:`VolumeReadError`, nothing else.
Prints one summary line ``fuzz: N examples, ...``; exit status 0 when nothing failed.
"""

from __future__ import annotations

import gzip
import os
import resource
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

MEMORY_LIMIT = 3 * 1024**3
#: Without the cap: the most the process may have held at any time (the examples are
#: 6 x 10 x 12 volumes; the guard refuses headers above NAPARI_VNET_MEMORY_LIMIT).
PEAK_LIMIT_MIB = float(os.environ.get("NAPARI_VNET_FUZZ_PEAK_MIB", "1536"))


def peak_mib() -> float:
    """This process's peak resident memory: VmHWM (``ru_maxrss`` would include the
    parent's peak at fork time, e.g. a big pytest process)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str]) -> int:
    workdir = Path(argv[1])
    seconds = float(argv[2]) if len(argv) > 2 else 40.0
    shared = Path(argv[3]) if len(argv) > 3 and argv[3] else None
    capped = os.environ.get("NAPARI_VNET_FUZZ_CAP", "1") != "0"
    if capped:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    import numpy as np
    import SimpleITK as sitk
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from napari_vnet._reader import napari_get_reader
    from napari_vnet.io import VolumeReadError

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    workdir.mkdir(parents=True, exist_ok=True)
    seeds_dir = workdir / "seeds"
    seeds_dir.mkdir(exist_ok=True)
    volume = (np.arange(6 * 10 * 12) % 251).reshape(6, 10, 12).astype(np.int16)
    seeds: dict[str, tuple[bytes, int, str]] = {}  # kind -> (bytes, header length, suffix)
    for kind, suffix in (("nii", ".nii"), ("mha", ".mha"), ("nrrd", ".nrrd")):
        p = seeds_dir / f"seed{suffix}"
        image = sitk.GetImageFromArray(volume.astype(np.float32 if kind == "nrrd" else np.int16))
        image.SetSpacing((0.8, 0.9, 2.5))
        image.SetOrigin((-10.0, 5.0, 3.0))
        sitk.WriteImage(image, str(p))
        data = p.read_bytes()
        if kind == "nii":
            header = 352
        elif kind == "mha":
            header = data.index(b"ElementDataFile = LOCAL\n") + 24
        else:
            header = data.index(b"\n\n") + 2
        seeds[kind] = (data, header, suffix)
    seeds["nii.gz"] = (seeds["nii"][0], 352, ".nii.gz")  # mutated, then gzipped
    if shared is not None:
        files = sorted((shared / "ct-dicom-patient-a" / "dicom").iterdir())
        if files:
            data = files[0].read_bytes()
            # the header: everything before the pixel data element (7FE0,0010)
            header = data.find(b"\xe0\x7f\x10\x00")
            seeds["dcm"] = (data, header if header > 0 else 2000, ".dcm")
            neighbours = files[1:3]
        else:
            neighbours = []
    kinds = sorted(seeds)
    interesting = st.sampled_from(list(b"0123456789 -.\n\\=\x00\xff\x7f\x80"))
    start = time.monotonic()
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    counter = [0]

    @settings(
        max_examples=400,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        kind=st.sampled_from(kinds),
        edits=st.lists(
            st.tuples(
                st.floats(0, 1, exclude_max=True), st.one_of(interesting, st.integers(0, 255))
            ),
            min_size=1,
            max_size=8,
        ),
        cut=st.one_of(st.none(), st.floats(0.05, 1.0)),
        as_folder=st.booleans(),
    )
    def one(kind, edits, cut, as_folder):
        if time.monotonic() - start > seconds:
            return  # the time budget is spent: the remaining examples are no-ops
        data, header, suffix = seeds[kind]
        raw = bytearray(data)
        for where, value in edits:
            raw[int(where * header)] = value
        raw = bytes(raw)
        if kind == "nii.gz":
            raw = gzip.compress(raw, compresslevel=1)
        if cut is not None:
            raw = raw[: max(1, int(len(raw) * cut))]
        counter[0] += 1
        folder = workdir / f"case{counter[0] % 4}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        path = folder / f"mutated{suffix}"
        path.write_bytes(raw)
        target = path
        if kind == "dcm":
            for n in neighbours:  # the mutated slice among two intact ones of its series
                shutil.copyfile(n, folder / n.name)
            target = folder if as_folder else path
        try:
            reader = napari_get_reader(str(target))
        except Exception as exc:  # noqa: BLE001 - the finding
            failures.append(f"napari_get_reader raised {exc!r} for {kind} {edits} {cut}")
            raise
        if reader is None:
            outcomes["no reader"] += 1
            return
        try:
            layers = reader(str(target))
        except VolumeReadError as exc:
            assert str(target) in str(exc) or path.name in str(exc), str(exc)
            outcomes["VolumeReadError"] += 1
            check_peak(kind, edits, cut)
            return
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc} for {kind} {edits} cut={cut}")
            raise
        assert isinstance(layers, list) and layers
        for array, kwargs, layer_type in layers:
            assert layer_type in ("image", "labels")
            assert np.asarray(array).size >= 1 and "scale" in kwargs
        outcomes["read"] += 1
        check_peak(kind, edits, cut)

    def check_peak(kind, edits, cut):
        peak = peak_mib()
        if not capped and peak > PEAK_LIMIT_MIB:
            failures.append(
                f"peak memory {peak:.0f} MiB (> {PEAK_LIMIT_MIB:.0f}) after {kind} {edits} "
                f"cut={cut}"
            )
            raise AssertionError(failures[-1])

    try:
        one()
    finally:
        print(
            f"fuzz: {sum(outcomes.values())} examples in {time.monotonic() - start:.0f} s, "
            f"outcomes {dict(outcomes)}, kinds {kinds}, "
            f"{'capped at 3 GB' if capped else 'no address-space cap'}, peak "
            f"{peak_mib():.0f} MiB"
        )
        for f in failures[:5]:
            print("FAILURE", f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
