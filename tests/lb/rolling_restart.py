#!/usr/bin/python3
"""rolling_restart.py — measurements of three attnd replicas behind HAProxy
(not a ctest; the figures are in README.md, "Deploy and scale out").

  1. A rolling restart under a steady open-loop load (default 50 requests/s:
     request i is issued at t0 + i/rate from a thread pool, whatever the
     others do): for each replica in turn, SIGTERM, wait for its exit, start
     it again on the SAME port, wait until haproxy marks it UP, next.  The
     load runs from 1 s before the first SIGTERM to 1 s after the last UP.
     Reported: total requests, 200s, 503s, lost (connection errors, other
     statuses, timeouts), p50/p99 latency, and each step's timings.
  2. Model appearance: a model file copied into the shared trained-models dir
     atomically (a *.tmp.<pid> name, which rescans skip, then os.rename);
     the time until every replica's GET /models lists it, over --trials
     trials (median, max), with --models-poll-seconds (default 1).

  /usr/bin/python3 tests/lb/rolling_restart.py --attnd build/attnd --attn build/attn

--cfg 'KEY VALUE' replaces the line of haproxy.cfg.in that starts with KEY
(--cfg 'KEY -' removes it; --add 'LINE' adds one to the backend), e.g. --cfg 'retry-on conn-failure' or
--cfg 'option redispatch -' to see what each setting is for.
"""

import argparse
import json
import os
import signal
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lbharness as L  # noqa: E402

H = L.H


def cfg_filter(changes, added=()):
    def f(text):
        text = text.rstrip("\n") + "".join("\n    " + ln for ln in added) + "\n"  # the backend is last
        out = []
        for ln in text.split("\n"):
            for key, value in changes:
                if ln.strip().startswith(key + " ") or ln.strip() == key:
                    ln = None if value == "-" else "    %s %s" % (key, value)
                    break
            if ln is not None:
                out.append(ln)
        return "\n".join(out)
    return f


def parse_cfg(items):
    out = []
    for it in items:
        # the key is the directive: one word, two for "option X", "http-check X", "timeout X"
        words = it.split()
        n = 2 if words[0] in ("option", "timeout", "http-check", "default-server") else 1
        out.append((" ".join(words[:n]), " ".join(words[n:]) or "-"))
    return out


def rolling_restart(c, rate, keepalive, max_tokens):
    body = dict(L.GEN, max_tokens=max_tokens)
    log0 = len(c.haproxy_log())
    load = L.Load(c.front_port, rate, 600, body=body, workers=32, keepalive=keepalive).start()
    time.sleep(1.0)
    steps = []
    for r in c.replicas:
        t0 = time.monotonic()
        r.srv.send_signal(signal.SIGTERM)
        down = t_exit = rc = None
        while (down is None or t_exit is None) and time.monotonic() - t0 < c.grace + 10:
            if t_exit is None and r.srv.proc.poll() is not None:
                t_exit, rc = time.monotonic() - t0, r.srv.proc.returncode
            if down is None and c.status(r.name).split()[0] == "DOWN":
                down = time.monotonic() - t0
            time.sleep(0.01)
        if t_exit is None or down is None:
            raise AssertionError("%s: exited after %s s, DOWN after %s s" % (r.name, t_exit, down))
        port = r.port
        r.stop()
        t1 = time.monotonic()
        r.start()  # waits for GET /readyz 200
        if r.port != port:
            raise AssertionError("%s came back on port %d, not %d" % (r.name, r.port, port))
        t_ready = time.monotonic() - t1
        up = c.wait_status(r.name, "UP", 20)
        steps.append({"replica": r.name, "exit_code": rc, "down_s": down, "exit_s": t_exit,
                      "ready_s": t_ready, "up_after_ready_s": up,
                      "out_of_rotation_s": time.monotonic() - t0})
    time.sleep(1.0)
    load.stop()
    s = load.join()
    d = L.log_digest(c.haproxy_log()[log0:])
    return s, steps, load.failures(), d


