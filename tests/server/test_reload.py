#!/usr/bin/env python3
"""attnd's model lifecycle, on a live server: rescans and deletes.

  reload      POST /models/reload adds a model whose file appeared in the
              trained-models dir and drops one whose file is gone; a file
              replaced by rename is swapped (its new config is served); the
              reply lists each change; the metrics count them
  atomic      a half-written file (not renamed into place) is reported as
              failed once and not loaded, the other models keep serving; a
              temporary name (*.tmp.<pid>) is never loaded; the same file
              once complete is loaded by the next rescan
  poll        --models-poll-seconds 1: a file that appears is served within
              poll + 1 s, one removed is gone as fast; SIGHUP rescans at once
  delete      DELETE /models/{name}: 404 unknown, 409 bundled, 200 trained
              (file removed, gone from /models, /generate 404); while a
              stream on that model runs, the stream completes with every
              token and the model's memory is freed only after it
  churn       reload, replace and delete cycles under concurrent /generate
              load (several threads): every answer is 200 or 404 (model
              gone), never a 5xx or a dropped connection (make tsan runs
              this under ThreadSanitizer)
  full        a registry of 256 models answers POST /train 507; deleting
              one makes room at once (the old dead end needed a restart)
"""

import http.client
import json
import os
import shutil
import signal
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

WORK = None
SERVERS = []
OTHER = dict(H.TINY, dim=32, hidden=64)  # a second shape, to tell a replaced file apart
# long enough that a 1500-token stream is still running when DELETE comes
STREAMY = dict(dim=128, hidden=256, layers=2, heads=4, kv_heads=2, vocab=258, seq_len=2048)


def work():
    global WORK
    if WORK is None:
        WORK = H.Workdir(prefix="attnd-reload-")
        bundled = WORK.mkdir("models")
        H.make_model(os.path.join(bundled, "tiny.safetensors"), H.TINY, 1)
        lib = WORK.mkdir("lib")  # models to copy in, made once
        H.make_model(os.path.join(lib, "a.safetensors"), H.TINY, 2)
        H.make_model(os.path.join(lib, "b.safetensors"), OTHER, 3)
        H.make_model(os.path.join(lib, "streamy.safetensors"), STREAMY, 4)
    return WORK


def server(name, extra=()):
    w = work()
    trained = w.mkdir(name + "-trained")
    s = H.Server(["--host", "127.0.0.1", "--port", "0", "--models-dir", w.sub("models"),
                  "--data-dir", w.mkdir(name + "-data"), "--trained-models-dir", trained,
                  "--threads", "1", "--grace-seconds", "3", "--quiet"] + list(extra),
                 name="attnd-" + name, workdir=w.path)
    SERVERS.append(s)
    s.start()
    s.trained = trained
    return s


def cleanup():
    for s in SERVERS:
        s.stop(timeout=10)
    if WORK is not None:
        WORK.cleanup()


def put(srv, lib_name, as_name):
    """Copies a library model into srv's trained dir the way attnd writes:
    a temporary name, then a rename."""
    dst = os.path.join(srv.trained, as_name + ".safetensors")
    tmp = dst + ".tmp.%d" % os.getpid()
    shutil.copyfile(work().sub("lib", lib_name + ".safetensors"), tmp)
    os.rename(tmp, dst)
    return dst


def stderr_count(srv, text):
    return srv.stderr_text().count(text)


def wait_stderr(srv, text, count, timeout):
    """Waits until text is in attnd's stderr count times; returns the count."""
    deadline = time.monotonic() + timeout
    while stderr_count(srv, text) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return stderr_count(srv, text)


