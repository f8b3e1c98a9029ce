#!/usr/bin/python3
"""test_train.py — background training jobs over HTTP: POST /train,
GET /train, GET and DELETE /train/{id}, against the real server.

    /usr/bin/python3 tests/server/test_train.py --attnd build/attnd --attn build/attn [-k NAME] [-v]

Every server gets one random byte-level model (`tiny`, so that it is ready
and /generate runs beside training, as in production) and a data dir of
its own under a temporary directory, with two corpora in
<data-dir>/corpora: kjv.txt (about 20 KB of text) and short.txt (too short
to train on).

  main     --train-workers 1 --train-threads 1: validation (every 422 names
           its field), 400/404/405/409/415, the documented examples, the
           lifecycle (202 + Location, FIFO order with one worker, progress
           while running, cancel queued and running, succeed, fail on a
           missing or short corpus), a trained text model served by
           /generate and a recall model listed by /models right after, the
           metrics (promtool-clean while a job runs), and /generate's
           latency while a job trains (printed; a loose bound);
  resume   three processes in turn on one data dir, against one more that
           runs the same job uninterrupted: kill -9 after a checkpoint,
           restart, SIGTERM after the next checkpoint (the job must stay
           "running", not "cancelled", and the process exit within the
           grace period), restart; the final loss and evaluation must
           equal the uninterrupted run's exactly (the batch of step s is a
           pure function of (seed, s); same thread count).

Jobs are small (dim 16-64, one or two layers, tens to hundreds of steps)
so that each trains in about a second; timeouts are generous because the
training threads run at nice 10 and CI machines are shared. Every answer
is checked against api/openapi.yaml (Test99Contract lists mismatches).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
from harness import schema_ref, validation_errors  # noqa: E402

ITEM = "/train/{id}"  # the contract's template for /train/<id>
JOB_TIMEOUT = 120.0   # a small job, on a loaded machine, at nice 10
PROMTOOL = "/usr/bin/promtool"

# A recall job that trains in well under a second.
SMALL_RECALL = {"task": "recall", "model": {"dim": 32, "n_layers": 1, "n_heads": 2}, "steps": 60,
                "batch_size": 8, "seq_len": 32, "learning_rate": 0.003, "eval_sequences": 64,
                "recall": {"n_pairs": 4, "n_keys": 16, "n_values": 16, "absent_fraction": 0.25}}
# A job that would take many minutes: cancelled by the tests that start it.
LONG = {"task": "recall", "model": {"dim": 64, "n_layers": 2, "n_heads": 2}, "steps": 1000000,
        "batch_size": 16, "seq_len": 64, "checkpoint_every": 0}
TEXT = ("In the beginning God created the heaven and the earth. And the earth was without form, "
        "and void; and darkness was upon the face of the deep. And the Spirit of God moved upon "
        "the face of the waters. And God said, Let there be light: and there was light. ")

WORK = None


def _workdir():
    global WORK
    if WORK is None:
        WORK = H.Workdir(prefix="attnd-train-")
        models = WORK.mkdir("models")
        H.make_model(os.path.join(models, "tiny.safetensors"), H.TINY, 1)
    return WORK


def _data_dir(name):
    """A data dir with the two corpora."""
    w = _workdir()
    d = w.mkdir(name)
    corpora = w.mkdir(name, "corpora")
    with open(os.path.join(corpora, "kjv.txt"), "w") as f:
        f.write(TEXT * 80)
    with open(os.path.join(corpora, "short.txt"), "w") as f:
        f.write("too short")
    return d


def _server(name, data, extra=()):
    w = _workdir()
    return H.Server(["--host", "127.0.0.1", "--port", "0", "--models-dir", w.sub("models"),
                     "--data-dir", data, "--threads", "2", "--grace-seconds", "3",
                     "--train-workers", "1", "--train-threads", "1"] + list(extra),
                    name="attnd-" + name, workdir=w.path)


MAIN = H.LazyServer(lambda: _server("main", _data_dir("data-main")).start())
OTHERS = []  # servers a test started itself, stopped at exit if still running


def _cleanup():
    if MAIN.server is not None:
        MAIN.server.stop(timeout=10)
    for s in OTHERS:
        s.stop(timeout=10)
    if WORK is not None:
        WORK.cleanup()


_names = [0]


def fresh(prefix="m"):
    _names[0] += 1
    return "%s-%d-%d" % (prefix, os.getpid(), _names[0])


def body(base, name=None, **kw):
    b = json.loads(json.dumps(base))
    b["name"] = name or fresh()
    b.update(kw)
    return b


class Base(H.ServerTest):
    lazy = MAIN

    @property
    def srv(self):
        return self.lazy.get()

    # ---- requests, each answer checked against the contract

    def submit(self, b, srv=None):
        """POST /train -> 202: the job's id, after checking Location."""
        srv = srv or self.srv
        r = srv.post("/train", b)
        obj = self.assertAnswer(r, 202, "POST", "/train", strict=True)
        self.assertEqual(obj["status"], "queued")
        self.assertEqual(r.header("Location"), "/train/" + obj["id"], "Location header")
        return obj["id"]

    def job(self, jid, srv=None):
        r = (srv or self.srv).get("/train/" + jid)
        return self.assertAnswer(r, 200, "GET", ITEM, strict=True)

    def wait(self, jid, pred, what, timeout=JOB_TIMEOUT, srv=None, every=0.05):
        deadline = time.monotonic() + timeout
        while True:
            j = self.job(jid, srv)
            if pred(j):
                return j
            if time.monotonic() > deadline:
                self.fail("job %s: not %s within %.0f s; last: %s" % (jid, what, timeout,
                                                                      json.dumps(j)[:600]))
            time.sleep(every)

    def finished(self, jid, status="succeeded", **kw):
        j = self.wait(jid, lambda j: j["status"] in ("succeeded", "failed", "cancelled"), "finished", **kw)
        self.assertEqual(j["status"], status, "job %s: %s" % (jid, json.dumps(j)[:600]))
        return j

    def running(self, jid, min_step=1, **kw):
        return self.wait(jid, lambda j: j["status"] == "running" and j["step"] >= min_step,
                         "running past step %d" % min_step, **kw)

    def delete(self, jid, status=204, srv=None):
        r = (srv or self.srv).request("DELETE", "/train/" + jid)
        if status == 204:
            self.assertEqual(r.status, 204, "DELETE /train/%s: %r" % (jid, r))
            self.assertEqual(r.body, b"", "a 204 has no body")
        else:
            self.assertError(r, status, "conflict" if status == 409 else "not_found", "DELETE", ITEM)
        return r

    def cancel_quietly(self, jid):
        r = self.srv.request("DELETE", "/train/" + jid)
        self.assertIn(r.status, (204, 404, 409), r)

    def train_error(self, b, status, code, field=H.MISSING, headers=None):
        r = self.srv.post("/train", b, headers=headers)
        return self.assertError(r, status, code, "POST", "/train", field=field)

    def models(self):
        obj = self.assertAnswer(self.srv.get("/models"), 200, "GET", "/models")
        return {m["name"]: m for m in obj["models"]}


