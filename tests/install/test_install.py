#!/usr/bin/python3
"""test_install.py — attnd served from an installed prefix, no source tree.

    /usr/bin/python3 tests/install/test_install.py --build build [--cmake cmake]

`cmake --install BUILD --prefix TMP` (what the container image runs), then
the installed TMP/bin/attnd is started from another, empty directory (so
no ./models and no source tree) on an ephemeral port of 127.0.0.1, and
must serve the bundled models from TMP/share/attnd/models: /models lists
them, a greedy /generate and a /v1/completions answer, /recall answers
with both engines; the installed contract and attn are there; SIGTERM
exits 0.  Only the process started here is stopped.  Standard library.
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

LISTEN_RE = re.compile(r"^attnd: listening on http://127\.0\.0\.1:(\d+)\s*$")


def call(port, method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = json.dumps(body).encode() if body is not None else None
    c.request(method, path, data, {"Content-Type": "application/json"} if data else {})
    r = c.getresponse()
    out = r.status, r.read()
    c.close()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--cmake", default="cmake")
    args = ap.parse_args()
    prefix = tempfile.mkdtemp(prefix="attnd-prefix-")
    elsewhere = tempfile.mkdtemp(prefix="attnd-cwd-")
    proc = None
    failures = []

    def check(cond, what):
        print(("ok   " if cond else "FAIL ") + what, flush=True)
        if not cond:
            failures.append(what)

    try:
        subprocess.run([args.cmake, "--install", args.build, "--prefix", prefix], check=True,
                       stdout=subprocess.DEVNULL, timeout=120)
        share = os.path.join(prefix, "share", "attnd")
        for f in ("bin/attnd", "bin/attn", "share/attnd/openapi.yaml",
                  "share/attnd/models/text-kjv.safetensors",
                  "share/attnd/models/recall-mqar8.safetensors"):
            check(os.path.exists(os.path.join(prefix, f)), "installed: " + f)
        r = subprocess.run([os.path.join(prefix, "bin", "attn"), "--help"], capture_output=True,
                           timeout=30)
        check(r.returncode == 0, "the installed attn runs")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATTND_")}
        proc = subprocess.Popen([os.path.join(prefix, "bin", "attnd"), "--host", "127.0.0.1",
                                 "--port", "0", "--data-dir", os.path.join(elsewhere, "data")],
                                cwd=elsewhere, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        port, deadline = None, time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            m = LISTEN_RE.match(line)
            port = int(m.group(1)) if m else None
        check(port is not None, "the installed attnd listens")
        if port is None:
            return 1
        while time.monotonic() < deadline and call(port, "GET", "/readyz")[0] != 200:
            time.sleep(0.1)
        st, body = call(port, "GET", "/models")
        names = sorted(m["name"] for m in json.loads(body)["models"]) if st == 200 else []
        # (make run's tiny-random too, when it was made before the install)
        check({"recall-mqar8", "text-kjv"} <= set(names), "serves the bundled models: %s" % names)
        check(all(m["source"].startswith(os.path.realpath(share) + "/models/")
                  for m in json.loads(body)["models"]), "from the prefix's share/attnd/models")
        st, body = call(port, "POST", "/generate",
                        {"prompt": "In the beginning", "max_tokens": 8, "temperature": 0})
        check(st == 200 and json.loads(body)["usage"]["completion_tokens"] >= 1,
              "/generate answers: %d %s" % (st, body[:120]))
        st, body = call(port, "POST", "/v1/completions",
                        {"prompt": "In the beginning", "max_tokens": 4, "temperature": 0})
        check(st == 200 and json.loads(body)["object"] == "text_completion",
              "/v1/completions answers: %d" % st)
        st, body = call(port, "POST", "/recall", {"pairs": [["a", 1], ["b", 2]], "queries": ["b"]})
        check(st == 200 and json.loads(body)["answers"][0]["value"] == 2,
              "/recall (exact) answers: %d %s" % (st, body[:120]))
        st, body = call(port, "POST", "/recall", {"engine": "model", "pairs": [[3, 7], [5, 9]],
                                                  "queries": [5]})
        check(st == 200, "/recall (model) answers: %d %s" % (st, body[:120]))
        proc.send_signal(signal.SIGTERM)
        check(proc.wait(timeout=30) == 0, "SIGTERM: exit 0")
        proc = None
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(prefix, ignore_errors=True)
        shutil.rmtree(elsewhere, ignore_errors=True)
    print("%d failed" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
