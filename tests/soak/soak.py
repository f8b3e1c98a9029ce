#!/usr/bin/python3
"""soak.py — attnd's soak and load test (issue #10, item 6).

    /usr/bin/python3 tests/soak/soak.py --attnd build/attnd --attn build/attn --seconds 600
    make soak SOAK_SECONDS=60

One real attnd (its own temporary data dir; the bundled models
text-kjv and recall-mqar8 plus `soak-random`, a seeded random model of
`make run`'s shape with a 1024-token context, slow enough that a stream
can be cut mid-way; `--api-key` with a generated key, sent on every
request) is driven from Python threads on 127.0.0.1 for --seconds:

  workers (8)  a fixed, seeded mix (each worker its own random.Random):
               greedy and seeded /generate, compared with their solo
               answers computed once before the load; full streams
               compared with the same; the same greedy bodies through
               /v1/completions with n = 2 (both choices, plain or
               streamed) and TGI's /generate and /generate_stream, each
               text equal to the solo answer; streams cut off after a few
               events (socket closed, sometimes with a RST); /generate
               abandoned before its answer (499); /recall of both
               engines checked against a Python dict; every kind of bad
               request (400, 401, 404, 405, 413, 414, 415, 422, 431, a
               100,000-deep array, a body cut off half-way); /metrics,
               /models, /healthz, /readyz, GET /train polled.
  trainer (1)  small recall jobs one at a time: some left to finish (the
               model is then served: /models lists it, /recall answers
               with it), some cancelled; each finished record DELETEd
               (204 once the server supports it; 409 tolerated).
  slow (2x3)   connections that send a request a byte every 0.5 s, and
               connections that send nothing, held until the server drops
               them or 45 s pass.
  monitor (1)  the process's VmRSS and open descriptors every second.

It asserts: the process never dies and exits 0 on SIGTERM; no 5xx but
503 (and 504 for a request with timeout_ms); every well-formed request
answered correctly; RSS growth after the warm-up under --rss-bound-mib;
descriptors back within --fd-slack of the baseline once the load stops;
the deltas of attnd_requests_total{route,code} (and of the recall and
auth counters) equal to the client's own counts. Latency is reported,
never asserted: the machine is shared. It prints a summary table and
exits 1 with the reasons when anything failed.

Counting: the server counts a request when libmicrohttpd completes it
(on_completed in server/http.c), labelled with the route's template
("/train/{id}", "other" for an unknown path) and the status it sent, 499
when none was sent. The client counts what it saw. A few exchanges
cannot be attributed exactly (a /generate abandoned while the server may
have finished it: 499 or 200; a request too big for libmicrohttpd's
memory pool, answered by libmicrohttpd itself without reaching the
route); they are booked as "ambiguous" with the statuses they may show,
and the comparison allows exactly that slack, no more.

Standard library plus the harness of tests/server (python3-yaml and
python3-jsonschema), run by /usr/bin/python3.
"""

import argparse
import collections
import http.client
import json
import os
import random
import secrets
import signal
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "server"))
import harness as H  # noqa: E402

# ---------------------------------------------------------------------------
# what the server must be and do

BUNDLED = ("text-kjv", "recall-mqar8")
# make run's default model: seeded random weights, a 1024-token context;
# about 1,000-3,000 tokens/s here, so an 800-token stream lasts long enough
# to be cut off mid-way and a 900-token request to be abandoned.
RANDOM_MODEL = dict(dim=192, hidden=512, layers=4, heads=6, kv_heads=3, vocab=258, seq_len=1024)

# RSS growth allowed from the end of the warm-up to the end of the load.
# Measured here (2 shared cores): RSS goes from ~26 MiB idle to ~38-51 MiB
# in the warm-up (glibc arenas of the HTTP, engine, loop, worker and
# training threads; each model's workspace and KV caches, made on first
# use), then grew 1.5 MiB over the next 270 s at 1981263 and 5.6 MiB over
# 240 s at 1f73051 -- mostly the 40 trained models, which stay registered
# until exit by design (weights ~20 KB each, plus their recall state). A
# leak of even 200 bytes per request passes 64 MiB within an hour at the
# soak's ~100-200 requests/s, a leak per /generate much sooner; 64 MiB is
# margin over that noise, for a 10-minute run on a noisy machine.
RSS_BOUND_MIB = 64
FD_SLACK = 4          # descriptors over the baseline allowed once idle
# An idle connection (nothing sent) is held this long unless the server
# drops it first; the server must drop it within IDLE_LIMIT (libmicrohttpd's
# 60 s connection timeout today, --idle-timeout-seconds 30 once it lands).
IDLE_HOLD = 70.0
IDLE_LIMIT = 65.0
SETTLE_SECONDS = 20   # how long descriptors and in-flight get to return
GRACE = 5             # --grace-seconds
HTTP_TIMEOUT = 60.0
MAX_TRAINED = 40      # succeeded jobs at most: each adds a model to the registry (256 max, kept)
MAX_JOBS = 150        # jobs posted at most (records are kept unless DELETE removes them)

ROUTES = ("/generate", "/recall", "/models", "/models/reload", "/healthz", "/readyz", "/metrics", "/train",
          "/v1/completions", "/generate_stream")


def route_label(path):
    """The label the server gives a path (server/http.c's route table)."""
    p = path.split("?", 1)[0]
    if p in ROUTES:
        return p
    for prefix, label in (("/train/", "/train/{id}"), ("/models/", "/models/{id}")):
        if p.startswith(prefix) and len(p) > len(prefix) and "/" not in p[len(prefix):]:
            return label
    return "other"


# ---------------------------------------------------------------------------
# bookkeeping


