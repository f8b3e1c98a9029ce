#!/usr/bin/python3
"""ui_bench.py — what the web console costs a server nobody is looking at.

Two attnd processes on 127.0.0.1 serve the same random 15M-shape model, one
with the console (the default) and one with --no-ui.  A 1-token greedy
POST /generate goes to each in turn on its own keep-alive connection,
alternated ABBA (the order swaps every round, so neither always runs first
on a warm cache), --rounds times; the p50 and p99 of each and their ratio
(1.00: the same) are printed.  Then the console's own cost when it is
opened: GET / and each /ui/ asset with Accept-Encoding gzip, p50 per file.

    /usr/bin/python3 tests/bench/ui_bench.py --attnd build/attnd --attn build/attn

Only the attnd processes it starts are stopped; traffic goes to 127.0.0.1
only and every loop is bounded.  Standard library only.
"""

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server_bench as sb  # noqa: E402  (Server, RawConn, statistics)

BODY = {"prompt": "Once upon a time", "max_tokens": 1, "temperature": 0}
ASSETS = ["/", "/ui/app.js", "/ui/style.css", "/ui/uPlot.iife.min.js", "/ui/uPlot.min.css"]


def emit(obj, out):
    line = json.dumps(obj, separators=(", ", ": "))
    print(line, flush=True)
    if out:
        out.write(line + "\n")


def alternate(on, off, rounds):
    conns = {"ui": sb.RawConn(on.port), "no_ui": sb.RawConn(off.port)}
    lat = {"ui": [], "no_ui": []}
    try:
        for _ in range(20):  # warm-up
            for c in conns.values():
                c.request("POST", "/generate", BODY)
        for i in range(rounds):
            order = ["ui", "no_ui"] if i % 2 == 0 else ["no_ui", "ui"]
            for name in order:
                t = time.perf_counter()
                st, _, data, _ = conns[name].request("POST", "/generate", BODY)
                lat[name].append((time.perf_counter() - t) * 1e3)
                if st != 200:
                    raise RuntimeError("%s: /generate answered %d: %s" % (name, st, data[:300]))
    finally:
        for c in conns.values():
            c.close()
    return lat


def assets(port, n):
    """p50 ms of each console file, asked for with gzip."""
    out = {}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for path in ASSETS:
            ts, size = [], 0
            for _ in range(n):
                t = time.perf_counter()
                conn.request("GET", path, headers={"Accept-Encoding": "gzip"})
                r = conn.getresponse()
                body = r.read()
                ts.append((time.perf_counter() - t) * 1e3)
                if r.status != 200:
                    raise RuntimeError("GET %s answered %d" % (path, r.status))
                size = len(body)
            out[path] = (sb.median(ts), size)
    finally:
        conn.close()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--attnd", default="build/attnd")
    ap.add_argument("--attn", default="build/attn")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1000, help="alternated rounds (1000)")
    ap.add_argument("--jsonl")
    args = ap.parse_args()
    if not 10 <= args.rounds <= 20000:
        ap.error("--rounds: 10 … 20000")
    attnd, attn = sb.resolve(args.attnd), sb.resolve(args.attn)
    out = open(args.jsonl, "w") if args.jsonl else None
    workdir = tempfile.mkdtemp(prefix="attnd-ui-bench-")
    servers = []
    try:
        model = os.path.join(workdir, "m15.safetensors")
        subprocess.run([attn, "random", "--out", model] + sb.SHAPE_15M, check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=120)
        on = sb.Server(attnd, model, workdir, args.threads, 8, 64, name="ui")
        off = sb.Server(attnd, model, workdir, args.threads, 8, 64, extra=["--no-ui"], name="no-ui")
        for s in (on, off):
            s.start()
            servers.append(s)
        lat = alternate(on, off, args.rounds)
        row = {"bench": "ui_overhead", "requests": args.rounds, "threads": args.threads}
        for name in ("ui", "no_ui"):
            row[name + "_p50_ms"] = sb.r3(sb.median(lat[name]))
            row[name + "_p99_ms"] = sb.r3(sb.percentile(lat[name], 0.99))
        row["p50_ratio"] = round(sb.median(lat["ui"]) / sb.median(lat["no_ui"]), 3)
        row["p99_ratio"] = round(sb.percentile(lat["ui"], 0.99) / sb.percentile(lat["no_ui"], 0.99), 3)
        emit(row, out)
        files = assets(on.port, 50)
        emit({"bench": "ui_assets", "files": {p: {"p50_ms": sb.r3(t), "gzip_bytes": n} for p, (t, n) in files.items()},
              "total_gzip_bytes": sum(n for _, n in files.values())}, out)
        print("\n## The web console's cost (tests/bench/ui_bench.py)\n")
        print("1-token greedy /generate, %d alternated rounds (ABBA), keep-alive, 15M shape, --threads %d:\n"
              % (args.rounds, args.threads))
        print("| server | p50 ms | p99 ms |\n|---|---|---|")
        print("| console on (default) | %.3f | %.3f |" % (row["ui_p50_ms"], row["ui_p99_ms"]))
        print("| --no-ui | %.3f | %.3f |" % (row["no_ui_p50_ms"], row["no_ui_p99_ms"]))
        print("| ratio on / off | %.3f | %.3f |" % (row["p50_ratio"], row["p99_ratio"]))
        print("\nOpening the console: %s, %.1f KiB gzip in all."
              % (", ".join("%s %.3f ms" % (p, t) for p, (t, _) in files.items()),
                 sum(n for _, n in files.values()) / 1024))
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if out:
            out.close()


if __name__ == "__main__":
    main()
