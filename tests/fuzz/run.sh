#!/usr/bin/env bash
# tests/fuzz/run.sh BUILD_DIR SECONDS [TARGET...] — what `make fuzz` runs.
#
# For each target (all of them by default), in order:
#   1. replays tests/fuzz/regressions/<target>/* (every crash ever found,
#      kept as a test) and the committed seed corpus;
#   2. fuzzes for SECONDS with libFuzzer: new inputs go to a scratch corpus
#      under BUILD_DIR/fuzz-work (the first corpus dir, the only one
#      libFuzzer writes), the committed tests/fuzz/corpus/<target> is read
#      only, so the tree stays clean.
# A crash, leak, timeout (10 s), OOM (2 GB) or failed property stops that
# target; its input is saved under BUILD_DIR/fuzz-work/artifacts/<target>/
# and its path printed, the other targets still run, and the script exits
# 1.  To keep a crash as a regression: fix it, then copy the input to
# tests/fuzz/regressions/<target>/ (ctest replays it from then on).
# Prints a table: executions, corpus (files and bytes) and time per target.
set -uo pipefail
build=${1:?usage: run.sh BUILD_DIR SECONDS [TARGET...]}
secs=${2:?usage: run.sh BUILD_DIR SECONDS [TARGET...]}
shift 2
here=$(cd "$(dirname "$0")" && pwd)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(safetensors llama2c tokenizer_bin byte_encode bpe_encode
  utf8_stream json_guard train_params generate recall train_record openai tgi)
work=$build/fuzz-work
mkdir -p "$work"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

dict_of() {
  case $1 in
    json_guard | train_params | generate | recall | train_record | openai | tgi) echo "-dict=$here/json.dict" ;;
    safetensors) echo "-dict=$here/safetensors.dict" ;;
  esac
}

failed=()
rows=()
t_all=$(date +%s)
for t in "${targets[@]}"; do
  bin=$build/fuzz/fuzz_$t
  seed=$here/corpus/$t
  reg=$here/regressions/$t
  scratch=$work/corpus/$t
  art=$work/artifacts/$t
  log=$work/$t.log
  mkdir -p "$scratch" "$art"
  if [ ! -x "$bin" ]; then
    echo "fuzz: $bin missing (build with -DATTND_FUZZ=ON)" >&2
    failed+=("$t")
    continue
  fi
  t0=$(date +%s)
  # 1. regressions and seeds, each file once
  inputs=()
  for d in "$reg" "$seed"; do
    [ -d "$d" ] && while IFS= read -r f; do inputs+=("$f"); done < <(find "$d" -type f ! -name '.*' | sort)
  done
  if [ ${#inputs[@]} -gt 0 ] &&
     ! "$bin" -rss_limit_mb=2048 -timeout=10 "${inputs[@]}" > "$work/$t.replay.log" 2>&1; then
    echo "fuzz: $t: a regression or seed input fails:" >&2
    grep -E "^Running:|property failed|ERROR|SUMMARY" "$work/$t.replay.log" | tail -8 >&2
    echo "fuzz: full log: $work/$t.replay.log" >&2
    failed+=("$t")
    rows+=("$(printf '| %-13s | %12s | %7s | %10s | %4ss | replay FAILED |' "$t" - - - $(( $(date +%s) - t0 )))")
    continue
  fi
  # 2. fuzz
  "$bin" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len=16384 \
    -print_final_stats=1 -artifact_prefix="$art/" $(dict_of "$t") "$scratch" "$seed" > "$log" 2>&1
  rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  corp=$(grep -oE 'corp: [0-9]+/[0-9]+[bKM]*b?' "$log" | tail -1 | sed 's/corp: //')
  state=ok
  if [ $rc -ne 0 ]; then
    state=CRASH
    failed+=("$t")
    unit=$(grep -o 'Test unit written to .*' "$log" | tail -1 | sed 's/Test unit written to //')
    echo "fuzz: $t: crash (exit $rc); input: ${unit:-see log}" >&2
    grep -E "property failed|ERROR:|SUMMARY:|#[0-9]+ 0x" "$log" | head -12 >&2
    echo "fuzz: full log: $log" >&2
  fi
  rows+=("$(printf '| %-13s | %12s | %7s | %10s | %4ss | %s |' "$t" "${execs:-?}" \
    "${#inputs[@]}" "${corp:-?}" $(( $(date +%s) - t0 )) "$state")")
done

echo
echo "| target        | executions   | seeds   | corpus     | time  | result |"
echo "|---------------|--------------|---------|------------|-------|--------|"
printf '%s\n' "${rows[@]}"
echo "fuzz: ${#targets[@]} targets, ${secs} s each, $(( $(date +%s) - t_all )) s in all"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}" >&2
  exit 1
fi
