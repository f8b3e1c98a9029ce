#!/usr/bin/python3
"""harness.py — shared machinery of the live-server tests of attnd.

The tests never mock the server: each test file creates small random models
with the `attn` CLI, starts the real `attnd` on an ephemeral port of
127.0.0.1, talks HTTP to it (http.client or raw sockets), and stops it.

What lives here:
  * Options: --attnd PATH --attn PATH (relative paths are tried against the
    working directory, then the repository root), -k SUBSTRING to select
    tests, -v for more output, --keep to keep the temporary directory.
  * Contract: api/openapi.yaml loaded once; validate() checks a JSON value
    against a schema of the document (Draft 2020-12, $refs resolved inside
    the document); response_schema() finds the schema the document gives
    for (method, path, status).
  * Server: start (waits for "attnd: listening on http://HOST:PORT", then
    for GET /readyz 200), request helpers, the stdout log, stop (SIGTERM,
    then SIGKILL after a timeout; only the process it started).
  * Parsers for server-sent events and the Prometheus text format.
  * run(): a unittest runner that ends with the line "N passed, N failed"
    and exits non-zero when anything failed.

Standard library plus python3-yaml and python3-jsonschema (Debian), run by
/usr/bin/python3.
"""

import argparse
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import warnings

import jsonschema
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
API_DIR = os.path.join(REPO, "api")
OPENAPI_PATH = os.path.join(API_DIR, "openapi.yaml")
EXAMPLES_DIR = os.path.join(API_DIR, "examples")

LISTEN_RE = re.compile(r"^attnd: listening on http://([0-9.]+|\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d+)\s*$")
LOG_RE = re.compile(r"^(GET|POST|PUT|DELETE|PATCH|HEAD|OPTIONS) (\S+) (\d{3}) (\d+(?:\.\d+)?)ms$")

START_TIMEOUT = 30.0
HTTP_TIMEOUT = 30.0

# --------------------------------------------------------------------------
# options


class Options:
    attnd = None
    attn = None
    keep = False
    verbose = False
    pattern = None


OPTS = Options()


def _resolve(path):
    if path is None:
        return None
    if os.path.isabs(path) or os.path.exists(path):
        return os.path.abspath(path)
    alt = os.path.join(REPO, path)
    return alt if os.path.exists(alt) else os.path.abspath(path)


def parse_args(argv=None, description=None):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--attnd", default="build/attnd", help="the server binary (default build/attnd)")
    ap.add_argument("--attn", default="build/attn", help="the CLI, to create random models (default build/attn)")
    ap.add_argument("-k", dest="pattern", default=None, help="run only tests whose id contains this")
    ap.add_argument("-v", dest="verbose", action="store_true", help="echo server output")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = ap.parse_args(argv)
    OPTS.attnd = _resolve(a.attnd)
    OPTS.attn = _resolve(a.attn)
    OPTS.keep = a.keep
    OPTS.verbose = a.verbose
    OPTS.pattern = a.pattern
    return OPTS


# --------------------------------------------------------------------------
# the contract


_DOC = None


def openapi():
    global _DOC
    if _DOC is None:
        with open(OPENAPI_PATH, encoding="utf-8") as f:
            _DOC = yaml.safe_load(f)
    return _DOC


def resolve_ref(obj):
    """Follows a local $ref ('#/a/b') inside the document, repeatedly."""
    doc = openapi()
    seen = 0
    while isinstance(obj, dict) and "$ref" in obj and len(obj) == 1:
        ref = obj["$ref"]
        if not ref.startswith("#/"):
            raise ValueError("non-local $ref %r" % ref)
        node = doc
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        obj = node
        seen += 1
        if seen > 20:
            raise ValueError("$ref loop at %r" % ref)
    return obj


def _validator(schema):
    doc = openapi()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        resolver = jsonschema.RefResolver(base_uri="", referrer=doc)
        return jsonschema.Draft202012Validator(schema, resolver=resolver)


def schema_ref(name):
    return {"$ref": "#/components/schemas/" + name}


