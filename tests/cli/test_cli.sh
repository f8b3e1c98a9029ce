#!/usr/bin/env bash
# test_cli.sh ATTN — the attn command line, run as a user would run it.
# Prints "N passed, N failed" and exits non-zero on any failure.
set -u
ATTN=${1:?usage: test_cli.sh path/to/attn}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   - $1"; }
ko() { fail=$((fail + 1)); echo "FAIL - $1"; }
expect_status() { # want desc cmd...
  local want=$1 desc=$2; shift 2
  "$@" >"$TMP/out" 2>"$TMP/err"; local got=$?
  if [ "$got" -eq "$want" ]; then ok "$desc"; else ko "$desc (exit $got, want $want)"; sed 's/^/    /' "$TMP/err" | head -5; fi
}

# bad arguments: usage and exit 2
expect_status 2 "no command" "$ATTN"
expect_status 2 "unknown command" "$ATTN" frobnicate
expect_status 2 "generate without --model" "$ATTN" generate --prompt hi
expect_status 2 "generate with a bad -n" "$ATTN" generate --model x -n -3
expect_status 2 "generate with a bad --top-p" "$ATTN" generate --model x --top-p 0
expect_status 2 "generate with a bad --temperature" "$ATTN" generate --model x --temperature hot
expect_status 2 "random without --out" "$ATTN" random --dim 16
expect_status 2 "random with an unknown option" "$ATTN" random --out "$TMP/x" --wings 2
expect_status 2 "random with an invalid shape" "$ATTN" random --out "$TMP/x" --dim 30 --heads 4
expect_status 0 "help" "$ATTN" --help
grep -q "attn generate" "$TMP/out" && ok "help lists generate" || ko "help lists generate"

# a missing or corrupt model is an error, not a crash
expect_status 1 "missing model file" "$ATTN" generate --model "$TMP/none.safetensors" --prompt hi
head -c 1000 /dev/urandom >"$TMP/junk.bin"
expect_status 1 "corrupt model file" "$ATTN" generate --model "$TMP/junk.bin" --prompt hi

# a byte-level safetensors model
expect_status 0 "random safetensors model" "$ATTN" random --out "$TMP/b.safetensors" --dim 64 \
  --hidden 128 --layers 2 --heads 4 --kv-heads 2 --vocab 258 --seq-len 96 --seed 3
expect_status 0 "greedy generation" "$ATTN" generate --model "$TMP/b.safetensors" --prompt "hello" \
  -n 20 --temperature 0 --print-ids
cp "$TMP/out" "$TMP/g1"
n=$(wc -w <"$TMP/g1")
[ "$n" -ge 1 ] && [ "$n" -le 20 ] && ok "greedy produced 1..20 ids ($n)" || ko "greedy produced $n ids"
"$ATTN" generate --model "$TMP/b.safetensors" --prompt "hello" -n 20 --temperature 0 --print-ids --threads 2 >"$TMP/g2" 2>/dev/null
cmp -s "$TMP/g1" "$TMP/g2" && ok "greedy is the same on 2 threads" || ko "greedy differs on 2 threads"
"$ATTN" generate --model "$TMP/b.safetensors" --prompt "hello" -n 20 --temperature 1.5 --top-k 1 --print-ids >"$TMP/g3" 2>/dev/null
cmp -s "$TMP/g1" "$TMP/g3" && ok "top-k 1 equals greedy" || ko "top-k 1 differs from greedy"
for i in 1 2; do
  "$ATTN" generate --model "$TMP/b.safetensors" --prompt "hello" -n 30 --temperature 1 --top-p 0.9 --seed 42 --print-ids >"$TMP/s$i" 2>/dev/null
done
cmp -s "$TMP/s1" "$TMP/s2" && ok "same seed, same tokens" || ko "same seed gave different tokens"
expect_status 0 "text output" "$ATTN" generate --model "$TMP/b.safetensors" --prompt "hello" -n 10 --temperature 0

# a hybrid model (a linear-attention layer, then softmax): made, generated with
expect_status 0 "random hybrid mixer model" "$ATTN" random --out "$TMP/mix.safetensors" --dim 64 \
  --hidden 128 --layers 2 --heads 4 --kv-heads 2 --vocab 258 --seq-len 96 --seed 3 \
  --mixer linear,softmax --feature-dim 8
expect_status 0 "hybrid greedy generation" "$ATTN" generate --model "$TMP/mix.safetensors" \
  --prompt "hello" -n 20 --temperature 0 --print-ids