# ==========================================================================
# the contract document (no server)


class Test00Contract(unittest.TestCase):
    def test_routes_documented(self):
        paths = H.openapi()["paths"]
        self.assertEqual(set(paths["/train"]), {"post", "get"})
        self.assertEqual(set(paths[ITEM]), {"get", "delete"})
        self.assertEqual(set(paths["/train"]["post"]["responses"]),
                         {"202", "400", "401", "405", "409", "413", "415", "422", "500", "503", "507"})
        self.assertEqual(set(paths[ITEM]["delete"]["responses"]), {"204", "401", "404", "405", "409"})
        self.assertEqual(set(paths[ITEM]["get"]["responses"]), {"200", "401", "404", "405"})
        self.assertIn("Location", paths["/train"]["post"]["responses"]["202"]["headers"])

    def test_examples_documented(self):
        names = {os.path.basename(ex.get("externalValue", "")) for _, _, ex, _, _ in H.request_examples("/train")}
        files = {f for f in os.listdir(H.EXAMPLES_DIR) if f.startswith("train-")}
        self.assertEqual(names, files)

    def test_schema_rejects_what_the_server_rejects(self):
        bad = [{}, {"task": "recall"}, {"name": "x"}, {"task": "sort", "name": "x"},
               {"task": "recall", "name": "X"}, {"task": "recall", "name": "-x"}, {"task": "recall", "name": "a" * 65},
               {"task": "recall", "name": "x", "steps": 0}, {"task": "recall", "name": "x", "steps": 1000001},
               {"task": "recall", "name": "x", "steps": 1.5}, {"task": "recall", "name": "x", "learning_rate": 0},
               {"task": "recall", "name": "x", "model": {"dim": 32, "width": 3}},
               {"task": "recall", "name": "x", "recall": {"n_pairs": 0}},
               {"task": "text", "name": "x", "text": {}},
               {"task": "text", "name": "x", "text": {"text": "a", "corpus": "b"}},
               {"task": "text", "name": "x", "text": {"corpus": "../etc/passwd"}},
               {"task": "recall", "name": "x", "epochs": 1}, []]
        for b in bad:
            self.assertTrue(validation_errors(b, schema_ref("TrainRequest")), "schema accepts %s" % json.dumps(b))
        good = [{"task": "recall", "name": "x"}, body(SMALL_RECALL, "a.b_c-1"),
                {"task": "text", "name": "0", "text": {"corpus": "kjv.txt", "eval_fraction": 0.5}}]
        for b in good:
            self.assertEqual(validation_errors(b, schema_ref("TrainRequest")), [], json.dumps(b))


# ==========================================================================
# validation: every error names its field