class Book:
    """Everything the client saw, under one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()          # (label, status) -> n, surely counted by the server
        self.ambiguous = collections.defaultdict(list)  # label -> [(statuses, may be uncounted)]
        self.latency = collections.defaultdict(list)  # label -> [seconds]
        self.ops = collections.Counter()              # op kind -> n
        self.failures = collections.Counter()         # kind -> n
        self.failure_examples = collections.defaultdict(list)
        self.notes = collections.Counter()            # kind -> n: observed, not asserted
        self.note_examples = collections.defaultdict(list)
        self.recall_ok = collections.Counter()        # engine -> 200 answers
        self.model_queries = 0
        self.model_wrong = 0
        self.auth_401 = 0
        self.slow = collections.defaultdict(list)     # kind -> [(outcome, seconds)]

    def saw(self, label, status, elapsed=None):
        with self.lock:
            self.counts[(label, status)] += 1
            if elapsed is not None:
                self.latency[label].append(elapsed)

    def maybe(self, label, statuses, uncounted=False):
        with self.lock:
            self.ambiguous[label].append((frozenset(statuses), uncounted))

    def op(self, kind):
        with self.lock:
            self.ops[kind] += 1

    def fail(self, kind, msg):
        with self.lock:
            self.failures[kind] += 1
            if len(self.failure_examples[kind]) < 5:
                self.failure_examples[kind].append(msg[:600])

    def note(self, kind, msg=""):
        with self.lock:
            self.notes[kind] += 1
            if msg and len(self.note_examples[kind]) < 3:
                self.note_examples[kind].append(msg[:400])


BOOK = Book()
STOP = threading.Event()      # the load ends
DEAD = threading.Event()      # the server died


class Ctx:
    """What every thread needs: the port, the key, whether auth is
    enforced, the solo answers."""
    port = None
    key = None
    auth_enforced = False
    timeout_ms = False         # whether /generate takes timeout_ms
    delete_finished = None     # None unknown, True 204, False 409
    solo = {}                  # canonical body -> solo answer
    srv = None
    trained = []               # names of models trained during the run
    trained_lock = threading.Lock()


def canon(body):
    return json.dumps(body, sort_keys=True)


def auth_headers(extra=None, key=True):
    h = dict(extra or {})
    if key and Ctx.key:
        h["Authorization"] = "Bearer " + Ctx.key
    return h


# ---------------------------------------------------------------------------
# the fixed request sets (solo answers computed once)

PROMPTS = ["And God said", "In the beginning", "The LORD is my shepherd", "Blessed are",
           "And it came to pass", "Thou shalt"]


def greedy_bodies():
    out = []
    for i, p in enumerate(PROMPTS):
        for n in (1, 8, 24, 64):
            b = {"model": "text-kjv", "prompt": p, "max_tokens": n, "temperature": 0}
            if i % 3 == 1:
                b["attention"] = "naive"
            elif i % 3 == 2:
                b["attention"] = "tiled"
            out.append(b)
    out.append({"model": "text-kjv", "prompt": "And God said", "max_tokens": 64, "temperature": 0,
                "stop": ["LORD"]})
    out.append({"model": "soak-random", "prompt": "Hello", "max_tokens": 32, "temperature": 0})
    return out


def sampled_bodies():
    out = []
    for i, p in enumerate(PROMPTS):
        out.append({"model": "text-kjv", "prompt": p, "max_tokens": 24, "temperature": 0.8,
                    "top_k": 40, "top_p": 0.95, "seed": 1000 + i})
    for s in (7, 8, 9):
        out.append({"model": "soak-random", "prompt": "Once upon a time", "max_tokens": 48,
                    "temperature": 5, "seed": s, "ignore_eos": True})
    out.append({"model": "text-kjv", "prompt": "Thou shalt", "max_tokens": 24, "temperature": 1,
                "seed": 18446744073709551615})
    return out


def long_bodies():
    """Streams to cut off: long enough that the cut lands mid-way."""
    return [{"model": "soak-random", "prompt": "Once", "max_tokens": 800, "temperature": 5,
             "seed": s, "ignore_eos": True} for s in (11, 12)] + \
           [{"model": "text-kjv", "prompt": "And God said", "max_tokens": 200, "temperature": 0}]


GREEDY, SAMPLED, LONG = greedy_bodies(), sampled_bodies(), long_bodies()


# ---------------------------------------------------------------------------
# HTTP


def request(conn, method, path, body=None, headers=None, key=True, timeout=HTTP_TIMEOUT):
    """One exchange through H.http_request (conn None: a fresh connection).
    Returns the Response, or raises."""
    return H.http_request(Ctx.port, method, path, body, auth_headers(headers, key), timeout, conn)


def raw(data, timeout=15.0):
    """Sends raw bytes on a fresh connection; (status, headers, body)."""
    st, hdrs, body, _ = H.raw_exchange(Ctx.port, data, timeout=timeout)
    return st, hdrs, body


def key_header():
    return ("Authorization: Bearer %s\r\n" % Ctx.key).encode() if Ctx.key else b""


def error_code(r_body, ctype):
    """The error code of a JSON error body, or raises ValueError."""
    if not ctype.startswith("application/json"):
        raise ValueError("Content-Type %r, want application/json" % ctype)
    obj = json.loads(r_body.decode("utf-8"))
    err = obj["error"]
    if not isinstance(err.get("code"), str) or not isinstance(err.get("message"), str):
        raise ValueError("not the error shape: %r" % r_body[:200])
    return err["code"], err.get("field")


_schema_checked = collections.Counter()


def check_schema(method, path, status, obj):
    """Validates a JSON answer against the contract for the first few of
    each (route, status) and one in 50 after: jsonschema is slow, and
    the Python side shares the cores with the server."""
    k = (method, route_label(path), status)
    _schema_checked[k] += 1
    n = _schema_checked[k]
    if n > 3 and n % 50:
        return
    try:
        errs = H.validation_errors(obj, H.response_schema(method, route_label(path) if route_label(path) != "other"
                                                          else path, status))
    except AssertionError as e:
        BOOK.note("contract: undocumented answer", str(e))
        return
    if errs:
        BOOK.fail("contract: answer does not match api/openapi.yaml",
                  "%s %s -> %d: %s" % (method, path, status, "; ".join(errs[:3])))


# ---------------------------------------------------------------------------
# the worker's operations


class Worker(threading.Thread):
    # (weight, op name)
    MIX = [(22, "greedy"), (14, "sampled"), (4, "stream_full"), (8, "stream_cut"), (3, "abandon"),
           (12, "recall_exact"), (8, "recall_model"), (16, "bad"), (2, "unauth"), (1, "metrics"),
           (1, "models"), (1, "healthz"), (1, "readyz"), (1, "train_list"), (2, "timeout"),
           (6, "v1_greedy"), (4, "tgi_greedy")]

    def __init__(self, idx, seed, think_ms):
        super().__init__(name="worker-%d" % idx, daemon=True)
        self.rng = random.Random(seed * 1000 + idx)
        self.think = think_ms / 1000.0
        self.conn = None
        ops, weights = zip(*[(o, w) for w, o in self.MIX])
        self.ops, self.weights = ops, weights

    def run(self):
        while not STOP.is_set() and not DEAD.is_set():
            op = self.rng.choices(self.ops, self.weights)[0]
            if op == "timeout" and not Ctx.timeout_ms:
                op = "greedy"
            BOOK.op(op)
            try:
                getattr(self, "op_" + op)()
            except Exception as e:  # noqa: BLE001 - every surprise is a finding
                BOOK.fail("exception in %s" % op, "%s: %r" % (op, e))
                self.reset()
            if self.think:
                time.sleep(self.rng.uniform(0, self.think))
        self.reset()

    def reset(self):
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def call(self, method, path, body=None, headers=None, deadline=False):
        """A well-formed request on the worker's keep-alive connection;
        the Response, booked; None (a failure booked) on a transport error."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", Ctx.port, timeout=HTTP_TIMEOUT)
        label = route_label(path)
        try:
            r = request(self.conn, method, path, body, headers)
        except (OSError, http.client.HTTPException) as e:
            self.reset()
            BOOK.fail("no answer to a well-formed request", "%s %s: %r" % (method, path, e))
            BOOK.maybe(label, {499, 200}, uncounted=True)
            return None
        BOOK.saw(label, r.status, r.elapsed)
        if r.header("Connection", "").lower() == "close":
            self.reset()
        # 504: a request with timeout_ms whose deadline passed before its first token
        if r.status >= 500 and r.status != 503 and not (deadline and r.status == 504):
            BOOK.fail("5xx", "%s %s -> %d: %r" % (method, path, r.status, r.body[:300]))
        elif r.status == 503:
            BOOK.note("503 to a well-formed request", "%s %s: %r" % (method, path, r.body[:200]))
        return r

    # ---- /generate

    def expect_solo(self, body, r, what):
        if r is None or r.status == 503:
            return
        if r.status != 200:
            BOOK.fail("wrong answer: " + what, "%s -> %d %r" % (canon(body), r.status, r.body[:300]))
            return
        obj = r.json()
        check_schema("POST", "/generate", 200, obj)
        want = Ctx.solo[canon(body)]
        for k in ("tokens", "text", "finish_reason", "usage"):
            if obj.get(k) != want.get(k):
                BOOK.fail("wrong answer: " + what,
                          "%s: %s %r under load, %r alone" % (canon(body), k, obj.get(k), want.get(k)))
                return

    def op_greedy(self):
        b = self.rng.choice(GREEDY)
        self.expect_solo(b, self.call("POST", "/generate", b), "greedy differs from its solo answer")

    def op_sampled(self):
        b = self.rng.choice(SAMPLED)
        self.expect_solo(b, self.call("POST", "/generate", b), "seeded sample differs from its solo answer")

    # ---- the client routes: the same greedy answers in other shapes

    def op_v1_greedy(self):
        """/v1/completions of a greedy body, n = 2 (a group sharing its
        prefill), plain or streamed: each choice's text is the solo one."""
        b = self.rng.choice(GREEDY)
        want = Ctx.solo[canon(b)]["text"]
        body = {k: b[k] for k in ("model", "prompt", "max_tokens", "temperature", "stop") if k in b}
        body["n"] = 2
        stream = self.rng.random() < 0.4
        if stream:
            body["stream"] = True
        r = self.call("POST", "/v1/completions", body)
        if r is None or r.status == 503:
            return
        try:
            if r.status != 200:
                raise AssertionError("status %d %r" % (r.status, r.body[:200]))
            texts = {0: "", 1: ""}
            if stream:
                datas = H.parse_sse(r.body)
                if datas[-1] != "[DONE]":
                    raise AssertionError("last event %r" % datas[-1][:100])
                for d in datas[:-1]:
                    for ch in json.loads(d)["choices"]:
                        texts[ch["index"]] += ch["text"]
            else:
                obj = r.json()
                check_schema("POST", "/v1/completions", 200, obj)
                for ch in obj["choices"]:
                    texts[ch["index"]] = ch["text"]
            if texts[0] != want or texts[1] != want:
                raise AssertionError("choices %r / %r; alone %r" % (texts[0][:60], texts[1][:60], want[:60]))
        except (AssertionError, ValueError, KeyError) as e:
            BOOK.fail("wrong answer: /v1 greedy choices differ from the solo answer", "%s: %s" % (canon(b), e))

    def op_tgi_greedy(self):
        """TGI's body for a greedy body, on /generate or /generate_stream:
        the generated text is the solo one."""
        b = self.rng.choice(GREEDY)
        want = Ctx.solo[canon(b)]["text"]
        params = {"max_new_tokens": b["max_tokens"]}
        if "stop" in b:
            params["stop"] = b["stop"]
        body = {"inputs": b["prompt"], "model": b["model"], "parameters": params}
        stream = self.rng.random() < 0.5
        r = self.call("POST", "/generate_stream" if stream else "/generate", body)
        if r is None or r.status == 503:
            return
        try:
            if r.status != 200:
                raise AssertionError("status %d %r" % (r.status, r.body[:200]))
            if stream:
                evs = [json.loads(d) for d in H.parse_sse(r.body)]
                text = evs[-1]["generated_text"]
                if "".join(e["token"]["text"] for e in evs if not e["token"]["special"]) != text:
                    raise AssertionError("the events' texts do not make generated_text")
            else:
                text = r.json()["generated_text"]
            if text != want:
                raise AssertionError("%r; alone %r" % (text[:60], want[:60]))
        except (AssertionError, ValueError, KeyError) as e:
            BOOK.fail("wrong answer: TGI greedy text differs from the solo answer", "%s: %s" % (canon(b), e))

    def op_stream_full(self):
        b = self.rng.choice(GREEDY + SAMPLED)
        sb = dict(b, stream=True)
        r = self.call("POST", "/generate", sb)
        if r is None or r.status == 503:
            return
        want = Ctx.solo[canon(b)]
        try:
            if r.status != 200 or r.media_type != "text/event-stream":
                raise AssertionError("status %d, %s" % (r.status, r.header("Content-Type")))
            datas = H.parse_sse(r.body)
            if datas[-1] != "[DONE]":
                raise AssertionError("last event %r" % datas[-1][:100])
            evs = [json.loads(d) for d in datas[:-1]]
            toks = [e["token"] for e in evs[:-1]]
            text = "".join(e.get("text", "") for e in evs)
            fin = evs[-1]
            if toks != want["tokens"] or text != want["text"] or fin.get("finish_reason") != want["finish_reason"]:
                raise AssertionError("tokens %s text %r finish %r; alone: %s %r %r"
                                     % (toks[:12], text[:60], fin.get("finish_reason"),
                                        want["tokens"][:12], want["text"][:60], want["finish_reason"]))
        except (AssertionError, ValueError, KeyError) as e:
            BOOK.fail("wrong answer: stream differs from its solo answer", "%s: %s" % (canon(b), e))

    def op_stream_cut(self):
        """Reads a few events of a long stream and closes the socket."""
        b = self.rng.choice(LONG)
        want = Ctx.solo[canon(b)]["tokens"]
        n_events = self.rng.randint(1, 30)
        rst = self.rng.random() < 0.5
        conn = http.client.HTTPConnection("127.0.0.1", Ctx.port, timeout=HTTP_TIMEOUT)
        t0 = time.monotonic()
        try:
            conn.request("POST", "/generate", json.dumps(dict(b, stream=True)).encode(),
                         auth_headers({"Content-Type": "application/json"}))
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            BOOK.fail("no answer to a well-formed request", "stream: %r" % e)
            BOOK.maybe("/generate", {499, 200}, uncounted=True)
            return
        BOOK.saw("/generate", resp.status)
        if resp.status != 200:
            if resp.status != 503:
                BOOK.fail("wrong answer: stream status", "%d %r" % (resp.status, resp.read()[:200]))
            conn.close()
            return
        buf = b""
        try:
            while buf.count(b"\n\n") < n_events:
                chunk = resp.read1(65536)
                if not chunk:
                    break
                buf += chunk
        except (OSError, http.client.HTTPException) as e:
            BOOK.fail("stream broken before the cut", repr(e))
        if rst:
            try:
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except (OSError, AttributeError):
                pass
        conn.close()
        BOOK.latency["stream cut (to the cut)"].append(time.monotonic() - t0)
        events = buf.split(b"\n\n")[:-1]  # complete events only
        toks = []
        for ev in events:
            d = ev.decode("utf-8", "replace")
            if not d.startswith("data: "):
                BOOK.fail("wrong answer: malformed stream event", d[:200])
                return
            d = d[6:]
            if d == "[DONE]":
                break
            obj = json.loads(d)
            if "token" in obj:
                toks.append(obj["token"])
        if toks != want[:len(toks)]:
            BOOK.fail("wrong answer: cut stream's tokens differ from its solo answer",
                      "%s: %s vs %s" % (canon(b), toks[:12], want[:12]))

    def op_abandon(self):
        """A long non-streamed /generate whose client leaves before the
        answer: the server should count 499 and free the slot."""
        b = {"model": "soak-random", "prompt": "Abandon", "max_tokens": 900, "temperature": 0,
             "ignore_eos": True}
        data = json.dumps(b).encode()
        s = socket.create_connection(("127.0.0.1", Ctx.port), timeout=10)
        try:
            s.sendall(b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      + key_header() + b"Content-Length: %d\r\n\r\n" % len(data) + data)
            time.sleep(self.rng.uniform(0.02, 0.15))
            rst = self.rng.random() < 0.5
            if rst:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            s.close()
        # 499 if the server noticed first; 200 (or 503, 429) if it answered
        # first. A RST discards what the server had not read yet: on a
        # loaded machine the request may never have reached it at all.
        BOOK.maybe("/generate", {499, 200, 503, 429}, uncounted=rst)

    def op_timeout(self):
        """A generation with a small timeout_ms: it ends early with
        finish_reason "timeout", or 504 before its first token."""
        b = {"model": "soak-random", "prompt": "Time", "max_tokens": 900, "temperature": 0,
             "ignore_eos": True, "timeout_ms": self.rng.choice([1, 20, 100])}
        r = self.call("POST", "/generate", b, deadline=True)
        if r is None or r.status == 503:
            return
        if r.status == 504:
            try:
                code, _ = error_code(r.body, r.header("Content-Type", ""))
                if code != "timeout":
                    BOOK.fail("wrong answer: timeout_ms", "504 with code %r" % code)
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                BOOK.fail("wrong answer: error body", "504: %s" % e)
            return
        if r.status != 200:
            BOOK.fail("wrong answer: timeout_ms", "%d %r" % (r.status, r.body[:200]))
            return
        fin = r.json().get("finish_reason")
        if fin not in ("timeout", "length"):
            BOOK.fail("wrong answer: timeout_ms", "finish_reason %r" % fin)
        elif fin == "length" and r.elapsed * 1000 > b["timeout_ms"] + 1000:
            BOOK.note("timeout_ms ignored by /generate", "timeout_ms %d, finish_reason length after %.0f ms"
                      % (b["timeout_ms"], r.elapsed * 1000))

    # ---- /recall

    def op_recall_exact(self):
        rng = self.rng
        n = rng.choice([1, 2, 3, 8, 16, 64, 256])

        def sym():
            return rng.randrange(1000) if rng.random() < 0.5 else "k%d" % rng.randrange(1000)
        pairs, store = [], {}
        for _ in range(n):
            k, v = sym(), sym()
            pairs.append([k, v])
            store[k] = v
        for _ in range(rng.randrange(0, n // 4 + 1)):  # overwrites
            k, v = rng.choice(pairs)[0], sym()
            pairs.append([k, v])
            store[k] = v
        keys = list(store)
        qs = [rng.choice(keys) if rng.random() < 0.7 else sym() for _ in range(rng.randint(1, 16))]
        single = rng.random() < 0.2
        body = {"pairs": pairs}
        if single:
            qs = qs[:1]
            body["query"] = qs[0]
        else:
            body["queries"] = qs
        if rng.random() < 0.5:
            body["engine"] = "exact"
        self.check_recall("exact", body, qs, store)

    def op_recall_model(self):
        rng = self.rng
        size = rng.randint(1, 8)
        keys = rng.sample(range(64), size)
        pairs = [[k, rng.randrange(64)] for k in keys]
        if rng.random() < 0.2:
            for _ in range(rng.randint(1, 3)):
                pairs.append([rng.choice(keys), rng.randrange(64)])
        store = dict((k, v) for k, v in pairs)
        others = [k for k in range(64) if k not in store]
        qs = [rng.choice(keys) if rng.random() < 0.75 else rng.choice(others) for _ in range(8)]
        body = {"engine": "model", "model": "recall-mqar8", "pairs": pairs, "queries": qs}
        self.check_recall("model", body, qs, store)

    def check_recall(self, engine, body, qs, store):
        r = self.call("POST", "/recall", body)
        if r is None or r.status == 503:
            return
        if r.status != 200:
            BOOK.fail("wrong answer: recall status", "%s -> %d %r" % (json.dumps(body)[:200], r.status, r.body[:200]))
            return
        obj = r.json()
        check_schema("POST", "/recall", 200, obj)
        with BOOK.lock:
            BOOK.recall_ok[engine] += 1
        ans = obj.get("answers", [])
        if len(ans) != len(qs):
            BOOK.fail("wrong answer: recall", "%d answers for %d queries" % (len(ans), len(qs)))
            return
        wrong = []
        for q, a in zip(qs, ans):
            want = store.get(q)
            if a.get("query") != q or a.get("value") != want or a.get("found") != (q in store):
                wrong.append((q, a.get("value"), want))
        if engine == "exact":
            if wrong:
                BOOK.fail("wrong answer: recall exact", "%s: (query, got, want) %s" % (json.dumps(body)[:200], wrong[:4]))
        else:
            with BOOK.lock:
                BOOK.model_queries += len(qs)
                BOOK.model_wrong += len(wrong)
            if wrong:
                BOOK.note("recall model: wrong answers (bounded below)", "%s: %s" % (json.dumps(body)[:200], wrong[:4]))

    # ---- polls

    def op_metrics(self):
        r = self.call("GET", "/metrics")
        if r is not None and r.status == 200:
            try:
                H.parse_metrics(r.body.decode("utf-8"))
            except AssertionError as e:
                BOOK.fail("wrong answer: /metrics not exposition format", str(e))
        elif r is not None:
            BOOK.fail("wrong answer: /metrics", "status %d" % r.status)

    def op_models(self):
        r = self.call("GET", "/models")
        if r is None:
            return
        if r.status != 200:
            BOOK.fail("wrong answer: /models", "status %d" % r.status)
            return
        obj = r.json()
        check_schema("GET", "/models", 200, obj)
        names = {m["name"] for m in obj["models"]}
        missing = set(BUNDLED) - names
        if missing:
            BOOK.fail("wrong answer: /models", "missing %s" % sorted(missing))

    def op_healthz(self):
        r = self.call("GET", "/healthz")
        if r is not None and r.status != 200:
            BOOK.fail("wrong answer: /healthz", "status %d" % r.status)

    def op_readyz(self):
        r = self.call("GET", "/readyz")
        if r is not None and r.status != 200:
            BOOK.fail("wrong answer: /readyz", "status %d" % r.status)

    def op_train_list(self):
        r = self.call("GET", "/train")
        if r is not None and r.status != 200:
            BOOK.fail("wrong answer: GET /train", "status %d" % r.status)
        elif r is not None:
            check_schema("GET", "/train", 200, r.json())

    # ---- hostile requests

    def op_unauth(self):
        """No key, or a wrong one: 401 once auth is enforced (else the
        ordinary answer)."""
        path = self.rng.choice(["/models", "/metrics", "/train"])
        bad = self.rng.random() < 0.5
        hdrs = {"Authorization": "Bearer wrong-" + Ctx.key} if bad else {}
        r = request(None, "GET", path, headers=hdrs, key=False)
        BOOK.saw(route_label(path), r.status, r.elapsed)
        if Ctx.auth_enforced:
            if r.status != 401:
                BOOK.fail("wrong answer: no key", "GET %s without a valid key -> %d" % (path, r.status))
            else:
                with BOOK.lock:
                    BOOK.auth_401 += 1
                if "bearer" not in r.header("WWW-Authenticate", "").lower():
                    BOOK.fail("wrong answer: 401 without WWW-Authenticate: Bearer", repr(r.headers))
                self.check_error(r.status, r.body, r.header("Content-Type", ""), 401, None, "401 " + path)
        elif r.status != 200:
            BOOK.fail("wrong answer: auth not enforced", "GET %s -> %d" % (path, r.status))

    def check_error(self, status, body, ctype, want_status, want_code, what, want_field=H.MISSING):
        if status != want_status:
            BOOK.fail("wrong answer: bad request", "%s: status %d, want %d: %r" % (what, status, want_status, body[:200]))
            return
        try:
            code, field = error_code(body, ctype)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            BOOK.fail("wrong answer: error body", "%s: %s" % (what, e))
            return
        if want_code is not None and code != want_code:
            BOOK.fail("wrong answer: error code", "%s: code %r, want %r" % (what, code, want_code))
        if want_field is not H.MISSING and field != want_field:
            BOOK.fail("wrong answer: error field", "%s: field %r, want %r" % (what, field, want_field))

    def op_bad(self):
        kind, fn = self.rng.choice(BAD)
        BOOK.op("bad: " + kind)
        fn(self, kind)


def _bad_json(w, kind, path, body, status, code, field=H.MISSING, ctype="application/json", method="POST"):
    hdrs = {"Content-Type": ctype} if ctype is not None else {}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = request(None, method, path, data, hdrs)
    BOOK.saw(route_label(path), r.status, r.elapsed)
    w.check_error(r.status, r.body, r.header("Content-Type", ""), status, code, kind, field)
    if r.status == status and r.media_type == "application/json":
        check_schema(method, path, status, r.json())
    if status == 405 and r.status == 405 and not r.header("Allow"):
        BOOK.fail("wrong answer: 405 without Allow", "%s %s" % (method, path))


def _bad_raw(w, kind, data, label, status, code, maybe_uncounted=False, also=()):
    """A raw exchange on a fresh connection. maybe_uncounted: answered by
    libmicrohttpd itself (its memory pool), so not counted by the route."""
    try:
        st, hdrs, body = raw(data)
    except (AssertionError, OSError) as e:
        if maybe_uncounted:
            BOOK.note("closed without an answer: " + kind, repr(e))
            BOOK.maybe(label, {status, 400}, uncounted=True)
        else:
            BOOK.fail("no answer to a bad request", "%s: %r" % (kind, e))
            BOOK.maybe(label, {status, 400, 499}, uncounted=True)
        return
    if maybe_uncounted:
        BOOK.maybe(label, {st}, uncounted=True)
    else:
        BOOK.saw(label, st)
    if st not in (status,) + tuple(also):
        BOOK.fail("wrong answer: bad request", "%s: status %d, want %d: %r" % (kind, st, status, body[:200]))
        return
    try:
        got, _ = error_code(body, hdrs.get("content-type", ""))
        if code is not None and got != code:
            BOOK.fail("wrong answer: error code", "%s: code %r, want %r" % (kind, got, code))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        if maybe_uncounted:  # libmicrohttpd's own page; attnd's JSON is landing
            BOOK.note("not the JSON error shape: " + kind, "%d %s" % (st, e))
        else:
            BOOK.fail("wrong answer: error body", "%s: %s" % (kind, e))


def _head(method, path, extra=b""):
    return (b"%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n" % (method.encode(), path.encode())) + key_header() + extra


DEEP_ARRAY = b"[" * 100000 + b"]" * 100000
DEEP_OBJECT = b'{"a":' * 100000 + b"1" + b"}" * 100000


def _chunked_oversize(w, kind):
    """A chunked body (no Content-Length) that outgrows --max-body-bytes:
    refused with 413 when the upload ends or cut off."""
    s = socket.create_connection(("127.0.0.1", Ctx.port), timeout=15)
    try:
        s.sendall(_head("POST", "/generate", b"Content-Type: application/json\r\n"
                                             b"Transfer-Encoding: chunked\r\n\r\n"))
        chunk = b"%x\r\n" % 65536 + b" " * 65536 + b"\r\n"
        try:
            for _ in range(20):  # 1.25 MiB against the 1 MiB default
                s.sendall(chunk)
            s.sendall(b"0\r\n\r\n")
            st, hdrs, body, _ = H.read_http_response(s, 15)
        except (OSError, AssertionError) as e:
            BOOK.note("chunked oversize: cut off without an answer", repr(e))
            BOOK.maybe("/generate", {413, 499})
            return
    finally:
        s.close()
    BOOK.saw("/generate", st)
    w.check_error(st, body, hdrs.get("content-type", ""), 413, "payload_too_large", kind)


def _partial_body(w, kind):
    """Headers and half the body, then the client leaves: 499."""
    s = socket.create_connection(("127.0.0.1", Ctx.port), timeout=10)
    try:
        s.sendall(_head("POST", "/generate", b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n")
                  + b'{"prompt": "half a bo')
        time.sleep(0.05)
    finally:
        s.close()
    BOOK.saw("/generate", 499)


P = "/generate"
BAD = [
    ("malformed JSON", lambda w, k: _bad_json(w, k, P, b'{"prompt": "x",', 400, "invalid_json", None)),
    ("malformed JSON /recall", lambda w, k: _bad_json(w, k, "/recall", b'{"pairs": [[1, 2]', 400, "invalid_json")),
    ("malformed JSON /train", lambda w, k: _bad_json(w, k, "/train", b'{"task": recall}', 400, "invalid_json")),
    ("empty body", lambda w, k: _bad_json(w, k, P, b"", 400, "invalid_json")),
    ("invalid UTF-8", lambda w, k: _bad_json(w, k, P, b'{"prompt": "\xff\xfe"}', 400, "invalid_json")),
    ("prompt not a string", lambda w, k: _bad_json(w, k, P, {"prompt": 5}, 422, "invalid_argument", "prompt")),
    ("max_tokens a string", lambda w, k: _bad_json(w, k, P, {"prompt": "x", "max_tokens": "ten"}, 422,
                                                   "invalid_argument", "max_tokens")),
    ("max_tokens 0", lambda w, k: _bad_json(w, k, P, {"prompt": "x", "max_tokens": 0}, 422,
                                            "invalid_argument", "max_tokens")),
    ("temperature negative", lambda w, k: _bad_json(w, k, P, {"prompt": "x", "temperature": -1}, 422,
                                                    "invalid_argument", "temperature")),
    ("unknown field", lambda w, k: _bad_json(w, k, P, {"prompt": "x", "max_token": 5}, 422,
                                             "invalid_argument", "max_token")),
    ("body not an object", lambda w, k: _bad_json(w, k, P, [1, 2], 422, "invalid_argument")),
    ("stream not a boolean", lambda w, k: _bad_json(w, k, P, {"prompt": "x", "stream": "yes"}, 422,
                                                    "invalid_argument", "stream")),
    ("prompt over the context", lambda w, k: _bad_json(w, k, P, {"model": "text-kjv", "prompt": "x" * 300}, 422,
                                                       "invalid_argument", "prompt")),
    ("unknown model", lambda w, k: _bad_json(w, k, P, {"prompt": "x", "model": "nope"}, 404,
                                             "model_not_found", "model")),
    ("recall pairs not an array", lambda w, k: _bad_json(w, k, "/recall", {"pairs": "x", "queries": [1]}, 422,
                                                         "invalid_argument", "pairs")),
    ("recall model with a string key", lambda w, k: _bad_json(w, k, "/recall",
                                                              {"engine": "model", "pairs": [["a", 1]], "queries": [0]},
                                                              422, "invalid_argument")),
    ("recall unknown engine", lambda w, k: _bad_json(w, k, "/recall", {"engine": "psychic", "pairs": [[1, 2]],
                                                                       "queries": [1]}, 422, "invalid_argument", "engine")),
    ("train bad name", lambda w, k: _bad_json(w, k, "/train", {"task": "recall", "name": "Bad Name"}, 422,
                                              "invalid_argument", "name")),
    ("train steps a string", lambda w, k: _bad_json(w, k, "/train", {"task": "recall", "name": "x", "steps": "many"},
                                                    422, "invalid_argument", "steps")),
    ("train name taken", lambda w, k: _bad_json(w, k, "/train", {"task": "recall", "name": "recall-mqar8"}, 409,
                                                "conflict", "name")),
    ("unknown route", lambda w, k: _bad_json(w, k, "/nope", None, 404, "not_found", method="GET", ctype=None)),
    ("unknown route POST", lambda w, k: _bad_json(w, k, "/generate/extra", {"prompt": "x"}, 404, "not_found")),
    ("train/ without id", lambda w, k: _bad_json(w, k, "/train/", None, 404, "not_found", method="GET", ctype=None)),
    ("unknown job", lambda w, k: _bad_json(w, k, "/train/tr-0", None, 404, "not_found", method="GET", ctype=None)),
    ("DELETE unknown job", lambda w, k: _bad_json(w, k, "/train/tr-0", None, 404, "not_found", method="DELETE",
                                                  ctype=None)),
    ("GET /generate", lambda w, k: _bad_json(w, k, P, None, 405, "method_not_allowed", method="GET", ctype=None)),
    ("DELETE /models", lambda w, k: _bad_json(w, k, "/models", None, 405, "method_not_allowed", method="DELETE",
                                              ctype=None)),
    ("PUT /train", lambda w, k: _bad_json(w, k, "/train", {"task": "recall"}, 405, "method_not_allowed",
                                          method="PUT")),
    ("POST /healthz", lambda w, k: _bad_json(w, k, "/healthz", {}, 405, "method_not_allowed")),
    ("POST /train/{id}", lambda w, k: _bad_json(w, k, "/train/tr-0", {}, 405, "method_not_allowed")),
    ("text/plain", lambda w, k: _bad_json(w, k, P, {"prompt": "x"}, 415, "unsupported_media_type",
                                          ctype="text/plain")),
    ("no Content-Type", lambda w, k: _bad_json(w, k, "/recall", {"pairs": [[1, 2]], "query": 1}, 415,
                                               "unsupported_media_type", ctype=None)),
    ("413 by Content-Length", lambda w, k: _bad_raw(
        w, k, _head("POST", P, b"Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n{\"prompt\""),
        P, 413, "payload_too_large")),
    ("413 chunked", _chunked_oversize),
    ("100,000-deep array", lambda w, k: _bad_json(w, k, P, DEEP_ARRAY, 400, "invalid_json")),
    ("100,000-deep object", lambda w, k: _bad_json(w, k, "/recall", DEEP_OBJECT, 400, "invalid_json")),
    ("100,000-deep array /train", lambda w, k: _bad_json(w, k, "/train", DEEP_ARRAY, 400, "invalid_json")),
    # within libmicrohttpd's memory pool (2 x --max-header-bytes + 16 KiB):
    # attnd's own JSON answer, counted
    ("20 KiB header", lambda w, k: _bad_raw(w, k, _head("GET", "/healthz", b"X-Big: " + b"a" * 20000 + b"\r\n\r\n"),
                                            "/healthz", 431, "request_header_fields_too_large")),
    ("20 KiB URL", lambda w, k: _bad_raw(w, k, _head("GET", "/" + "a" * 20000, b"\r\n"), "other", 414,
                                         "uri_too_long")),
    # beyond it: libmicrohttpd answers by itself (HTML), see the report
    ("64 KiB header", lambda w, k: _bad_raw(w, k, _head("GET", "/healthz", b"X-Big: " + b"a" * 65536 + b"\r\n\r\n"),
                                            "/healthz", 431, None, maybe_uncounted=True)),
    ("64 KiB URL", lambda w, k: _bad_raw(w, k, _head("GET", "/" + "a" * 65536, b"\r\n"), "other", 414, None,
                                         maybe_uncounted=True)),
    ("body cut off half-way", _partial_body),
]


# ---------------------------------------------------------------------------
# training jobs


def train_body(name, steps, seed):
    return {"task": "recall", "name": name, "model": {"dim": 16, "n_layers": 1, "n_heads": 2}, "steps": steps,
            "batch_size": 4, "seq_len": 16, "learning_rate": 0.003, "seed": seed, "eval_sequences": 16,
            "checkpoint_every": 0 if steps > 1000 else 50,
            "recall": {"n_pairs": 2, "n_keys": 8, "n_values": 8, "absent_fraction": 0.25}}


class Trainer(threading.Thread):
    """Small recall jobs, one at a time: left to finish or cancelled."""

    def __init__(self, seed, seconds):
        super().__init__(name="trainer", daemon=True)
        self.rng = random.Random(seed * 1000 + 999)
        self.conn = None
        self.posted = 0
        self.succeeded = 0
        self.cancelled = 0
        self.deleted = 0
        # spread the job budget over the run
        self.pause = max(0.5, seconds / MAX_JOBS)

    def call(self, method, path, body=None):
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", Ctx.port, timeout=HTTP_TIMEOUT)
        try:
            r = request(self.conn, method, path, body)
        except (OSError, http.client.HTTPException) as e:
            self.conn.close()
            self.conn = None
            BOOK.fail("no answer to a well-formed request", "%s %s: %r" % (method, path, e))
            BOOK.maybe(route_label(path), {499, 200, 202, 204, 409}, uncounted=True)
            return None
        BOOK.saw(route_label(path), r.status, r.elapsed)
        if r.status >= 500 and r.status != 503:
            BOOK.fail("5xx", "%s %s -> %d: %r" % (method, path, r.status, r.body[:300]))
        return r

    def wait_done(self, jid, timeout=180):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not DEAD.is_set():
            r = self.call("GET", "/train/" + jid)
            if r is None:
                return None
            if r.status != 200:
                BOOK.fail("wrong answer: GET /train/{id}", "%s -> %d %r" % (jid, r.status, r.body[:200]))
                return None
            st = r.json()
            if st["status"] in ("succeeded", "failed", "cancelled"):
                check_schema("GET", "/train/" + jid, 200, st)
                return st
            time.sleep(0.2)
        BOOK.fail("training job never finished", "%s within %ds" % (jid, timeout))
        return None

    def run(self):
        while not STOP.is_set() and not DEAD.is_set() and self.posted < MAX_JOBS:
            try:
                self.one()
            except Exception as e:  # noqa: BLE001
                BOOK.fail("exception in trainer", repr(e))
                if self.conn:
                    self.conn.close()
                self.conn = None
            STOP.wait(self.rng.uniform(0.5, 1.5) * self.pause)
        if self.conn:
            self.conn.close()

    def one(self):
        finish = self.succeeded < MAX_TRAINED and self.rng.random() < 0.5
        self.posted += 1
        name = "soak-%d-%d" % (os.getpid(), self.posted)
        body = train_body(name, self.rng.choice([40, 100, 200]) if finish else 200000, self.posted)
        BOOK.op("train: post (%s)" % ("finish" if finish else "cancel"))
        r = self.call("POST", "/train", body)
        if r is None:
            return
        if r.status in (503, 507):
            BOOK.note("train: %d" % r.status, r.body[:200].decode(errors="replace"))
            return
        if r.status != 202:
            BOOK.fail("wrong answer: POST /train", "%d %r" % (r.status, r.body[:300]))
            return
        jid = r.json()["id"]
        if r.header("Location") != "/train/" + jid:
            BOOK.fail("wrong answer: POST /train Location", "%r for %s" % (r.header("Location"), jid))
        if not finish:
            STOP.wait(self.rng.uniform(0.1, 1.0))
            d = self.call("DELETE", "/train/" + jid)
            if d is not None and d.status not in (204, 409):
                BOOK.fail("wrong answer: cancel", "DELETE %s -> %d %r" % (jid, d.status, d.body[:200]))
        st = self.wait_done(jid)
        if st is None:
            return
        if st["status"] == "failed":
            BOOK.fail("training job failed", "%s: %s" % (jid, st.get("error")))
            return
        if finish and st["status"] != "succeeded":
            BOOK.fail("training job did not succeed", "%s: %s" % (jid, st["status"]))
            return
        if st["status"] == "succeeded":
            self.succeeded += 1
            if self.use_model(name) and self.rng.random() < 0.5:
                self.unload(name)
        else:
            self.cancelled += 1
        # the finished record: removed when the server supports it
        d = self.call("DELETE", "/train/" + jid)
        if d is None:
            return
        if d.status == 204:
            Ctx.delete_finished = True
            self.deleted += 1
            g = self.call("GET", "/train/" + jid)
            if g is not None and g.status != 404:
                BOOK.fail("wrong answer: deleted job still listed", "GET %s -> %d" % (jid, g.status))
        elif d.status == 409:
            if Ctx.delete_finished is None:
                Ctx.delete_finished = False
            BOOK.note("DELETE of a finished job: 409 (record kept)")
        else:
            BOOK.fail("wrong answer: DELETE finished job", "%s -> %d %r" % (jid, d.status, d.body[:200]))

    def use_model(self, name):
        """A trained model is served at once: /models lists it and /recall
        answers with it (its answers are noise: only the shape is checked)."""
        r = self.call("GET", "/models")
        if r is None:
            return
        names = {m["name"] for m in r.json().get("models", [])}
        if name not in names:
            BOOK.fail("wrong answer: trained model not in /models", name)
            return
        r = self.call("POST", "/recall", {"engine": "model", "model": name, "pairs": [[1, 2], [3, 4]],
                                          "queries": [1, 3, 5]})
        if r is None:
            return
        if r.status != 200 or len(r.json().get("answers", [])) != 3:
            BOOK.fail("wrong answer: recall with a trained model", "%s -> %d %r" % (name, r.status, r.body[:200]))
        else:
            with BOOK.lock:
                BOOK.recall_ok["model"] += 1
        with Ctx.trained_lock:
            Ctx.trained.append(name)
        return True

    def unload(self, name):
        """DELETE /models/{name}: gone from /models at once, and a rescan
        does not bring it back (its file went with it); its memory must
        be freed, which the RSS bound checks over the run."""
        BOOK.op("models: delete + reload")
        d = self.call("DELETE", "/models/" + name)
        if d is None:
            return
        if d.status != 200:
            BOOK.fail("wrong answer: DELETE /models/{name}", "%s -> %d %r" % (name, d.status, d.body[:200]))
            return
        check_schema("DELETE", "/models/" + name, 200, d.json())
        with Ctx.trained_lock:
            if name in Ctx.trained:
                Ctx.trained.remove(name)
        r = self.call("POST", "/models/reload")
        if r is None:
            return
        if r.status != 200:
            BOOK.fail("wrong answer: POST /models/reload", "%d %r" % (r.status, r.body[:200]))
            return
        check_schema("POST", "/models/reload", 200, r.json())
        if name in r.json()["added"]:
            BOOK.fail("wrong answer: a deleted model came back", name)
        g = self.call("GET", "/models")
        if g is not None and name in {m["name"] for m in g.json().get("models", [])}:
            BOOK.fail("wrong answer: deleted model still in /models", name)


# ---------------------------------------------------------------------------
# slow clients


class Slow(threading.Thread):
    """kind "drip": a request a byte every 0.5 s; kind "idle": connects,
    sends nothing. Each connection is held until the server drops it or
    `hold` seconds pass, then the next one starts."""

    def __init__(self, kind, idx, hold=IDLE_HOLD, interval=0.5):
        super().__init__(name="slow-%s-%d" % (kind, idx), daemon=True)
        self.kind, self.hold, self.interval = kind, hold, interval
        self.sock = None

    def run(self):
        while not STOP.is_set() and not DEAD.is_set():
            try:
                (self.drip if self.kind == "drip" else self.idle)()
            except Exception as e:  # noqa: BLE001
                BOOK.fail("exception in slow client", repr(e))
            finally:
                if self.sock is not None:
                    self.sock.close()
                    self.sock = None

    def closed_by_server(self, timeout):
        """Whether the server closed the socket (waits up to timeout)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            return False, b""
        except OSError:
            return True, b""
        return not data, data

    def idle(self):
        t0 = time.monotonic()
        self.sock = socket.create_connection(("127.0.0.1", Ctx.port), timeout=10)
        BOOK.op("slow: idle connection")
        while not STOP.is_set() and time.monotonic() - t0 < self.hold:
            closed, data = self.closed_by_server(0.5)
            if closed or data:
                BOOK.slow["idle"].append(("dropped by the server" + (" with %r" % data[:40] if data else ""),
                                          time.monotonic() - t0))
                return
        BOOK.slow["idle"].append(("held to the end", time.monotonic() - t0))

    def drip(self):
        # ~90 bytes: 45 s at a byte every 0.5 s, well past any header timeout
        req = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"s" * 40 + b"\r\n\r\n"
        t0 = time.monotonic()
        self.sock = socket.create_connection(("127.0.0.1", Ctx.port), timeout=10)
        BOOK.op("slow: drip request")
        for i in range(len(req)):
            if STOP.is_set() or time.monotonic() - t0 > self.hold:
                BOOK.slow["drip"].append(("given up by the client", time.monotonic() - t0))
                return
            try:
                self.sock.sendall(req[i:i + 1])
            except OSError:
                BOOK.slow["drip"].append(("dropped by the server", time.monotonic() - t0))
                BOOK.maybe("other", {408, 499}, uncounted=True)
                return
            closed, data = self.closed_by_server(self.interval)
            if closed or data:
                # dropped part-way: once its request line was in, the server
                # counts it as route "other", 408 (its deadline) or 499
                if data and i < len(req) - 1:
                    st = data[9:12].decode("latin-1", "replace")
                    BOOK.slow["drip"].append(("answered %s before its end" % st, time.monotonic() - t0))
                    BOOK.maybe("other", {408, 400, 499}, uncounted=True)
                    return
                if closed and not data:
                    if i == len(req) - 1:
                        BOOK.maybe("/healthz", {200}, uncounted=True)
                    else:
                        BOOK.maybe("other", {408, 499}, uncounted=True)
                    BOOK.slow["drip"].append(("dropped by the server", time.monotonic() - t0))
                    return
                break
        try:
            st, hdrs, body, _ = H.read_http_response(_Prefix(self.sock, data), 10)
        except (AssertionError, OSError) as e:
            BOOK.slow["drip"].append(("no answer after the whole request: %r" % e, time.monotonic() - t0))
            BOOK.maybe("/healthz", {200}, uncounted=True)
            return
        BOOK.saw("/healthz", st)
        BOOK.slow["drip"].append(("answered %d" % st, time.monotonic() - t0))
        if st != 200:
            BOOK.fail("wrong answer: slow /healthz", "status %d %r" % (st, body[:100]))


class _Prefix:
    def __init__(self, s, prefix):
        self.s, self.prefix = s, prefix

    def settimeout(self, t):
        self.s.settimeout(max(t, 0.001))

    def recv(self, n):
        if self.prefix:
            p, self.prefix = self.prefix, b""
            return p
        return self.s.recv(n)


# ---------------------------------------------------------------------------
# the process: RSS and descriptors


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    return 0


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


class Monitor(threading.Thread):
    def __init__(self, srv):
        super().__init__(name="monitor", daemon=True)
        self.srv = srv
        self.samples = []  # (t, rss KiB, fds)
        self.t0 = time.monotonic()
        self.done = threading.Event()

    def run(self):
        pid = self.srv.proc.pid
        while not self.done.is_set():
            if not self.srv.alive():
                DEAD.set()
                STOP.set()
                return
            try:
                self.samples.append((time.monotonic() - self.t0, rss_kib(pid), fd_count(pid)))
            except OSError:
                pass
            self.done.wait(1.0)

    def rss_at(self, t):
        """The first sample at or after t seconds (the last if none)."""
        for s in self.samples:
            if s[0] >= t:
                return s[1]
        return self.samples[-1][1] if self.samples else 0


# ---------------------------------------------------------------------------
# metrics


def scrape():
    r = request(None, "GET", "/metrics")
    if r.status != 200:
        raise AssertionError("GET /metrics -> %d" % r.status)
    return H.parse_metrics(r.body.decode("utf-8"))


def request_counts(fams):
    out = collections.Counter()
    f = fams.get("attnd_requests_total")
    for name, lab, v, _ in (f.samples if f else []):
        out[(lab.get("route"), int(lab.get("code")))] += v
    return out


def compare_counts(before, after):
    """Server deltas against the client's counts; a list of problems."""
    server = collections.Counter()
    for k in set(before) | set(after):
        d = after.get(k, 0) - before.get(k, 0)
        if d:
            server[k] = int(d)
    problems = []
    labels = {k[0] for k in server} | {k[0] for k in BOOK.counts} | set(BOOK.ambiguous)
    for label in sorted(labels):
        statuses = {s for (lb, s) in server if lb == label} | {s for (lb, s) in BOOK.counts if lb == label}
        amb = BOOK.ambiguous.get(label, [])
        allowed = set().union(*[a for a, _ in amb]) if amb else set()
        surplus_total = 0
        for s in sorted(statuses):
            surplus = server.get((label, s), 0) - BOOK.counts.get((label, s), 0)
            if surplus < 0:
                problems.append("%s %d: the server counted %d, the client saw %d"
                                % (label, s, server.get((label, s), 0), BOOK.counts.get((label, s), 0)))
            elif surplus > 0:
                if s not in allowed:
                    problems.append("%s %d: the server counted %d, the client saw %d (no ambiguous request "
                                    "may show %d)" % (label, s, server.get((label, s), 0),
                                                      BOOK.counts.get((label, s), 0), s))
                surplus_total += surplus
        must = sum(1 for _, unc in amb if not unc)
        if surplus_total > len(amb) or surplus_total < must:
            problems.append("%s: %d requests the client could not attribute (%d must be counted), the server "
                            "counted %d more than the client saw" % (label, len(amb), must, surplus_total))
    return server, problems


# ---------------------------------------------------------------------------
# set-up, solo answers, the run, the report


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def start_server(work, threads):
    models = work.mkdir("models")
    for m in BUNDLED:
        src = os.path.join(H.REPO, "models", m + ".safetensors")
        if not os.path.exists(src):
            raise SystemExit("soak: %s is missing (the bundled models are part of the repository)" % src)
        os.symlink(src, os.path.join(models, m + ".safetensors"))
    H.make_model(os.path.join(models, "soak-random.safetensors"), RANDOM_MODEL, 1)
    Ctx.key = "soak-" + secrets.token_hex(16)
    args = ["--host", "127.0.0.1", "--port", "0", "--models-dir", models, "--data-dir", work.sub("data"),
            "--threads", str(threads), "--grace-seconds", str(GRACE), "--train-workers", "1",
            "--train-threads", "1", "--api-key", Ctx.key]
    srv = H.Server(args, name="attnd-soak", workdir=work.path, api_key=Ctx.key)
    srv.start()
    Ctx.port = srv.port
    Ctx.srv = srv
    return srv


def probe():
    """What this build supports: auth enforced, timeout_ms."""
    r = request(None, "GET", "/models", key=False)
    Ctx.auth_enforced = r.status == 401
    r = request(None, "POST", "/generate", {"model": "text-kjv", "prompt": "x", "max_tokens": 1,
                                            "temperature": 0, "timeout_ms": 60000})
    Ctx.timeout_ms = r.status == 200


def solo_answers():
    for b in GREEDY + SAMPLED + LONG:
        r = request(None, "POST", "/generate", b, timeout=120)
        if r.status != 200:
            raise SystemExit("soak: solo answer of %s: %d %r" % (canon(b), r.status, r.body[:300]))
        Ctx.solo[canon(b)] = r.json()
    # the premise of "same seed, same text": asked twice alone, the same
    for b in SAMPLED[:2]:
        r = request(None, "POST", "/generate", b)
        if r.json()["tokens"] != Ctx.solo[canon(b)]["tokens"]:
            BOOK.fail("wrong answer: seeded sample differs alone", canon(b))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--attnd", default="build/attnd")
    ap.add_argument("--attn", default="build/attn")
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 600)))
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="attnd --threads")
    ap.add_argument("--think-ms", type=float, default=5.0, help="each worker sleeps 0..this between requests")
    ap.add_argument("--slow", type=int, default=3, help="drip and idle connections (each)")
    ap.add_argument("--rss-bound-mib", type=float, default=RSS_BOUND_MIB)
    ap.add_argument("--fd-slack", type=int, default=FD_SLACK)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("-v", dest="verbose", action="store_true")
    a = ap.parse_args()
    H.OPTS.attnd, H.OPTS.attn = H._resolve(a.attnd), H._resolve(a.attn)
    H.OPTS.keep, H.OPTS.verbose = a.keep, a.verbose
    warmup = min(60.0, max(10.0, a.seconds * 0.25))

    work = H.Workdir(prefix="attnd-soak-")
    srv = None
    reasons = []
    try:
        srv = start_server(work, a.threads)
        print("soak: attnd pid %d on 127.0.0.1:%d, %gs, %d workers, seed %d"
              % (srv.proc.pid, srv.port, a.seconds, a.workers, a.seed))
        probe()
        print("soak: auth %s; timeout_ms %s" % ("enforced" if Ctx.auth_enforced else "not enforced (yet)",
                                               "accepted" if Ctx.timeout_ms else "not supported (yet)"))
        t = time.monotonic()
        solo_answers()
        print("soak: %d solo answers in %.1fs" % (len(Ctx.solo), time.monotonic() - t))
        time.sleep(0.5)
        pid = srv.proc.pid
        fds0, rss0 = fd_count(pid), rss_kib(pid)
        before = request_counts(scrape())
        fams0 = scrape()
        BOOK.saw("/metrics", 200)
        BOOK.saw("/metrics", 200)

        mon = Monitor(srv)
        mon.start()
        threads = [Worker(i, a.seed, a.think_ms) for i in range(a.workers)]
        threads.append(Trainer(a.seed, a.seconds))
        threads += [Slow("drip", i) for i in range(a.slow)] + [Slow("idle", i) for i in range(a.slow)]
        t_load = time.monotonic()
        for th in threads:
            th.start()
        next_report = t_load + 30
        while time.monotonic() - t_load < a.seconds and not DEAD.is_set():
            time.sleep(0.5)
            if time.monotonic() >= next_report:
                next_report += 30
                s = mon.samples[-1] if mon.samples else (0, 0, 0)
                print("soak: %4.0fs  requests %d  failures %d  rss %.1f MiB  fds %d"
                      % (time.monotonic() - t_load, sum(BOOK.counts.values()), sum(BOOK.failures.values()),
                         s[1] / 1024, s[2]))
                sys.stdout.flush()
        STOP.set()
        load_seconds = time.monotonic() - t_load
        for th in threads:
            th.join(timeout=HTTP_TIMEOUT + 10)
            if th.is_alive():
                BOOK.fail("client thread did not stop", th.name)
        if DEAD.is_set() or not srv.alive():
            reasons.append("attnd died during the load (exit status %s)\n%s" % (srv.proc.returncode, srv.output_tail(40)))
            raise StopIteration
        rss_end_load = rss_kib(pid)
        rss_warm = mon.rss_at(warmup)

        # idle: descriptors and in-flight back
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            fds1 = fd_count(pid)
            fams = scrape()
            BOOK.saw("/metrics", 200)
            in_flight = H.sample_value(fams, "attnd_requests_in_flight")
            if (fds1 <= fds0 + a.fd_slack and in_flight == 0) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        time.sleep(0.3)  # the last scrape's completion is booked after its reply
        mon.done.set()
        rss1 = rss_kib(pid)
        fams1 = scrape()
        after = request_counts(fams1)
        server, problems = compare_counts(before, after)
        reasons += ["metrics: " + p for p in problems]

        d = lambda fam, **lab: H.sample_value(fams1, fam, **lab) - H.sample_value(fams0, fam, **lab)  # noqa: E731
        for eng in ("exact", "model"):
            got = d("attnd_recall_requests_total", engine=eng)
            if got != BOOK.recall_ok[eng]:
                reasons.append("metrics: attnd_recall_requests_total{engine=%s} rose by %d, the client had %d answers"
                               % (eng, got, BOOK.recall_ok[eng]))
        if Ctx.auth_enforced and "attnd_auth_failures_total" in fams1:
            got = sum(v for _, _, v, _ in fams1["attnd_auth_failures_total"].samples) - \
                sum(v for _, _, v, _ in (fams0["attnd_auth_failures_total"].samples
                                         if "attnd_auth_failures_total" in fams0 else []))
            if got != BOOK.auth_401:
                reasons.append("metrics: attnd_auth_failures_total rose by %d, the client got %d 401s"
                               % (got, BOOK.auth_401))
        if in_flight != 0:
            reasons.append("attnd_requests_in_flight is %g once idle, want 0" % in_flight)
        if fds1 > fds0 + a.fd_slack:
            reasons.append("open descriptors %d once idle, baseline %d (+%d allowed): %s"
                           % (fds1, fds0, a.fd_slack, fd_listing(pid)))
        growth = (rss_end_load - rss_warm) / 1024.0
        if growth > a.rss_bound_mib:
            reasons.append("RSS grew %.1f MiB after the warm-up (%.1f -> %.1f MiB), bound %g MiB"
                           % (growth, rss_warm / 1024, rss_end_load / 1024, a.rss_bound_mib))
        held = [s for o, s in BOOK.slow.get("idle", []) if o == "held to the end" and s >= IDLE_LIMIT]
        if held:
            reasons.append("%d idle connections (nothing sent) were still open after %.0fs" % (len(held), min(held)))
        if BOOK.model_queries and BOOK.model_wrong > 0.01 * BOOK.model_queries:
            reasons.append("recall-mqar8 answered %d of %d queries wrong (over 1%%; 100%% measured alone)"
                           % (BOOK.model_wrong, BOOK.model_queries))

        rc, took, killed = srv.stop(timeout=GRACE + 10)
        if killed or rc != 0:
            reasons.append("SIGTERM: exit status %s after %.1fs%s" % (rc, took, " (killed)" if killed else ""))
        for k, n in BOOK.failures.items():
            reasons.append("%s: %d (e.g. %s)" % (k, n, " | ".join(BOOK.failure_examples[k][:2])))
        report(server, load_seconds, warmup, rss0, rss_warm, rss_end_load, rss1, fds0, fds1, mon, threads,
               took, rc)
    except StopIteration:
        pass
    except H.StartupError as e:
        reasons.append("attnd did not start: %s" % e)
    finally:
        STOP.set()
        if srv is not None and srv.alive():
            srv.stop(timeout=GRACE + 10)
        work.cleanup()
    if reasons:
        print("\nsoak: FAILED")
        for r in reasons:
            print("  - " + r)
        sys.exit(1)
    print("\nsoak: passed")


