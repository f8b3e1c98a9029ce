#!/usr/bin/python3
"""lbharness.py — three (N) real attnd replicas behind HAProxy, on 127.0.0.1.

Shared by test_lb.py (ctest `lb`) and rolling_restart.py (measurements):

  * Cluster: a temporary directory with one bundled model (`tiny`, made by
    `attn random`), ONE trained-models dir shared by every replica (each has
    its own --data-dir), N attnd processes on ephemeral ports (a replica
    restarted keeps its port), and haproxy in the foreground (-db) with a
    config written from haproxy.cfg.in, its own pidfile and an admin stats
    socket.  stop() ends only the processes it started, by their pid.
  * haproxy's `show stat` (stats()), waiting for a server's UP/DOWN.
  * Load: an open-loop load generator (requests issued at fixed times by a
    scheduler thread into a thread pool), each answer classified as ok (200),
    retryable (503) or lost (a connection error, a timeout, any other
    status), with the replica that answered (X-LB-Server).

Standard library plus the live-server harness (tests/server/harness.py).
"""

import concurrent.futures
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "server"))
import harness as H  # noqa: E402

TEMPLATE = os.path.join(HERE, "haproxy.cfg.in")
BACKEND = "attnd"
GEN = {"model": "tiny", "prompt": "In the beginning", "max_tokens": 4, "temperature": 0}


def find_haproxy():
    """The haproxy binary, or None.  LB_HAPROXY=PATH overrides the search
    (a path that is not there: as if haproxy were not installed)."""
    if os.environ.get("LB_HAPROXY"):
        p = os.environ["LB_HAPROXY"]
        return p if os.access(p, os.X_OK) else None
    for p in (shutil.which("haproxy"), "/usr/sbin/haproxy", "/usr/local/sbin/haproxy"):
        if p and os.access(p, os.X_OK):
            return p
    return None


class Replica:
    """One attnd of the cluster; restart() starts it again on the same port."""

    def __init__(self, cluster, idx):
        self.cluster, self.idx = cluster, idx
        self.name = "r%d" % idx
        self.port = 0
        self.data = cluster.work.mkdir("data-%d" % idx)
        self.srv = None
        self.generation = 0
        self.old = []  # earlier processes (stopped), for their logs

    def args(self):
        c = self.cluster
        return ["--host", "127.0.0.1", "--port", str(self.port), "--models-dir", c.bundled,
                "--data-dir", self.data, "--trained-models-dir", c.shared,
                "--models-poll-seconds", str(c.poll), "--threads", "1",
                "--grace-seconds", str(c.grace), "--train-workers", "1", "--train-threads", "1",
                "--quiet"] + list(c.extra)

    def start(self):
        if self.srv is not None:
            self.old.append(self.srv)
        self.generation += 1
        self.srv = H.Server(self.args(), env=H.clean_env(), name="attnd-%s-%d" % (self.name, self.generation),
                            workdir=self.cluster.work.path)
        self.srv.start()
        self.port = self.srv.port
        return self

    def alive(self):
        return self.srv is not None and self.srv.alive()

    def stop(self, timeout=10.0):
        if self.srv is not None:
            return self.srv.stop(timeout=timeout)
        return None, 0.0, False

    # direct requests (not through the balancer)
    def get(self, path, **kw):
        return self.srv.get(path, **kw)

    def post(self, path, body=None, **kw):
        return self.srv.post(path, body, **kw)

    def model_names(self):
        r = self.srv.get("/models", timeout=5)
        if r.status != 200:
            raise AssertionError("%s GET /models: %r" % (self.name, r))
        return {m["name"] for m in r.json()["models"]}

    def count(self, route="/generate", code="200"):
        fams, _, _ = self.srv.metrics()
        return H.sample_value(fams, "attnd_requests_total", route=route, code=code)