n=$(wc -w <"$TMP/out")
[ "$n" -ge 1 ] && [ "$n" -le 20 ] && ok "hybrid greedy produced 1..20 ids ($n)" || ko "hybrid greedy produced $n ids"
expect_status 2 "random with an unknown mixer" "$ATTN" random --out "$TMP/x" --layers 2 --mixer linear,rnn
expect_status 2 "random with a mixer list of the wrong length" "$ATTN" random --out "$TMP/x" --layers 3 --mixer linear,softmax
expect_status 1 "hybrid model as llama2.c is refused" "$ATTN" random --out "$TMP/mix.bin" --dim 64 \
  --hidden 128 --layers 2 --heads 4 --kv-heads 2 --vocab 258 --seq-len 32 --mixer linear
grep -q "llama2.c files cannot hold linear" "$TMP/err" && ok "llama2.c refusal names the mixer" || ko "llama2.c refusal message"

# a llama2.c model: export, import, and its tokenizer
expect_status 0 "random llama2.c model" "$ATTN" random --out "$TMP/l.bin" --dim 64 --hidden 128 \
  --layers 2 --heads 4 --kv-heads 2 --vocab 512 --seq-len 64 --seed 5 --format llama2c
size=$(stat -c %s "$TMP/l.bin")
want=$(( 28 + 4 * (512*64 + 2*64 + 2*64*64 + 2*2*32*64 + 2*64*64 + 2*64 + 3*2*128*64 + 64 + 64*16) ))
[ "$size" -eq "$want" ] && ok "llama2.c file size ($size)" || ko "llama2.c file size $size, want $want"
expect_status 1 "llama2.c model without its tokenizer" "$ATTN" generate --model "$TMP/l.bin" --prompt hi
TOK="${ATTND_SHARED_DIR:-../shared}/fixtures/llama2c-tokenizer.bin"
if [ -r "$TOK" ]; then
  expect_status 0 "random 32000-vocab llama2.c model" "$ATTN" random --out "$TMP/l32.bin" --dim 64 \
    --hidden 128 --layers 2 --heads 4 --kv-heads 4 --vocab 32000 --seq-len 64 --seed 5
  expect_status 0 "llama2.c model with tokenizer.bin" "$ATTN" generate --model "$TMP/l32.bin" \
    --tokenizer "$TOK" --prompt "Once upon a time" -n 16 --temperature 0
  grep -q "prompt 5 tokens" "$TMP/err" && ok "prompt encoded as BOS + 4 tokens" || ko "prompt token count: $(cat "$TMP/err")"
else
  echo "skip - llama2.c tokenizer fixture absent ($TOK)"
fi

# attn train: bad arguments, a small recall run, resume from --state, text
expect_status 2 "train without --task" "$ATTN" train --out "$TMP/t.safetensors"
expect_status 2 "train with a bad --task" "$ATTN" train --task poetry --out "$TMP/t.safetensors"
expect_status 2 "train with a bad --learning-rate" "$ATTN" train --task recall --out "$TMP/t.safetensors" --learning-rate -1
expect_status 2 "train text without --corpus" "$ATTN" train --task text --out "$TMP/t.safetensors"
expect_status 2 "train with n_pairs > n_keys" "$ATTN" train --task recall --out "$TMP/t.safetensors" --n-pairs 9 --n-keys 8
expect_status 1 "train text with a missing corpus" "$ATTN" train --task text --corpus "$TMP/none.txt" --out "$TMP/t.safetensors"
RECALL=(train --task recall --n-pairs 4 --n-keys 16 --n-values 16 --seq-len 24 --dim 32 --layers 2
        --heads 2 --hidden 64 --batch-size 8 --steps 40 --warmup-steps 4 --learning-rate 3e-3
        --eval-sequences 64 --seed 7)