def validation_errors(instance, schema):
    """The list of messages of instance against schema (empty when valid)."""
    v = _validator(schema)
    out = []
    for e in sorted(v.iter_errors(instance), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        out.append("%s: %s" % (where, e.message))
    return out


def route_template(path):
    p = path.split("?", 1)[0]
    return p if p in openapi()["paths"] else None


def response_schema(method, path, status, media="application/json"):
    """The schema api/openapi.yaml gives for this answer, or raises
    AssertionError saying the contract does not document it."""
    doc = openapi()
    tmpl = route_template(path)
    method = method.lower()
    if tmpl is None:
        resp = doc["components"]["responses"]["NotFound"] if status == 404 else None
    else:
        op = doc["paths"][tmpl].get(method)
        if op is None:
            resp = doc["components"]["responses"]["MethodNotAllowed"] if status == 405 else None
        else:
            resp = op["responses"].get(str(status))
    if resp is None:
        # what any route may answer, before its own handler runs: a head
        # too large, a connection past the limits (openapi.yaml's
        # components/responses)
        common = {414: "UriTooLong", 431: "HeaderFieldsTooLarge", 503: "TooManyConnections"}
        if status in common:
            resp = doc["components"]["responses"][common[status]]
    if resp is None:
        raise AssertionError("openapi.yaml documents no %d answer for %s %s" % (status, method.upper(), path))
    resp = resolve_ref(resp)
    content = resp.get("content", {})
    if media not in content:
        raise AssertionError("openapi.yaml documents no %s body for %d on %s %s (has %s)"
                             % (media, status, method.upper(), path, sorted(content)))
    return content[media]["schema"]


def request_examples(path=None):
    """[(path, name, example object, body, request schema)] of every POST
    operation with documented request examples (or only path's), as
    documented. An example's x-expect says what the server must answer:
    {status, code, field} for an error; for 200 optionally what the route's
    test checks (e.g. /recall's `values`)."""
    doc = openapi()
    out = []
    for p, item in doc["paths"].items():
        if path is not None and p != path:
            continue
        body_doc = (item.get("post") or {}).get("requestBody", {}).get("content", {}).get("application/json", {})
        for name, ex in body_doc.get("examples", {}).items():
            ex = resolve_ref(ex)
            if "externalValue" in ex:
                with open(os.path.join(API_DIR, ex["externalValue"]), encoding="utf-8") as f:
                    body = json.load(f)
            else:
                body = ex["value"]
            out.append((p, name, ex, body, body_doc["schema"]))
    return out


def generate_examples():
    """[(name, example object, body dict)] of POST /generate, as documented."""
    return [(name, ex, body) for _, name, ex, body, _ in request_examples("/generate")]


def field_in_schema_error(field, message):
    """Whether a schema error message (validation_errors) is about the
    request field `field` as the server names it ("pairs[1]" is the
    schema's "pairs/1")."""
    return re.sub(r"\[(\d+)\]", r"/\1", field) in message


def load_example(filename):
    with open(os.path.join(EXAMPLES_DIR, filename), encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------
# HTTP


class Response:
    def __init__(self, status, reason, headers, body, elapsed):
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value)
        self.body = body
        self.elapsed = elapsed
        self._json = None

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    @property
    def media_type(self):
        ct = self.header("Content-Type", "")
        return ct.split(";", 1)[0].strip().lower()

    def json(self):
        if self._json is None:
            try:
                self._json = json.loads(self.body.decode("utf-8"))
            except Exception as e:  # noqa: BLE001 - reported to the test
                raise AssertionError("body is not JSON (%s): %r" % (e, self.body[:300]))
        return self._json

    def __repr__(self):
        return "<%d %s %r>" % (self.status, self.header("Content-Type"), self.body[:300])


def http_request(port, method, path, body=None, headers=None, timeout=HTTP_TIMEOUT, conn=None, host="127.0.0.1"):
    """One request. body: dict/list (sent as JSON with Content-Type
    application/json unless headers say otherwise), str or bytes (sent as is,
    no Content-Type added). Returns a Response."""
    hdrs = dict(headers or {})
    data = body
    if isinstance(body, (dict, list)):
        data = json.dumps(body).encode("utf-8")
        if not any(k.lower() == "content-type" for k in hdrs):
            hdrs["Content-Type"] = "application/json"
    elif isinstance(body, str):
        data = body.encode("utf-8")
    own = conn is None
    if own:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    t0 = time.monotonic()
    try:
        conn.request(method, path, body=data, headers=hdrs)
        r = conn.getresponse()
        payload = r.read()
        return Response(r.status, r.reason, r.getheaders(), payload, time.monotonic() - t0)
    finally:
        if own:
            conn.close()


def raw_exchange(port, data, timeout=5.0, read_all=True, host="127.0.0.1"):
    """Sends raw bytes, returns (status, headers dict lower-case, body bytes,
    elapsed seconds until the status line arrived). Reads until the body
    (by Content-Length) is complete or the peer closes or timeout."""
    s = socket.create_connection((host, port), timeout=timeout)
    try:
        t0 = time.monotonic()
        s.sendall(data)
        return read_http_response(s, timeout, t0)
    finally:
        s.close()


def read_http_response(s, timeout, t0=None):
    t0 = t0 if t0 is not None else time.monotonic()
    deadline = t0 + timeout
    buf = b""
    first = None
    while b"\r\n\r\n" not in buf:
        rem = deadline - time.monotonic()
        if rem <= 0:
            raise AssertionError("no complete response head within %.1fs (got %r)" % (timeout, buf[:200]))
        s.settimeout(rem)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            raise AssertionError("no complete response head within %.1fs (got %r)" % (timeout, buf[:200]))
        if not chunk:
            raise AssertionError("connection closed before a response head (got %r)" % buf[:200])
        if first is None:
            first = time.monotonic() - t0
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
    if not m:
        raise AssertionError("bad status line %r" % lines[0])
    status = int(m.group(1))
    hdrs = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    if status == 100:  # 100 Continue: read the real answer
        s2 = rest
        r = read_http_response(_Prefixed(s, s2), timeout - (time.monotonic() - t0), time.monotonic())
        return r[0], r[1], r[2], first
    n = int(hdrs.get("content-length", "-1"))
    body = rest
    while n < 0 or len(body) < n:
        rem = deadline - time.monotonic()
        if rem <= 0:
            break
        s.settimeout(rem)
        try:
            chunk = s.recv(65536)
        except (socket.timeout, ConnectionResetError):
            break
        if not chunk:
            break
        body += chunk
    if hdrs.get("transfer-encoding", "").lower() == "chunked":
        body = dechunk(body)
    return status, hdrs, body, first


class _Prefixed:
    """A socket whose first recv returns a given prefix."""

    def __init__(self, s, prefix):
        self.s, self.prefix = s, prefix

    def settimeout(self, t):
        self.s.settimeout(max(t, 0.001))

    def recv(self, n):
        if self.prefix:
            p, self.prefix = self.prefix, b""
            return p
        return self.s.recv(n)


def dechunk(data):
    out = b""
    while data:
        line, sep, data = data.partition(b"\r\n")
        if not sep:
            break
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2:]
    return out


