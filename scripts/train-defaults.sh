#!/bin/sh
# train-defaults.sh — reproduces the bundled default models in models/:
#   models/recall-mqar8.safetensors  MQAR: 8 pairs over 64 keys and 64 values
#   models/text-kjv.safetensors      a byte-level model of the King James Bible
# with the same code attnd's POST /train runs (`attn train`).  Each run is
# deterministic for its seed and thread count; the loss logs go next to the
# models under build/train/.  Needs build/attn (make build) and, for the text
# model, Debian's bible-kjv (scripts/install-deps.sh installs it).
#
#   scripts/train-defaults.sh [recall|text|all]    (default all)
#
# SEED=N picks another seed (the bundled models use 1), OUT=DIR another
# directory: `SEED=7 OUT=/tmp/s7 scripts/train-defaults.sh recall` is how
# the recall recipe was checked on seeds 1-11.
set -eu
cd "$(dirname "$0")/.."
ATTN=${ATTN:-build/attn}
OUT=${OUT:-models}
SEED=${SEED:-1}
LOGS=build/train
mkdir -p "$LOGS" "$OUT"
what=${1:-all}

if [ "$what" = recall ] || [ "$what" = all ]; then
    "$ATTN" train --task recall --out "$OUT/recall-mqar8.safetensors" \
        --log "$LOGS/recall-mqar8.csv" \
        --n-pairs 8 --min-pairs 1 --n-keys 64 --n-values 64 --absent-fraction 0.2 \
        --dim 64 --layers 2 --heads 2 --hidden 256 \
        --steps 2000 --batch-size 64 --seq-len 64 \
        --learning-rate 1e-3 --warmup-steps 100 --min-lr-ratio 0.1 \
        --weight-decay 0.1 --grad-clip 1 --seed "$SEED" --threads 1 \
        --eval-every 250 --eval-sequences 2000
fi

if [ "$what" = text ] || [ "$what" = all ]; then
    corpus="$LOGS/kjv.txt"
    bible gen1:1-rev22:21 > "$corpus"
    "$ATTN" train --task text --corpus "$corpus" --out "$OUT/text-kjv.safetensors" \
        --log "$LOGS/text-kjv.csv" --eval-fraction 0.05 \
        --dim 128 --layers 4 --heads 4 --hidden 512 \
        --steps 3000 --batch-size 16 --seq-len 256 \
        --learning-rate 2e-3 --warmup-steps 100 --min-lr-ratio 0.1 \
        --weight-decay 0.1 --grad-clip 1 --seed "$SEED" --threads 1 \
        --eval-every 500 --eval-sequences 400
fi