class Test01Validation(Base):
    def test_every_422_names_its_field(self):
        R = {"task": "recall", "name": fresh()}
        T = {"task": "text", "name": fresh()}

        def w(base, **kw):
            b = dict(base)
            b.update(kw)
            return b
        cases = [
            ({"name": "x"}, "task"), (w(R, task="sort"), "task"), (w(R, task=1), "task"),
            ({"task": "recall"}, "name"), (w(R, name="My Model"), "name"), (w(R, name=""), "name"),
            (w(R, name="a" * 65), "name"), (w(R, name="-a"), "name"), (w(R, name="a/b"), "name"), (w(R, name=5), "name"),
            (w(R, epochs=3), "epochs"), (w(R, model={"dim": 32, "width": 2}), "model.width"),
            (w(R, model=[]), "model"), (w(R, model={"dim": 0}), "model.dim"), (w(R, model={"dim": 8192}), "model.dim"),
            (w(R, model={"dim": "64"}), "model.dim"), (w(R, model={"n_layers": 0}), "model.n_layers"),
            (w(R, model={"dim": 30, "n_heads": 4}), "model.n_heads"),   # does not divide
            (w(R, model={"dim": 36, "n_heads": 4}), "model.n_heads"),   # odd head size (RoPE)
            (w(R, model={"n_heads": 4, "n_kv_heads": 3}), "model.n_kv_heads"),
            (w(R, model={"hidden_dim": 0}), "model.hidden_dim"), (w(R, model={"max_seq_len": 1}), "model.max_seq_len"),
            (w(R, model={"dim": 2048, "n_layers": 8}), "model"),        # 50 M parameters at most
            (w(R, steps=0), "steps"), (w(R, steps=1000001), "steps"), (w(R, steps=1.5), "steps"), (w(R, steps="9"), "steps"),
            (w(R, batch_size=0), "batch_size"), (w(R, batch_size=512, seq_len=256), "batch_size"),  # > 65536 tokens
            (w(R, model={"dim": 512, "n_layers": 8}, batch_size=256, seq_len=256), "batch_size"),  # memory
            (w(R, seq_len=1), "seq_len"), (w(R, seq_len=4097), "seq_len"),
            (w(R, learning_rate=0), "learning_rate"), (w(R, learning_rate=-1), "learning_rate"),
            (w(R, learning_rate="high"), "learning_rate"), (w(R, learning_rate=2), "learning_rate"),
            (w(R, steps=10, warmup_steps=20), "warmup_steps"), (w(R, warmup_steps=-1), "warmup_steps"),
            (w(R, min_lr_ratio=1.5), "min_lr_ratio"), (w(R, weight_decay=-0.1), "weight_decay"),
            (w(R, grad_clip=-1), "grad_clip"), (w(R, seed=-1), "seed"), (w(R, seed="1"), "seed"),
            (w(R, eval_every=-1), "eval_every"), (w(R, eval_sequences=-1), "eval_sequences"),
            (w(R, checkpoint_every=-1), "checkpoint_every"), (w(R, checkpoint_every=True), "checkpoint_every"),
            (w(R, attention="flash"), "attention"), (w(R, attention=1), "attention"),
            (w(R, recall=5), "recall"), (w(R, recall={"n_pairs": 0}), "recall.n_pairs"),
            (w(R, recall={"n_pairs": 20, "n_keys": 10}), "recall.n_pairs"),
            (w(R, recall={"n_keys": 0}), "recall.n_keys"), (w(R, recall={"n_values": 70000}), "recall.n_values"),
            (w(R, recall={"absent_fraction": 1.5}), "recall.absent_fraction"),
            (w(R, recall={"n_pairs": 8, "n_keys": 8, "absent_fraction": 0.5}), "recall.absent_fraction"),
            (w(R, recall={"keys": 3}), "recall.keys"), (w(R, recall={"n_pairs": 20}, seq_len=32), "seq_len"),
            (w(R, text={"text": "abc"}), "text"), (w(T, recall={}), "recall"),
            (T, "text"), (w(T, text="abc"), "text"), (w(T, text={}), "text.text"), (w(T, text={"text": ""}), "text.text"),
            (w(T, text={"text": 5}), "text.text"), (w(T, text={"text": "abc", "corpus": "kjv.txt"}), "text.corpus"),
            (w(T, text={"corpus": "../x"}), "text.corpus"), (w(T, text={"corpus": ".hidden"}), "text.corpus"),
            (w(T, text={"corpus": "a/b"}), "text.corpus"), (w(T, text={"corpus": ""}), "text.corpus"),
            (w(T, text={"corpus": "kjv.txt", "eval_fraction": 0}), "text.eval_fraction"),
            (w(T, text={"corpus": "kjv.txt", "eval_fraction": 1}), "text.eval_fraction"),
            (w(T, text={"corpus": "kjv.txt", "size": 1}), "text.size"),
            (w(T, text={"text": "a short text"}, seq_len=64), "text.text"),  # shorter than seq_len + 1
        ]
        failures = []
        for b, field in cases:
            r = self.srv.post("/train", b)
            try:
                err = self.assertError(r, 422, "invalid_argument", "POST", "/train")
                if err.get("field") != field:
                    failures.append("%s: field %r, want %r (%s)" % (json.dumps(b)[:120], err.get("field"), field,
                                                                    err.get("message")))
                elif field.split(".")[-1] not in err["message"] and field not in ("text", "model", "recall"):
                    failures.append("%s: message %r does not name %s" % (json.dumps(b)[:120], err["message"], field))
            except AssertionError as e:
                failures.append("%s: %s" % (json.dumps(b)[:120], str(e)[:300]))
        self.assertEqual(failures, [], "\n  ".join([""] + failures))
        self.assertEqual(self.srv.get("/train").json()["jobs"], [], "a refused request left a job behind")

    def test_body_not_an_object(self):
        for b in ([], "\"x\"", "3", "null"):
            err = self.train_error(b, 422, "invalid_argument", headers={"Content-Type": "application/json"})
            self.assertIsNone(err.get("field"))

    def test_400_415_405_404(self):
        self.train_error("{\"task\": ", 400, "invalid_json", headers={"Content-Type": "application/json"})
        self.train_error("{\"task\": \"recall\", \"task\": \"text\", \"name\": \"d\"}", 400, "invalid_json",
                         headers={"Content-Type": "application/json"})
        self.train_error(json.dumps(body(SMALL_RECALL)), 415, "unsupported_media_type",
                         headers={"Content-Type": "text/plain"})
        for method, path in (("PUT", "/train"), ("DELETE", "/train"), ("POST", "/train/tr-1"), ("PATCH", "/train/tr-1")):
            r = self.srv.request(method, path)
            self.assertError(r, 405, "method_not_allowed", method, path if path == "/train" else ITEM)
            self.assertEqual(r.header("Allow"), "GET, POST" if path == "/train" else "GET, DELETE")
        for jid in ("tr-1", "nope", "tr-99999999999999"):
            self.assertError(self.srv.get("/train/" + jid), 404, "not_found", "GET", ITEM)
            self.delete(jid, 404)
        r = self.srv.get("/train/a/b")
        self.assertEqual(r.status, 404)

    def test_409_existing_model_name(self):
        err = self.train_error(body(SMALL_RECALL, "tiny"), 409, "conflict", field="name")
        self.assertIn("tiny", err["message"])