def appear(c, trials, lib_model):
    out = []
    for k in range(trials):
        name = "appear-%d-%d" % (os.getpid(), k)
        c.put_model(lib_model, name)
        seen = c.wait_listed(name, timeout=c.poll + 10)
        out.append(seen)
        os.unlink(os.path.join(c.shared, name + ".safetensors"))
        c.wait_listed(name, timeout=c.poll + 10, present=False)
        time.sleep(0.37 * (k + 1) % 1.0)  # vary the phase against the poll timer
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attnd", default="build/attnd")
    ap.add_argument("--attn", default="build/attn")
    ap.add_argument("--rate", type=float, default=50.0, help="requests per second (50)")
    ap.add_argument("--keepalive", type=float, default=0.5,
                    help="fraction of requests on a persistent client connection (0.5)")
    ap.add_argument("--max-tokens", type=int, default=8, help="tokens per request (8)")
    ap.add_argument("--poll", type=int, default=1, help="--models-poll-seconds (1)")
    ap.add_argument("--trials", type=int, default=5, help="model-appearance trials (5)")
    ap.add_argument("--rounds", type=int, default=1, help="rolling restarts (1)")
    ap.add_argument("--cfg", action="append", default=[], metavar="'KEY VALUE'",
                    help="replace (or, VALUE '-', remove) a line of haproxy.cfg.in")
    ap.add_argument("--add", action="append", default=[], metavar="'LINE'",
                    help="add a line to haproxy.cfg.in's backend section")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    H.parse_args(["--attnd", a.attnd, "--attn", a.attn] + (["--keep"] if a.keep else []))
    if L.find_haproxy() is None:
        print("haproxy is not installed (scripts/install-deps.sh installs it)")
        sys.exit(77)
    changes = parse_cfg(a.cfg)
    c = L.Cluster(n=3, poll=a.poll, grace=10, cfg_filter=cfg_filter(changes, a.add) if changes or a.add else None)
    figures = {"rate": a.rate, "keepalive": a.keepalive, "max_tokens": a.max_tokens, "poll": a.poll,
               "cfg": a.cfg, "restarts": [], "appear": None}
    try:
        lib_model = H.make_model(os.path.join(c.lib, "extra.safetensors"), H.TINY, 7)
        c.start()
        if changes or a.add:
            print("haproxy.cfg changed: %s, added %s" % (changes, a.add))
        print("replicas on %s, haproxy on %d (%s)" % ([r.port for r in c.replicas], c.front_port, c.work.path))
        for rnd in range(a.rounds):
            s, steps, failures, d = rolling_restart(c, a.rate, a.keepalive, a.max_tokens)
            print("\nrolling restart %d at %g req/s (%d%% keep-alive, max_tokens %d):"
                  % (rnd + 1, a.rate, 100 * a.keepalive, a.max_tokens))
            print("  " + L.fmt_summary(s))
            print("  haproxy: %d requests logged, %d retried (%d redispatched)"
                  % (d["requests"], d["retried"], d["redispatched"]))
            for st in steps:
                print("  %(replica)s: DOWN %(down_s).2f s after SIGTERM, exited %(exit_code)s after %(exit_s).2f s,"
                      " ready %(ready_s).2f s after start, UP %(up_after_ready_s).2f s after ready;"
                      " out of rotation %(out_of_rotation_s).2f s" % st)
            for f in failures[:20]:
                print("  not 200: %r" % (f,))
            for r in d["not_200"][:20]:
                print("  haproxy: " + r["line"])
            figures["restarts"].append({"summary": s, "steps": steps,
                                        "failures": [repr(f) for f in failures[:50]]})
        trials = appear(c, a.trials, lib_model)
        alls = [max(t.values()) for t in trials]
        print("\nmodel appearance (rename into the shared dir -> listed by all %d replicas), poll %d s:"
              % (len(c.replicas), a.poll))
        for k, t in enumerate(trials):
            print("  trial %d: %s" % (k + 1, ", ".join("%s %.2f s" % kv for kv in sorted(t.items()))))
        print("  all replicas: median %.2f s, max %.2f s over %d trials"
              % (statistics.median(alls), max(alls), len(alls)))
        figures["appear"] = {"all_s": alls, "median_s": statistics.median(alls), "max_s": max(alls),
                             "trials": trials}
    finally:
        c.cleanup()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(figures, f, indent=1, default=str)
    lost = sum(r["summary"]["lost"] for r in figures["restarts"])
    sys.exit(1 if lost else 0)


if __name__ == "__main__":
    main()