# --------------------------------------------------------------------------
# server-sent events


def parse_sse(body):
    """Splits a text/event-stream body into the list of its data payloads
    (str). Strict: every event is exactly one 'data: ' line followed by a
    blank line; anything else raises AssertionError."""
    text = body.decode("utf-8")
    if not text.endswith("\n\n"):
        raise AssertionError("stream does not end with a blank line: %r" % text[-80:])
    events = text[:-2].split("\n\n")
    out = []
    for ev in events:
        if "\n" in ev or not ev.startswith("data: "):
            raise AssertionError("malformed event %r (want exactly one 'data: ...' line)" % ev[:200])
        out.append(ev[len("data: "):])
    return out


# --------------------------------------------------------------------------
# Prometheus text format


SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+-?\d+)?$")
LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')


class Family:
    def __init__(self, name):
        self.name = name
        self.help = None
        self.type = None
        self.samples = []  # (sample name, labels dict, value float, raw value)


def parse_labels(s):
    labels = {}
    pos = 0
    s = s.strip()
    while pos < len(s):
        m = LABEL_RE.match(s, pos)
        if not m:
            raise AssertionError("bad label set {%s}" % s)
        labels[m.group(1)] = m.group(2).replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
        pos = m.end()
    return labels


def parse_value(raw):
    if raw in ("+Inf", "Inf"):
        return math.inf
    if raw == "-Inf":
        return -math.inf
    if raw == "NaN":
        return math.nan
    return float(raw)  # raises for "-nan", "nan" spelled the C way? float() accepts them; checked apart


def parse_metrics(text):
    """Returns {family name: Family}. Raises AssertionError on a line that
    is not valid exposition format."""
    fams = {}
    order = []

    def fam(name):
        if name not in fams:
            fams[name] = Family(name)
            order.append(name)
        return fams[name]

    def owner(sample):
        if sample in fams:
            return fams[sample]
        for suf in ("_bucket", "_sum", "_count"):
            if sample.endswith(suf):
                base = sample[: -len(suf)]
                if base in fams and fams[base].type in ("histogram", "summary"):
                    return fams[base]
        return fam(sample)

    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] == "HELP":
                f = fam(parts[2])
                if f.help is not None:
                    raise AssertionError("line %d: second HELP for %s" % (n, parts[2]))
                f.help = parts[3] if len(parts) > 3 else ""
            elif len(parts) >= 4 and parts[1] == "TYPE":
                f = fam(parts[2])
                if f.type is not None:
                    raise AssertionError("line %d: second TYPE for %s" % (n, parts[2]))
                if f.samples:
                    raise AssertionError("line %d: TYPE for %s after its samples" % (n, parts[2]))
                f.type = parts[3].strip()
            continue
        m = SAMPLE_RE.match(line)
        if not m:
            raise AssertionError("line %d: not a sample: %r" % (n, line))
        name, labels, raw = m.group(1), m.group(3), m.group(4)
        if raw.lower() in ("nan", "-nan", "inf", "-inf") and raw not in ("NaN", "+Inf", "-Inf", "Inf"):
            raise AssertionError("line %d: value spelled %r (C printf?), Prometheus wants NaN/+Inf/-Inf: %r"
                                 % (n, raw, line))
        try:
            value = parse_value(raw)
        except ValueError:
            raise AssertionError("line %d: bad value %r" % (n, raw))
        owner(name).samples.append((name, parse_labels(labels or ""), value, raw))
    return fams


def sample_value(fams, family, sample=None, **labels):
    """The value of the sample of family whose labels include labels; 0.0
    when absent (a counter not yet incremented may be absent)."""
    f = fams.get(family)
    if f is None:
        return 0.0
    sample = sample or family
    total = None
    for name, lab, v, _ in f.samples:
        if name == sample and all(lab.get(k) == str(w) for k, w in labels.items()):
            if total is not None:
                raise AssertionError("several samples match %s %s" % (sample, labels))
            total = v
    return 0.0 if total is None else total