expect_status 0 "train a small recall model" "$ATTN" "${RECALL[@]}" --out "$TMP/r.safetensors" --log "$TMP/r.csv"
cp "$TMP/out" "$TMP/r_full.json"
[ "$(wc -l <"$TMP/r.csv")" -eq 41 ] && ok "loss log: header + a line per step" || ko "loss log has $(wc -l <"$TMP/r.csv") lines"
grep -q '"accuracy"' "$TMP/r_full.json" && ok "train prints its final evaluation" || ko "no evaluation: $(cat "$TMP/r_full.json")"
first=$(sed -n 2p "$TMP/r.csv" | cut -d, -f2); last=$(tail -1 "$TMP/r.csv" | cut -d, -f2)
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a) }' && ok "loss falls ($first -> $last)" || ko "loss did not fall ($first -> $last)"
# interrupted at step 20 (a run of 20 steps with the same schedule is not the
# same: so stop by --steps 40 and a state written at 20, then resume)
"$ATTN" "${RECALL[@]}" --out "$TMP/r2.safetensors" --state "$TMP/r2.state" --checkpoint-every 20 >/dev/null 2>&1
expect_status 0 "train resumes from --state" "$ATTN" "${RECALL[@]}" --out "$TMP/r3.safetensors" --state "$TMP/r2.state" --checkpoint-every 20
grep -q "resuming from" "$TMP/err" && ok "resume is announced" || ko "no resume: $(head -3 "$TMP/err")"
cmp -s "$TMP/r.safetensors" "$TMP/r3.safetensors" && ok "resumed model == uninterrupted model, byte for byte" || ko "resumed model differs"
expect_status 1 "generate refuses a recall model (its vocabulary is not text)" "$ATTN" generate --model "$TMP/r.safetensors" --prompt "hi" -n 2
# the data generator, dumped
expect_status 0 "dump a batch" "$ATTN" "${RECALL[@]}" --dump-batch 3
[ "$(wc -l <"$TMP/out")" -eq 8 ] && ok "dump: one line per sequence" || ko "dump has $(wc -l <"$TMP/out") lines"
# the PyTorch reference rebuilds the same sequences (its generator is plain
# Python: no torch needed for this)
PYREF="$(dirname "$0")/../bench/train_torch.py"
if /usr/bin/python3 "$PYREF" dump --help >/dev/null 2>&1; then
  /usr/bin/python3 "$PYREF" dump mqar --seed 7 --step 3 --batch 8 --n-pairs 4 --n-keys 16 \
    --n-values 16 --seq-len 24 --absent-fraction 0.2 2>"$TMP/py_err" |
    awk '/^in /{sub(/^in /,""); x=$0; next} /^tgt /{sub(/^tgt /,""); print x " | " $0}' >"$TMP/py_dump"
  cmp -s "$TMP/out" "$TMP/py_dump" && ok "the PyTorch reference's generator gives the same batch" ||
    ko "python generator differs: $(head -2 "$TMP/py_err")"
else
  echo "skip - $PYREF dump does not run here"
fi
head -c 20000 /dev/urandom | base64 >"$TMP/corpus.txt"
expect_status 0 "train a small text model" "$ATTN" train --task text --corpus "$TMP/corpus.txt" \
  --out "$TMP/x.safetensors" --dim 32 --layers 1 --heads 2 --seq-len 32 --batch-size 4 --steps 20
grep -q '"bits_per_byte"' "$TMP/out" && ok "text run reports bits per byte" || ko "no bits per byte: $(cat "$TMP/out")"
cp "$TMP/out" "$TMP/x_train.json"
expect_status 0 "a trained text model generates" "$ATTN" generate --model "$TMP/x.safetensors" --prompt "ab" -n 8

# quantised models: attn quantize, generate --weights, attn eval
expect_status 2 "quantize without --format" "$ATTN" quantize --in "$TMP/b.safetensors" --out "$TMP/q.safetensors"
expect_status 2 "quantize to f32" "$ATTN" quantize --in "$TMP/b.safetensors" --out "$TMP/q.safetensors" --format f32
expect_status 2 "generate with a bad --weights" "$ATTN" generate --model "$TMP/b.safetensors" --weights q5
expect_status 1 "quantize into a llama2.c file" "$ATTN" quantize --in "$TMP/b.safetensors" --out "$TMP/q.bin" --format q8
for f in bf16 q8 q4; do
  expect_status 0 "quantize to $f" "$ATTN" quantize --in "$TMP/b.safetensors" --out "$TMP/b_$f.safetensors" --format $f
  [ "$(stat -c %s "$TMP/b_$f.safetensors")" -lt "$(stat -c %s "$TMP/b.safetensors")" ] &&
    ok "the $f file is smaller" || ko "the $f file is not smaller"
  "$ATTN" generate --model "$TMP/b_$f.safetensors" --prompt "hello" -n 40 --temperature 0 --print-ids >"$TMP/gq1" 2>"$TMP/err"
  "$ATTN" generate --model "$TMP/b.safetensors" --weights $f --prompt "hello" -n 40 --temperature 0 --print-ids >"$TMP/gq2" 2>>"$TMP/err"
  [ -s "$TMP/gq1" ] && cmp -s "$TMP/gq1" "$TMP/gq2" && ok "$f file generates as --weights $f of the original" ||
    ko "$f file and --weights $f differ: $(head -c 200 "$TMP/gq1") / $(head -c 200 "$TMP/gq2") $(head -3 "$TMP/err")"
  expect_status 0 "generate --weights $f of a $f file" "$ATTN" generate --model "$TMP/b_$f.safetensors" --weights $f --prompt hi -n 4