class Cluster:
    def __init__(self, n=3, poll=1, grace=5, extra=(), prefix="attnd-lb-", cfg_filter=None):
        """cfg_filter: a function of the written config's text returning the
        text to use (experiments with other settings)."""
        self.cfg_filter = cfg_filter
        self.work = H.Workdir(prefix=prefix)
        self.n, self.poll, self.grace, self.extra = n, poll, grace, tuple(extra)
        self.bundled = self.work.mkdir("models")
        self.shared = self.work.mkdir("shared-trained")
        self.lib = self.work.mkdir("lib")  # models to copy in
        self.replicas = [Replica(self, i) for i in range(n)]
        self.haproxy = None
        self.haproxy_bin = find_haproxy()
        self.front_port = None
        self.sock = self.work.sub("haproxy.sock")
        self.pidfile = self.work.sub("haproxy.pid")
        self.cfg_path = self.work.sub("haproxy.cfg")
        self.hlog_path = self.work.sub("haproxy.log")

    # ---- lifecycle

    def start(self):
        try:
            H.make_model(os.path.join(self.bundled, "tiny.safetensors"), H.TINY, 1)
            for r in self.replicas:
                r.start()
            self.start_haproxy()
            for r in self.replicas:
                self.wait_status(r.name, "UP", 15)
        except BaseException:
            self.stop()
            raise
        return self

    def start_haproxy(self):
        if not self.haproxy_bin:
            raise RuntimeError("haproxy not found")
        with open(TEMPLATE, encoding="utf-8") as f:
            tmpl = f.read()
        last = ""
        for _ in range(5):  # the port picked may be taken by then: try another
            self.front_port = H.free_port()
            servers = "\n".join("    server %s 127.0.0.1:%d check" % (r.name, r.port) for r in self.replicas)
            cfg = (tmpl.replace("@FRONT_PORT@", str(self.front_port)).replace("@STATS_SOCKET@", self.sock)
                   .replace("@PIDFILE@", self.pidfile).replace("@SERVERS@", servers))
            if self.cfg_filter:
                cfg = self.cfg_filter(cfg)
            with open(self.cfg_path, "w", encoding="utf-8") as f:
                f.write(cfg)
            self.hlog = open(self.hlog_path, "ab")
            self.haproxy = subprocess.Popen([self.haproxy_bin, "-db", "-f", self.cfg_path, "-p", self.pidfile],
                                            stdin=subprocess.DEVNULL, stdout=self.hlog, stderr=self.hlog,
                                            cwd=self.work.path, preexec_fn=H._die_with_parent)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.haproxy.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.front_port), timeout=1).close()
                    if os.path.exists(self.sock):
                        return
                except OSError:
                    pass
                time.sleep(0.05)
            self.stop_haproxy()
            last = self.haproxy_log_tail()
        raise RuntimeError("haproxy did not start:\n" + last)

    def stop_haproxy(self):
        p, self.haproxy = self.haproxy, None
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGUSR1)  # soft stop: finishes the connections it holds
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        try:
            self.hlog.close()
        except OSError:
            pass

    def stop(self):
        """Ends everything this cluster started (by pid); never raises."""
        for r in self.replicas:
            try:
                r.stop(timeout=10)
            except Exception as e:  # noqa: BLE001
                sys.stdout.write("stopping %s: %r\n" % (r.name, e))
        try:
            self.stop_haproxy()
        except Exception as e:  # noqa: BLE001
            sys.stdout.write("stopping haproxy: %r\n" % (e,))

    def cleanup(self):
        self.stop()
        self.work.cleanup()

    def haproxy_log_tail(self, n=30):
        try:
            with open(self.hlog_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join("  | " + ln for ln in lines[-n:])

    def haproxy_log(self):
        try:
            with open(self.hlog_path, "rb") as f:
                return f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return []

    # ---- haproxy's view

    def admin(self, command, timeout=5.0):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(self.sock)
            s.sendall(command.encode() + b"\n")
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
            return out.decode("utf-8", "replace")
        finally:
            s.close()

    def stats(self):
        """{server name: row dict} of the backend, from `show stat`."""
        text = self.admin("show stat")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        head = lines[0].lstrip("# ").split(",")
        out = {}
        for ln in lines[1:]:
            row = dict(zip(head, ln.split(",")))
            if row.get("pxname") == BACKEND and row.get("svname") not in ("BACKEND", "FRONTEND"):
                out[row["svname"]] = row
        return out

    def status(self, name):
        return self.stats()[name]["status"]

    def wait_status(self, name, want, timeout):
        """Waits until haproxy reports server name as want (UP, DOWN: the
        first word of its status); returns the seconds it took."""
        t0 = time.monotonic()
        last = None
        while time.monotonic() - t0 < timeout:
            try:
                last = self.status(name)
            except (OSError, KeyError, IndexError) as e:
                last = repr(e)
            if last.split()[0] == want:
                return time.monotonic() - t0
            time.sleep(0.05)
        raise AssertionError("haproxy: server %s is %r, not %s, after %.0f s" % (name, last, want, timeout))

    def ensure_all_up(self, timeout=20):
        """Restarts (same port) any replica that is not running; waits UP."""
        for r in self.replicas:
            if not r.alive():
                r.stop()
                r.start()
        for r in self.replicas:
            self.wait_status(r.name, "UP", timeout)

    # ---- the balancer

    def request(self, method, path, body=None, timeout=30.0, conn=None):
        return H.http_request(self.front_port, method, path, body, timeout=timeout, conn=conn)

    def generate(self, body=None, **kw):
        return self.request("POST", "/generate", body or GEN, **kw)

    def put_model(self, src, name):
        """Copies a model file into the shared trained dir the way attnd
        writes: a temporary name (*.tmp.<pid>, skipped by rescans), then a
        rename.  Returns the final path."""
        dst = os.path.join(self.shared, name + ".safetensors")
        tmp = dst + ".tmp.%d" % os.getpid()
        shutil.copyfile(src, tmp)
        os.rename(tmp, dst)
        return dst

    def wait_listed(self, name, timeout, present=True, every=0.02):
        """Polls every replica's GET /models directly until each lists
        (or, present=False, none lists) name.  Returns {replica: seconds
        until it did} measured from the call; raises on timeout."""
        t0 = time.monotonic()
        seen = {}
        while len(seen) < len(self.replicas):
            for r in self.replicas:
                if r.name not in seen and (name in r.model_names()) == present:
                    seen[r.name] = time.monotonic() - t0
            if len(seen) == len(self.replicas):
                break
            if time.monotonic() - t0 > timeout:
                raise AssertionError("model %s %s on %s after %.1f s" % (
                    name, "not listed" if present else "still listed",
                    sorted(set(r.name for r in self.replicas) - set(seen)), timeout))
            time.sleep(every)
        return seen


# --------------------------------------------------------------------------
# load


class Result:
    __slots__ = ("i", "t_sched", "t_start", "latency", "status", "server", "kind", "detail", "keepalive")

    def __init__(self, i, t_sched, keepalive):
        self.i, self.t_sched, self.keepalive = i, t_sched, keepalive
        self.t_start = self.latency = self.status = self.server = None
        self.kind = self.detail = None

    def __repr__(self):
        return "<#%d at %.2fs %s %s %s %s %.3fs %s>" % (
            self.i, self.t_sched, "keep-alive" if self.keepalive else "new-conn", self.kind, self.status,
            self.server, self.latency or 0, (self.detail or "")[:120])


class Load:
    """Open loop: request i is issued at t0 + i/rate (by a scheduler thread,
    into a pool of `workers` threads), whatever the earlier ones do, until
    `duration` s or `count` requests.  keepalive: the fraction of requests
    sent on the worker's persistent connection to haproxy (the rest open a
    new connection each).  Bounded: each request times out after
    `timeout` s, and join() waits for them all."""

    def __init__(self, port, rate, duration, body=None, workers=16, keepalive=0.5, timeout=10.0,
                 path="/generate"):
        self.port, self.rate, self.duration = port, rate, duration
        self.count = int(rate * duration)
        self.body = json.dumps(body or GEN).encode()
        self.workers, self.keepalive, self.timeout, self.path = workers, keepalive, timeout, path
        self.results = []
        self.local = threading.local()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
        self.futures = []
        self.thread = None
        self.t0 = None
        self.stopping = False

    def start(self):
        self.t0 = time.monotonic()
        self.thread = threading.Thread(target=self._schedule, daemon=True)
        self.thread.start()
        return self

    def _schedule(self):
        ka_every = 0 if self.keepalive <= 0 else max(1, round(1 / self.keepalive))
        for i in range(self.count):
            if self.stopping:
                break
            t = self.t0 + i / self.rate
            d = t - time.monotonic()
            if d > 0:
                time.sleep(d)
            res = Result(i, t - self.t0, bool(ka_every) and i % ka_every == 0)
            self.results.append(res)
            self.futures.append(self.pool.submit(self._one, res))

    def _conn(self, keepalive):
        if not keepalive:
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout), True
        c = getattr(self.local, "conn", None)
        if c is None:
            c = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        return c, False

    def _one(self, res):
        conn, own = self._conn(res.keepalive)
        res.t_start = time.monotonic() - self.t0
        t = time.monotonic()
        try:
            conn.request("POST", self.path, body=self.body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            payload = r.read()
            res.status = r.status
            res.server = r.getheader("X-LB-Server")
            if r.status == 200:
                res.kind = "ok"
            elif r.status == 503:
                res.kind = "retryable"
                res.detail = payload[:200].decode("utf-8", "replace")
            else:
                res.kind = "lost"
                res.detail = "status %d: %s" % (r.status, payload[:200].decode("utf-8", "replace"))
            if r.will_close and not own:
                conn.close()
                self.local.conn = None
        except (OSError, http.client.HTTPException) as e:
            res.kind = "lost"
            res.detail = "%s: %s" % (type(e).__name__, e)
            conn.close()
            if not own:
                self.local.conn = None
        finally:
            res.latency = time.monotonic() - t
            if own:
                conn.close()

    def stop(self):
        """Issues no further request (those issued run to their end)."""
        self.stopping = True

    def join(self):
        self.thread.join(timeout=self.duration + 30)
        concurrent.futures.wait(list(self.futures), timeout=self.timeout + 30)
        self.pool.shutdown(wait=False)
        return self.summary()

    def summary(self):
        done = [r for r in self.results if r.kind is not None]
        lat = sorted(r.latency for r in done if r.kind == "ok")
        by = {}
        for r in done:
            if r.kind == "ok":
                by[r.server] = by.get(r.server, 0) + 1
        return {
            "total": len(self.results), "ok": sum(r.kind == "ok" for r in done),
            "retryable": sum(r.kind == "retryable" for r in done),
            "lost": sum(r.kind == "lost" for r in done) + (len(self.results) - len(done)),
            "unfinished": len(self.results) - len(done),
            "p50": percentile(lat, 50), "p99": percentile(lat, 99), "max": lat[-1] if lat else None,
            "by_server": by, "late_max": max((r.t_start - r.t_sched for r in done), default=0.0),
            "seconds": time.monotonic() - self.t0,
        }

    def failures(self):
        return [r for r in self.results if r.kind != "ok"]


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * (len(sorted_values) - 1)))))
    return sorted_values[k]