def check_histograms(fams):
    """Cumulative buckets, +Inf == _count, _sum present. Returns problems."""
    problems = []
    for f in fams.values():
        if f.type != "histogram":
            continue
        groups = {}
        for name, lab, v, _ in f.samples:
            key = tuple(sorted((k, x) for k, x in lab.items() if k != "le"))
            g = groups.setdefault(key, {"buckets": [], "sum": None, "count": None})
            if name == f.name + "_bucket":
                if "le" not in lab:
                    problems.append("%s_bucket without le" % f.name)
                    continue
                g["buckets"].append((parse_value(lab["le"]) if lab["le"] != "+Inf" else math.inf, v))
            elif name == f.name + "_sum":
                g["sum"] = v
            elif name == f.name + "_count":
                g["count"] = v
            else:
                problems.append("%s: stray sample %s" % (f.name, name))
        if not groups:
            problems.append("%s: histogram with no samples" % f.name)
        for key, g in groups.items():
            where = "%s%s" % (f.name, dict(key) if key else "")
            b = g["buckets"]
            if not b:
                problems.append("%s: no buckets" % where)
                continue
            les = [le for le, _ in b]
            if les != sorted(les) or len(set(les)) != len(les):
                problems.append("%s: bucket bounds not strictly increasing: %s" % (where, les))
            counts = [c for _, c in sorted(b)]
            if any(c2 < c1 for c1, c2 in zip(counts, counts[1:])):
                problems.append("%s: buckets not cumulative: %s" % (where, counts))
            if les[-1] != math.inf:
                problems.append("%s: no +Inf bucket" % where)
            if g["count"] is None:
                problems.append("%s: no _count" % where)
            elif les[-1] == math.inf and counts[-1] != g["count"]:
                problems.append("%s: +Inf bucket %g != _count %g" % (where, counts[-1], g["count"]))
            if g["sum"] is None:
                problems.append("%s: no _sum" % where)
            elif math.isnan(g["sum"]) or g["sum"] < 0:
                problems.append("%s: _sum is %r" % (where, g["sum"]))
    return problems


# --------------------------------------------------------------------------
# models


TINY = dict(dim=64, hidden=128, layers=2, heads=4, kv_heads=2, vocab=258, seq_len=256)
# A model big enough that a 4096-token generation takes several seconds, so
# that cancellation is observable (a generation left running would still be
# running when the tests look).
SLOW = dict(dim=256, hidden=512, layers=4, heads=8, kv_heads=4, vocab=258, seq_len=4096)


def param_count(c, untied=False):
    d, h, L, V = c["dim"], c["hidden"], c["layers"], c["vocab"]
    kv = d * c["kv_heads"] // c["heads"]
    per_layer = d + d * d + 2 * d * kv + d * d + d + 3 * d * h
    return V * d + L * per_layer + d + (V * d if untied else 0)


def make_model(path, cfg, seed, fmt=None, extra=()):
    cmd = [OPTS.attn, "random", "--out", path, "--dim", str(cfg["dim"]), "--hidden", str(cfg["hidden"]),
           "--layers", str(cfg["layers"]), "--heads", str(cfg["heads"]), "--kv-heads", str(cfg["kv_heads"]),
           "--vocab", str(cfg["vocab"]), "--seq-len", str(cfg["seq_len"]), "--seed", str(seed)]
    if fmt:
        cmd += ["--format", fmt]
    cmd += list(extra)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    if r.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), r.returncode, r.stderr.decode(errors="replace")))
    return path