# ==========================================================================
# the lifecycle


class Test02Lifecycle(Base):
    def test_documented_examples(self):
        ids = {}
        for _, name, ex, b, _ in H.request_examples("/train"):
            expect = ex.get("x-expect", {"status": 202})
            if expect["status"] == 202:
                ids[name] = (self.submit(b), b)
            else:
                self.train_error(b, expect["status"], expect["code"], field=expect.get("field", H.MISSING))
        self.assertGreaterEqual(len(ids), 3)
        for name, (jid, b) in ids.items():
            j = self.finished(jid)  # text-corpus reads <data-dir>/corpora/kjv.txt
            self.assertEqual(j["model"], b["name"], name)
            self.assertIn(b["name"], self.models(), name)

    def test_recall_job_succeeds_and_is_listed_at_once(self):
        name = fresh("rc")
        b = body(SMALL_RECALL, name, checkpoint_every=20, eval_every=30)
        t0 = time.time()
        jid = self.submit(b)
        j = self.finished(jid)
        models = self.models()  # right after: no restart, no delay
        self.assertIn(name, models, "the trained model is not in /models")
        self.assertEqual(models[name]["kind"], "recall")
        self.assertEqual(models[name].get("recall", {}).get("n_pairs"), 4, models[name])
        self.assertEqual(j["model"], name)
        self.assertIsNone(j["error"])
        self.assertEqual((j["step"], j["steps"]), (60, 60))
        self.assertIsInstance(j["loss"], float)
        ev = j["eval"]
        self.assertEqual(ev["step"], 60)
        for k in ("accuracy", "accuracy_present", "accuracy_absent"):
            self.assertTrue(0 <= ev[k] <= 1, ev)
        self.assertGreater(ev["n_queries"], 0)
        self.assertEqual(j["loss_history"][0][0], 1)
        self.assertEqual(j["loss_history"][-1], [60, j["loss"]])
        self.assertEqual(j["checkpoint_step"], 40, "the last checkpoint before the final step")
        self.assertIsNone(j["eta_s"])
        self.assertGreater(j["tokens_per_s"], 0)
        self.assertEqual(j["threads"], 1)
        stamps = [H_time(j[k]) for k in ("created_at", "started_at", "finished_at")]
        self.assertTrue(t0 - 5 <= stamps[0] <= stamps[1] <= stamps[2] <= time.time() + 5, stamps)
        req = j["request"]  # normalised: every default filled in
        self.assertEqual(req["warmup_steps"], 6)  # min(100, steps / 10)
        self.assertEqual(req["model"]["n_kv_heads"], 2)
        self.assertEqual(req["model"]["hidden_dim"], 128)
        self.assertEqual(req["model"]["max_seq_len"], 32)
        self.assertEqual(req["learning_rate"], 0.003)
        self.assertEqual(req["attention"], "auto")
        self.assertEqual(req["recall"], dict(SMALL_RECALL["recall"], min_pairs=0))
        # the name is a served model's now
        err = self.train_error(body(SMALL_RECALL, name), 409, "conflict", field="name")
        self.assertIn(name, err["message"])

    def test_text_job_is_served_by_generate(self):
        name = fresh("tx")
        b = {"task": "text", "name": name, "model": {"dim": 32, "n_layers": 1, "n_heads": 2}, "steps": 60,
             "batch_size": 4, "seq_len": 32, "learning_rate": 0.003, "text": {"text": TEXT * 4},
             "attention": "tiled"}  # the linear-memory backward, end to end
        j = self.finished(self.submit(b))
        self.assertEqual(j["request"]["attention"], "tiled")
        self.assertEqual(set(j["eval"]), {"step", "loss", "bits_per_byte", "n_bytes"})
        self.assertAlmostEqual(j["eval"]["bits_per_byte"], j["eval"]["loss"] / 0.6931471805599453, places=5)
        self.assertEqual(j["request"]["text"], {"text_bytes": len(TEXT * 4), "eval_fraction": 0.1})
        models = self.models()
        self.assertEqual(models[name]["kind"], "text")
        r = self.srv.generate({"model": name, "prompt": "In the", "max_tokens": 8, "temperature": 0})
        obj = self.assertAnswer(r, 200, "POST", "/generate")
        self.assertEqual(obj["model"], name)

    def test_queue_order_progress_and_cancel(self):
        a = self.submit(body(LONG, fresh("long")))
        b = self.submit(body(SMALL_RECALL))
        c_name = fresh()
        c = self.submit(body(SMALL_RECALL, c_name))
        try:
            ja = self.running(a, min_step=2)
            self.assertEqual(self.job(b)["status"], "queued", "one worker: the second job waits")
            self.assertEqual(self.job(c)["status"], "queued")
            listed = [x["id"] for x in self.assertAnswer(self.srv.get("/train"), 200, "GET", "/train",
                                                         strict=True)["jobs"]]
            self.assertEqual(listed[:3], [c, b, a], "GET /train lists newest first")
            # progress while running
            ja2 = self.wait(a, lambda j: j["step"] > ja["step"] + 2, "stepping")
            self.assertIsInstance(ja2["loss"], float)
            self.assertGreater(ja2["tokens_per_s"], 0)
            self.assertGreater(ja2["eta_s"], 0)
            self.assertLessEqual(len(ja2["loss_history"]), 256)
            self.assertIsNone(ja2["finished_at"])
            # cancel the queued one: it never starts
            self.delete(b)
            jb = self.job(b)
            self.assertEqual(jb["status"], "cancelled")
            self.assertIsNone(jb["started_at"])
            self.assertIsNotNone(jb["finished_at"])
            self.delete(b)  # a finished job: its record goes
            self.assertError(self.srv.get("/train/" + b), 404, "not_found", "GET", ITEM)
            self.delete(b, 404)
            # cancel the running one: cancelled at once, and c runs next
            self.delete(a)
            self.assertEqual(self.job(a)["status"], "cancelled")
            jc = self.finished(c)
            ja = self.job(a)
            self.assertEqual(ja["status"], "cancelled", "a cancelled job stays cancelled")
            self.assertIsNone(ja["model"])
            self.assertNotIn(ja["name"], self.models(), "a cancelled job's model is not served")
            self.assertGreaterEqual(H_time(jc["started_at"]), H_time(ja["finished_at"]) - 0.01)
            self.delete(c)
            self.assertIn(c_name, self.models(), "removing the record keeps the model served")
            self.delete(c, 404)
        finally:
            for x in (a, b, c):
                self.cancel_quietly(x)

    def test_name_held_by_a_queued_or_running_job(self):
        name = fresh("held")
        a = self.submit(body(LONG, name))
        try:
            self.running(a)
            err = self.train_error(body(SMALL_RECALL, name), 409, "conflict", field="name")
            self.assertIn(a, err["message"])
            self.delete(a)
            b = self.submit(body(SMALL_RECALL, name))  # free again once cancelled
            self.finished(b)
        finally:
            self.cancel_quietly(a)

    def test_missing_corpus_fails_the_job(self):
        b = {"task": "text", "name": fresh("nc"), "steps": 10, "seq_len": 32, "text": {"corpus": "missing.txt"}}
        j = self.finished(self.submit(b), "failed")
        self.assertIn("missing.txt", j["error"])
        self.assertIn("No such file", j["error"])
        self.assertIsNone(j["model"])
        self.assertIsNotNone(j["finished_at"])
        self.assertNotIn(b["name"], self.models())
        self.delete(j["id"])
        self.delete(j["id"], 404)

    def test_short_corpus_fails_the_job(self):
        b = {"task": "text", "name": fresh("sc"), "steps": 10, "seq_len": 32, "text": {"corpus": "short.txt"}}
        j = self.finished(self.submit(b), "failed")
        self.assertIn("short.txt", j["error"])
        self.assertIn("shorter than seq_len", j["error"])

    def test_loss_history_is_bounded_and_even(self):
        b = {"task": "recall", "name": fresh("hist"), "model": {"dim": 16, "n_layers": 1, "n_heads": 2},
             "steps": 700, "batch_size": 2, "seq_len": 16, "eval_sequences": 16,
             "recall": {"n_pairs": 2, "n_keys": 8, "n_values": 8}}
        j = self.finished(self.submit(b))
        h = j["loss_history"]
        self.assertLessEqual(len(h), 256)
        self.assertGreaterEqual(len(h), 128)
        gaps = {y[0] - x[0] for x, y in zip(h, h[1:])}
        self.assertEqual(len(gaps), 1, "evenly spaced: %s" % sorted(gaps))
        self.assertEqual(h[-1][0] % gaps.pop(), 0)


