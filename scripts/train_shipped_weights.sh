#!/usr/bin/env bash
# Re-make the shipped weights src/napari_vnet/weights/{vnet,unet3d,vox2vox}-phantom.pt
# with napari-vnet's own CLI, on CPU:
#   1. synthetic training phantoms (seeds 0-15) and unseen test phantoms (seeds 100-107)
#      written by sample_data/make_sample.py (napari_vnet.phantoms.make_phantom);
#   2. `napari-vnet train` for V-Net, 3D U-Net and Vox2Vox (small widths, batch norm so
#      that inference may use whole-volume windows), MINUTES each, PARALLEL at once;
#   3. the card's recommended inference window is set to 48 x 96 x 96 (one pass per
#      phantom), then `napari-vnet predict` + `napari-vnet evaluate` on the test phantoms,
#      and the Dice, training data and classes are written into each card;
#   4. the finished files are copied into src/napari_vnet/weights/.
#
# Usage: scripts/train_shipped_weights.sh            (from the repository root)
#   env: MINUTES=35 PARALLEL=1 DATA=/tmp/napari-vnet-phantoms PYTHON=python NV=napari-vnet
#        MODELS="vnet unet3d vox2vox" STAGES="data train finish install" (+ "refine"
#        with REFINE="ARCH ...": see 2b)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
NV=${NV:-napari-vnet}
DATA=${DATA:-/tmp/napari-vnet-phantoms}
MINUTES=${MINUTES:-35}
PARALLEL=${PARALLEL:-1}
MODELS=${MODELS:-"vnet unet3d vox2vox"}
STAGES=${STAGES:-"data train finish install"}
TRAIN_SEEDS=0-15
TEST_SEEDS=100-107
DEST=src/napari_vnet/weights
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # several runs share the CPU politely

stage() { [[ " $STAGES " == *" $1 "* ]]; }

# 1. data ---------------------------------------------------------------------------
if stage data; then
    "$PYTHON" sample_data/make_sample.py --out "$DATA/train" --seeds "$TRAIN_SEEDS" >/dev/null
    "$PYTHON" sample_data/make_sample.py --out "$DATA/test" --seeds "$TEST_SEEDS" >/dev/null
fi
pairs=()
for ct in "$DATA"/train/phantom_*_ct.nii.gz; do
    pairs+=(--image "$ct" --labels "${ct%_ct.nii.gz}_labels.nii.gz")
done
n_train=$(( ${#pairs[@]} / 4 ))

# 2. training -----------------------------------------------------------------------
common=(
    --classes 1=liver,2=spleen,3=kidneys,4=spine
    --spacing 4 2.5 2.5
    --normalization window:-200:400
    --patch-size 32 48 48 --batch-size 2
    --schedule poly
    --device cpu --seed 0 --json
)
arch_kwargs() {
    case $1 in
        vnet) echo '{"channels": [8, 16, 32, 64], "kernel_size": 3, "norm": "batch"}' ;;
        unet3d) echo '{"channels": [8, 16, 32, 64], "norm": "instance"}' ;;
        vox2vox) echo '{"channels": [8, 16, 32, 64], "norm": "batch"}' ;;
    esac
}
# peak learning rate 3e-3 (Vox2Vox 2e-3). Vox2Vox: generator loss = LSGAN + lambda *
# (generalized Dice + cross entropy). The paper has lambda = 5 and no cross entropy. Without
# cross entropy (lambda 5 or 50) liver and spleen collapsed to probability ~0 early on and
# never came back (Dice 0.000: a Dice gradient vanishes through a saturated softmax, a
# cross-entropy gradient does not), so --gan-ce-weight 1 (the package default); lambda = 50
# lets the segmentation terms lead the adversarial one in this short CPU budget.
extra() {
    case $1 in
        vox2vox) echo --lr 2e-3 --gan-lambda 50 --gan-ce-weight 1 \
            --minutes "${VOX2VOX_MINUTES:-45}" ;;
        unet3d) echo --lr 3e-3 --minutes "${UNET3D_MINUTES:-20}" ;;
        *) echo --lr 3e-3 --minutes "$MINUTES" ;;
    esac
}
train() {
    local arch=$1
    # shellcheck disable=SC2046
    "$NV" -v train --arch "$arch" --arch-kwargs "$(arch_kwargs "$arch")" $(extra "$arch") \
        "${pairs[@]}" "${common[@]}" --out "$DATA/$arch-phantom.pt" \
        >"$DATA/$arch-train.log" 2>&1
}
if stage train && [ "$PARALLEL" = 1 ]; then
    pids=()
    for arch in $MODELS; do train "$arch" & pids+=($!); done
    for pid in "${pids[@]}"; do wait "$pid"; done
