#!/usr/bin/python3
"""test_lifecycle.py — attnd as a process: flags, environment twins,
overload (503), readiness, signals and graceful shutdown, llama2.c models.

    /usr/bin/python3 tests/server/test_lifecycle.py --attnd build/attnd --attn build/attn [-k NAME] [-v]

Each test starts its own attnd (on an ephemeral port of 127.0.0.1) with the
flags it is about, and stops it.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

FLAGS = ["--host", "--port", "--data-dir", "--model", "--tokenizer", "--models-dir", "--threads", "--max-batch",
         "--queue-depth", "--max-body-bytes", "--grace-seconds"]

_WORK = None
_LOCK = threading.Lock()


def work():
    """The shared temporary directory with the models, made once."""
    global _WORK
    with _LOCK:
        if _WORK is None:
            w = H.Workdir()
            m = w.mkdir("models")
            H.make_model(os.path.join(m, "tiny.safetensors"), H.TINY, 1)
            H.make_model(os.path.join(m, "slow4k.safetensors"), H.SLOW, 3)
            w.mkdir("empty")
            _WORK = w
        return _WORK


def _cleanup():
    if _WORK is not None:
        _WORK.cleanup()


clean_env = H.clean_env


class Base(H.ServerTest):
    """Each test may start servers with self.start(); they are stopped
    (SIGTERM, then SIGKILL) at the end of the test."""

    def setUp(self):
        self.servers = []

    def tearDown(self):
        for s in self.servers:
            if s.alive():
                s.stop(timeout=15)

    def start(self, *args, env=None, name="attnd", wait_ready=True, models_dir=True):
        w = work()
        base = ["--host", "127.0.0.1", "--port", "0", "--data-dir", w.sub("data-" + name)]
        if models_dir:
            base += ["--models-dir", w.sub("models")]
        s = H.Server(base + list(args), env=env, name=name, wait_ready=wait_ready,
                     workdir=w.mkdir("run-" + name))
        self.servers.append(s)
        s.start()
        self.srv = s
        return s

    def run_attnd(self, args, env=None, timeout=10):
        if not H.OPTS.attnd or not os.path.exists(H.OPTS.attnd):
            self.fail("attnd binary not found at %s" % H.OPTS.attnd)
        try:
            return subprocess.run([H.OPTS.attnd] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, timeout=timeout, env=env or clean_env(),
                                  cwd=work().path)
        except subprocess.TimeoutExpired:
            self.fail("attnd %s did not exit within %ds" % (" ".join(args), timeout))

    def open_stream(self, srv, body):
        b = dict(body)
        b["stream"] = True
        data = json.dumps(b).encode()
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        s.sendall(b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(data) + data)
        buf = b""
        deadline = time.monotonic() + 20
        while b"data: " not in buf:
            self.assertLess(time.monotonic(), deadline, "no first event: %r" % buf[:300])
            chunk = s.recv(4096)
            self.assertTrue(chunk, "connection closed before the first event: %r" % buf[:300])
            buf += chunk
        self.assertTrue(buf.startswith(b"HTTP/1.1 200"), buf[:200])
        return s, buf


# ==========================================================================
# the command line


class Test01CommandLine(Base):
    def test_help_lists_every_flag(self):
        p = self.run_attnd(["--help"])
        self.assertEqual(p.returncode, 0, "attnd --help exited %d; stderr %r" % (p.returncode, p.stderr[:300]))
        out = p.stdout.decode(errors="replace")
        missing = [f for f in FLAGS if f not in out]
        self.assertEqual(missing, [], "attnd --help (stdout) does not list these flags")

    def test_unknown_flag_exits_2_with_usage(self):
        p = self.run_attnd(["--no-such-flag"])
        self.assertEqual(p.returncode, 2, "exit status %d; stderr %r" % (p.returncode, p.stderr[:300]))
        err = p.stderr.decode(errors="replace")
        self.assertIn("usage", err.lower(), "no usage on stderr: %r" % err[:300])
        self.assertNotIn("listening", p.stdout.decode(errors="replace"))

    def test_stray_argument_exits_2(self):
        p = self.run_attnd(["--port", "0", "serve"])
        self.assertEqual(p.returncode, 2, "exit status %d; stderr %r" % (p.returncode, p.stderr[:300]))

    def test_bad_attention_kernel_exits_2(self):
        p = self.run_attnd(["--port", "0", "--attention", "fastest"])
        self.assertEqual(p.returncode, 2, "exit status %d; stderr %r" % (p.returncode, p.stderr[:300]))
        self.assertIn(b"--attention", p.stderr)

    def test_flag_without_its_value_exits_2(self):
        p = self.run_attnd(["--port"])
        self.assertEqual(p.returncode, 2, "exit status %d; stderr %r" % (p.returncode, p.stderr[:300]))


# ==========================================================================
# environment twins


class Test02Environment(Base):
    def test_env_twins(self):
        w = work()
        env = clean_env(ATTND_HOST="127.0.0.1", ATTND_PORT="0", ATTND_MODELS_DIR=w.sub("models"),
                        ATTND_DATA_DIR=w.sub("data-env"), ATTND_MAX_BODY_BYTES="2000", ATTND_THREADS="1",
                        ATTND_GRACE_SECONDS="2")
        s = H.Server([], env=env, name="env", workdir=w.mkdir("run-env"))
        self.servers.append(s)
        self.srv = s
        s.start()
        self.assertEqual(s.host, "127.0.0.1")
        self.assertNotEqual(s.port, 8080, "ATTND_PORT=0 ignored: listening on 8080")
        self.assertGreater(s.port, 0)
        obj = self.assertAnswer(s.get("/readyz"), 200, "GET", "/readyz")
        self.assertEqual(obj["models"], 2, "ATTND_MODELS_DIR: %s" % obj)
        # ATTND_MAX_BODY_BYTES=2000
        big = json.dumps({"model": "tiny", "prompt": "a" * 2100}).encode()
        self.assertError(s.generate(big, headers={"Content-Type": "application/json"}), 413, "payload_too_large")
        ok = json.dumps({"model": "tiny", "prompt": "a" * 1900}).encode()
        self.assertLessEqual(len(ok), 2000)
        self.assertError(s.generate(ok, headers={"Content-Type": "application/json"}), 422, "invalid_argument",
                         field="prompt")
        rc, took, killed = s.stop(timeout=10)
        self.assertEqual((rc, killed), (0, False))

    def test_flag_overrides_env(self):
        env = clean_env(ATTND_MAX_BODY_BYTES="100")
        s = self.start("--max-body-bytes", "5000", env=env, name="override")
        body = json.dumps({"model": "tiny", "prompt": "Hi", "max_tokens": 2, "temperature": 0}).encode()
        self.assertGreater(len(body), 50)
        r = s.generate(body + b" " * 200, headers={"Content-Type": "application/json"})
        self.assertAnswer(r, 200, "POST", "/generate")


# ==========================================================================
# overload: 503 + Retry-After


class Test03Overload(Base):
    def test_queue_full_is_503_with_retry_after(self):
        s = self.start("--queue-depth", "1", "--max-batch", "1", "--threads", "1", name="overload")
        body = {"model": "slow4k", "prompt": "Hello", "max_tokens": 200, "temperature": 0}
        rounds = []
        for attempt in range(2):
            rs = H.run_threads([lambda: s.generate(body, timeout=120) for _ in range(8)])
            for r in rs:
                if isinstance(r, BaseException):
                    self.fail("a request raised %r" % r)
            rounds.append([r.status for r in rs])
            if any(r.status == 503 for r in rs):
                break
        statuses = rounds[-1]
        self.assertIn(503, statuses, "8 concurrent requests with --queue-depth 1 --max-batch 1: %s" % rounds)
        self.assertIn(200, statuses, "no request was served: %s" % statuses)
        self.assertEqual(set(statuses) - {200, 503}, set(), statuses)
        self.assertGreaterEqual(statuses.count(200), 1)
        self.assertLessEqual(statuses.count(200), 6, "hardly any request was refused: %s" % statuses)
        for r in rs:
            if r.status == 503:
                self.assertError(r, 503, "overloaded")
                ra = r.header("Retry-After")
                self.assertIsNotNone(ra, "503 overloaded without Retry-After")
                self.assertRegex(ra, r"^[0-9]+$", "Retry-After must be delay-seconds")
            else:
                obj = self.assertAnswer(r, 200, "POST", "/generate")
                self.assertEqual(len(obj["tokens"]), 200)
        fams, _, _ = s.metrics()
        self.assertGreaterEqual(H.sample_value(fams, "attnd_requests_total", route="/generate", code="503"),
                                statuses.count(503))
        # it recovers
        self.assertAnswer(s.generate({"model": "tiny", "prompt": "a", "max_tokens": 3}), 200, "POST", "/generate")
        fams, _, _ = s.metrics()
        self.assertEqual(H.sample_value(fams, "attnd_queue_depth"), 0)
        self.assertHealthy("overload")


# ==========================================================================
# readiness


class Test04Readiness(Base):
    def test_no_models_is_not_ready(self):
        w = work()
        s = H.Server(["--host", "127.0.0.1", "--port", "0", "--models-dir", w.sub("empty"),
                      "--data-dir", w.sub("data-empty")], env=clean_env(), name="empty", wait_ready=False,
                     workdir=w.mkdir("run-empty"))
        self.servers.append(s)
        self.srv = s
        try:
            s.start()
        except H.StartupError:
            if s.proc is not None and s.proc.returncode not in (None, -9):
                self.skipTest("attnd refuses to start without models (exit %s); no not_ready state to test"
                              % s.proc.returncode)
            raise
        time.sleep(0.5)  # loading an empty directory is instant
        self.assertHealthy("start without models")
        r = s.get("/readyz")
        self.assertError(r, 503, "not_ready", method="GET", path="/readyz")
        r = s.generate({"prompt": "Hello"})
        self.assertError(r, 503, "not_ready")
        obj = self.assertAnswer(s.get("/models"), 200, "GET", "/models")
        self.assertEqual(obj, {"models": []})


# ==========================================================================
# signals


class Test05Signals(Base):
    def test_sigterm_idle(self):
        s = self.start("--grace-seconds", "10", name="term-idle")
        rc, took, killed = s.stop(timeout=10)
        self.assertFalse(killed, "SIGTERM ignored\n" + s.output_tail())
        self.assertEqual(rc, 0, s.output_tail())
        self.assertLess(took, 2.0, "an idle server took %.1fs to stop" % took)

    def test_sigint_idle(self):
        s = self.start(name="int-idle")
        rc, took, killed = s.stop(timeout=10, sig=signal.SIGINT)
        self.assertFalse(killed, "SIGINT ignored\n" + s.output_tail())
        self.assertEqual(rc, 0, s.output_tail())
        self.assertLess(took, 2.0)

    def test_sigterm_cancels_a_long_request_at_the_grace_end(self):
        grace = 2
        s = self.start("--grace-seconds", str(grace), name="term-long")
        # about 4096 tokens on slow4k: far longer than the grace period
        sock, _ = self.open_stream(s, {"model": "slow4k", "prompt": "Hello", "max_tokens": 4096,
                                       "temperature": 0})
        try:
            t0 = time.monotonic()
            s.send_signal(signal.SIGTERM)
            rc = s.wait(grace + 3)
            took = time.monotonic() - t0
            self.assertIsNotNone(rc, "attnd still running %.1fs after SIGTERM with --grace-seconds %d\n%s"
                                 % (grace + 3, grace, s.output_tail()))
            self.assertEqual(rc, 0, s.output_tail())
            self.assertGreater(took, grace - 0.5, "attnd did not give the in-flight request its grace period "
                               "(%.1fs)" % took)
            # the client's stream ended (closed), it is not left hanging
            sock.settimeout(2)
            try:
                while sock.recv(65536):
                    pass
            except socket.timeout:
                self.fail("the stream was not closed when attnd exited")
            except OSError:
                pass
        finally:
            sock.close()

    def test_sigterm_lets_a_short_request_finish(self):
        # a generous grace: under ThreadSanitizer on a loaded machine these
        # tokens take seconds, and this test is about finishing, not the cut
        s = self.start("--grace-seconds", "60", name="term-short")
        n = 150
        conn = s.connect(timeout=30)
        try:
            conn.request("POST", "/generate", body=json.dumps(
                {"model": "slow4k", "prompt": "Hello", "max_tokens": n, "temperature": 0, "stream": True}),
                headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            self.assertEqual(r.status, 200)
            first = r.readline()  # the first event: the request is in flight
            self.assertTrue(first.startswith(b"data: "), first)
            s.send_signal(signal.SIGTERM)
            rest = r.read()
        finally:
            conn.close()
        rc = s.wait(70)
        self.assertEqual(rc, 0, s.output_tail())
        datas = H.parse_sse(first + rest)
        self.assertEqual(datas[-1], "[DONE]", "the stream was cut: ends %r" % (first + rest)[-200:])
        final = json.loads(datas[-2])
        self.assertEqual(final.get("finish_reason"), "length", final)
        self.assertEqual(len(datas) - 2, n, "the request was cut short")

    def test_stops_accepting_after_sigterm(self):
        s = self.start("--grace-seconds", "3", name="term-refuse")
        sock, _ = self.open_stream(s, {"model": "slow4k", "prompt": "Hello", "max_tokens": 4096,
                                       "temperature": 0})
        try:
            s.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            self.assertTrue(s.alive(), "premise: attnd should still be draining")
            try:
                r = s.generate({"model": "tiny", "prompt": "a", "max_tokens": 2}, timeout=3)
                self.assertEqual(r.status, 503, "a new request during the drain was answered %d" % r.status)
            except (ConnectionRefusedError, ConnectionResetError):
                pass  # the listening socket is closed: refused, as it should be
        finally:
            sock.close()
        rc = s.wait(8)
        self.assertEqual(rc, 0, s.output_tail())


# ==========================================================================
# --model and --tokenizer: a llama2.c checkpoint


TOKENIZER = os.path.join(os.environ.get("ATTND_SHARED_DIR", os.path.join(os.path.dirname(H.REPO), "shared")),
                         "fixtures", "llama2c-tokenizer.bin")


class Test06ModelFlags(Base):
    def test_llama2c_model_with_tokenizer(self):
        if not os.path.exists(TOKENIZER):
            self.skipTest("no llama2.c tokenizer fixture at %s" % TOKENIZER)
        w = work()
        l32 = w.sub("l32.bin")
        cfg = dict(dim=64, hidden=128, layers=2, heads=4, kv_heads=4, vocab=32000, seq_len=64)
        if not os.path.exists(l32):
            H.make_model(l32, cfg, 5, fmt="llama2c")
        s = self.start("--model", l32, "--tokenizer", TOKENIZER, "--model", w.sub("models", "tiny.safetensors"),
                       name="llama2c", models_dir=False)
        obj = self.assertAnswer(s.get("/models"), 200, "GET", "/models")
        ms = {m["name"]: m for m in obj["models"]}
        self.assertEqual(set(ms), {"l32", "tiny"})
        m = ms["l32"]
        self.assertEqual(m["tokenizer"], "llama2c")
        self.assertEqual(m["config"]["vocab_size"], 32000)
        self.assertEqual(m["config"]["seq_len"], 64)
        self.assertEqual(m["parameters"], H.param_count(cfg))
        self.assertEqual(ms["tiny"]["tokenizer"], "byte")
        r = s.generate({"model": "l32", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0})
        g = self.assertAnswer(r, 200, "POST", "/generate")
        self.assertEqual(g["usage"]["prompt_tokens"], 5, "BOS + 4 tokens for 'Once upon a time'")
        self.assertEqual(len(g["tokens"]), 8)
        # the default model is the first by name
        g = self.assertAnswer(s.generate({"prompt": "Hi", "max_tokens": 2}), 200, "POST", "/generate")
        self.assertEqual(g["model"], "l32")

    def test_missing_model_file_fails_to_start(self):
        p = self.run_attnd(["--host", "127.0.0.1", "--port", "0", "--model", "/nonexistent/x.safetensors",
                            "--data-dir", work().sub("data-missing")], timeout=15)
        self.assertNotEqual(p.returncode, 0, "attnd started with a --model that does not exist")
        self.assertTrue(p.stderr.strip(), "no message on stderr")


# ==========================================================================
# every answer of the run against api/openapi.yaml (last)


class Test99Contract(H.ContractTest):
    pass


if __name__ == "__main__":
    H.run(sys.modules[__name__], description=__doc__.splitlines()[0], cleanup=_cleanup)