def clean_env(**extra):
    """This process's environment without any ATTND_* variable (so that a
    test's attnd sees only the flags it is given), plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTND_")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Workdir:
    """A temporary directory removed at exit unless --keep."""

    def __init__(self, prefix="attnd-test-"):
        self.path = tempfile.mkdtemp(prefix=prefix)

    def sub(self, *parts):
        p = os.path.join(self.path, *parts)
        return p

    def mkdir(self, *parts):
        p = self.sub(*parts)
        os.makedirs(p, exist_ok=True)
        return p

    def cleanup(self):
        if OPTS.keep:
            print("kept %s" % self.path)
        else:
            shutil.rmtree(self.path, ignore_errors=True)


# --------------------------------------------------------------------------
# the server


def free_port():
    """An ephemeral port of 127.0.0.1 that was free a moment ago (for a
    process other than attnd, which takes --port 0)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def _die_with_parent():
    """In the child before exec: SIGTERM it if the test runner dies (a
    ctest timeout kills us with SIGKILL), so no attnd is left behind."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort
        pass


class StartupError(AssertionError):
    pass


class Server:
    """One attnd process we started. Never touches any other process."""

    def __init__(self, args, env=None, name="attnd", wait_ready=True, workdir=None, api_key=None):
        self.args = list(args)
        # sent as "Authorization: Bearer <api_key>" by request() unless the
        # caller's headers carry an Authorization of their own
        self.api_key = api_key
        self.env = env
        self.name = name
        self.want_ready = wait_ready
        self.proc = None
        self.port = None
        self.host = None
        self.lines = []  # stdout lines
        self.cond = threading.Condition()
        self.stdout_closed = False
        self.workdir = workdir or tempfile.mkdtemp(prefix="attnd-srv-")
        self.stderr_path = os.path.join(self.workdir, "%s.stderr" % name)
        self.returncode = None

    # ---- lifecycle

    def start(self, timeout=START_TIMEOUT):
        if not OPTS.attnd or not os.path.exists(OPTS.attnd):
            raise StartupError("attnd binary not found at %s (build it: cmake --build build --target attnd)"
                               % OPTS.attnd)
        env = dict(os.environ) if self.env is None else dict(self.env)
        self.stderr_f = open(self.stderr_path, "wb")
        cmd = [OPTS.attnd] + self.args
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self.stderr_f, env=env, cwd=self.workdir,
                                     preexec_fn=_die_with_parent)
        self.reader = threading.Thread(target=self._read_stdout, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for ln in self.lines:
                    m = LISTEN_RE.match(ln)
                    if m:
                        self.host = m.group(1).strip("[]")
                        self.port = int(m.group(2))
                        break
                if self.port is not None:
                    break
                if self.proc.poll() is not None and self.stdout_closed:
                    self._fail("attnd exited with status %s before printing 'attnd: listening on http://HOST:PORT'"
                               % self.proc.returncode)
                rem = deadline - time.monotonic()
                if rem <= 0:
                    self._fail("no 'attnd: listening on http://HOST:PORT' line on stdout within %.0fs" % timeout)
                self.cond.wait(min(rem, 0.1))
        if self.want_ready:
            self.wait_ready(deadline - time.monotonic())
        return self

    def wait_ready(self, timeout=START_TIMEOUT):
        deadline = time.monotonic() + max(timeout, 1.0)
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._fail("attnd exited with status %s while waiting for GET /readyz 200" % self.proc.returncode)
            try:
                r = self.get("/readyz", timeout=2.0)
                last = r
                if r.status == 200:
                    return r
            except (OSError, http.client.HTTPException) as e:
                last = e
            time.sleep(0.05)
        self._fail("GET /readyz did not answer 200 within the start timeout (last: %r)" % (last,))

    def _fail(self, why):
        msg = "%s\n  command: %s\n%s" % (why, " ".join(self.cmd), self.output_tail())
        self.kill()
        raise StartupError(msg)

    def output_tail(self, n=25):
        out = []
        try:
            if not self.stderr_f.closed:
                self.stderr_f.flush()
            with open(self.stderr_path, "rb") as f:
                err = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            err = []
        with self.cond:
            lines = list(self.lines)
        out.append("  --- attnd stdout (last %d lines) ---" % n)
        out += ["  | " + ln for ln in lines[-n:]]
        out.append("  --- attnd stderr (last %d lines) ---" % n)
        out += ["  | " + ln for ln in err[-n:]]
        return "\n".join(out)

    def stderr_text(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _read_stdout(self):
        for raw in iter(self.proc.stdout.readline, b""):
            ln = raw.decode("utf-8", "replace").rstrip("\r\n")
            if OPTS.verbose:
                sys.stderr.write("[%s] %s\n" % (self.name, ln))
            with self.cond:
                self.lines.append(ln)
                self.cond.notify_all()
        with self.cond:
            self.stdout_closed = True
            self.cond.notify_all()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout):
        """Waits for the process to exit; returns its status or None."""
        try:
            self.returncode = self.proc.wait(timeout=timeout)
            return self.returncode
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=15.0, sig=signal.SIGTERM):
        """SIGTERM (or sig), then SIGKILL after timeout. Returns (status,
        seconds until exit, killed?)."""
        if self.proc is None:
            return None, 0.0, False
        if self.proc.poll() is not None:
            return self.proc.returncode, 0.0, False
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        rc = self.wait(timeout)
        killed = False
        if rc is None:
            self.kill()
            killed = True
            rc = self.proc.returncode
        self.reader.join(timeout=2)
        try:
            self.stderr_f.close()
        except OSError:
            pass
        return rc, time.monotonic() - t0, killed

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    # ---- the log

    def log_count(self, pred):
        with self.cond:
            return sum(1 for ln in self.lines if pred(ln))

    def wait_log(self, pred, count, timeout=2.0):
        """Waits until at least count stdout lines satisfy pred; returns
        the number seen."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                n = sum(1 for ln in self.lines if pred(ln))
                if n >= count or time.monotonic() >= deadline:
                    return n
                self.cond.wait(0.05)

    # ---- HTTP

    def request(self, method, path, body=None, headers=None, timeout=HTTP_TIMEOUT, conn=None):
        if self.api_key is not None and not any(k.lower() == "authorization" for k in (headers or {})):
            headers = dict(headers or {}, Authorization="Bearer " + self.api_key)
        return http_request(self.port, method, path, body, headers, timeout, conn)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def generate(self, body, **kw):
        return self.request("POST", "/generate", body, **kw)

    def raw(self, data, timeout=5.0):
        return raw_exchange(self.port, data, timeout)

    def connect(self, timeout=HTTP_TIMEOUT):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def metrics(self):
        r = self.get("/metrics")
        if r.status != 200:
            raise AssertionError("GET /metrics answered %d: %r" % (r.status, r.body[:300]))
        text = r.body.decode("utf-8")
        return parse_metrics(text), text, r

    def in_flight(self):
        fams, _, _ = self.metrics()
        return sample_value(fams, "attnd_requests_in_flight")

    def cpu_seconds(self):
        """user + system CPU time of the process, from /proc."""
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tck = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / tck