def H_time(s):
    """RFC 3339 UTC with milliseconds -> unix seconds."""
    import calendar
    assert s.endswith("Z"), s
    t = time.strptime(s[:19], "%Y-%m-%dT%H:%M:%S")
    return calendar.timegm(t) + float("0" + s[19:-1])


# ==========================================================================
# metrics


class Test03Metrics(Base):
    def metrics(self):
        fams, text, _ = self.srv.metrics()
        return fams, text

    def promtool_clean(self, text):
        if not os.path.exists(PROMTOOL):
            return
        p = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60)
        self.assertEqual(p.returncode, 0, "promtool check metrics:\n" + p.stdout.decode(errors="replace"))

    def test_metrics_move(self):
        v = H.sample_value
        f0, text = self.metrics()
        self.assertEqual(f0["attnd_train_jobs"].type, "gauge")
        self.assertEqual(f0["attnd_train_step_seconds"].type, "histogram")
        self.assertEqual(f0["attnd_train_loss"].type, "gauge")
        for s in ("queued", "running", "succeeded", "failed", "cancelled"):
            self.assertIn(s, {lab["state"] for _, lab, _, _ in f0["attnd_train_jobs"].samples})
        b = body(SMALL_RECALL)
        j = self.finished(self.submit(b))
        f1, text = self.metrics()
        steps, tokens = b["steps"], b["steps"] * b["batch_size"] * b["seq_len"]
        self.assertEqual(v(f1, "attnd_train_steps_total") - v(f0, "attnd_train_steps_total"), steps)
        self.assertEqual(v(f1, "attnd_train_tokens_total") - v(f0, "attnd_train_tokens_total"), tokens)
        n = v(f1, "attnd_train_step_seconds", "attnd_train_step_seconds_count") - \
            v(f0, "attnd_train_step_seconds", "attnd_train_step_seconds_count")
        self.assertEqual(n, steps - 1, "every step timed but the final one (its evaluation)")
        self.assertEqual(v(f1, "attnd_train_jobs", state="succeeded") - v(f0, "attnd_train_jobs", state="succeeded"), 1)
        # the op accounting: phase "train", attention by the job's sequence length (bucket <= 64);
        # one call per sequence and layer: the steps' batches, then the final evaluation's sequences
        layers, attn = b["model"]["n_layers"], dict(phase="train", kernel="naive", context_max="64")
        calls = v(f1, "attnd_attention_calls_total", **attn) - v(f0, "attnd_attention_calls_total", **attn)
        self.assertEqual(calls, steps * b["batch_size"] * layers + b["eval_sequences"] * layers)
        self.assertGreater(v(f1, "attnd_attention_seconds_total", **attn) - v(f0, "attnd_attention_seconds_total", **attn), 0)
        for cls in ("tensor_contraction", "normalization", "elementwise"):
            d = v(f1, "attnd_op_flops_total", **{"class": cls, "phase": "train"}) - \
                v(f0, "attnd_op_flops_total", **{"class": cls, "phase": "train"})
            self.assertGreater(d, 0, "attnd_op_flops_total{class=%s,phase=train}" % cls)
        self.assertGreater(v(f1, "attnd_component_seconds_total", component="attention", phase="train"), 0)
        self.assertGreater(v(f1, "attnd_attention_peak_scratch_bytes", phase="train"), 0)
        self.assertEqual(H.check_histograms(f1), [])
        self.assertNotIn(j["id"], text, "a finished job has no loss series")
        # a failing job moves state="failed" (what the alert watches)
        bad = {"task": "text", "name": fresh("nc"), "steps": 10, "seq_len": 32, "text": {"corpus": "missing.txt"}}
        self.finished(self.submit(bad), "failed")
        f2, _ = self.metrics()
        self.assertEqual(v(f2, "attnd_train_jobs", state="failed") - v(f1, "attnd_train_jobs", state="failed"), 1)

    def test_loss_of_running_jobs_only(self):
        a = self.submit(body(LONG, fresh("long")))
        try:
            ja = self.running(a, min_step=2)
            fams, text = self.metrics()
            loss = H.sample_value(fams, "attnd_train_loss", job_id=a)
            self.assertGreater(loss, 0, "attnd_train_loss{job_id=%s} while it runs" % a)
            self.assertLess(abs(loss - ja["loss"]), 5)
            self.assertEqual(H.sample_value(fams, "attnd_train_jobs", state="running"), 1)
            self.promtool_clean(text)
            self.delete(a)
            deadline = time.monotonic() + 30
            while a in self.metrics()[1]:
                self.assertLess(time.monotonic(), deadline, "the loss series of a cancelled job stays")
                time.sleep(0.05)
            fams, text = self.metrics()
            self.assertEqual(H.sample_value(fams, "attnd_train_jobs", state="running"), 0)
            self.promtool_clean(text)
        finally:
            self.cancel_quietly(a)


