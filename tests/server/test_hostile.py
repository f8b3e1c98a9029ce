#!/usr/bin/python3
"""test_hostile.py — attnd against hostile clients on 127.0.0.1: slowloris
headers and bodies, idle sockets, connection caps (total and per address),
200 slow clients beside a normal /generate, heads too large (414, 431),
bodies too deep or too wide for a parser, one client's in-flight cap, and
a second signal.

    /usr/bin/python3 tests/server/test_hostile.py --attnd build/attnd --attn build/attn [-k NAME] [-v]

Every test starts its own attnd with the flags it is about.  Clients bind
source addresses of 127/8 other than 127.0.0.1 (Linux routes all of it to
loopback) to play several machines.  Traffic is bounded in count and time.
"""

import http.client
import json
import os
import signal
import socket
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

_WORK = None
_LOCK = threading.Lock()


def work():
    global _WORK
    with _LOCK:
        if _WORK is None:
            w = H.Workdir()
            m = w.mkdir("models")
            H.make_model(os.path.join(m, "tiny.safetensors"), H.TINY, 1)
            H.make_model(os.path.join(w.mkdir("slow"), "slow4k.safetensors"), H.SLOW, 3)
            _WORK = w
        return _WORK


clean_env = H.clean_env


def connect(port, source="127.0.0.1", timeout=10):
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))


def closed_by_peer(s, timeout):
    """Seconds until the server closes s (recv gives b'' or a reset), or
    None if it is still open after timeout.  Whatever arrives before the
    close is read and dropped."""
    t0 = time.monotonic()
    s.settimeout(0.2)
    while time.monotonic() - t0 < timeout:
        try:
            if s.recv(4096) == b"":
                return time.monotonic() - t0
        except socket.timeout:
            continue
        except OSError:
            return time.monotonic() - t0
    return None


def dribble(s, data, interval=0.25, wait=5.0):
    """Sends data a byte every interval seconds; the seconds from the first
    byte until the server closed the connection (a send failed, or recv saw
    the end after the last byte), or None if it never did."""
    t0 = time.monotonic()
    for ch in data:
        try:
            s.send(bytes([ch]))
        except OSError:
            return time.monotonic() - t0
        time.sleep(interval)
    return None if closed_by_peer(s, wait) is None else time.monotonic() - t0


def request_on(s, method, path, body=None, headers=None, timeout=10):
    """One request on an open socket; (status, headers, body bytes)."""
    data = b"" if body is None else json.dumps(body).encode()
    head = "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n" % (method, path)
    for k, v in (headers or {}).items():
        head += "%s: %s\r\n" % (k, v)
    if body is not None:
        head += "Content-Type: application/json\r\nContent-Length: %d\r\n" % len(data)
    s.sendall(head.encode() + b"\r\n" + data)
    status, hdrs, payload, _ = H.read_http_response(s, timeout)
    return status, hdrs, payload