class LazyServer:
    """Starts a server on first use. A start failure is remembered and every
    later use fails with the same message (printed once). A server that
    dies (a crash) is reported once with its output, and the next use
    starts a fresh one (at most max_restarts times), so that one crash
    fails the test that caused it rather than every test after it."""

    def __init__(self, factory, max_restarts=5):
        self.factory = factory
        self.server = None
        self.error = None
        self.stopped = False
        self.deaths = 0
        self.max_restarts = max_restarts
        self.lock = threading.Lock()

    def _start(self):
        try:
            self.server = self.factory()
        except StartupError as e:
            self.error = str(e)
            sys.stdout.write("\n*** attnd failed to start ***\n%s\n" % self.error)
            sys.stdout.flush()
        except Exception as e:  # noqa: BLE001
            self.error = "setting up the server failed: %r" % (e,)
            sys.stdout.write("\n*** %s ***\n" % self.error)
            sys.stdout.flush()

    def check_died(self):
        """If the server has died since the last check: prints its output
        once and returns a description; else None."""
        with self.lock:
            s = self.server
            if s is None or s.alive() or self.stopped:
                return None
            self.server = None
            self.deaths += 1
            rc = s.proc.returncode
            why = "attnd died (exit status %s%s)" % (
                rc, ", signal %d" % -rc if rc is not None and rc < 0 else "")
            sys.stdout.write("\n*** %s ***\n%s\n" % (why, s.output_tail(40)))
            sys.stdout.flush()
            if self.deaths > self.max_restarts:
                self.error = why + "; not restarted again"
            return why

    def get(self):
        self.check_died()
        with self.lock:
            if self.stopped:
                raise StartupError("attnd was stopped")
            if self.server is None and self.error is None:
                self._start()
            if self.error is not None:
                raise StartupError("attnd is not running: " + self.error.splitlines()[0]
                                   + " (see the message above)")
            return self.server

    def stop(self, **kw):
        with self.lock:
            self.stopped = True
            if self.server is not None:
                s, self.server = self.server, None
                return s.stop(**kw)
        return None


# --------------------------------------------------------------------------
# test helpers


MISSING = object()

# Every JSON answer is checked against the contract. A mismatch is recorded
# here rather than failing the test that met it (so that one extra field
# does not hide every other check); each test file ends with a test that
# fails listing them all. Tests about a route's shape pass strict=True.
SCHEMA_VIOLATIONS = {}  # (what, errors) -> [count, example body]


def record_violation(what, errs, body):
    key = (what, tuple(sorted(set(re.sub(r"/\d+(?=/|:)", "/*", e) for e in errs))))
    v = SCHEMA_VIOLATIONS.setdefault(key, [0, body])
    v[0] += 1


def violations_report():
    out = []
    for (what, errs), (n, body) in sorted(SCHEMA_VIOLATIONS.items()):
        out.append("%s (%d answer%s):\n    %s\n    e.g. %s" % (what, n, "" if n == 1 else "s",
                                                         "\n    ".join(errs), body[:400]))
    return "\n".join(out)


