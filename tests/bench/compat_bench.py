#!/usr/bin/python3
"""compat_bench.py — what the client-compatible routes cost (issue #12).

Starts the real attnd (127.0.0.1, --port 0) on a random model of llama2.c's
stories15M shape (server_bench.py's), and measures side by side in one run:

  compat_overhead  a 1-token greedy request on one keep-alive connection,
                   /generate (attnd's own) against /v1/completions and
                   /v1/chat/completions and TGI's /generate body, alternated
                   request by request: p50 and p99 of each, and the ratio of
                   each p50 to /generate's (target: within 10%)
  compat_n         aggregate tokens/s of one /v1/completions with n = 4
                   choices (sampled, seeded, ignore_eos) against 4 separate
                   concurrent requests of the same prompt and length, in
                   alternated rounds, medians (target: >= 1x; the n choices
                   share their prompt's prefill)

Output: one JSON object per measurement on stdout (also --jsonl FILE),
progress on stderr, a markdown summary at the end.  Only the attnd it
starts is stopped; traffic goes to 127.0.0.1 only, every loop bounded.

    /usr/bin/python3 tests/bench/compat_bench.py --attnd build/attnd --attn build/attn
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server_bench as sb  # noqa: E402  (Server, RawConn, statistics)

T0 = time.monotonic()
ROWS = []
JSONL = None


def log(msg):
    sys.stderr.write("[compat_bench %6.1fs] %s\n" % (time.monotonic() - T0, msg))
    sys.stderr.flush()


def emit(obj):
    ROWS.append(obj)
    line = json.dumps(obj, separators=(", ", ": "))
    print(line, flush=True)
    if JSONL:
        JSONL.write(line + "\n")
        JSONL.flush()


PROMPT = "Once upon a time"
VARIANTS = [
    ("generate", "/generate", {"prompt": PROMPT, "max_tokens": 1, "temperature": 0}),
    ("v1_completions", "/v1/completions",
     {"model": "m15", "prompt": PROMPT, "max_tokens": 1, "temperature": 0}),
    ("v1_chat", "/v1/chat/completions",
     {"model": "m15", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 1,
      "temperature": 0}),
    ("tgi_generate", "/generate", {"inputs": PROMPT, "parameters": {"max_new_tokens": 1}}),
    # the chat route's prompt is its template's rendering, which is longer:
    # compared with /generate of that very text
    ("generate_chat_text", "/generate",
     {"prompt": "user: " + PROMPT + "\nassistant:", "max_tokens": 1, "temperature": 0}),
]
BASELINE = {"v1_chat": "generate_chat_text", "generate_chat_text": "generate_chat_text"}


def bench_overhead(port, rounds):
    conn = sb.RawConn(port)
    lat = {name: [] for name, _, _ in VARIANTS}
    try:
        for _ in range(10):  # warm-up
            for _, path, body in VARIANTS:
                conn.request("POST", path, body)
        for i in range(rounds):
            # rotate the order each round, so no variant always follows another
            order = VARIANTS[i % len(VARIANTS):] + VARIANTS[:i % len(VARIANTS)]
            for name, path, body in order:
                t = time.perf_counter()
                st, _, data, _ = conn.request("POST", path, body)
                dt = (time.perf_counter() - t) * 1e3
                if st != 200:
                    raise RuntimeError("%s answered %d: %s" % (path, st, data[:300]))
                lat[name].append(dt)
    finally:
        conn.close()
    for name, path, _ in VARIANTS:
        base_name = BASELINE.get(name, "generate")
        base = sb.median(lat[base_name])
        p50, p99 = sb.median(lat[name]), sb.percentile(lat[name], 0.99)
        emit({"bench": "compat_overhead", "variant": name, "path": path, "requests": rounds,
              "p50_ms": sb.r3(p50), "p99_ms": sb.r3(p99), "baseline": base_name,
              "p50_vs_baseline": round(p50 / base, 3) if base else None,
              "p99_vs_baseline": round(p99 / sb.percentile(lat[base_name], 0.99), 3)})


def run_n(port, max_tokens, seed):
    conn = sb.RawConn(port)
    try:
        t = time.perf_counter()
        st, _, data, _ = conn.request("POST", "/v1/completions", {
            "model": "m15", "prompt": PROMPT, "max_tokens": max_tokens, "n": 4,
            "temperature": 0.8, "seed": seed, "ignore_eos": True})
        dt = time.perf_counter() - t
    finally:
        conn.close()
    if st != 200:
        raise RuntimeError("n=4 answered %d: %s" % (st, data[:300]))
    return json.loads(data)["usage"]["completion_tokens"], dt


def run_separate(port, max_tokens, seed):
    out = [None] * 4
    errs = []

    def one(i):
        conn = sb.RawConn(port)
        try:
            st, _, data, _ = conn.request("POST", "/v1/completions", {
                "model": "m15", "prompt": PROMPT, "max_tokens": max_tokens,
                "temperature": 0.8, "seed": seed + i, "ignore_eos": True})
            if st != 200:
                errs.append("%d %s" % (st, data[:200]))
            else:
                out[i] = json.loads(data)["usage"]["completion_tokens"]
        except Exception as e:  # noqa: BLE001 - reported below
            errs.append(repr(e))
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    dt = time.perf_counter() - t
    if errs or None in out:
        raise RuntimeError("separate requests failed: %s" % errs)
    return sum(out), dt


def bench_n(port, rounds, max_tokens, prompt_tokens_note):
    n_rate, sep_rate = [], []
    for r in range(rounds):
        first, second = (run_n, run_separate) if r % 2 == 0 else (run_separate, run_n)
        for fn in (first, second):
            toks, dt = fn(port, max_tokens, 1000 + r)
            (n_rate if fn is run_n else sep_rate).append(toks / dt)
    a, b = sb.median(n_rate), sb.median(sep_rate)
    emit({"bench": "compat_n", "choices": 4, "max_tokens": max_tokens, "rounds": rounds,
          "n4_tokens_per_s": sb.r1(a), "separate4_tokens_per_s": sb.r1(b),
          "ratio": round(a / b, 3) if b else None, "prompt": prompt_tokens_note})


def summary():
    out = ["", "| request (1 token, greedy, keep-alive) | p50 ms | p99 ms | p50, p99 / baseline's |",
           "|---|---|---|---|"]
    for r in ROWS:
        if r["bench"] == "compat_overhead":
            out.append("| %s `%s` | %s | %s | %s, %s (%s) |"
                       % (r["variant"], r["path"], r["p50_ms"], r["p99_ms"], r["p50_vs_baseline"],
                          r["p99_vs_baseline"], r["baseline"]))
    for r in ROWS:
        if r["bench"] == "compat_n":
            out += ["", "| 4 sequences of %d tokens | tokens/s (median of %d) |"
                    % (r["max_tokens"], r["rounds"]), "|---|---|",
                    "| one request, n = 4 | %s |" % r["n4_tokens_per_s"],
                    "| 4 concurrent requests | %s |" % r["separate4_tokens_per_s"],
                    "| ratio | %sx |" % r["ratio"]]
    return "\n".join(out)


def main():
    global JSONL
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--attnd", default="build/attnd")
    ap.add_argument("--attn", default="build/attn")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=200, help="overhead rounds (200)")
    ap.add_argument("--n-rounds", type=int, default=6, help="n=4 vs 4 requests rounds (6)")
    ap.add_argument("--n-tokens", type=int, default=64)
    ap.add_argument("--long-prompt", action="store_true",
                    help="also measure n with a 200-token prompt, where the shared prefill shows")
    ap.add_argument("--jsonl")
    args = ap.parse_args()
    if not (1 <= args.rounds <= 5000 and 1 <= args.n_rounds <= 50 and 1 <= args.n_tokens <= 200):
        ap.error("counts out of bounds")
    attnd, attn = sb.resolve(args.attnd), sb.resolve(args.attn)
    if args.jsonl:
        JSONL = open(args.jsonl, "w")
    workdir = tempfile.mkdtemp(prefix="attnd-compat-bench-")
    srv = None
    try:
        model = os.path.join(workdir, "m15.safetensors")
        subprocess.run([attn, "random", "--out", model] + sb.SHAPE_15M, check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=120)
        srv = sb.Server(attnd, model, workdir, args.threads, 8, 64)
        srv.start()
        log("overhead: %d alternated rounds of %d variants" % (args.rounds, len(VARIANTS)))
        bench_overhead(srv.port, args.rounds)
        log("n = 4 against 4 requests: %d rounds of %d tokens" % (args.n_rounds, args.n_tokens))
        bench_n(srv.port, args.n_rounds, args.n_tokens, "short (5 tokens)")
        if args.long_prompt:
            global PROMPT
            PROMPT = "Once upon a time, " * 11  # about 200 bytes: 200 tokens
            bench_n(srv.port, args.n_rounds, args.n_tokens, "long (199 tokens)")
    finally:
        if srv:
            srv.stop()
        subprocess.run(["rm", "-rf", workdir], check=False)
    print(summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