class Base(H.ServerTest):
    def setUp(self):
        self.servers = []
        self.socks = []

    def tearDown(self):
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass
        for s in self.servers:
            if s.alive():
                s.stop(timeout=15)

    def start(self, *args, name="attnd", models="models"):
        w = work()
        base = ["--host", "127.0.0.1", "--port", "0", "--data-dir", w.sub("data-" + name),
                "--models-dir", w.sub(models), "--quiet"]
        s = H.Server(base + list(args), env=clean_env(), name=name, workdir=w.mkdir("run-" + name))
        self.servers.append(s)
        s.start()
        self.srv = s
        return s

    def sock(self, source="127.0.0.1", timeout=10):
        s = connect(self.srv.port, source, timeout)
        self.socks.append(s)
        return s

    def settle(self):
        """Waits until the server holds no connection but the one asking
        (the harness's and earlier tests' closed connections are cleaned
        up lazily, and the caps count what is open), from 127.0.0.9."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            c = connect(self.srv.port, "127.0.0.9")
            try:
                st, _, body = request_on(c, "GET", "/metrics")
            finally:
                c.close()
            if H.sample_value(H.parse_metrics(body.decode()), "attnd_connections_open") <= 1:
                time.sleep(0.3)  # for this one's own close to be seen
                return
            time.sleep(0.2)

    def metric(self, name, **labels):
        fams, _, _ = self.srv.metrics()
        return H.sample_value(fams, name, **labels) or 0


class Test01SlowClients(Base):
    def test_slow_headers_are_dropped(self):
        s = self.start("--header-timeout-seconds", "2", "--idle-timeout-seconds", "30", name="slowhdr")
        before = self.metric("attnd_connections_header_timeouts_total")
        closed = dribble(self.sock(), b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100)
        self.assertIsNotNone(closed, "a client sending a byte every 0.25 s was never dropped")
        self.assertGreater(closed, 1.5, "dropped before the header timeout")
        self.assertLess(closed, 5.0, "dropped %.1f s after it began, with --header-timeout-seconds 2" % closed)
        self.assertEqual(self.metric("attnd_connections_header_timeouts_total") - before, 1)
        self.assertHealthy("a slowloris")

    def test_slow_request_line_from_the_first_byte(self):
        # the request line itself never completes: only the socket's byte
        # count shows that a request has begun
        s = self.start("--header-timeout-seconds", "2", name="slowline")
        closed = dribble(self.sock(), b"GET /" + b"x" * 200)
        self.assertIsNotNone(closed, "a request line sent a byte at a time was never dropped")
        self.assertLess(closed, 5.0)

    def test_slow_body_is_dropped(self):
        s = self.start("--header-timeout-seconds", "2", name="slowbody")
        c = self.sock()
        c.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 400\r\n\r\n")
        closed = dribble(c, b" " * 40)
        self.assertIsNotNone(closed, "a body sent a byte every 0.25 s was never dropped")
        self.assertLess(closed, 5.0)
        self.assertHealthy("a slow body")

    def test_idle_connections_are_closed(self):
        s = self.start("--header-timeout-seconds", "1", "--idle-timeout-seconds", "3", name="idle")
        silent = self.sock()                 # connects and sends nothing
        kept = self.sock()                   # one request, then keep-alive idle
        st, _, _ = request_on(kept, "GET", "/healthz")
        self.assertEqual(st, 200)
        t0 = time.monotonic()
        d_silent = closed_by_peer(silent, 8)
        self.assertIsNotNone(d_silent, "a connection that sent nothing stayed open")
        # idle is not a slow request: the 1 s header timeout does not apply
        self.assertGreater(d_silent, 2.0, "a silent connection was closed before --idle-timeout-seconds")
        self.assertLess(d_silent, 6.0)
        left = 8 - (time.monotonic() - t0)
        d_kept = closed_by_peer(kept, max(left, 1))
        self.assertIsNotNone(d_kept, "an idle keep-alive connection stayed open")
        self.assertHealthy("idle connections")

    def test_normal_clients_unhurt(self):
        # a request that arrives at a normal pace on a keep-alive connection,
        # several times over more than the header timeout, is never cut
        s = self.start("--header-timeout-seconds", "1", "--idle-timeout-seconds", "5", name="normal")
        c = self.sock()
        for _ in range(6):
            st, _, body = request_on(c, "POST", "/generate", {"prompt": "Hi", "max_tokens": 4})
            self.assertEqual(st, 200, body[:200])
            time.sleep(0.5)


class Test02ConnectionCaps(Base):
    def test_max_connections(self):
        s = self.start("--max-connections", "8", name="maxconn")
        before = self.metric("attnd_connections_refused_total", reason="max_connections")
        self.settle()
        held = [self.sock() for _ in range(8)]
        time.sleep(0.3)
        extra = self.sock()
        t0 = time.monotonic()
        st, hdrs, body = request_on(extra, "GET", "/healthz")
        took = time.monotonic() - t0
        self.assertEqual(st, 503, body[:200])
        self.assertEqual(hdrs.get("connection", "").lower(), "close")
        self.assertEqual(json.loads(body)["error"]["code"], "overloaded")
        self.assertIn("retry-after", hdrs)
        self.assertLess(took, 2.0)
        self.assertIsNotNone(closed_by_peer(extra, 5), "the refused connection stayed open")
        # a refused client that sends nothing is not kept either
        quiet = self.sock()
        self.assertIsNotNone(closed_by_peer(quiet, 5), "a refused silent connection stayed open")
        # the held ones are still served
        st, _, _ = request_on(held[0], "GET", "/healthz")
        self.assertEqual(st, 200)
        for c in held[:4]:
            c.close()
        time.sleep(0.5)
        c = self.sock()
        st, _, _ = request_on(c, "GET", "/healthz")
        self.assertEqual(st, 200, "a new connection after others closed")
        c.close()
        for c in held[4:]:
            c.close()
        time.sleep(0.3)
        self.assertGreaterEqual(self.metric("attnd_connections_refused_total", reason="max_connections") - before, 2)

    def test_max_connections_per_ip(self):
        s = self.start("--max-connections-per-ip", "4", name="perip")
        self.settle()
        held = [self.sock("127.0.0.1") for _ in range(4)]
        time.sleep(0.3)
        extra = self.sock("127.0.0.1")
        st, hdrs, body = request_on(extra, "GET", "/healthz")
        self.assertEqual(st, 503, body[:200])
        self.assertIn("address", json.loads(body)["error"]["message"])
        other = self.sock("127.0.0.2")
        st, _, body = request_on(other, "POST", "/generate", {"prompt": "Hi", "max_tokens": 2})
        self.assertEqual(st, 200, "another address is served: %r" % body[:200])
        st, _, _ = request_on(held[0], "GET", "/healthz")
        self.assertEqual(st, 200)
        c = connect(s.port, "127.0.0.3")
        try:
            st, _, body = request_on(c, "GET", "/metrics")
        finally:
            c.close()
        self.assertEqual(st, 200)
        v = H.sample_value(H.parse_metrics(body.decode()), "attnd_connections_refused_total",
                           reason="max_connections_per_ip")
        self.assertGreaterEqual(v, 1)

    def test_200_slow_clients_and_a_normal_generate(self):
        s = self.start("--header-timeout-seconds", "30", name="crowd")
        body = {"prompt": "The quick brown fox", "max_tokens": 8}

        def latencies(n):
            out = []
            for _ in range(n):
                t0 = time.monotonic()
                r = s.generate(body)
                self.assertEqual(r.status, 200, r)
                out.append(time.monotonic() - t0)
            return out

        latencies(3)  # warm-up
        idle = statistics.median(latencies(7))
        stop = threading.Event()
        crowd = []
        for i in range(200):
            c = connect(s.port, "127.0.0.%d" % (2 + i % 4))   # 50 per address, under the 128 cap
            c.sendall(b"POST /generate HTTP/1.1\r\n")
            crowd.append(c)
        self.socks.extend(crowd)

        def dribble():
            while not stop.is_set():
                for c in crowd:
                    try:
                        c.send(b"X")
                    except OSError:
                        pass
                stop.wait(1.0)

        t = threading.Thread(target=dribble, daemon=True)
        t.start()
        try:
            time.sleep(1.0)
            self.assertGreaterEqual(self.metric("attnd_connections_open"), 200)
            busy = statistics.median(latencies(7))
        finally:
            stop.set()
            t.join(5)
        sys.stdout.write("  /generate p50: %.1f ms idle, %.1f ms beside 200 slow clients\n"
                         % (idle * 1e3, busy * 1e3))
        self.assertLess(busy, idle * 5 + 0.25,
                        "/generate took %.0f ms beside 200 slow clients, %.0f ms alone" % (busy * 1e3, idle * 1e3))


class Test03Heads(Base):
    def test_uri_too_long(self):
        s = self.start(name="uri")
        c = self.sock()
        st, hdrs, body = request_on(c, "GET", "/models?" + "a" * 9000)
        self.assertEqual(st, 414, body[:200])
        err = json.loads(body)["error"]
        self.assertEqual(err["code"], "uri_too_long")
        self.checkSchema(json.loads(body), H.response_schema("GET", "/models", 414), "414", strict=True)
        self.assertHealthy("a long URI")

    def test_headers_too_large(self):
        s = self.start("--max-header-bytes", "8192", name="hdr")
        c = self.sock()
        st, hdrs, body = request_on(c, "GET", "/models", headers={"X-Big": "b" * 10000})
        self.assertEqual(st, 431, body[:200])
        self.assertEqual(json.loads(body)["error"]["code"], "request_header_fields_too_large")
        self.assertEqual(hdrs.get("connection", "").lower(), "close")
        # many small headers count as much as one big one
        c = self.sock()
        st, _, body = request_on(c, "GET", "/models", headers={"X-H%d" % i: "v" * 90 for i in range(100)})
        self.assertEqual(st, 431, body[:200])
        # far beyond the limit libmicrohttpd itself refuses; the server stays up
        c = self.sock()
        try:
            st, _, _ = request_on(c, "GET", "/models", headers={"X-Huge": "h" * 200000})
            self.assertIn(st, (431, 414))
        except (OSError, AssertionError, ValueError):
            pass  # or it closes the connection
        self.assertHealthy("a 200 KB header")
        st, _, _ = request_on(self.sock(), "GET", "/models", headers={"X-Ok": "o" * 4000})
        self.assertEqual(st, 200)


class Test04Bodies(Base):
    ROUTES = ("/generate", "/recall", "/train")

    def post_raw(self, path, data):
        c = self.sock(timeout=30)
        c.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                  % (path.encode(), len(data)) + data)
        st, _, body = H.read_http_response(c, 30)[:3]
        return st, json.loads(body) if body else None

    def test_deep_nesting_never_reaches_the_parser(self):
        s = self.start(name="deep")
        for path in self.ROUTES:
            for data in (b"[" * 100000, b"{\"a\":" * 50000, b"[" * 33 + b"]" * 33):
                st, body = self.post_raw(path, data)
                self.assertEqual(st, 400, "%s with %d bytes of nesting: %r" % (path, len(data), body))
                self.assertEqual(body["error"]["code"], "invalid_json")
                self.assertIn("nested deeper", body["error"]["message"])
        # 32 levels are still parsed (and then judged by the route: 422)
        st, body = self.post_raw("/generate", b'{"prompt": "x", "stop": ' + b"[" * 31 + b"]" * 31 + b"}")
        self.assertEqual(st, 422, body)
        self.assertHealthy("deep bodies")

    def test_wide_arrays_and_long_strings(self):
        s = self.start(name="wide")
        many = b'{"pairs": [' + b",".join([b"[1,2]"] * 70000) + b'], "queries": [1]}'
        st, body = self.post_raw("/recall", many)
        self.assertEqual(st, 413, body)
        self.assertEqual(body["error"]["code"], "payload_too_large")
        long_key = json.dumps({"pairs": [["a" * 300000, 1]], "queries": ["a"]}).encode()
        st, body = self.post_raw("/recall", long_key)
        self.assertEqual(st, 413, body)
        self.assertIn("string", body["error"]["message"])
        # a training job's inline text may fill the body: not refused for its length
        text = json.dumps({"task": "text", "name": "wide-text", "text": "b" * 300000, "steps": 1,
                           "model": {"dim": 16, "n_layers": 1, "n_heads": 2}, "batch_size": 1,
                           "seq_len": 16}).encode()
        st, body = self.post_raw("/train", text)
        self.assertNotEqual(st, 413, body)
        self.assertHealthy("wide bodies")

    def test_depth_flag(self):
        s = self.start("--max-json-depth", "4", name="depthflag")
        st, body = self.post_raw("/recall", b'{"pairs": [[["a"], 1]], "queries": [[[["x"]]]]}')
        self.assertEqual(st, 400, body)
        st, body = self.post_raw("/recall", b'{"pairs": [["a", 1]], "queries": ["a"]}')
        self.assertEqual(st, 200, body)


class Test05InflightCap(Base):
    LONG = {"prompt": "Once", "max_tokens": 4000, "ignore_eos": True, "stream": True}

    def open_stream(self, source="127.0.0.1", key=None):
        c = self.sock(source, timeout=30)
        data = json.dumps(self.LONG).encode()
        auth = b"" if key is None else b"Authorization: Bearer %s\r\n" % key.encode()
        c.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + auth +
                  b"Content-Length: %d\r\n\r\n" % len(data) + data)
        buf = b""
        deadline = time.monotonic() + 20
        while b"\r\n\r\n" not in buf and time.monotonic() < deadline:
            chunk = c.recv(4096)
            if not chunk:
                break
            buf += chunk
        return c, buf

    def test_one_client_cannot_take_every_slot(self):
        s = self.start("--max-inflight-per-client", "2", "--max-batch", "4", name="inflight", models="slow")
        a1, h1 = self.open_stream()
        a2, h2 = self.open_stream()
        self.assertTrue(h1.startswith(b"HTTP/1.1 200") and h2.startswith(b"HTTP/1.1 200"), (h1[:100], h2[:100]))
        st, hdrs, body = request_on(self.sock(), "POST", "/generate", {"prompt": "x", "max_tokens": 2})
        self.assertEqual(st, 429, body[:200])
        self.assertEqual(json.loads(body)["error"]["code"], "too_many_requests")
        self.assertIn("retry-after", hdrs)
        self.checkSchema(json.loads(body), H.response_schema("POST", "/generate", 429), "429", strict=True)
        st, _, body = request_on(self.sock(), "POST", "/recall", {"pairs": [["a", 1]], "queries": ["a"]})
        self.assertEqual(st, 429, "/recall shares the cap: %r" % body[:200])
        # (an early refusal of a POST closes its connection: its body was never read)
        # other routes are not capped, and another client is served
        st, _, _ = request_on(self.sock(), "GET", "/models")
        self.assertEqual(st, 200)
        o = self.sock("127.0.0.2")
        st, _, body = request_on(o, "POST", "/generate", {"prompt": "x", "max_tokens": 2})
        self.assertEqual(st, 200, body[:200])
        # the slot comes back when a request ends
        a1.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            st, _, _ = request_on(self.sock(), "POST", "/generate", {"prompt": "x", "max_tokens": 2})
            if st == 200:
                break
            time.sleep(0.2)
        self.assertEqual(st, 200, "the client's slot did not come back after its stream closed")

    def test_the_cap_is_per_key(self):
        s = self.start("--max-inflight-per-client", "1", "--api-key", "ka", "--api-key", "kb",
                       "--max-batch", "4", name="perkey", models="slow")
        a, h = self.open_stream(key="ka")
        self.assertTrue(h.startswith(b"HTTP/1.1 200"), h[:200])
        st, _, _ = request_on(self.sock(), "POST", "/generate", {"prompt": "x", "max_tokens": 2},
                              headers={"Authorization": "Bearer ka"})
        self.assertEqual(st, 429)
        st, _, body = request_on(self.sock(), "POST", "/generate", {"prompt": "x", "max_tokens": 2},
                                 headers={"Authorization": "Bearer kb"})
        self.assertEqual(st, 200, "another key from the same address: %r" % body[:200])


class Test06Signals(Base):
    def test_second_signal_exits_at_once(self):
        s = self.start("--grace-seconds", "60", name="twice", models="slow")
        c = self.sock(timeout=30)
        data = json.dumps({"prompt": "Once", "max_tokens": 4000, "ignore_eos": True, "stream": True}).encode()
        c.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(data) + data)
        self.assertTrue(c.recv(100).startswith(b"HTTP/1.1 200"))
        s.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        self.assertTrue(s.alive(), "attnd left at the first SIGTERM with a stream running and 60 s of grace")
        t0 = time.monotonic()
        s.send_signal(signal.SIGINT)
        rc = s.wait(5)
        self.assertIsNotNone(rc, "attnd still running 5 s after a second signal")
        self.assertLess(time.monotonic() - t0, 3.0)
        self.assertIn("second signal", s.stderr_text())


    def test_sigterm_during_a_recall(self):
        s = self.start("--grace-seconds", "5", "--max-recall-pairs", "32768", "--max-recall-queries", "4096",
                       name="termrecall")
        body = {"pairs": [["k%d" % i, i] for i in range(32768)], "queries": ["k%d" % i for i in range(4096)]}
        out = {}

        def ask():
            try:
                out["r"] = s.post("/recall", body, timeout=60)
            except (OSError, http.client.HTTPException) as e:
                out["e"] = e

        t = threading.Thread(target=ask)
        t.start()
        time.sleep(0.5)  # the body is in and the recall is on the worker
        t0 = time.monotonic()
        s.send_signal(signal.SIGTERM)
        rc = s.wait(25)
        t.join(30)
        self.assertEqual(rc, 0, "attnd exited %s after SIGTERM during a recall\n%s" % (rc, s.output_tail()))
        # the grace period, the second after it, the trainer's join: and margin for sanitizers
        self.assertLess(time.monotonic() - t0, 5 + 10)
        r = out.get("r")
        self.assertIsNotNone(r, "the recall got no answer: %r" % out.get("e"))
        self.assertIn(r.status, (200, 503), r)
        if r.status == 200:
            got = r.json()["answers"]
            self.assertEqual(len(got), 4096)
            self.assertTrue(all(a["value"] == int(a["query"][1:]) for a in got))


class Test99Contract(H.ContractTest):
    pass


if __name__ == "__main__":
    H.run(sys.modules[__name__], description=__doc__.splitlines()[0],
          cleanup=lambda: _WORK is not None and _WORK.cleanup())
