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

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