class ServerTest(unittest.TestCase):
    """Base class: assertion helpers that check answers against the
    contract. Subclasses provide self.srv."""

    maxDiff = 4000
    lazy = None  # the LazyServer of the test file, set by it

    def setUp(self):
        if self.lazy is not None:
            why = self.lazy.check_died()
            if why:
                sys.stdout.write("(%s after the previous test; starting a new one for %s)\n" % (why, self.id()))

    def tearDown(self):
        if self.lazy is not None:
            why = self.lazy.check_died()
            if why:
                self.fail("%s during this test (output above); the next test starts a new one" % why)

    def assertAnswer(self, r, status, method, path, schema=None, strict=False):
        """status as expected, JSON body valid against the documented
        schema (or schema): a mismatch fails at once with strict, else it
        is recorded (SCHEMA_VIOLATIONS). Returns the decoded body."""
        if r.status != status:
            self.fail("%s %s: status %d, want %d; body %r" % (method, path, r.status, status, r.body[:500]))
        self.assertEqual(r.media_type, "application/json",
                         "%s %s: Content-Type %r, want application/json" % (method, path, r.header("Content-Type")))
        obj = r.json()
        if schema is None:
            schema = response_schema(method, path, status)
        self.checkSchema(obj, schema, "%s %s -> %d" % (method, route_template(path) or path, status), strict)
        return obj

    def checkSchema(self, obj, schema, what, strict=False):
        errs = validation_errors(obj, schema)
        if errs:
            body = json.dumps(obj)
            if strict:
                self.fail("%s: body does not match the contract:\n  %s\n  body: %s"
                          % (what, "\n  ".join(errs), body[:600]))
            record_violation(what, errs, body)
        return errs

    def assertError(self, r, status, code, method="POST", path="/generate", field=MISSING):
        obj = self.assertAnswer(r, status, method, path)
        err = obj["error"]
        self.assertEqual(err["code"], code, "%s %s: error code %r, want %r (%s)"
                         % (method, path, err["code"], code, err.get("message")))
        if field is None:
            self.assertIsNone(err.get("field"), "error names field %r, want none: %s" % (err.get("field"), err))
        elif field is not MISSING:
            self.assertEqual(err.get("field"), field, "error field %r, want %r (%s)"
                             % (err.get("field"), field, err.get("message")))
        return err

    def assertHealthy(self, why=""):
        try:
            r = self.srv.get("/healthz", timeout=5)
        except (OSError, http.client.HTTPException) as e:
            self.fail("GET /healthz failed after %s: %r" % (why, e))
        self.assertEqual(r.status, 200, "GET /healthz after %s: %r" % (why, r))

    def gen_ok(self, body, **kw):
        r = self.srv.generate(body, **kw)
        return self.assertAnswer(r, 200, "POST", "/generate")

    def stream(self, body, timeout=HTTP_TIMEOUT):
        """POST /generate with stream true; returns (response, token
        events, final event) after checking the framing and schemas."""
        b = dict(body)
        b["stream"] = True
        r = self.srv.generate(b, timeout=timeout)
        self.assertEqual(r.status, 200, "stream: status %d body %r" % (r.status, r.body[:300]))
        self.assertEqual(r.media_type, "text/event-stream",
                         "stream: Content-Type %r" % r.header("Content-Type"))
        datas = parse_sse(r.body)
        self.assertGreaterEqual(len(datas), 2, "stream has %d events: %r" % (len(datas), r.body[:300]))
        self.assertEqual(datas[-1], "[DONE]", "last event is %r, want [DONE]" % datas[-1][:200])
        tokens, final = [], None
        for i, d in enumerate(datas[:-1]):
            try:
                ev = json.loads(d)
            except ValueError:
                self.fail("event %d is not JSON: %r" % (i, d[:200]))
            if i < len(datas) - 2:
                self.checkSchema(ev, schema_ref("StreamTokenEvent"), "stream token event")
                self.assertIsInstance(ev.get("token"), int, "token event %d: %s" % (i, d[:200]))
                self.assertIsInstance(ev.get("text"), str, "token event %d: %s" % (i, d[:200]))
                tokens.append(ev)
            else:
                self.checkSchema(ev, schema_ref("StreamFinalEvent"), "stream final event")
                for k in ("finish_reason", "usage", "timings", "model"):
                    self.assertIn(k, ev, "final event %s" % d[:400])
                final = ev
        return r, tokens, final


def byte_text(tokens):
    """What a byte-level tokenizer decodes tokens to (Python's U+FFFD
    replacement; ids >= 256, BOS/EOS, add nothing)."""
    return bytes(t for t in tokens if t < 256).decode("utf-8", "replace")


def squeeze_fffd(s):
    """Runs of U+FFFD collapsed to one: replacement granularity may differ."""
    return re.sub("\ufffd+", "\ufffd", s)