elif stage train; then
    for arch in $MODELS; do train "$arch"; done
fi

# 2b. optional refinement: continue training a model from its own weights (fine-tune
#     mode of the same CLI, same data) when its first run fell short; REFINE="unet3d ..."
refine() {
    local arch=$1 w="$DATA/$1-phantom.pt"
    mv "$w" "$DATA/$arch-phantom-base.pt"
    "$NV" -v train --weights "$DATA/$arch-phantom-base.pt" "${pairs[@]}" \
        --patch-size 32 48 48 --batch-size 2 --lr "${REFINE_LR:-1e-3}" --schedule poly \
        --minutes "${REFINE_MINUTES:-15}" --device cpu --seed 1 --json --out "$w" \
        >"$DATA/$arch-refine.log" 2>&1
}
if stage refine; then
    pids=()
    for arch in ${REFINE:-}; do refine "$arch" & pids+=($!); done
    for pid in "${pids[@]}"; do wait "$pid"; done
fi

# 3. inference window, evaluation on unseen phantoms, card -----------------------------
declare -A NAMES=([vnet]="V-Net" [unet3d]="3D U-Net" [vox2vox]="Vox2Vox (generator)")
finish() {
    local arch=$1 w="$DATA/$1-phantom.pt" evals=()
    # whole-volume windows where the statistics do not depend on the window (batch norm);
    # instance norm (3D U-Net) keeps the training patch
    if [ "$arch" = unet3d ]; then
        "$PYTHON" scripts/shipped_weights_card.py prepare "$w" --patch-size 32 48 48
    else
        "$PYTHON" scripts/shipped_weights_card.py prepare "$w" --patch-size 48 96 96
    fi
    for ct in "$DATA"/test/phantom_*_ct.nii.gz; do
        local gt="${ct%_ct.nii.gz}_labels.nii.gz" case
        case=$(basename "${ct%_ct.nii.gz}")
        "$NV" predict "$ct" --weights "$w" --out "$DATA/pred-$arch-$case.nii.gz" --overwrite \
            --device cpu >/dev/null
        "$NV" evaluate "$DATA/pred-$arch-$case.nii.gz" "$gt" --labels 1,2,3,4 --json \
            >"$DATA/eval-$arch-$case.json"
        evals+=("$DATA/eval-$arch-$case.json")
    done
    "$PYTHON" scripts/shipped_weights_card.py record "$w" --eval "${evals[@]}" \
        --name "${NAMES[$arch]}" --train-seeds "$TRAIN_SEEDS" --n-train "$n_train" \
        --test-seeds "$TEST_SEEDS" --min-dice 0.9 || echo "WARNING: $arch below the target"
}
if stage finish && [ "$PARALLEL" = 1 ]; then
    pids=()
    for arch in $MODELS; do finish "$arch" & pids+=($!); done
    for pid in "${pids[@]}"; do wait "$pid"; done
elif stage finish; then
    for arch in $MODELS; do finish "$arch"; done
fi

# 4. install ------------------------------------------------------------------------
if stage install; then
    for arch in $MODELS; do
        cp "$DATA/$arch-phantom.pt" "$DEST/.$arch-phantom.pt.tmp"
        mv "$DEST/.$arch-phantom.pt.tmp" "$DEST/$arch-phantom.pt"
        "$NV" info "$DEST/$arch-phantom.pt" | head -3
    done
fi
