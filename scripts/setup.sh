#!/usr/bin/env bash
# Set up napari-vnet on a fresh Debian/Ubuntu machine: system libraries for a real
# napari window (Xvfb + Mesa + Qt xcb), a virtual environment in .venv, the CPU build of
# torch first (bring your own CUDA build if you have a GPU), then the package with its
# `test` dependency group (PEP 735; pip >= 25.1). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0
libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0
libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1 libglib2.0-0"

if command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ]; then
        missing=$(dpkg-query -W -f='${Status} ${Package}\n' $APT_PACKAGES 2>/dev/null \
                  | grep -vc "install ok installed" || true)
        if ! dpkg-query -W $APT_PACKAGES >/dev/null 2>&1 || [ "$missing" != "0" ]; then
            echo "== apt-get: Xvfb, Mesa and Qt xcb libraries"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq
            apt-get install -y -qq --no-install-recommends $APT_PACKAGES >/dev/null
        fi
    else
        echo "== not root: make sure these Debian packages are installed: $APT_PACKAGES"
    fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
echo "== installing torch (CPU build unless a torch is already there)"
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q "torch==2.13.0"
fi
# pip learnt dependency groups (`--group`) in 25.1; Python's bundled pip may be older
# (a pip that is new enough is left as it is)
echo "== pip >= 25.1 (dependency groups)"
.venv/bin/python -m pip install -q "pip>=25.1"
echo "== installing napari-vnet (editable) with the test dependency group"
TORCH_HELD=$(.venv/bin/python -c "import torch; print(torch.__version__.split('+')[0])")
.venv/bin/python -m pip install -q "torch==$TORCH_HELD" --group test -e .
# Test oracles for foreign weights (nnU-Net v2). dynamic-network-architectures declares
# timm, which pulls torchvision and with it a multi-GB CUDA build of torch; the parts
# nnU-Net's planner, trainer and predictor use do not import timm. So the two packages are
# installed without their declared dependencies, and their other dependencies explicitly,
# with torch held at the version installed above.
echo "== installing the nnU-Net v2 test oracle (without timm/torchvision)"
TORCH_PIN=$(.venv/bin/python -c "import torch; print(torch.__version__.split('+')[0])")
.venv/bin/python -m pip install -q "torch==$TORCH_PIN" -r scripts/oracle-requirements.txt
.venv/bin/python -m pip install -q --no-deps "nnunetv2==2.8.1" "dynamic-network-architectures==0.4.4"
.venv/bin/python -c "import napari_vnet, torch, napari; print('napari-vnet', napari_vnet.__version__, '| torch', torch.__version__, '| napari', napari.__version__)"
# napari's reader preferences: File > Open and drag-and-drop read .nii.gz, .mha, .nrrd and
# DICOM folders with napari-vnet from the first time on (napari's builtin reader claims
# them too and cannot read them). A preference you set yourself is kept.
echo "== napari reader preferences (napari-vnet napari-readers)"
.venv/bin/napari-vnet napari-readers || echo "   (not set: napari asks 'Choose reader' once; pick napari V-Net)"