def fmt_summary(s):
    ms = lambda v: "-" if v is None else "%.1f ms" % (v * 1000)  # noqa: E731
    return ("%d requests in %.1f s: %d ok (200), %d retryable (503), %d lost; p50 %s, p99 %s, max %s; "
            "by replica %s; scheduler late by at most %s"
            % (s["total"], s["seconds"], s["ok"], s["retryable"], s["lost"], ms(s["p50"]), ms(s["p99"]),
               ms(s["max"]), dict(sorted(s["by_server"].items(), key=lambda kv: str(kv[0]))), ms(s["late_max"])))


def parse_log(lines):
    """haproxy's request log lines (option httplog) as dicts: server,
    status, term (termination state), retries, request."""
    out = []
    for ln in lines:
        parts = ln.split()
        if len(parts) < 13 or not parts[1].startswith("[") or "/" not in parts[3]:
            continue
        conns = parts[10].split("/")
        if len(conns) != 5:
            continue
        out.append({"server": parts[3].split("/", 1)[1], "timers": parts[4], "status": parts[5],
                    "term": parts[9], "retries": conns[4], "request": " ".join(parts[12:]).strip('"'),
                    "line": ln})
    return out


def log_digest(lines):
    """What haproxy's log says about the requests: how many were retried
    or redispatched ('+' in %rc), and the lines of those not answered 200."""
    recs = parse_log(lines)
    retried = [r for r in recs if r["retries"].lstrip("+") != "0"]
    redisp = [r for r in recs if r["retries"].startswith("+")]
    bad = [r for r in recs if r["status"] != "200" and "/readyz" not in r["request"]]
    return {"requests": len(recs), "retried": len(retried), "redispatched": len(redisp), "not_200": bad}
