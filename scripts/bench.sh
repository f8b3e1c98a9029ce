#!/usr/bin/env bash
# bench.sh BUILD_DIR — runs `attn bench` on the 15M and 110M shapes, keeps
# the JSON lines in BUILD_DIR/bench.jsonl and prints a markdown summary
# against the peer figures of ../shared/PEERS.md.  `make bench` calls it.
#
# The peers were measured on a quiet 2-core Zen 4; ratios from a busy
# machine say little.  15M uses a 128-token prompt, the length of the
# llama.cpp prefill figure.  110M decodes 128 tokens a run and skips the
# kernel section (it does not depend on the shape, the 15M run has it), to
# keep the whole under about five minutes on two cores.
set -euo pipefail

BUILD=${1:?usage: scripts/bench.sh BUILD_DIR}
ATTN=$BUILD/attn
OUT=$BUILD/bench.jsonl
if [ ! -x "$ATTN" ]; then
  echo "bench.sh: $ATTN not found; build first (make build)" >&2
  exit 1
fi

: >"$OUT"
"$ATTN" bench --shape 15M --prompt-tokens 128 | tee -a "$OUT"
"$ATTN" bench --shape 110M --decode-tokens 128 --runs 5 \
  --only decode,batch,prefill,bandwidth | tee -a "$OUT"
echo

python3 - "$OUT" <<'EOF'
import json, sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
# PEERS.md: decode tokens/s (llama2.c -Ofast -march=native, llama.cpp F32),
# llama.cpp prefill of a 128-token prompt on 15M, read bandwidth in GB/s.
PEER_DECODE = {("15M", 1): (310, 398), ("15M", 2): (490, 513),
               ("110M", 1): (50, 47.5), ("110M", 2): (64, 70)}
PEER_PREFILL = {1: 4441, 2: 8041}
PEER_READ = {1: 22, 2: 31}

def find(bench, shape, t, **kw):
    for r in rows:
        if (r["bench"] == bench and r["shape"] == shape and r.get("threads") == t
                and all(r.get(k) == v for k, v in kw.items())):
            return r
    return {}

def num(v, d=1):
    return "-" if v is None else f"{v:,.{d}f}"

def ratio(a, b):
    return "-" if a is None or not b else f"{a / b:.2f}x"

def pct(v):
    return "-" if v is None else f"{100 * v:.0f}%"

configs = [r for r in rows if r["bench"] == "config"]
out = ["## attn bench", "",
       "Ratios are attnd / peer (above 1: attnd is faster); peers from PEERS.md, "
       "quiet 2-core Zen 4. Medians of the runs.", "",
       "### Decode, tokens/s", "",
       "| shape | threads | attnd | vs llama2.c | vs llama.cpp | batch 4 | batch 8 "
       "| of roofline: triad / read |",
       "|---|---|---|---|---|---|---|---|"]
for cfg in configs:
    s = cfg["shape"]
    for t in cfg["threads"]:
        d = find("decode", s, t).get("median_tokens_per_s")
        b4 = find("decode_batch", s, t, batch=4).get("median_tokens_per_s")
        b8 = find("decode_batch", s, t, batch=8).get("median_tokens_per_s")
        roof = find("roofline", s, t)
        l2c, lcpp = PEER_DECODE.get((s, t), (None, None))
        out.append(f"| {s} | {t} | {num(d)} | {ratio(d, l2c)} | {ratio(d, lcpp)} | {num(b4)} "
                   f"| {num(b8)} | {pct(roof.get('decode_fraction_of_roofline'))} / "
                   f"{pct(roof.get('decode_fraction_of_read_roofline'))} |")

out += ["", "### Prefill, tokens/s", "",
        "| shape | threads | prompt | one call (sgemm) | token by token | speedup | vs llama.cpp |",
        "|---|---|---|---|---|---|---|"]
for cfg in configs:
    s = cfg["shape"]
    for t in cfg["threads"]:
        p = find("prefill", s, t, mode="sgemm")
        tbt = find("prefill", s, t, mode="token_by_token").get("median_tokens_per_s")
        v = p.get("median_tokens_per_s")
        peer = PEER_PREFILL.get(t) if s == "15M" and p.get("tokens") == 128 else None
        out.append(f"| {s} | {t} | {p.get('tokens', '-')} | {num(v)} | {num(tbt)} "
                   f"| {ratio(v, tbt)} | {ratio(v, peer)} |")

out += ["", "### Memory bandwidth, GB/s (best of runs)", "",
        "| run | threads | read | copy | triad | peers' read |", "|---|---|---|---|---|---|"]
for cfg in configs:
    for t in cfg["threads"]:
        bw = find("bandwidth", cfg["shape"], t)
        if bw:
            out.append(f"| {cfg['shape']} | {t} | {num(bw['read_gbs'])} | {num(bw['copy_gbs'])} "
                       f"| {num(bw['triad_gbs'])} | {PEER_READ.get(t, '-')} |")