class Base(unittest.TestCase):
    def models(self, srv):
        r = srv.get("/models")
        self.assertEqual(r.status, 200, r.body[:300])
        return {m["name"]: m for m in r.json()["models"]}

    def reload(self, srv):
        r = srv.post("/models/reload")
        self.assertEqual(r.status, 200, r.body[:300])
        self.assertEqual(r.media_type, "application/json")
        errs = H.validation_errors(r.json(), H.response_schema("POST", "/models/reload", 200))
        self.assertEqual(errs, [], r.body[:300])
        return r.json()

    def gen(self, srv, model, n=4, **kw):
        return srv.generate(dict({"model": model, "prompt": "In the beginning", "max_tokens": n,
                                  "temperature": 0}, **kw))

    def changes(self, srv):
        fams, _, _ = srv.metrics()
        return {c: H.sample_value(fams, "attnd_model_changes_total", change=c) or 0
                for c in ("added", "removed", "replaced", "failed")}


class Test01Reload(Base):
    def test_add_replace_drop(self):
        srv = server("reload")
        self.assertEqual(set(self.models(srv)), {"tiny"})
        self.assertEqual(self.models(srv)["tiny"]["origin"], "bundled")
        before = self.changes(srv)
        put(srv, "a", "fresh")
        res = self.reload(srv)
        self.assertEqual((res["added"], res["removed"], res["replaced"], res["failed"]),
                         (["fresh"], [], [], []))
        self.assertEqual(res["models"], 2)
        ms = self.models(srv)
        self.assertEqual(ms["fresh"]["origin"], "trained")
        self.assertEqual(ms["fresh"]["config"]["dim"], H.TINY["dim"])
        self.assertEqual(self.gen(srv, "fresh").status, 200)
        # a rescan with nothing new changes nothing
        res = self.reload(srv)
        self.assertEqual(res["added"] + res["removed"] + res["replaced"], [])
        # replaced in place (rename over it): the new file's model is served
        put(srv, "b", "fresh")
        res = self.reload(srv)
        self.assertEqual(res["replaced"], ["fresh"])
        self.assertEqual(self.models(srv)["fresh"]["config"]["dim"], OTHER["dim"])
        self.assertEqual(self.gen(srv, "fresh").status, 200)
        # gone from the dir: dropped, and /generate says so
        os.unlink(os.path.join(srv.trained, "fresh.safetensors"))
        res = self.reload(srv)
        self.assertEqual(res["removed"], ["fresh"])
        self.assertNotIn("fresh", self.models(srv))
        r = self.gen(srv, "fresh")
        self.assertEqual(r.status, 404, r.body[:200])
        self.assertEqual(r.json()["error"]["code"], "model_not_found")
        self.assertEqual(self.gen(srv, "tiny").status, 200, "the bundled model keeps serving")
        after = self.changes(srv)
        self.assertEqual(after["added"] - before["added"], 1)
        self.assertEqual(after["replaced"] - before["replaced"], 1)
        self.assertEqual(after["removed"] - before["removed"], 1)
        self.assertEqual(wait_stderr(srv, "unloaded model fresh ", 2, 5), 2,
                         "both copies of fresh are freed:\n" + srv.output_tail())

    def test_bundled_dir_is_rescanned_too(self):
        srv = server("bundled-rescan")
        extra = work().sub("models", "extra.safetensors")
        shutil.copyfile(work().sub("lib", "a.safetensors"), extra + ".part")
        os.rename(extra + ".part", extra)
        try:
            res = self.reload(srv)
            self.assertEqual(res["added"], ["extra"])
            self.assertEqual(self.models(srv)["extra"]["origin"], "bundled")
            r = srv.request("DELETE", "/models/extra")
            self.assertEqual(r.status, 409, r.body[:200])
        finally:
            os.unlink(extra)
        self.assertEqual(self.reload(srv)["removed"], ["extra"])

    def test_routes_methods(self):
        srv = server("methods")
        self.assertEqual(srv.get("/models/reload").status, 405)
        self.assertEqual(srv.get("/models/tiny").status, 405)
        r = srv.request("DELETE", "/models/" + "x" * 300)
        self.assertEqual(r.status, 404)