def fd_listing(pid):
    kinds = collections.Counter()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            t = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        kinds[t.split(":")[0] if ":" in t else "file"] += 1
    return dict(kinds)


def report(server, load_seconds, warmup, rss0, rss_warm, rss_end, rss1, fds0, fds1, mon, threads, took, rc):
    total = sum(BOOK.counts.values())
    print("\n== soak summary: %.0fs of load, %d answers seen by the client (%.0f/s)"
          % (load_seconds, total, total / max(load_seconds, 1e-9)))
    print("\n%-14s %6s %8s %8s %9s %9s" % ("route", "status", "client", "server", "p50 ms", "p99 ms"))
    keys = sorted(set(BOOK.counts) | set(server))
    shown = set()
    for label, st in keys:
        lat = BOOK.latency.get(label, []) if label not in shown else []
        p50 = "%.1f" % (pct(lat, 50) * 1e3) if lat else ""
        p99 = "%.1f" % (pct(lat, 99) * 1e3) if lat else ""
        shown.add(label)
        print("%-14s %6d %8d %8d %9s %9s" % (label, st, BOOK.counts.get((label, st), 0), server.get((label, st), 0),
                                            p50, p99))
    amb = {k: len(v) for k, v in BOOK.ambiguous.items()}
    if amb:
        print("(not attributable by the client: %s)" % ", ".join("%s %d" % kv for kv in sorted(amb.items())))
    lat = BOOK.latency.get("stream cut (to the cut)", [])
    if lat:
        print("streams cut off: %d, p50 %.1f ms / p99 %.1f ms to the cut" % (len(lat), pct(lat, 50) * 1e3,
                                                                           pct(lat, 99) * 1e3))
    print("\nRSS: %.1f MiB before the load, %.1f after the %.0fs warm-up, %.1f at the end of the load, %.1f idle; "
          "max %.1f" % (rss0 / 1024, rss_warm / 1024, warmup, rss_end / 1024, rss1 / 1024,
                        max([s[1] for s in mon.samples] + [rss_end, rss1]) / 1024))
    print("descriptors: %d before the load, max %d during, %d once idle" % (
        fds0, max((s[2] for s in mon.samples), default=0), fds1))
    print("SIGTERM: exit %s after %.1fs" % (rc, took))
    print("\noperations:")
    for k, n in sorted(BOOK.ops.items()):
        print("  %-40s %7d" % (k, n))
    tr = [t for t in threads if isinstance(t, Trainer)]
    if tr:
        t = tr[0]
        print("training jobs: %d posted, %d succeeded, %d cancelled, %d records deleted (DELETE of a finished "
              "job: %s)" % (t.posted, t.succeeded, t.cancelled, t.deleted,
                            {None: "not tried", True: "204", False: "409, not supported yet"}[Ctx.delete_finished]))
    if BOOK.model_queries:
        print("recall-mqar8: %d of %d queries right" % (BOOK.model_queries - BOOK.model_wrong, BOOK.model_queries))
    for kind, xs in sorted(BOOK.slow.items()):
        outcomes = collections.defaultdict(list)
        for o, s in xs:
            outcomes[o].append(s)
        print("slow clients (%s): %s" % (kind, "; ".join("%s: %d (median %.1fs)" % (o, len(v), pct(v, 50))
                                                          for o, v in sorted(outcomes.items()))))
    print("\nerrors by kind (failures):" + ("" if BOOK.failures else " none"))
    for k, n in sorted(BOOK.failures.items()):
        print("  %-60s %6d  e.g. %s" % (k, n, BOOK.failure_examples[k][0][:200]))
    print("observations (not failures):" + ("" if BOOK.notes else " none"))
    for k, n in sorted(BOOK.notes.items()):
        ex = BOOK.note_examples.get(k)
        print("  %-60s %6d%s" % (k, n, ("  e.g. " + ex[0][:160]) if ex else ""))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
