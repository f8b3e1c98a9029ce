#!/usr/bin/python3
"""test_auth.py — API keys: every route with and without a key, key files
and SIGHUP, the environment twins, /metrics for a scraper, and keys that
never leak into logs, /models or job records.

    /usr/bin/python3 tests/server/test_auth.py --attnd build/attnd --attn build/attn [-k NAME] [-v]

Each test starts its own attnd on an ephemeral port of 127.0.0.1.
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

KEY1 = "k1-0123456789abcdef"
KEY2 = "k2-fedcba9876543210"

_WORK = None
_LOCK = threading.Lock()


def work():
    global _WORK
    with _LOCK:
        if _WORK is None:
            w = H.Workdir()
            H.make_model(os.path.join(w.mkdir("models"), "tiny.safetensors"), H.TINY, 1)
            _WORK = w
        return _WORK


clean_env = H.clean_env


# Every route the service has, with a request that is valid once the key
# is right, and the status it then gets.
def route_requests(job_id):
    return [
        ("POST", "/generate", {"prompt": "Hi", "max_tokens": 2}, 200),
        ("POST", "/recall", {"pairs": [["a", 1]], "queries": ["a"]}, 200),
        ("GET", "/models", None, 200),
        ("GET", "/metrics", None, 200),
        ("GET", "/train", None, 200),
        ("GET", "/train/" + job_id, None, 200),
        ("GET", "/train/tr-0", None, 404),
        ("DELETE", "/train/tr-0", None, 404),
        ("GET", "/no-such-route", None, 404),
        ("PUT", "/generate", None, 405),
    ]


TRAIN_BODY = {"task": "recall", "name": "authjob", "model": {"dim": 16, "n_layers": 1, "n_heads": 2},
              "steps": 4, "batch_size": 2, "seq_len": 32, "checkpoint_every": 2, "eval_sequences": 8,
              "recall": {"n_pairs": 2, "n_keys": 8, "n_values": 8}}


class Base(H.ServerTest):
    def setUp(self):
        self.servers = []

    def tearDown(self):
        for s in self.servers:
            if s.alive():
                s.stop(timeout=15)

    def start(self, *args, env=None, name="attnd", api_key=None, wait_ready=True):
        w = work()
        base = ["--host", "127.0.0.1", "--port", "0", "--data-dir", w.sub("data-" + name),
                "--models-dir", w.sub("models")]
        s = H.Server(base + list(args), env=env if env is not None else clean_env(), name=name,
                     wait_ready=wait_ready, workdir=w.mkdir("run-" + name), api_key=api_key)
        self.servers.append(s)
        s.start()
        self.srv = s
        return s

    def assert401(self, r, what):
        self.assertEqual(r.status, 401, "%s: want 401, got %r" % (what, r))
        self.assertTrue((r.header("WWW-Authenticate") or "").startswith("Bearer"),
                        "%s: WWW-Authenticate %r" % (what, r.header("WWW-Authenticate")))
        self.assertEqual(r.media_type, "application/json")
        err = r.json()["error"]
        self.assertEqual(err["code"], "unauthorized", err)
        self.checkSchema(r.json(), H.schema_ref("Error"), "401", strict=True)

    def auth_failures(self, s, key):
        r = s.get("/metrics", headers={"Authorization": "Bearer " + key})
        fams = H.parse_metrics(r.body.decode())
        return {reason: H.sample_value(fams, "attnd_auth_failures_total", reason=reason) or 0
                for reason in ("missing", "invalid")}


class Test01EveryRoute(Base):
    def test_every_route_needs_the_key(self):
        s = self.start("--api-key", KEY1, "--api-key", KEY2, name="routes", api_key=KEY1)
        r = s.post("/train", TRAIN_BODY)
        self.assertEqual(r.status, 202, r)
        job = r.json()["id"]
        before = self.auth_failures(s, KEY1)
        n_missing = n_invalid = 0
        for method, path, body, want in route_requests(job):
            what = "%s %s" % (method, path)
            self.assert401(s.request(method, path, body, headers={"Authorization": ""}), what + " without a key")
            n_missing += 1
            self.assert401(s.request(method, path, body, headers={"Authorization": "Bearer nope"}),
                           what + " with a wrong key")
            n_invalid += 1
            self.assert401(s.request(method, path, body, headers={"Authorization": "Bearer " + KEY1[:-1]}),
                           what + " with a key's prefix")
            n_invalid += 1
            self.assert401(s.request(method, path, body, headers={"Authorization": "Bearer " + KEY1 + "x"}),
                           what + " with a key and more")
            n_invalid += 1
            self.assert401(s.request(method, path, body, headers={"Authorization": "Basic " + KEY1}),
                           what + " with another scheme")
            n_missing += 1
            for key in (KEY1, KEY2):
                r = s.request(method, path, body, headers={"Authorization": "Bearer " + key})
                self.assertEqual(r.status, want, "%s with key %s: %r" % (what, key[:2], r))
            # the scheme is case-insensitive, spaces around the key are not part of it
            r = s.request(method, path, body, headers={"Authorization": "bearer   %s  " % KEY2})
            self.assertEqual(r.status, want, "%s, 'bearer' in lower case: %r" % (what, r))
        after = self.auth_failures(s, KEY1)
        self.assertEqual(after["missing"] - before["missing"], n_missing)
        self.assertEqual(after["invalid"] - before["invalid"], n_invalid)

    def test_health_and_readiness_need_no_key(self):
        s = self.start("--api-key", KEY1, name="health")
        for path in ("/healthz", "/readyz"):
            r = s.get(path)
            self.assertEqual(r.status, 200, "%s without a key: %r" % (path, r))
        # only their GET is open
        self.assert401(s.request("POST", "/healthz", {}), "POST /healthz")
        self.assert401(s.get("/metrics"), "/metrics without --metrics-public")

    def test_metrics_public(self):
        s = self.start("--api-key", KEY1, "--metrics-public", name="public")
        r = s.get("/metrics")
        self.assertEqual(r.status, 200, r)
        self.assertIn(b"attnd_auth_failures_total", r.body)
        self.assert401(s.get("/models"), "/models beside a public /metrics")
        self.assert401(s.generate({"prompt": "x"}), "/generate beside a public /metrics")

    def test_no_key_no_auth(self):
        s = self.start(name="open")
        for method, path, body, want in route_requests("tr-0")[:5]:
            if path.startswith("/train/"):
                continue
            r = s.request(method, path, body)
            self.assertEqual(r.status, want, "%s %s without keys configured: %r" % (method, path, r))

    def test_401_before_the_body_is_read(self):
        # a client without a key cannot make attnd take its megabyte
        s = self.start("--api-key", KEY1, name="early")
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        try:
            sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000000\r\n\r\n")
            status, headers, body, took = H.read_http_response(sock, 10)
        finally:
            sock.close()
        self.assertEqual(status, 401, body[:200])
        self.assertLess(took, 5)


class Test02KeysStayPrivate(Base):
    def test_keys_never_leak(self):
        s = self.start("--api-key", KEY1, name="leak", api_key=KEY1)
        s.generate({"prompt": "Hi", "max_tokens": 2})
        s.request("GET", "/models", headers={"Authorization": "Bearer " + KEY2})  # a wrong key
        r = s.post("/train", TRAIN_BODY)
        self.assertEqual(r.status, 202, r)
        job = r.json()["id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = s.get("/train/" + job).json()["status"]
            if st not in ("queued", "running"):
                break
            time.sleep(0.2)
        texts = {"/models": s.get("/models").body, "/train": s.get("/train").body,
                 "/train/{id}": s.get("/train/" + job).body, "/metrics": s.get("/metrics").body}
        s.stop()
        with open(s.stderr_path, "rb") as f:
            texts["stderr"] = f.read()
        texts["stdout"] = "\n".join(s.lines).encode()
        data = work().sub("data-leak")
        for root, _, files in os.walk(data):
            for fn in files:
                with open(os.path.join(root, fn), "rb") as f:
                    texts[os.path.relpath(os.path.join(root, fn), data)] = f.read()
        self.assertIn("train/%s/job.json" % job, texts)
        for where, text in texts.items():
            for key in (KEY1, KEY2):
                self.assertNotIn(key.encode(), text, "an API key appears in %s" % where)
        self.assertIn(b"401", texts["stdout"], "the refused request is logged (without its key)")


class Test03KeyFile(Base):
    def write(self, path, text):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)

    def test_file_and_sighup(self):
        path = work().sub("keys.txt")
        self.write(path, "# the team's keys\n\n  %s  \n" % KEY1)
        s = self.start("--api-key-file", path, name="file")
        ok = {"Authorization": "Bearer " + KEY1}
        self.assertEqual(s.get("/models", headers=ok).status, 200)
        self.assert401(s.get("/models", headers={"Authorization": "Bearer # the team's keys"}), "a comment")
        self.assert401(s.get("/models", headers={"Authorization": "Bearer " + KEY2}), "a key not yet in the file")
        self.write(path, "%s\n" % KEY2)
        s.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and s.get("/models", headers={"Authorization": "Bearer " + KEY2}).status != 200:
            time.sleep(0.1)
        self.assertEqual(s.get("/models", headers={"Authorization": "Bearer " + KEY2}).status, 200,
                         "SIGHUP did not load the new key")
        self.assert401(s.get("/models", headers=ok), "a key removed from the file")
        # a file that cannot be read on SIGHUP: the keys in use stay
        os.unlink(path)
        s.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        self.assertTrue(s.alive(), "attnd died on SIGHUP with its key file gone")
        self.assertEqual(s.get("/models", headers={"Authorization": "Bearer " + KEY2}).status, 200)
        self.assertIn("the API keys in use stay", s.stderr_text())

    def test_empty_file_locks_everything(self):
        path = work().sub("empty-keys.txt")
        self.write(path, "# nobody yet\n")
        s = self.start("--api-key-file", path, name="emptyfile")
        self.assert401(s.get("/models"), "an empty key file")
        self.assertEqual(s.get("/healthz").status, 200)

    def test_unreadable_file_refuses_to_start(self):
        for bad in (work().sub("no-such-keys.txt"), work().mkdir("a-directory")):
            p = subprocess.run([H.OPTS.attnd, "--port", "0", "--api-key-file", bad], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20, env=clean_env())
            self.assertEqual(p.returncode, 2, "attnd --api-key-file %s exited %d" % (bad, p.returncode))
            self.assertIn(b"--api-key-file", p.stderr)
            self.assertNotIn(b"listening", p.stdout)

    def test_environment_twins(self):
        path = work().sub("env-keys.txt")
        self.write(path, KEY2 + "\n")
        s = self.start(env=clean_env(ATTND_API_KEY="a-key,%s" % KEY1, ATTND_API_KEY_FILE=path), name="env")
        for key in ("a-key", KEY1, KEY2):
            self.assertEqual(s.get("/models", headers={"Authorization": "Bearer " + key}).status, 200, key)
        self.assert401(s.get("/models"), "no key, keys from the environment")
        s.stop()
        # a flag replaces the environment's list
        s = self.start("--api-key", "flag-key", env=clean_env(ATTND_API_KEY=KEY1), name="env2")
        self.assertEqual(s.get("/models", headers={"Authorization": "Bearer flag-key"}).status, 200)
        self.assert401(s.get("/models", headers={"Authorization": "Bearer " + KEY1}), "the environment's key")


class Test04Warning(Base):
    def test_warning_without_a_key_off_loopback(self):
        w = work()
        for args, warn in ((["--host", "0.0.0.0"], True), (["--host", "0.0.0.0", "--api-key", KEY1], False),
                           (["--host", "127.0.0.1"], False)):
            s = H.Server(args + ["--port", "0", "--data-dir", w.sub("data-warn"), "--models-dir", w.sub("models")],
                         env=clean_env(), name="warn", workdir=w.mkdir("run-warn"))
            self.servers.append(s)
            s.start()
            s.stop()
            text = s.stderr_text()
            if warn:
                self.assertIn("WARNING", text, "no warning for %s" % args)
            else:
                self.assertNotIn("WARNING", text, "a warning for %s" % args)


class Test99Contract(H.ContractTest):
    pass


if __name__ == "__main__":
    H.run(sys.modules[__name__], description=__doc__.splitlines()[0],
          cleanup=lambda: _WORK is not None and _WORK.cleanup())