kern = [r for r in rows if r["bench"] == "kernel"]
if kern:
    ts = sorted({r["threads"] for r in kern})
    out += ["", "### Matrix product, GB/s of weights: kernel / sgemm (ratio)", "",
            "| matrix | rows B | " + " | ".join(f"{t} thread{'s' if t > 1 else ''}" for t in ts) + " |",
            "|---|---|" + "---|" * len(ts)]
    keys = []
    for r in kern:
        if (r["matrix"], r["batch"]) not in keys:
            keys.append((r["matrix"], r["batch"]))
    for m, b in keys:
        cells = []
        for t in ts:
            r = next((r for r in kern if (r["matrix"], r["batch"], r["threads"]) == (m, b, t)), {})
            cells.append(f"{num(r.get('kernel_gbs'))} / {num(r.get('sgemm_gbs'))} "
                         f"({ratio(r.get('kernel_gbs'), r.get('sgemm_gbs'))})" if r else "-")
        out.append(f"| {m} | {b} | " + " | ".join(cells) + " |")
print("\n".join(out))
EOF

# Weight formats (`attn bench-weights`, tools/bench_weights.c): the whole
# model's decode, batch 4 and 8, and a 256-token prefill in f32, bf16, q8
# and q4, alternated round by round, 15M and 110M, 1 and 2 threads — about
# ten minutes; the share of the read roofline from the bandwidth measured
# above.  With LLAMA_CPP_DIR set to a llama.cpp checkout,
# scripts/bench-llamacpp.sh then puts llama.cpp's F32, Q8_0 and Q4_0 decode
# beside attnd's in one alternated run.  WEIGHTS_BENCH=0 skips both.
if [ "${WEIGHTS_BENCH:-1}" != 0 ]; then
  echo
  WJ=$BUILD/bench_weights.jsonl
  : >"$WJ"
  "$ATTN" bench-weights --shape 15M | tee -a "$WJ"
  "$ATTN" bench-weights --shape 110M | tee -a "$WJ"
  echo
  python3 - "$OUT" "$WJ" <<'EOF5'
import json, sys
bw = {(r["shape"], r["threads"]): r.get("read_gbs") for r in map(json.loads, open(sys.argv[1]))
      if r.get("bench") == "bandwidth"}
