#!/usr/bin/env bash
# Launch KernelGym training with verl.
#   train/launch.sh tiny|grpo|drpo|multiturn|sft [hydra overrides...]
# Environment: KG_DATA (data directory, default ./data/kernelgym), KG_DIFFICULTIES (1-5), KG_N (tasks
# per difficulty, 200), KG_VAL_N (8), KG_SIZES (tiny), KG_SFT_POLICY (compiler), NPROC (GPUs for SFT, 8).
# Needs the `train` extra (verl, vllm, ...): pip install -e '.[train]'.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUN=${1:-tiny}
shift || true
DATA=${KG_DATA:-$ROOT/data/kernelgym}
PY=${PYTHON:-python3}

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# Every verl process (driver, Ray actors) imports this on `import verl`: it registers the DRPO
# advantage estimator, the multi-turn agent loop and the curriculum sampler.
export VERL_USE_EXTERNAL_MODULES=train.verl.register

build() {
    if [ ! -f "$DATA/train.parquet" ]; then
        "$PY" -m train.build_dataset --difficulties "${KG_DIFFICULTIES:-1-5}" --n "${KG_N:-200}" \
            --val-n "${KG_VAL_N:-8}" --sizes "${KG_SIZES:-tiny}" --out "$DATA" "$@"
    fi
}

case "$RUN" in
    tiny) CONFIG=kernelgym_tiny_1gpu ;;
    grpo) CONFIG=kernelgym_7b_grpo ;;
    drpo) CONFIG=kernelgym_7b_drpo ;;
    multiturn) CONFIG=kernelgym_7b_multiturn ;;
    sft)
        if [ ! -f "$DATA/sft_train.parquet" ]; then
            "$PY" -m train.build_dataset --difficulties "${KG_DIFFICULTIES:-1-5}" --n "${KG_N:-200}" \
                --sizes "${KG_SIZES:-tiny}" --sft --policy "${KG_SFT_POLICY:-compiler}" --out "$DATA"
        fi
        exec torchrun --standalone --nnodes=1 --nproc_per_node="${NPROC:-8}" -m verl.trainer.sft_trainer \
            --config-path "$ROOT/train/configs" --config-name sft_7b \
            data.train_files="$DATA/sft_train.parquet" data.val_files="$DATA/sft_train.parquet" "$@" ;;
    *) echo "usage: $0 tiny|grpo|drpo|multiturn|sft [hydra overrides...]" >&2; exit 2 ;;
esac

build
exec "$PY" -m verl.trainer.main_ppo --config-path "$ROOT/train/configs" --config-name "$CONFIG" \
    data.train_files="$DATA/train.parquet" data.val_files="$DATA/val.parquet" "$@"
