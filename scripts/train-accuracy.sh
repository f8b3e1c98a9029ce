#!/usr/bin/env bash
# train-accuracy.sh BUILD_DIR — steps and seconds to 90% and 99% held-out
# MQAR accuracy: attnd's trainer (`attn train`) beside PyTorch
# (tests/bench/train_torch.py mqar), the same data generator (bit for bit),
# model, initial distribution, optimiser and schedule: the recipe of
# models/recall-mqar8.safetensors (scripts/train-defaults.sh), evaluated
# every 50 steps on 1000 held-out sequences, one thread each, one after the
# other.  Prints one JSON line per implementation ("bench":
# "time_to_accuracy"); `TRAIN_ACCURACY=1 make bench` calls it.  Without
# python3-torch only attnd's line is printed.
set -euo pipefail
BUILD=${1:?usage: scripts/train-accuracy.sh BUILD_DIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STEPS=${STEPS:-1500}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
RECIPE=(--n-pairs 8 --n-keys 64 --n-values 64 --absent-fraction 0.2 --min-pairs 1
        --dim 64 --layers 2 --heads 2 --hidden 256 --seq-len 64 --steps "$STEPS"
        --learning-rate 1e-3 --warmup-steps 100 --min-lr-ratio 0.1 --weight-decay 0.1
        --grad-clip 1 --seed 1)

"$BUILD/attn" train --task recall "${RECIPE[@]}" --batch-size 64 --threads 1 \
  --eval-every 50 --eval-sequences 1000 --out "$TMP/m.safetensors" --log "$TMP/log.csv" \
  >/dev/null 2>"$TMP/err" || { cat "$TMP/err" >&2; exit 1; }
python3 - "$TMP/log.csv" <<'PY'
import csv, json, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r.get("accuracy")]
out = {"bench": "time_to_accuracy", "impl": "attnd", "threads": 1}
for th, key in ((0.9, "90"), (0.99, "99")):
    hit = next((r for r in rows if float(r["accuracy"]) >= th), None)
    out["steps_to_" + key] = int(hit["step"]) if hit else None
    out["seconds_to_" + key] = round(float(hit["seconds"]), 1) if hit else None
out["final_accuracy"] = float(rows[-1]["accuracy"]) if rows else None
print(json.dumps(out))
PY

if /usr/bin/python3 -c "import torch" 2>/dev/null; then
  /usr/bin/python3 "$ROOT/tests/bench/train_torch.py" mqar --n-pairs 8 --n-keys 64 --n-values 64 \
    --absent-fraction 0.2 --min-pairs 1 --dim 64 --layers 2 --heads 2 --hidden 256 --seq-len 64 \
    --steps "$STEPS" --lr 1e-3 --warmup 100 --min-lr-ratio 0.1 --weight-decay 0.1 --clip 1 \
    --seed 1 --batch 64 --threads 1 --eval-every 50 --eval-sequences 1000 >"$TMP/torch.jsonl"
  python3 - "$TMP/torch.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
s = next(r for r in rows if r.get("summary"))
out = {"bench": "time_to_accuracy", "impl": "pytorch", "threads": 1}
for key, first in (("90", s.get("first_90")), ("99", s.get("first_99"))):
    out["steps_to_" + key] = first["step"] if first else None
    out["seconds_to_" + key] = first["wall_s"] if first else None
out["final_accuracy"] = (s.get("final") or {}).get("accuracy")
print(json.dumps(out))
PY
fi