# ==========================================================================
# inference while training


# a /recall of 256 pairs and 16 queries on the exact engine
RECALL_BODY = {"pairs": [["k%d" % i, i] for i in range(256)], "queries": ["k%d" % (i * 7) for i in range(16)]}


class Test04Latency(Base):
    def p50(self, send, n=25):
        times = []
        conn = self.srv.connect()
        try:
            for _ in range(n):
                r = send(conn)
                self.assertEqual(r.status, 200, r)
                times.append(r.elapsed)
        finally:
            conn.close()
        times.sort()
        return times[len(times) // 2]

    def generate(self, conn):
        return self.srv.generate({"model": "tiny", "prompt": "Hello", "max_tokens": 8, "temperature": 0}, conn=conn)

    def recall(self, conn):
        return self.srv.post("/recall", RECALL_BODY, conn=conn)

    def test_generate_and_recall_stay_responsive_while_training(self):
        self.p50(self.generate, 5)  # warm
        self.p50(self.recall, 5)
        idle = {"generate": self.p50(self.generate), "recall": self.p50(self.recall)}
        a = self.submit(body(LONG, fresh("busy")))
        try:
            self.running(a, min_step=3)
            busy = {"generate": self.p50(self.generate), "recall": self.p50(self.recall)}
            ja = self.job(a)
            self.assertEqual(ja["status"], "running", "the job ran during the measurement")
        finally:
            self.cancel_quietly(a)
        for what, label in (("generate", "/generate (8 tokens)"), ("recall", "/recall (256 pairs, 16 queries)")):
            print("\n    %s p50: idle %.1f ms, while training %.1f ms (%.1fx)"
                  % (label, idle[what] * 1e3, busy[what] * 1e3, busy[what] / idle[what]), end="")
            self.assertLess(busy[what], 10 * idle[what] + 0.05,
                            "%s p50 %.1f ms while training vs %.1f ms idle" % (what, busy[what] * 1e3, idle[what] * 1e3))
        print("; job at %.0f tokens/s" % (ja["tokens_per_s"] or 0))


# ==========================================================================
# restarts: kill -9 and SIGTERM, then resume to the same loss


class Test05Resume(Base):
    JOB = {"task": "recall", "model": {"dim": 32, "n_layers": 2, "n_heads": 2}, "steps": 500,
           "batch_size": 16, "seq_len": 32, "learning_rate": 0.003, "seed": 1234, "checkpoint_every": 50,
           "eval_every": 250, "eval_sequences": 128,
           "recall": {"n_pairs": 4, "n_keys": 16, "n_values": 16, "absent_fraction": 0.2}}

    def start(self, name, data):
        s = _server(name, data)
        OTHERS.append(s)
        return s.start()

    def resumed_at(self, srv, jid, timeout=JOB_TIMEOUT):
        """The step of the last 'resuming at step N' line on stderr (the
        line comes as the job starts: waits for it)."""
        import re
        deadline = time.monotonic() + timeout
        while True:
            m = re.findall(r"train %s: resuming at step (\d+)" % jid, srv.stderr_text())
            if m or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        self.assertTrue(m, "no 'resuming at step' line on stderr:\n" + srv.output_tail())
        return int(m[-1])

    def record(self, data, jid):
        with open(os.path.join(data, "train", jid, "job.json")) as f:
            return json.load(f)

    def test_resume_after_kill_and_sigterm_ends_with_the_same_loss(self):
        name = fresh("resume")
        # the reference: uninterrupted
        data_a = _data_dir("data-resume-a")
        sa = self.start("resume-a", data_a)
        ref = self.finished(self.submit(body(self.JOB, name), srv=sa), srv=sa)
        sa.stop()

        data_b = _data_dir("data-resume-b")
        sb = self.start("resume-b1", data_b)
        jid = self.submit(body(self.JOB, name), srv=sb)
        j0 = self.wait(jid, lambda j: j["checkpoint_step"] >= 100 or j["status"] not in ("queued", "running"),
                       "past a checkpoint", srv=sb, every=0.01)
        self.assertEqual(j0["status"], "running", "the job ended before it could be killed: %s" % j0)
        sb.kill()  # kill -9
        rec = self.record(data_b, jid)
        self.assertEqual(rec["status"], "running")
        killed_at = rec["step"]
        self.assertTrue(os.path.exists(os.path.join(data_b, "train", jid, "state")))

        sb = self.start("resume-b2", data_b)
        # the state file is written before the checkpoint shows, and the
        # record after it: a kill between the two leaves the record one
        # checkpoint behind the state, which is what resumes
        ckpt = self.resumed_at(sb, jid)
        self.assertGreaterEqual(ckpt, j0["checkpoint_step"])
        self.assertIn(rec["checkpoint_step"], (ckpt, ckpt - 50))
        j = self.wait(jid, lambda j: j["checkpoint_step"] > ckpt or j["status"] != "running", "resumed past a checkpoint",
                      srv=sb, every=0.01)
        self.assertEqual(j["status"], "running", "the job ended before the SIGTERM: %s" % j)
        ckpt2 = j["checkpoint_step"]
        rc, secs, killed = sb.stop(timeout=10)
        self.assertFalse(killed, "SIGTERM: attnd did not exit within 10 s")
        self.assertEqual(rc, 0)
        rec = self.record(data_b, jid)
        self.assertLess(rec["step"], 500, "the shutdown waited for the job to finish")
        self.assertLess(secs, 3 + 5, "SIGTERM: exit took %.1f s, grace is 3 s" % secs)
        self.assertEqual(rec["status"], "running", "a job stopped by shutdown must stay running (it resumes)")
        self.assertIsNone(rec["error"])
        self.assertGreaterEqual(rec["checkpoint_step"], ckpt2)
        ckpt2 = rec["checkpoint_step"]  # a graceful stop records its last checkpoint

        sb = self.start("resume-b3", data_b)
        listed = self.assertAnswer(sb.get("/train"), 200, "GET", "/train")["jobs"]
        self.assertEqual([x["id"] for x in listed], [jid])
        got = self.finished(jid, srv=sb)
        self.assertEqual(self.resumed_at(sb, jid), ckpt2)
        print("\n    kill -9 (record at step %d), resumed from checkpoint %d, SIGTERM after checkpoint %d; final loss %r, "
              "uninterrupted %r" % (killed_at, ckpt, ckpt2, got["loss"], ref["loss"]))
        self.assertEqual(got["loss"], ref["loss"], "final loss after two interruptions != uninterrupted run's")
        self.assertEqual(got["eval"], ref["eval"], "final evaluation differs")
        self.assertEqual(got["step"], 500)
        self.assertEqual(got["loss_history"][-1], ref["loss_history"][-1])
        models = {m["name"] for m in sb.get("/models").json()["models"]}
        self.assertIn(name, models)
        # removed once the record says "succeeded" (a crash in between
        # leaves a harmless file, never a finished job without its record)
        deadline = time.monotonic() + 30
        while os.path.exists(os.path.join(data_b, "train", jid, "state")):
            self.assertLess(time.monotonic(), deadline, "state file left behind")
            time.sleep(0.02)
        sb.stop()
        # and the record of a finished job is read back as it was
        sb = self.start("resume-b4", data_b)
        again = self.job(jid, srv=sb)
        for k in ("status", "loss", "eval", "model", "loss_history", "request", "created_at", "finished_at"):
            self.assertEqual(again[k], got[k], k)
        sb.stop()


# ==========================================================================
# the registry's capacity


class Test06Capacity(Base):
    def test_a_job_the_registry_could_not_hold_is_refused_at_once(self):
        w = _workdir()
        data = _data_dir("data-full")
        models = w.mkdir("data-full", "models")
        served = 1 + 253  # --models-dir's tiny, then 253 copies of it under the data dir
        for i in range(253):
            shutil.copy(w.sub("models", "tiny.safetensors"), os.path.join(models, "copy-%03d.safetensors" % i))
        srv = _server("full", data)
        OTHERS.append(srv)
        srv.start()
        obj = self.assertAnswer(srv.get("/models"), 200, "GET", "/models")
        self.assertEqual(len(obj["models"]), served)
        a = self.submit(body(LONG, fresh("full")), srv=srv)
        b = self.submit(body(LONG, fresh("full")), srv=srv)  # 256 once both publish
        try:
            r = srv.post("/train", body(LONG, fresh("full")))
            err = self.assertError(r, 507, "insufficient_storage", "POST", "/train")
            self.assertIn("256", err["message"])
            self.delete(b, srv=srv)  # a cancelled job promises no model
            c = self.submit(body(LONG, fresh("full")), srv=srv)
            self.delete(c, srv=srv)
        finally:
            for jid in (a, b):
                srv.request("DELETE", "/train/" + jid)
        self.assertEqual(srv.get("/healthz").status, 200, "still serving")


class Test99Contract(H.ContractTest):
    pass


if __name__ == "__main__":
    H.run(sys.modules[__name__], description=__doc__.splitlines()[0], cleanup=_cleanup)
