#!/usr/bin/python3
"""test_datadir.py — the data dir survives anything, and training has limits:
hostile files at start-up, a full and a read-only disk at run time, SIGTERM
in the middle of a checkpoint or a model save, the training queue bound and
retention, against the real attnd.

    /usr/bin/python3 tests/server/test_datadir.py --attnd build/attnd --attn build/attn [-k NAME] [-v]

  limits      --train-queue-depth (503 overloaded + Retry-After), --train-keep
              (oldest finished jobs removed with their directories, at run time
              and at start-up; their models stay served), DELETE of a finished
              job (204, then 404; its directory goes, its model stays);
  startup     one data dir holding every hostile case at once (garbage,
              truncated, deeply nested and invalid job.json; a job dir without
              one; job.json as a directory, a FIFO, a symlink out of the dir,
              a dangling symlink; a job dir that is a symlink; bad names;
              leftover temporaries; truncated, garbage, FIFO, directory,
              symlinked and oddly named model files in <data-dir>/models),
              and a read-only models dir with the same: attnd starts, /readyz
              is 200, the good job and model are served, every bad entry is
              logged once with its path and quarantined (data dir) or skipped
              and left in place (models dir); a second start finds nothing;
  checkpoint  a job whose `state` is a FIFO, then truncated, resumes from step
              0 each time with a note, the state quarantined;
  disk        a tmpfs data dir (mount, as root): filled up while a job trains
              (checkpoints fail and are retried, the last good one and
              job.json intact, no temporary files, POST /train 507,
              attnd_storage_errors_total counts; the job succeeds once there
              is room), a model save on a full disk fails the job with the
              reason, which reaches its record once there is room again; then
              remounted read-only (POST /train 500 with the reason,
              checkpoints retried, the job finishes once it is writable).
              Skipped with a message where mount is refused;
  sigterm     SIGTERM at varied moments around checkpoints every step and the
              end of a job (the model save): exit 0 within the grace period,
              and a restart finds nothing corrupt and nothing to quarantine;
              the job is resumed or finished, its model complete or absent.
"""

import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

ITEM = "/train/{id}"
JOB_TIMEOUT = 120.0
SMALL = {"task": "recall", "model": {"dim": 32, "n_layers": 1, "n_heads": 2}, "steps": 40,
         "batch_size": 8, "seq_len": 32, "eval_sequences": 32,
         "recall": {"n_pairs": 4, "n_keys": 16, "n_values": 16}}
LONG = {"task": "recall", "model": {"dim": 32, "n_layers": 1, "n_heads": 2}, "steps": 1000000,
        "batch_size": 8, "seq_len": 32, "checkpoint_every": 0,
        "recall": {"n_pairs": 4, "n_keys": 16, "n_values": 16}}
# a state file of about 1.6 MB (weights and two moments), a model of 0.5 MB
MID = {"task": "recall", "model": {"dim": 64, "n_layers": 2, "n_heads": 2}, "steps": 400,
       "batch_size": 8, "seq_len": 32, "checkpoint_every": 10, "eval_every": 0, "eval_sequences": 32,
       "recall": {"n_pairs": 4, "n_keys": 16, "n_values": 16}}

WORK = None
SERVERS = []


def work():
    global WORK
    if WORK is None:
        WORK = H.Workdir(prefix="attnd-datadir-")
        H.make_model(os.path.join(WORK.mkdir("models"), "tiny.safetensors"), H.TINY, 1)
    return WORK


def server(name, data, extra=(), models=None, wait_ready=True):
    w = work()
    s = H.Server(["--host", "127.0.0.1", "--port", "0", "--models-dir", models or w.sub("models"),
                  "--data-dir", data, "--threads", "1", "--grace-seconds", "3",
                  "--train-workers", "1", "--train-threads", "1"] + list(extra),
                 name="attnd-" + name, workdir=w.path, wait_ready=wait_ready)
    SERVERS.append(s)
    return s.start()