rows = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
out = ["## Weight formats (attn bench-weights): tokens/s, medians of alternated rounds", "",
       "x = the format's figure over f32's in the same run; roofline = decode tokens/s x bytes "
       "read per token / the read bandwidth measured above.", "",
       "| shape | threads | format | MB/token | decode | x | roofline | batch 4 | x | batch 8 | x "
       "| prefill 256 | x |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    g = bw.get((r["shape"], r["threads"]))
    roof = f"{100 * r['decode_tokens_per_s'] * r['bytes_per_token'] / (g * 1e9):.0f}%" if g else "-"
    cells = []
    for k in ("batch4", "batch8", "prefill"):
        cells += [f"{r.get(k + '_tokens_per_s', 0):,.1f}", f"{r.get(k + '_vs_f32', 0):.2f}x"]
    out.append(f"| {r['shape']} | {r['threads']} | {r['format']} | {r['bytes_per_token'] / 1e6:.1f} "
               f"| {r['decode_tokens_per_s']:,.1f} | {r['decode_vs_f32']:.2f}x | {roof} | "
               + " | ".join(cells) + " |")
print("\n".join(out))
EOF5
  if [ -n "${LLAMA_CPP_DIR:-}" ]; then
    echo
    "$(dirname "$0")/bench-llamacpp.sh" "$BUILD"
  fi
fi

# The live server (tests/bench/server_bench.py): attnd on 127.0.0.1 with a
# random 15M-shape model — aggregate decode tokens/s with 1, 4 and 8
# clients, time to first token, 1-token latency, wrk on /healthz and
# /generate — about two minutes.  Its JSON lines go to
# BUILD_DIR/server_bench.jsonl, its markdown summary follows the one above.
# SERVER_BENCH=0 skips it.
if [ "${SERVER_BENCH:-1}" != 0 ]; then
  echo
  ROOT=$(cd "$(dirname "$0")/.." && pwd)
  /usr/bin/python3 "$ROOT/tests/bench/server_bench.py" --attnd "$BUILD/attnd" --attn "$ATTN" \
    --jsonl "$BUILD/server_bench.jsonl"
fi

# The client-compatible routes (tests/bench/compat_bench.py): a 1-token
# greedy request through /generate, /v1/completions, /v1/chat/completions
# and TGI's body, alternated on one keep-alive connection (p50, p99, the
# ratio to /generate), and one n = 4 request against 4 concurrent ones
# (aggregate tokens/s) — about a minute.  COMPAT_BENCH=0 skips it.
if [ "${COMPAT_BENCH:-1}" != 0 ]; then
  echo
  ROOT=$(cd "$(dirname "$0")/.." && pwd)
  /usr/bin/python3 "$ROOT/tests/bench/compat_bench.py" --attnd "$BUILD/attnd" --attn "$ATTN" \
    --long-prompt --jsonl "$BUILD/compat_bench.jsonl"
fi

# The web console's cost (tests/bench/ui_bench.py): a 1-token /generate to
# an attnd with the console and one with --no-ui, alternated ABBA (p50, p99,
# the ratio), and the time to serve each console file — about 20 seconds.
# UI_BENCH=0 skips it.
if [ "${UI_BENCH:-1}" != 0 ]; then
  echo
  ROOT=$(cd "$(dirname "$0")/.." && pwd)
  /usr/bin/python3 "$ROOT/tests/bench/ui_bench.py" --attnd "$BUILD/attnd" --attn "$ATTN" \
    --jsonl "$BUILD/ui_bench.jsonl"
fi

# Sampling (`attn bench-sampler`, tools/bench_sampler.c): plain greedy
# (temperature 0, no option) today against the sampler before issue 12's
# options (tools/sampler_base.c, 12e3009's core/sampler.c) on 32000 and 258
# entries, alternated ABBA rounds, medians and the ratio (1.00: unchanged);
# and the per-token cost of every option (penalties, bias, min_p, 5
# logprobs at T 0.8, top_k 40, top_p 0.95) beside the base at the same
# T/top_k/top_p — about ten seconds.  Its JSON lines go to
# BUILD_DIR/bench_sampler.jsonl.  SAMPLER_BENCH=0 skips it.
if [ "${SAMPLER_BENCH:-1}" != 0 ]; then
  echo
  "$ATTN" bench-sampler | tee "$BUILD/bench_sampler.jsonl"
  echo
  python3 - "$BUILD/bench_sampler.jsonl" <<'EOF4'
import json, sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
out = ["## attn bench-sampler", "",
       "Greedy sampling (temperature 0, no option): ns per call, medians of alternated rounds; "
       "ratio = today / before the sampling options (1.00: unchanged).", "",
       "| vocab | before ns | today ns | ratio |", "|---|---|---|---|"]
for r in rows:
    if r["bench"] == "sampler_greedy":
        out.append(f"| {r['vocab']} | {r['base_median_ns']:.1f} | {r['today_median_ns']:.1f} "
                   f"| {r['ratio']:.2f}x |")
out += ["", "Every option (penalties, logit_bias, min_p, 5 logprobs) at T 0.8, top_k 40, "
        "top_p 0.95: µs per token, beside the sampler before the options at the same "
        "T/top_k/top_p.", "",
        "| vocab | options µs | same sampling, before µs | added µs |", "|---|---|---|---|"]
for r in rows:
    if r["bench"] == "sampler_options":
        a, b = r["median_ns_per_token"] / 1e3, r["base_same_sampling_median_ns"] / 1e3
        out.append(f"| {r['vocab']} | {a:.1f} | {b:.1f} | {a - b:.1f} |")
print("\n".join(out))
EOF4
fi

# Associative recall (`attn bench-recall`, tools/bench_recall.c): the
# latency of POST /recall's engine, tfm_recall_exact (the lecture's
# one-layer attention, exact), against the number of pairs (64 .. 4096) with
# 1 and 64 queries, beside a plain hash map doing the same lookups (the
# floor), and the fitted log-log exponent — about a second.  Its JSON lines
# go to BUILD_DIR/bench_recall.jsonl.  RECALL_BENCH=0 skips it.
if [ "${RECALL_BENCH:-1}" != 0 ]; then
  echo
  if "$ATTN" bench-recall --help >/dev/null 2>&1; then
    "$ATTN" bench-recall | tee "$BUILD/bench_recall.jsonl"
    echo
    python3 - "$BUILD/bench_recall.jsonl" <<'EOF2'
import json, sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
runs = [r for r in rows if r["bench"] == "recall"]
exps = [r for r in rows if r["bench"] == "recall_exponent"]
qs = sorted({r["queries"] for r in runs})
sizes = sorted({r["pairs"] for r in runs})

def num(v, d=3):
    return "-" if v is None else f"{v:,.{d}f}"

def find(n, q):
    return next((r for r in runs if r["pairs"] == n and r["queries"] == q), {})

def plural(q):
    return f"{q} quer{'y' if q == 1 else 'ies'}"

out = ["## attn bench-recall", "",
       "POST /recall's engine (tfm_recall_exact: one attention layer, exact) against a plain "
       "open-addressing hash map doing the same build and lookups. Median of the runs; "
       "ratio = attention / hash map.", "",
       "| pairs | " + " | ".join(f"{plural(q)}: attention ms | hash map µs | ratio" for q in qs) + " |",
       "|---|" + "---|---|---|" * len(qs)]
for n in sizes:
    cells = []
    for q in qs:
        r = find(n, q)
        cells.append(f"{num(r.get('median_ms'))} | {num(r.get('hash_median_us'))} | "
                     f"{num(r.get('ratio'), 0)}x" if r else "- | - | -")
    out.append(f"| {n} | " + " | ".join(cells) + " |")
out += ["", "Fitted exponent k of time ~ pairs^k (least squares on log-log; and between the "
        "last two sizes):", "",
        "| queries | attention k | k, last two sizes | hash map k | hash map k, last two |",
        "|---|---|---|---|---|"]
for e in exps:
    out.append(f"| {e['queries']} | {num(e.get('exponent'), 2)} | {num(e.get('exponent_last_two'), 2)} "
               f"| {num(e.get('hash_exponent'), 2)} | {num(e.get('hash_exponent_last_two'), 2)} |")
print("\n".join(out))
EOF2
  else
    echo "bench.sh: $ATTN has no bench-recall command; skipping the recall section" >&2
  fi
fi

# Training (`attn bench-train`, tools/train.c): the step time (forward,
# backward, clip, AdamW) of issue #5's two configurations beside PyTorch's
# (tests/bench/train_torch.py: the same model, data and optimiser in
# Debian's python3-torch), alternated over three rounds in this one run, 1
# and 2 threads — about three minutes.  Skipped without python3-torch
# (attnd's own figures still print).  TRAIN_BENCH=0 skips the section.
# TRAIN_ACCURACY=1 adds the time to 90% and 99% MQAR accuracy, attnd vs
# PyTorch on the same generator and schedule (several minutes more).
if [ "${TRAIN_BENCH:-1}" != 0 ]; then
  echo
  ROOT=$(cd "$(dirname "$0")/.." && pwd)
  TJ="$BUILD/bench_train.jsonl"
  : >"$TJ"
  have_torch=0
  /usr/bin/python3 -c "import torch" 2>/dev/null && have_torch=1
  for round in 1 2 3; do
    "$ATTN" bench-train --threads 1,2 --steps 10 | sed 's/^{/{"impl": "attnd", /' | tee -a "$TJ"
    if [ "$have_torch" = 1 ]; then
      /usr/bin/python3 "$ROOT/tests/bench/train_torch.py" bench --threads 1 2 --steps 10 |
        sed 's/^{/{"impl": "pytorch", /' | tee -a "$TJ"
    fi
  done
  if [ "${TRAIN_ACCURACY:-0}" = 1 ]; then
    "$ROOT/scripts/train-accuracy.sh" "$BUILD" | tee -a "$TJ"
  fi
  echo
  python3 - "$TJ" <<'EOF3'
import json, statistics, sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip().startswith("{")]
steps = [r for r in rows if r.get("step_ms_median") is not None]
out = ["## Training step time (attn bench-train vs PyTorch)", "",
       "Forward + backward + clip + AdamW, one step; the median over three alternated rounds "
       "of each round's median of 10 steps. Ratio = PyTorch / attnd (above 1: attnd is faster).",
       "", "| config | threads | attnd ms | PyTorch ms | ratio |", "|---|---|---|---|---|"]
