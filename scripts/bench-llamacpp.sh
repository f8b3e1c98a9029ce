#!/usr/bin/env bash
# bench-llamacpp.sh BUILD_DIR — attnd's decode in each weight format beside
# llama.cpp's F32, Q8_0 and Q4_0 on the same shapes, alternated in one run.
#
# llama.cpp is not part of this project: give a local checkout in
# LLAMA_CPP_DIR (built there with cmake into build/, or built here on first
# use: about 15 minutes on two cores).  Without it this script says so and
# exits 0; `make bench` then has only PEERS.md's F32 figures to compare with.
#
# For each shape (15M, 110M; SHAPES to change): a random llama2.c model from
# `attn random --format llama2c`, converted to GGUF F32 by llama.cpp's own
# llama-convert-llama2c-to-ggml (with llama2.c's tokenizer from
# ../shared/fixtures) and quantised to Q8_0 and Q4_0 by llama-quantize.
# Then ROUNDS rounds, each: llama-bench (tg128, 1 repetition, each of the
# three files, each thread count) and `attn bench-weights --rounds 1`
# (decode of 128 tokens from a random model of the same shape in f32, bf16,
# q8, q4).  Medians over the rounds, and attnd / llama.cpp per format pair
# (f32/F32, q8/Q8_0, q4/Q4_0).  JSON lines in BUILD_DIR/bench-llamacpp.jsonl.
set -euo pipefail

BUILD=${1:?usage: scripts/bench-llamacpp.sh BUILD_DIR}
ATTN=$BUILD/attn
LL=${LLAMA_CPP_DIR:-}
ROUNDS=${ROUNDS:-5}
SHAPES=${SHAPES:-"15M 110M"}
THREADS=${THREADS:-"1 2"}
TOKENIZER=${TOKENIZER:-$(cd "$(dirname "$0")/.." && pwd)/../shared/fixtures/llama2c-tokenizer.bin}

if [ -z "$LL" ] || [ ! -d "$LL" ]; then
  echo "bench-llamacpp: LLAMA_CPP_DIR is not set to a llama.cpp checkout; skipped" >&2
  exit 0
fi
[ -x "$ATTN" ] || { echo "bench-llamacpp: $ATTN not found; build first" >&2; exit 1; }
[ -f "$TOKENIZER" ] || { echo "bench-llamacpp: no tokenizer at $TOKENIZER" >&2; exit 1; }

LB=$LL/build/bin
if [ ! -x "$LB/llama-bench" ] || [ ! -x "$LB/llama-quantize" ] ||
   [ ! -x "$LB/llama-convert-llama2c-to-ggml" ]; then
  echo "bench-llamacpp: building llama.cpp in $LL/build" >&2
  cmake -S "$LL" -B "$LL/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF >&2
  cmake --build "$LL/build" -j "$(nproc)" \
    --target llama-bench llama-quantize llama-convert-llama2c-to-ggml >&2
fi

WORK=$BUILD/bench-llamacpp
OUT=$BUILD/bench-llamacpp.jsonl
mkdir -p "$WORK"
: >"$OUT"

shape_args() {
  case $1 in
    15M) echo "--dim 288 --hidden 768 --layers 6 --heads 6 --kv-heads 6 --vocab 32000 --seq-len 256" ;;
    110M) echo "--dim 768 --hidden 2048 --layers 12 --heads 12 --kv-heads 12 --vocab 32000 --seq-len 1024" ;;
    *) echo "bench-llamacpp: unknown shape $1" >&2; exit 1 ;;
  esac
}

for shape in $SHAPES; do
  bin=$WORK/$shape.bin
  if [ ! -f "$WORK/$shape-q4_0.gguf" ]; then
    # shellcheck disable=SC2046
    "$ATTN" random --out "$bin" $(shape_args "$shape") --seed 1 --format llama2c
    "$LB/llama-convert-llama2c-to-ggml" --copy-vocab-from-model "$TOKENIZER" \
      --llama2c-model "$bin" --llama2c-output-model "$WORK/$shape-f32.gguf" >/dev/null 2>&1
    for q in q8_0 q4_0; do
      "$LB/llama-quantize" "$WORK/$shape-f32.gguf" "$WORK/$shape-$q.gguf" "${q^^}" >/dev/null 2>&1
    done
  fi
  tlist=$(echo "$THREADS" | tr ' ' ',')
  for r in $(seq 1 "$ROUNDS"); do
    echo "[$shape] round $r/$ROUNDS" >&2
    for q in f32 q8_0 q4_0; do
      "$LB/llama-bench" -m "$WORK/$shape-$q.gguf" -p 0 -n 128 -t "$tlist" -r 1 -o jsonl 2>/dev/null |
        python3 -c '
import json, sys
shape, q, rnd = sys.argv[1:4]
for line in sys.stdin:
    if line.strip():
        d = json.loads(line)
        print(json.dumps({"bench": "llamacpp", "shape": shape, "format": q, "round": int(rnd),
                          "threads": d["n_threads"], "tokens_per_s": d["avg_ts"]}))' \
          "$shape" "$q" "$r" >>"$OUT"
    done
    "$ATTN" bench-weights --shape "$shape" --threads "$tlist" --rounds 1 --decode-tokens 128 --only decode \
      --prompt-tokens 16 2>/dev/null |
      python3 -c '
import json, sys
rnd = sys.argv[1]
for line in sys.stdin:
    d = json.loads(line)
    print(json.dumps({"bench": "attnd", "shape": d["shape"], "format": d["format"], "round": int(rnd),
                      "threads": d["threads"], "tokens_per_s": d["decode_tokens_per_s"],
                      "bytes_per_token": d["bytes_per_token"]}))' "$r" >>"$OUT"
  done
done

python3 - "$OUT" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
med = {}
for r in rows:
    med.setdefault((r["bench"], r["shape"], r["format"], r["threads"]), []).append(r["tokens_per_s"])
med = {k: statistics.median(v) for k, v in med.items()}
pairs = [("f32", "f32"), ("bf16", None), ("q8", "q8_0"), ("q4", "q4_0")]
print("## attnd beside llama.cpp: decode tokens/s (tg128), medians of alternated rounds\n")
print("| shape | threads | attnd f32 | llama.cpp F32 | attnd bf16 | attnd q8 | llama.cpp Q8_0 "
      "| q8 / Q8_0 | attnd q4 | llama.cpp Q4_0 | q4 / Q4_0 | q8 / attnd f32 |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
shapes = sorted({k[1] for k in med}, key=lambda s: float(s.rstrip("M")))
threads = sorted({k[3] for k in med})
for s in shapes:
    for t in threads:
        a = lambda f: med.get(("attnd", s, f, t))
        l = lambda f: med.get(("llamacpp", s, f, t))
        n = lambda v: "-" if v is None else f"{v:,.1f}"
        x = lambda p, q: "-" if not p or not q else f"{p / q:.2f}x"
        print(f"| {s} | {t} | {n(a('f32'))} | {n(l('f32'))} | {n(a('bf16'))} | {n(a('q8'))} "
              f"| {n(l('q8_0'))} | {x(a('q8'), l('q8_0'))} | {n(a('q4'))} | {n(l('q4_0'))} "
              f"| {x(a('q4'), l('q4_0'))} | {x(a('q8'), a('f32'))} |")
EOF