done
expect_status 1 "quantize a quantised file" "$ATTN" quantize --in "$TMP/b_q8.safetensors" --out "$TMP/q.safetensors" --format q4
expect_status 1 "generate --weights f32 of a q8 file" "$ATTN" generate --model "$TMP/b_q8.safetensors" --weights f32 --prompt hi
"$ATTN" random --out "$TMP/odd.safetensors" --dim 48 --hidden 96 --layers 1 --heads 4 --kv-heads 4 --vocab 258 --seq-len 32 >/dev/null 2>&1
expect_status 1 "q8 of a dim-48 model" "$ATTN" generate --model "$TMP/odd.safetensors" --weights q8 --prompt hi
grep -q "multiples of 32" "$TMP/err" && ok "the error says why" || ko "error: $(cat "$TMP/err")"
expect_status 2 "eval without a mode" "$ATTN" eval --model "$TMP/x.safetensors"
expect_status 2 "eval with a bad --weights" "$ATTN" eval --model "$TMP/x.safetensors" --mqar --weights q8,q3
# bits per byte: the inference forward against the trainer's (the reference)
# and against attn train's own final evaluation of the same held-out tail
expect_status 0 "eval --text" "$ATTN" eval --model "$TMP/x.safetensors" --text "$TMP/corpus.txt" --eval-fraction 0.1 --trainer
read -r bpb tbpb < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["bits_per_byte"], d["trainer_bits_per_byte"])' "$TMP/out")
trained=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    if "bits_per_byte" in l: d=json.loads(l)
print(d.get("bits_per_byte") or d["eval"]["bits_per_byte"])' "$TMP/x_train.json" 2>/dev/null)
awk -v a="$bpb" -v b="$tbpb" 'BEGIN { exit !(a > 0.5 && a < 20 && (a - b)^2 < 1e-10) }' &&
  ok "eval: $bpb bits per byte, the trainer's forward $tbpb" || ko "eval $bpb vs trainer $tbpb"
awk -v a="$bpb" -v b="$trained" 'BEGIN { exit !((a - b)^2 < 1e-8) }' &&
  ok "eval equals attn train's final evaluation ($trained)" || ko "eval $bpb vs attn train's $trained"
expect_status 0 "eval --text --decode in each format" "$ATTN" eval --model "$TMP/x.safetensors" --text "$TMP/corpus.txt" --eval-fraction 0.1 --decode --weights f32,bf16,q8,q4
[ "$(grep -c '"bits_per_byte"' "$TMP/out")" -eq 4 ] && ok "one line per format" || ko "eval output: $(cat "$TMP/out")"
read -r d32 < <(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["bits_per_byte"])' "$TMP/out")
awk -v a="$bpb" -v b="$d32" 'BEGIN { exit !((a - b)^2 < 1e-8) }' && ok "decode path == prefill path in f32" || ko "decode $d32 vs prefill $bpb"
# MQAR accuracy: the inference forward against the trainer's and training's
expect_status 0 "eval --mqar" "$ATTN" eval --model "$TMP/r.safetensors" --mqar --sequences 64 --seed 7 --trainer --weights f32,q8
python3 - "$TMP/out" "$TMP/r_full.json" <<'PY' && ok "mqar accuracy equals the trainer's and attn train's" || ko "mqar: $(cat "$TMP/out")"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
train = [json.loads(l) for l in open(sys.argv[2]) if '"accuracy"' in l][-1]
acc = train.get("accuracy", train.get("eval", {}).get("accuracy"))
assert rows[0]["accuracy"] == rows[0]["trainer_accuracy"] and rows[0]["queries"] == rows[0]["trainer_queries"], rows[0]
assert abs(rows[0]["accuracy"] - acc) < 1e-5, (rows[0], acc)
assert rows[1]["weights"] == "q8" and 0 <= rows[1]["accuracy"] <= 1
PY
expect_status 1 "quantize refuses a recall model" "$ATTN" quantize --in "$TMP/r.safetensors" --out "$TMP/rq.safetensors" --format q8
expect_status 0 "eval --agree" "$ATTN" eval --model "$TMP/b.safetensors" --agree --tokens 150
[ "$(grep -c '"top1_agreement"' "$TMP/out")" -eq 3 ] && ok "agreement for bf16, q8, q4" || ko "agree output: $(cat "$TMP/out")"
expect_status 1 "eval --agree needs a float32 model" "$ATTN" eval --model "$TMP/b_q8.safetensors" --agree --tokens 10
expect_status 1 "eval --mqar of a text model" "$ATTN" eval --model "$TMP/x.safetensors" --mqar
expect_status 0 "bench-train runs" "$ATTN" bench-train --steps 1 --threads 1 --configs mqar
grep -q '"step_ms_median"' "$TMP/out" && ok "bench-train prints step times" || ko "bench-train output: $(cat "$TMP/out")"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