def cleanup():
    for s in SERVERS:
        s.stop(timeout=10)
    for m in list(MOUNTS):
        umount(m)
    if WORK is not None:
        WORK.cleanup()


_n = [0]


def fresh(prefix="m"):
    _n[0] += 1
    return "%s-%d-%d" % (prefix, os.getpid(), _n[0])


def body(base, **kw):
    b = json.loads(json.dumps(base))
    b["name"] = fresh()
    b.update(kw)
    return b


def temp_files(root):
    out = []
    for d, dirs, files in os.walk(root):
        for f in files + dirs:
            if ".tmp" in f:
                out.append(os.path.join(d, f))
    return out


def metric(srv, family, **labels):
    fams, _, _ = srv.metrics()
    try:
        return H.sample_value(fams, family, **labels) or 0
    except (KeyError, AssertionError):
        return 0


MOUNTS = []


def mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", path],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise unittest.SkipTest("cannot mount a tmpfs (%s): %s" % (
            "not root" if os.geteuid() else "mount refused", r.stderr.decode(errors="replace").strip()))
    MOUNTS.append(path)


def remount(path, mode):
    r = subprocess.run(["mount", "-o", "remount,%s" % mode, path], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise AssertionError("remount %s %s: %s" % (mode, path, r.stderr.decode(errors="replace")))


def umount(path):
    if path in MOUNTS:
        subprocess.run(["umount", "-l", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        MOUNTS.remove(path)


def fill(path):
    """Writes into path until the file system is full; returns the file."""
    f = os.path.join(path, "filler")
    with open(f, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    try:  # the last bytes too
        with open(f, "ab") as out:
            while True:
                out.write(b"\0" * 512)
                out.flush()
    except OSError:
        pass
    return f


class Base(H.ServerTest):
    def submit(self, srv, b):
        r = srv.post("/train", b)
        obj = self.assertAnswer(r, 202, "POST", "/train", strict=True)
        return obj["id"]

    def job(self, srv, jid):
        return self.assertAnswer(srv.get("/train/" + jid), 200, "GET", ITEM, strict=True)

    def wait(self, srv, jid, pred, what, timeout=JOB_TIMEOUT, every=0.05):
        deadline = time.monotonic() + timeout
        while True:
            j = self.job(srv, jid)
            if pred(j):
                return j
            if time.monotonic() > deadline:
                self.fail("job %s: not %s within %.0f s: %s" % (jid, what, timeout, json.dumps(j)[:500]))
            time.sleep(every)

    def finished(self, srv, jid, status="succeeded"):
        j = self.wait(srv, jid, lambda j: j["status"] in ("succeeded", "failed", "cancelled"), "finished")
        self.assertEqual(j["status"], status, json.dumps(j)[:600])
        return j

    def models(self, srv):
        return {m["name"] for m in self.assertAnswer(srv.get("/models"), 200, "GET", "/models")["models"]}

    def listed(self, srv):
        return [x["id"] for x in self.assertAnswer(srv.get("/train"), 200, "GET", "/train")["jobs"]]

    def record(self, data, jid):
        with open(os.path.join(data, "train", jid, "job.json")) as f:
            return json.load(f)

    def quarantined(self, data):
        q = os.path.join(data, "quarantine")
        return sorted(os.listdir(q)) if os.path.isdir(q) else []


# ==========================================================================


class Test01Limits(Base):
    def test_queue_depth(self):
        data = work().mkdir("data-queue")
        srv = server("queue", data, ["--train-queue-depth", "2"])
        a = self.submit(srv, body(LONG))
        self.wait(srv, a, lambda j: j["status"] == "running", "running")
        b = self.submit(srv, body(LONG))
        c = self.submit(srv, body(LONG))
        r = srv.post("/train", body(SMALL))
        err = self.assertError(r, 503, "overloaded", "POST", "/train")
        self.assertIn("2 jobs waiting", err["message"])
        self.assertIsNotNone(r.header("Retry-After"), "503 overloaded comes with Retry-After")
        self.assertEqual(len(self.listed(srv)), 3, "the refused job is not listed")
        srv.request("DELETE", "/train/" + c)  # a place in the queue again
        d = self.submit(srv, body(LONG))
        for x in (a, b, d):
            self.assertEqual(srv.request("DELETE", "/train/" + x).status, 204)
        srv.stop()

    def test_retention_and_delete_of_a_finished_job(self):
        data = work().mkdir("data-keep")
        srv = server("keep", data, ["--train-keep", "2"])
        ids, names = [], []
        for _ in range(4):
            b = body(SMALL)
            names.append(b["name"])
            ids.append(self.submit(srv, b))
            self.finished(srv, ids[-1])
        # the worker removes the oldest as each one finishes
        deadline = time.monotonic() + 10
        while len(self.listed(srv)) > 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.listed(srv), [ids[3], ids[2]], "--train-keep 2 keeps the two newest")
        for jid in ids[:2]:
            self.assertError(srv.get("/train/" + jid), 404, "not_found", "GET", ITEM)
            self.assertFalse(os.path.exists(os.path.join(data, "train", jid)), "directory removed")
        self.assertTrue(set(names) <= self.models(srv), "models of removed jobs stay served")
        self.assertIn("removed (succeeded; more than --train-keep 2", srv.stderr_text())
        # DELETE of a finished job: 204, then 404, directory gone, model served
        r = srv.request("DELETE", "/train/" + ids[2])
        self.assertEqual(r.status, 204, r)
        self.assertEqual(r.body, b"")
        self.assertError(srv.get("/train/" + ids[2]), 404, "not_found", "GET", ITEM)
        self.assertError(srv.request("DELETE", "/train/" + ids[2]), 404, "not_found", "DELETE", ITEM)
        self.assertFalse(os.path.exists(os.path.join(data, "train", ids[2])))
        self.assertIn(names[2], self.models(srv))
        # a cancelled job is finished too: cancel, then remove
        e = self.submit(srv, body(LONG))
        self.wait(srv, e, lambda j: j["status"] == "running" and j["step"] > 0, "running")
        self.assertEqual(srv.request("DELETE", "/train/" + e).status, 204)
        self.assertEqual(self.job(srv, e)["status"], "cancelled")
        self.assertEqual(srv.request("DELETE", "/train/" + e).status, 204)
        self.assertError(srv.get("/train/" + e), 404, "not_found", "GET", ITEM)
        deadline = time.monotonic() + 10  # once the worker lets go of it
        while os.path.exists(os.path.join(data, "train", e)) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertFalse(os.path.exists(os.path.join(data, "train", e)))
        srv.stop()
        # at start-up, beyond --train-keep 0: every finished record goes
        srv = server("keep2", data, ["--train-keep", "0"])
        self.assertEqual(self.listed(srv), [])
        self.assertEqual(os.listdir(os.path.join(data, "train")), [])
        self.assertTrue(set(names) <= self.models(srv))
        srv.stop()


# ==========================================================================


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


class Test02Startup(Base):
    def test_every_hostile_entry_at_once(self):
        w = work()
        data = w.mkdir("data-hostile")
        srv = server("hostile-1", data)
        good_name = fresh("good")
        good = self.submit(srv, dict(body(SMALL), name=good_name))
        self.finished(srv, good)
        srv.stop()
        rec = self.record(data, good)
        train = os.path.join(data, "train")
        outside = w.mkdir("outside")
        write(os.path.join(outside, "secret"), "not yours")
        shutil.copy(w.sub("models", "tiny.safetensors"), os.path.join(outside, "evil.safetensors"))
        tiny = open(w.sub("models", "tiny.safetensors"), "rb").read()

        def rec_as(jid, **kw):
            r = dict(rec, id=jid)
            r.update(kw)
            return json.dumps(r)

        bad = {}  # path -> what the log must say
        write(os.path.join(train, "tr-1", "job.json"), "{garbage")
        bad["tr-1"] = "not JSON"
        write(os.path.join(train, "tr-2", "job.json"), rec_as("tr-2")[:200])
        bad["tr-2"] = "not JSON"
        os.makedirs(os.path.join(train, "tr-3"))
        write(os.path.join(train, "tr-3", "text"), "orphan")
        bad["tr-3"] = "no job.json"
        os.makedirs(os.path.join(train, "tr-4", "job.json"))
        bad["tr-4"] = "a directory"
        os.makedirs(os.path.join(train, "tr-5"))
        os.mkfifo(os.path.join(train, "tr-5", "job.json"))
        bad["tr-5"] = "a FIFO"
        os.makedirs(os.path.join(train, "tr-6"))
        os.symlink(os.path.join(outside, "secret"), os.path.join(train, "tr-6", "job.json"))
        bad["tr-6"] = "a symbolic link"
        os.makedirs(os.path.join(train, "tr-7"))
        os.symlink("/nonexistent/nowhere", os.path.join(train, "tr-7", "job.json"))
        bad["tr-7"] = "a symbolic link"
        os.makedirs(os.path.join(outside, "tr-8"))
        write(os.path.join(outside, "tr-8", "job.json"), rec_as("tr-8"))
        os.symlink(os.path.join(outside, "tr-8"), os.path.join(train, "tr-8"))
        bad["tr-8"] = "a symbolic link, not a job directory"
        write(os.path.join(train, "tr-9", "job.json"), "[" * 100000)
        bad["tr-9"] = "nest"
        write(os.path.join(train, "tr-10", "job.json"), rec_as("tr-10", request=dict(rec["request"], steps=-1)))
        bad["tr-10"] = "request:"
        write(os.path.join(train, "tr-11", "job.json"), rec_as("tr-99"))
        bad["tr-11"] = "not a job record"
        write(os.path.join(train, "tr-12", "job.json"), rec_as("tr-12", step=1e300, loss=1e300,
                                                               loss_history=[[1, 1e300]], threads=-5))
        ok_extra = "tr-12"  # odd numbers are clamped, not fatal
        write(os.path.join(train, "not-a-job"), "x")
        bad["not-a-job"] = "not a job id"
        os.makedirs(os.path.join(train, "tr-\x01\x1b[2J"))
        bad["tr-\x01\x1b[2J"] = "not a job id"
        write(os.path.join(train, good, "job.json.tmp"), "half a record")
        write(os.path.join(train, good, "state.tmp.4242"), "half a state")
        models = os.path.join(data, "models")
        mbad = {}
        write(os.path.join(models, "trunc.safetensors"), tiny[:len(tiny) // 2])
        mbad["trunc.safetensors"] = "truncated"
        write(os.path.join(models, "garbage.safetensors"), os.urandom(4096))
        mbad["garbage.safetensors"] = ""
        os.makedirs(os.path.join(models, "dir.safetensors"))
        mbad["dir.safetensors"] = "a directory"
        os.mkfifo(os.path.join(models, "fifo.safetensors"))
        mbad["fifo.safetensors"] = "a FIFO"
        os.symlink(os.path.join(outside, "evil.safetensors"), os.path.join(models, "evil.safetensors"))
        mbad["evil.safetensors"] = "a symbolic link"
        write(os.path.join(models, "bell\x07.safetensors"), tiny)
        mbad["bell\x07.safetensors"] = "control characters"
        write(os.path.join(models, "cut.safetensors.tmp.777"), tiny[:100])
        write(os.path.join(models, "cut2.safetensors.tmp"), tiny[:100])
        old = time.time() - 3600  # writes that will never finish; a young one is kept
        for t in ("cut.safetensors.tmp.777", "cut2.safetensors.tmp"):
            os.utime(os.path.join(models, t), (old, old))

        srv = server("hostile-2", data)  # waits for /readyz 200
        err = srv.stderr_text()
        self.assertEqual(srv.get("/readyz").status, 200)
        self.assertEqual(sorted(self.listed(srv)), sorted([good, ok_extra]))
        self.assertEqual(self.job(srv, good)["status"], "succeeded")
        odd = self.job(srv, ok_extra)
        self.assertEqual(odd["step"], 0)
        self.assertIsNone(odd["loss"])
        self.assertEqual(odd["threads"], 1)
        self.assertEqual(odd["loss_history"], [])
        served = self.models(srv)
        self.assertIn(good_name, served)
        self.assertIn("tiny", served)
        for n in ("trunc", "garbage", "dir", "fifo", "evil", "bell\x07"):
            self.assertNotIn(n, served)
        gen = srv.generate({"prompt": "hi", "max_tokens": 2, "temperature": 0})
        self.assertEqual(gen.status, 200, gen)
        q = self.quarantined(data)
        for name, why in list(bad.items()):
            path = os.path.join(train, name)
            shown = path.replace("\x01", "\\x01").replace("\x1b", "\\x1b")
            lines = [ln for ln in err.splitlines() if ln.startswith("attnd: data: %s: " % shown)]
            self.assertEqual(len(lines), 1, "%r logged once, with its path: %s\n%s" % (name, lines, err[-3000:]))
            self.assertIn(why, lines[0])
            self.assertIn("quarantined as", lines[0])
            self.assertFalse(os.path.lexists(path), "%r moved out of the train dir" % name)
        for name, why in mbad.items():
            path = os.path.join(models, name)
            shown = path.replace("\x07", "\\x07")
            lines = [ln for ln in err.splitlines() if ln.startswith("attnd: data: %s: " % shown)]
            self.assertEqual(len(lines), 1, "%r logged once: %s\n%s" % (name, lines, err[-3000:]))
            self.assertIn(why, lines[0])
            self.assertFalse(os.path.lexists(path))
        self.assertEqual(len(q), len(bad) + len(mbad), q)
        self.assertEqual(metric(srv, "attnd_data_quarantined_total"), len(bad) + len(mbad))
        self.assertEqual(temp_files(data), [], "leftover temporaries are removed")
        # what the links pointed at is untouched
        self.assertEqual(open(os.path.join(outside, "secret")).read(), "not yours")
        self.assertTrue(os.path.isfile(os.path.join(outside, "evil.safetensors")))
        self.assertTrue(os.path.isfile(os.path.join(outside, "tr-8", "job.json")))
        # a FIFO in the quarantine is still a FIFO (moved, not opened)
        fifo = [x for x in q if x.endswith("-fifo.safetensors")]
        self.assertEqual(len(fifo), 1)
        self.assertTrue(stat.S_ISFIFO(os.lstat(os.path.join(data, "quarantine", fifo[0])).st_mode))
        srv.stop()
        # and a second start has nothing left to say
        srv = server("hostile-3", data)
        self.assertNotIn("attnd: data:", srv.stderr_text())
        self.assertEqual(sorted(self.listed(srv)), sorted([good, ok_extra]))
        self.assertEqual(self.quarantined(data), q)
        srv.stop()

    def test_read_only_models_dir_is_skipped_never_moved(self):
        w = work()
        mdir = w.mkdir("models-hostile")
        tiny = open(w.sub("models", "tiny.safetensors"), "rb").read()
        write(os.path.join(mdir, "tiny.safetensors"), tiny)
        write(os.path.join(mdir, "trunc.safetensors"), tiny[:1000])
        write(os.path.join(mdir, "garbage.bin"), os.urandom(3000))
        os.mkfifo(os.path.join(mdir, "fifo.safetensors"))
        os.makedirs(os.path.join(mdir, "dir.safetensors"))
        os.symlink("/nonexistent/x.safetensors", os.path.join(mdir, "dangling.safetensors"))
        write(os.path.join(mdir, "ctl\x1b.safetensors"), tiny)
        before = sorted(os.listdir(mdir))
        data = w.mkdir("data-ro-models")
        srv = server("ro-models", data, models=mdir)
        err = srv.stderr_text()
        self.assertEqual(self.models(srv), {"tiny"})
        for n in ("trunc.safetensors", "garbage.bin", "fifo.safetensors", "dir.safetensors",
                  "dangling.safetensors", "ctl\\x1b.safetensors"):
            lines = [ln for ln in err.splitlines() if ("model %s/%s:" % (mdir, n)) in ln]
            self.assertEqual(len(lines), 1, "%s: %s\n%s" % (n, lines, err[-2000:]))
            self.assertIn("skipped", lines[0])
        self.assertEqual(sorted(os.listdir(mdir)), before, "the models dir is never changed")
        self.assertEqual(self.quarantined(data), [])
        srv.stop()


# ==========================================================================


class Test03Checkpoint(Base):
    def kill_after_checkpoint(self, srv, jid, state):
        """kill -9 once this run wrote a state file (the previous one was
        quarantined, so one that exists is this run's)."""
        deadline = time.monotonic() + JOB_TIMEOUT
        while not os.path.isfile(state):
            self.assertLess(time.monotonic(), deadline, "no checkpoint written")
            self.assertIn(self.job(srv, jid)["status"], ("queued", "running"))
            time.sleep(0.01)
        srv.kill()

    def restarted(self, srv, jid, word):
        j = self.wait(srv, jid, lambda j: j["status"] == "running" and word in (j["note"] or ""),
                      "running with a note saying %r" % word)
        self.assertIn("restarted from step 0", j["note"])
        return j

    def test_unreadable_and_corrupt_state_restart_from_zero(self):
        data = work().mkdir("data-ckpt")
        srv = server("ckpt-1", data)
        b = body(MID, steps=3000, checkpoint_every=20)
        jid = self.submit(srv, b)
        state = os.path.join(data, "train", jid, "state")
        self.kill_after_checkpoint(srv, jid, state)
        os.unlink(state)
        os.mkfifo(state)  # an "unreadable" state: a blocking open would hang the worker
        srv = server("ckpt-2", data)
        self.restarted(srv, jid, "a FIFO")
        err = srv.stderr_text()
        self.assertIn("attnd: data: %s: cannot resume from it" % state, err)
        self.assertIn("starts over from step 0", err)
        self.assertNotIn("resuming at step", err)
        self.assertEqual(len([x for x in self.quarantined(data) if x.endswith("-state")]), 1)
        self.kill_after_checkpoint(srv, jid, state)
        with open(state, "r+b") as f:  # truncated
            f.truncate(os.path.getsize(state) // 3)
        srv = server("ckpt-3", data)
        j = self.restarted(srv, jid, "truncated")
        self.assertLess(j["step"], 200, "it started over")
        self.assertEqual(len([x for x in self.quarantined(data) if x.endswith("-state")]), 2)
        # bit rot: same size, one byte flipped (the checksum catches it)
        self.kill_after_checkpoint(srv, jid, state)
        with open(state, "r+b") as f:
            f.seek(os.path.getsize(state) // 2)
            c = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([c[0] ^ 0x40]))
        srv = server("ckpt-4", data)
        self.restarted(srv, jid, "checksum")
        self.assertEqual(len([x for x in self.quarantined(data) if x.endswith("-state")]), 3)
        self.assertEqual(srv.request("DELETE", "/train/" + jid).status, 204)
        srv.stop()


# ==========================================================================


class Test04Disk(Base):
    def tearDown(self):
        for m in list(MOUNTS):
            umount(m)
        super().tearDown()

    def test_full_disk(self):
        data = work().sub("data-full")
        mount_tmpfs(data, "8m")
        srv = server("full", data)
        jid = self.submit(srv, body(MID, steps=100000, checkpoint_every=5))
        j0 = self.wait(srv, jid, lambda j: j["checkpoint_step"] >= 10, "past two checkpoints", every=0.01)
        filler = fill(data)
        time.sleep(0.3)  # a checkpoint that had started may still land
        state = os.path.join(data, "train", jid, "state")
        good = open(state, "rb").read()
        base_ckpt = metric(srv, "attnd_storage_errors_total", op="checkpoint")
        step0 = self.job(srv, jid)["step"]
        j = self.wait(srv, jid, lambda j: j["step"] > step0 + 30 and j["note"], "past failed checkpoints")
        self.assertEqual(j["status"], "running", "a failed checkpoint does not fail the job")
        self.assertIn("failed", j["note"])
        self.assertIn("No space left", j["note"])
        self.assertGreater(metric(srv, "attnd_storage_errors_total", op="checkpoint"), base_ckpt)
        self.assertEqual(open(state, "rb").read(), good, "the last good checkpoint is intact")
        rec = self.record(data, jid)  # job.json parses: an old one, whole
        self.assertEqual(rec["id"], jid)
        self.assertEqual(temp_files(data), [], "no temporary file is left behind")
        r = srv.post("/train", body(SMALL))
        e = self.assertError(r, 507, "insufficient_storage", "POST", "/train")
        self.assertIn("No space left", e["message"])
        self.assertEqual(srv.get("/healthz").status, 200)
        self.assertEqual(srv.generate({"prompt": "a", "max_tokens": 2, "temperature": 0}).status, 200)
        # room again: checkpoints resume, the note goes
        os.unlink(filler)
        j = self.wait(srv, jid, lambda j: j["checkpoint_step"] > j0["checkpoint_step"] + 20 and not j["note"],
                      "checkpointing again")
        self.assertIn("checkpoint at step", srv.stderr_text())
        self.assertEqual(srv.request("DELETE", "/train/" + jid).status, 204)
        # a model save on a full disk fails the job with the reason
        jid2 = self.submit(srv, body(MID, steps=150, checkpoint_every=0))
        self.wait(srv, jid2, lambda j: j["status"] == "running" and j["step"] > 0, "running")
        filler = fill(data)
        j = self.finished(srv, jid2, "failed")
        self.assertIn("cannot save", j["error"])
        self.assertIn("No space left", j["error"])
        self.assertGreaterEqual(metric(srv, "attnd_storage_errors_total", op="model"), 1)
        self.assertNotIn(j["name"], self.models(srv))
        self.assertFalse(os.path.exists(os.path.join(data, "models", j["name"] + ".safetensors")))
        self.assertEqual(temp_files(data), [])
        self.assertGreaterEqual(metric(srv, "attnd_storage_errors_total", op="record"), 1)
        os.unlink(filler)  # the failed record reaches the disk once there is room
        deadline = time.monotonic() + 15
        while self.record(data, jid2)["status"] != "failed":
            self.assertLess(time.monotonic(), deadline, "the record was not written again")
            time.sleep(0.1)
        rc, secs, killed = srv.stop()
        self.assertEqual(rc, 0)
        umount(data)

    def test_read_only(self):
        data = work().sub("data-ro")
        mount_tmpfs(data, "32m")
        srv = server("ro", data)
        jid = self.submit(srv, body(MID, steps=100000, checkpoint_every=5))
        self.wait(srv, jid, lambda j: j["checkpoint_step"] >= 10, "past two checkpoints", every=0.01)
        remount(data, "ro")
        time.sleep(0.3)
        state = os.path.join(data, "train", jid, "state")
        good = open(state, "rb").read()
        step0 = self.job(srv, jid)["step"]
        j = self.wait(srv, jid, lambda j: j["step"] > step0 + 30 and j["note"], "past failed checkpoints")
        self.assertEqual(j["status"], "running")
        self.assertIn("Read-only", j["note"])
        r = srv.post("/train", body(SMALL))
        e = self.assertError(r, 500, "internal", "POST", "/train")
        self.assertIn("Read-only file system", e["message"])
        self.assertEqual(open(state, "rb").read(), good)
        self.assertGreater(metric(srv, "attnd_storage_errors_total", op="checkpoint"), 0)
        self.assertGreater(metric(srv, "attnd_storage_errors_total", op="record"), 0)
        self.assertEqual(srv.get("/readyz").status, 200)
        self.assertEqual(len(self.listed(srv)), 1)
        # a restart on the read-only dir: starts, lists, serves
        rc, _, killed = srv.stop()
        self.assertEqual(rc, 0)
        srv = server("ro-2", data)
        self.assertEqual(self.listed(srv), [jid])
        self.assertEqual(srv.generate({"prompt": "a", "max_tokens": 2, "temperature": 0}).status, 200)
        remount(data, "rw")
        j = self.wait(srv, jid, lambda j: j["checkpoint_step"] > 20 and not j["note"], "checkpointing again")
        self.assertEqual(srv.request("DELETE", "/train/" + jid).status, 204)
        srv.stop()
        umount(data)


# ==========================================================================


class Test05Sigterm(Base):
    def check_restart(self, data, jid, name):
        srv = server("sig-check", data)
        err = srv.stderr_text()
        self.assertNotIn("attnd: data:", err, "a restart found something to quarantine")
        self.assertEqual(self.quarantined(data), [])
        j = self.job(srv, jid)
        self.assertIn(j["status"], ("queued", "running", "succeeded"), j)
        model = os.path.join(data, "models", name + ".safetensors")
        if j["status"] == "succeeded":
            self.assertIn(name, self.models(srv), "a succeeded job's model is whole and served")
        else:
            self.assertFalse(os.path.exists(model), "a model without a finished job")
            j = self.finished(srv, jid)  # and it resumes to the end
            self.assertIn(name, self.models(srv))
        self.assertEqual(temp_files(data), [])
        srv.stop()
        return j

    # a model of 17 MB: its save (write, fsync, rename, load to register)
    # takes long enough for a signal to land in it
    BIG = {"task": "recall", "model": {"dim": 256, "n_layers": 4, "n_heads": 4}, "steps": 6,
           "batch_size": 1, "seq_len": 16, "checkpoint_every": 0, "eval_every": 0, "eval_sequences": 8,
           "recall": {"n_pairs": 2, "n_keys": 16, "n_values": 16}}

    def test_sigterm_during_checkpoints_and_model_save(self):
        rnd = random.Random(7)
        outcomes = []
        for attempt in range(6):
            data = work().mkdir("data-sig-%d" % attempt)
            srv = server("sig-%d" % attempt, data)
            end = attempt % 2
            b = body(self.BIG) if end else body(MID, steps=150, checkpoint_every=1)
            jid = self.submit(srv, b)
            self.wait(srv, jid, lambda j: j["status"] != "queued" and j["step"] >= 1, "started", every=0.005)
            if end:  # the model save and its registration
                self.wait(srv, jid, lambda j: j["step"] >= b["steps"] or j["status"] != "running",
                          "at the end", every=0.002)
                time.sleep(rnd.uniform(0, 0.03))
            else:  # mid-run, a checkpoint at every step
                time.sleep(rnd.uniform(0.02, 0.4))
            rc, secs, killed = srv.stop(timeout=10)
            self.assertFalse(killed, "SIGTERM ignored\n" + srv.output_tail())
            self.assertEqual(rc, 0, srv.output_tail())
            self.assertLess(secs, 3 + 3, "exit took %.1f s (grace 3 s)" % secs)
            rec = self.record(data, jid)
            outcomes.append("%s %s at step %d" % ("end" if end else "mid", rec["status"], rec["step"]))
            self.check_restart(data, jid, b["name"])
        print("\n    records after SIGTERM: %s" % "; ".join(outcomes))


class Test99Contract(H.ContractTest):
    pass


if __name__ == "__main__":
    H.run(sys.modules[__name__], description=__doc__.splitlines()[0], cleanup=cleanup)