def run_threads(fns, start_together=True):
    """Runs the callables in threads, started together; returns their
    results (or raised exceptions) in order."""
    results = [None] * len(fns)
    barrier = threading.Barrier(len(fns)) if start_together else None

    def work(i, fn):
        try:
            if barrier:
                barrier.wait(timeout=10)
            results[i] = fn()
        except BaseException as e:  # noqa: BLE001 - returned to the caller
            results[i] = e

    ts = [threading.Thread(target=work, args=(i, fn), daemon=True) for i, fn in enumerate(fns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    return results


# --------------------------------------------------------------------------
# the runner


class DisconnectChecks:
    """Mixin for a TestCase with self.srv: a request sent on a raw socket
    that the test then closes, and what must hold after the client left."""

    def open_request(self, path, body):
        data = json.dumps(body).encode()
        s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=30)
        s.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
        return s

    def first_event(self, s):
        """Reads until the stream's first whole event; the status must be 200."""
        buf = b""
        deadline = time.monotonic() + 20
        while b"data:" not in buf or not buf.split(b"data:", 1)[1].count(b"\n\n"):
            self.assertLess(time.monotonic(), deadline, "no first event: %r" % buf[:300])
            chunk = s.recv(4096)
            self.assertTrue(chunk, "connection closed before the first event: %r" % buf[:300])
            buf += chunk
        self.assertTrue(buf.startswith(b"HTTP/1.1 200"), buf[:100])

    def cut(self, path, body, stream, settle=0.3):
        """Sends body, waits until it is in flight (a stream: its first
        event; else settle seconds), hangs up, then after_disconnect."""
        s = self.open_request(path, body)
        try:
            if stream:
                self.first_event(s)
            else:
                time.sleep(settle)
            self.assertGreaterEqual(self.srv.in_flight(), 1, "premise: the request is in flight")
        finally:
            s.close()
        self.after_disconnect(self.next_request)

    def after_disconnect(self, next_request):
        """Checks, all reported together: the in-flight gauge returns to 0
        within 2 s; the process goes quiet (the generation's compute
        stopped, not just its bookkeeping); next_request() (which checks
        its own answer) is prompt; the queue is empty."""
        problems = []
        t0 = time.monotonic()
        v = None
        while time.monotonic() - t0 < 2.0:
            v = self.srv.in_flight()
            if v == 0:
                break
            time.sleep(0.1)
        if v != 0:
            problems.append("attnd_requests_in_flight still %s 2.0s after the client left" % v)
        time.sleep(0.3)
        c0, w0 = self.srv.cpu_seconds(), time.monotonic()
        time.sleep(1.0)
        cpu, wall = self.srv.cpu_seconds() - c0, time.monotonic() - w0
        if cpu > 0.5 * wall:
            problems.append("attnd used %.2fs CPU in the %.2fs after that: still generating for nobody?"
                            % (cpu, wall))
        t = time.monotonic()
        next_request()
        if time.monotonic() - t > 2.0:
            problems.append("the next request took %.2fs" % (time.monotonic() - t))
        fams, _, _ = self.srv.metrics()
        if sample_value(fams, "attnd_queue_depth") != 0:
            problems.append("attnd_queue_depth is %s" % sample_value(fams, "attnd_queue_depth"))
        if problems:
            self.fail("after the client disconnected:\n  " + "\n  ".join(problems))


class ContractTest(unittest.TestCase):
    """Put last in a test file (e.g. class Test99...(H.ContractTest)): fails
    listing every answer of the run that did not match api/openapi.yaml."""

    def test_every_answer_matched_the_contract(self):
        if SCHEMA_VIOLATIONS:
            self.fail("answers that do not match api/openapi.yaml:\n" + violations_report())


class ShutdownTest(unittest.TestCase):
    """Put last in a test file (class Test99...(H.ShutdownTest) with
    `servers`, the file's LazyServers, and `names`, theirs for the
    message): none died during the run, and each exits 0 on SIGTERM."""
    servers = ()
    names = ""

    def test_no_crash_during_the_run(self):
        for lazy in self.servers:
            lazy.check_died()
        self.assertEqual([lazy.deaths for lazy in self.servers], [0] * len(self.servers),
                         "attnd died during the run (%s; see the output above)" % self.names)

    def test_sigterm_exits_zero(self):
        for lazy in self.servers:
            if lazy.server is None:
                continue
            srv = lazy.server
            rc, took, killed = lazy.stop(timeout=10)
            self.assertFalse(killed, "%s ignored SIGTERM\n%s" % (srv.name, srv.output_tail()))
            self.assertEqual(rc, 0, "%s exited %s on SIGTERM\n%s" % (srv.name, rc, srv.output_tail()))


class _Result(unittest.TextTestResult):
    def startTest(self, test):
        self._t0 = time.monotonic()
        super().startTest(test)

    def stopTest(self, test):
        super().stopTest(test)


def run(module, argv=None, description=None, cleanup=None):
    """Runs the TestCase classes of module (alphabetical, so class names
    give the order), prints 'N passed, N failed', exits 0 or 1."""
    parse_args(argv, description)
    loader = unittest.TestLoader()
    suite = loader.loadTestsFromModule(module)
    if OPTS.pattern:
        def flat(s):
            for t in s:
                if isinstance(t, unittest.TestSuite):
                    yield from flat(t)
                else:
                    yield t
        suite = unittest.TestSuite(t for t in flat(suite) if OPTS.pattern in t.id())
    print("attnd: %s\nattn:  %s" % (OPTS.attnd, OPTS.attn))
    sys.stdout.flush()
    t0 = time.monotonic()
    runner = unittest.TextTestRunner(stream=sys.stdout, verbosity=2, resultclass=_Result)
    try:
        result = runner.run(suite)
    finally:
        if cleanup:
            cleanup()
    failed = len(result.failures) + len(result.errors) + len(getattr(result, "unexpectedSuccesses", []))
    skipped = len(result.skipped)
    passed = result.testsRun - failed - skipped
    if skipped:
        print("%d skipped" % skipped)
    print("total %.1fs" % (time.monotonic() - t0))
    print("%d passed, %d failed" % (passed, failed))
    sys.stdout.flush()
    sys.exit(1 if failed else 0)