for cfg in ("mqar", "text"):
    for t in (1, 2):
        a = [r["step_ms_median"] for r in steps
             if r["impl"] == "attnd" and r["config"] == cfg and r["threads"] == t]
        p = [r["step_ms_median"] for r in steps
             if r["impl"] == "pytorch" and r["config"] == cfg and r["threads"] == t]
        am = statistics.median(a) if a else None
        pm = statistics.median(p) if p else None
        out.append(f"| {cfg} | {t} | {'-' if am is None else f'{am:.1f}'} | "
                   f"{'-' if pm is None else f'{pm:.1f}'} | "
                   f"{'-' if not (am and pm) else f'{pm / am:.2f}x'} |")
acc = [r for r in rows if r.get("bench") == "time_to_accuracy"]
if acc:
    out += ["", "### MQAR: steps and seconds to 90% / 99% held-out accuracy", "",
            "| impl | steps to 90% | s to 90% | steps to 99% | s to 99% | final accuracy |",
            "|---|---|---|---|---|---|"]
    for r in acc:
        out.append(f"| {r['impl']} | {r.get('steps_to_90', '-')} | {r.get('seconds_to_90', '-')} "
                   f"| {r.get('steps_to_99', '-')} | {r.get('seconds_to_99', '-')} "
                   f"| {r.get('final_accuracy', '-')} |")
print("\n".join(out))
EOF3
fi