class Test02Atomic(Base):
    def test_half_written_file_is_not_loaded(self):
        srv = server("atomic")
        full = open(work().sub("lib", "a.safetensors"), "rb").read()
        half = os.path.join(srv.trained, "half.safetensors")
        with open(half, "wb") as f:  # written in place, cut short: no rename
            f.write(full[:len(full) // 2])
        with open(os.path.join(srv.trained, "inflight.safetensors.tmp.4242"), "wb") as f:
            f.write(full)  # a temporary name: someone's write in progress
        res = self.reload(srv)
        self.assertEqual(res["added"], [])
        self.assertEqual([os.path.basename(f["file"]) for f in res["failed"]], ["half.safetensors"])
        self.assertNotIn("half", self.models(srv))
        self.assertNotIn("inflight", self.models(srv))
        self.assertEqual(self.gen(srv, "tiny").status, 200, "the others keep serving")
        # reported once, not at every rescan
        self.assertEqual(self.reload(srv)["failed"], [])
        self.assertEqual(stderr_count(srv, "half.safetensors"), 1, srv.output_tail())
        # the write finishes (the file changes): the next rescan loads it
        with open(half, "wb") as f:
            f.write(full)
        res = self.reload(srv)
        self.assertEqual(res["added"], ["half"])
        self.assertTrue(os.path.exists(os.path.join(srv.trained, "inflight.safetensors.tmp.4242")),
                        "a young temporary file is nobody's to delete")


class Test03Poll(Base):
    def wait_listed(self, srv, name, present, limit):
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            if (name in self.models(srv)) == present:
                return time.monotonic() - t0
            time.sleep(0.05)
        self.fail("%s still %s after %.1f s" % (name, "absent" if present else "listed", limit))

    def test_poll_and_sighup(self):
        srv = server("poll", ["--models-poll-seconds", "1"])
        t_add = time.monotonic()
        put(srv, "a", "polled")
        took = self.wait_listed(srv, "polled", True, 2.5)
        self.assertEqual(self.gen(srv, "polled").status, 200)
        os.unlink(os.path.join(srv.trained, "polled.safetensors"))
        took_rm = self.wait_listed(srv, "polled", False, 2.5)
        print("\n    poll 1 s: served %.2f s after the rename, dropped %.2f s after the unlink"
              % (took, took_rm))
        self.assertLess(time.monotonic() - t_add, 6)
        srv2 = server("sighup")
        put(srv2, "a", "hup")
        srv2.send_signal(signal.SIGHUP)
        self.wait_listed(srv2, "hup", True, 2.0)


class Test04Delete(Base):
    def test_codes(self):
        srv = server("delete")
        r = srv.request("DELETE", "/models/nope")
        self.assertEqual(r.status, 404, r.body[:200])
        self.assertEqual(r.json()["error"]["code"], "model_not_found")
        r = srv.request("DELETE", "/models/tiny")
        self.assertEqual(r.status, 409, r.body[:200])
        self.assertEqual(r.json()["error"]["code"], "conflict")
        self.assertEqual(self.gen(srv, "tiny").status, 200)
        path = put(srv, "a", "doomed")
        self.reload(srv)
        r = srv.request("DELETE", "/models/doomed")
        self.assertEqual(r.status, 200, r.body[:200])
        self.assertEqual(r.json(), {"deleted": "doomed", "models": 1})
        self.assertFalse(os.path.exists(path), "the file is removed")
        self.assertNotIn("doomed", self.models(srv))
        self.assertEqual(self.gen(srv, "doomed").status, 404)
        self.assertEqual(srv.request("DELETE", "/models/doomed").status, 404)

    def test_delete_while_streaming(self):
        srv = server("delete-stream")
        put(srv, "streamy", "streamy")
        self.reload(srv)
        n = 1500
        body = json.dumps({"model": "streamy", "prompt": "Once", "max_tokens": n, "temperature": 0,
                           "ignore_eos": True, "stream": True})
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
        c.request("POST", "/generate", body, {"Content-Type": "application/json"})
        resp = c.getresponse()
        self.assertEqual(resp.status, 200)
        first = resp.readline()
        self.assertTrue(first.startswith(b"data: "), first)
        self.assertEqual(resp.readline(), b"\n")
        r = srv.request("DELETE", "/models/streamy")
        self.assertEqual(r.status, 200, r.body[:200])
        self.assertNotIn("streamy", self.models(srv))
        self.assertEqual(self.gen(srv, "streamy").status, 404, "no new request gets it")
        freed_early = stderr_count(srv, "unloaded model streamy")
        rest = resp.read()
        c.close()
        self.assertTrue(rest.count(b"data: ") > 100, "the stream was still running at the DELETE")
        events = [first.decode()[len("data: "):].strip()] + H.parse_sse(rest)
        final = json.loads(events[-1]) if events[-1] != "[DONE]" else json.loads(events[-2])
        self.assertEqual(final["finish_reason"], "length", final)
        self.assertEqual(final["usage"]["completion_tokens"], n, "the stream completes")
        self.assertEqual(freed_early, 0, "the model was freed under a running stream")
        self.assertEqual(wait_stderr(srv, "unloaded model streamy", 1, 5), 1,
                         "freed once the stream ended:\n" + srv.output_tail())
        self.assertEqual(self.gen(srv, "tiny").status, 200)


class Test05Churn(Base):
    def test_reload_and_delete_under_load(self):
        srv = server("churn")
        put(srv, "a", "churn")
        self.reload(srv)
        stop = threading.Event()
        seen, bad = {}, []
        lock = threading.Lock()

        def load(i):
            while not stop.is_set():
                model = "churn" if i % 2 else "tiny"
                try:
                    r = self.gen(srv, model, n=6)
                    code = r.status
                except Exception as e:  # noqa: BLE001 - a dropped connection is the failure
                    code = repr(e)
                with lock:
                    seen[code] = seen.get(code, 0) + 1
                    if code not in (200, 404) and len(bad) < 5:
                        bad.append((model, code))

        threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        t_end = time.monotonic() + 6
        cycles = 0
        try:
            while time.monotonic() < t_end:
                put(srv, "b" if cycles % 2 else "a", "churn")  # replace
                self.reload(srv)
                r = srv.request("DELETE", "/models/churn")
                self.assertIn(r.status, (200, 404), r.body[:200])
                put(srv, "a", "churn")
                self.reload(srv)
                cycles += 1
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        print("\n    %d reload/replace/delete cycles under load: %s" % (cycles, seen))
        self.assertEqual(bad, [])
        self.assertGreater(seen.get(200, 0), 20)
        self.assertGreater(cycles, 3)
        self.assertTrue(srv.alive())
        self.assertEqual(self.gen(srv, "tiny").status, 200)


class Test06Full(Base):
    def test_delete_makes_room_for_training(self):
        w = work()
        name = "full"
        trained = w.mkdir(name + "-trained")
        src = open(w.sub("lib", "a.safetensors"), "rb").read()
        for i in range(255):  # + the bundled tiny = 256, the registry's size
            with open(os.path.join(trained, "m%03d.safetensors" % i), "wb") as f:
                f.write(src)
        s = H.Server(["--host", "127.0.0.1", "--port", "0", "--models-dir", w.sub("models"),
                      "--data-dir", w.mkdir(name + "-data"), "--trained-models-dir", trained,
                      "--threads", "1", "--max-batch", "1", "--quiet"],
                     name="attnd-" + name, workdir=w.path)
        SERVERS.append(s)
        s.start(timeout=120)
        self.assertEqual(len(self.models(s)), 256)
        job = {"task": "recall", "model": {"dim": 32, "n_layers": 1, "n_heads": 2}, "steps": 5,
               "batch_size": 4, "seq_len": 32, "name": "newcomer",
               "recall": {"n_pairs": 4, "n_keys": 16, "n_values": 16}}
        r = s.post("/train", job)
        self.assertEqual(r.status, 507, r.body[:300])
        self.assertEqual(s.request("DELETE", "/models/m000").status, 200)
        r = s.post("/train", job)
        self.assertEqual(r.status, 202, r.body[:300])
        s.stop(timeout=10)


class Test99Contract(H.ContractTest):
    pass


if __name__ == "__main__":
    H.run(sys.modules[__name__], description=__doc__.splitlines()[0], cleanup=cleanup)
