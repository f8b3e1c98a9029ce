#!/usr/bin/python3
"""test_models.py — the model registry against the real server: text and
recall models side by side, trained models loaded from the data dir at
start-up and registered at run time, /models, and POST /recall with
engine "model".

    /usr/bin/python3 tests/server/test_models.py --attnd build/attnd --attn build/attn [-k NAME] [-v]

Recall models are made here, in Python: write_safetensors() writes the
checkpoint format of include/tfm/checkpoint.h (an 8-byte little-endian
header length, a JSON header of F32 tensors and string __metadata__, the
raw tensors) with seeded random weights and the metadata of a trained MQAR
model (task "recall", recall.n_pairs ...). Its answers are noise, so the
tests of that model check everything but correctness: the store's
validation against the model's parameters, the answer's shape and
contract, probabilities in [0, 1], ⊥ as null, determinism, and that a
repeated key means its latest value (the store with repeats gives the
answers of the store without them). Correctness is checked with the
bundled trained model, models/recall-*.safetensors, when it exists: at
least 99% of the answers over 500 random stores against a Python dict
(absent keys included); skipped, saying so, when it does not
(ATTND_RECALL_MODELS=a.safetensors:b.safetensors checks those instead).

Servers, each started on first use on an ephemeral port of 127.0.0.1:

  main   --models-dir with tiny (text, `attn random`), mqar-8x64 and
         small-recall (random recall models); --data-dir whose models/
         holds what training jobs leave behind: trained-recall and
         trained-text (loaded at start-up, as after a restart), and files
         that must not load (a corrupt one, a name already taken, a .bin,
         a temporary file);
  real   the bundled recall model(s) and tiny (accuracy);
  train  an empty data dir, for POST /train: a job's model is served by
         name the moment the job succeeds (skipped when the contract has
         no /train yet).
"""

import glob
import json
import math
import os
import random
import struct
import sys
import time
import unittest
from array import array

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
from harness import schema_ref, validation_errors  # noqa: E402

SEED = 20240605
N_ACCURACY_STORES = 500
# ATTND_RECALL_MODELS (paths separated by ":") checks other trained models,
# e.g. a candidate before it is committed
BUNDLED = ([p for p in os.environ["ATTND_RECALL_MODELS"].split(":") if p]
           if os.environ.get("ATTND_RECALL_MODELS")
           else sorted(glob.glob(os.path.join(H.REPO, "models", "recall-*.safetensors"))))

# (n_pairs, n_keys, n_values): the documented example's model, and a small one
BIG = dict(n_pairs=8, n_keys=64, n_values=64, absent_fraction=0.25)
SMALL = dict(n_pairs=4, n_keys=16, n_values=16, absent_fraction=0.1)

WORK = None


# --------------------------------------------------------------------------
# checkpoints written from Python


def write_safetensors(path, cfg, meta, seed):
    """A Llama-shaped safetensors checkpoint (shared classifier, byte
    tokenizer kind) with seeded uniform weights, norms 1, and meta added
    to __metadata__ (strings)."""
    d, h, L, V = cfg["dim"], cfg["hidden"], cfg["layers"], cfg["vocab"]
    nh, nkv = cfg["heads"], cfg["kv_heads"]
    hs = d // nh
    shapes = [("tok_embeddings.weight", (V, d))]
    for i in range(L):
        p = "layers.%d." % i
        shapes += [(p + "attention_norm.weight", (d,)), (p + "attention.wq.weight", (nh * hs, d)),
                   (p + "attention.wk.weight", (nkv * hs, d)), (p + "attention.wv.weight", (nkv * hs, d)),
                   (p + "attention.wo.weight", (d, nh * hs)), (p + "ffn_norm.weight", (d,)),
                   (p + "feed_forward.w1.weight", (h, d)), (p + "feed_forward.w2.weight", (d, h)),
                   (p + "feed_forward.w3.weight", (h, d))]
    shapes.append(("norm.weight", (d,)))
    rng = random.Random(seed)
    header, blobs, off = {}, [], 0
    for name, shp in shapes:
        n = math.prod(shp)
        if len(shp) == 1:
            a = array("f", [1.0] * n)
        else:
            s = 1.0 / math.sqrt(shp[1])
            a = array("f", [rng.uniform(-s, s) for _ in range(n)])
        if sys.byteorder != "little":
            a.byteswap()
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(shp), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    md = {"format": "attnd", "dim": str(d), "hidden_dim": str(h), "n_layers": str(L), "n_heads": str(nh),
          "n_kv_heads": str(nkv), "vocab_size": str(V), "seq_len": str(cfg["seq_len"]),
          "shared_classifier": "1", "norm_eps": "1e-05", "rope_theta": "10000", "tokenizer": "byte"}
    md.update(meta)
    header["__metadata__"] = md
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    os.rename(tmp, path)
    return path


def recall_cfg(p):
    return dict(dim=32, hidden=64, layers=1, heads=2, kv_heads=2, vocab=p["n_keys"] + p["n_values"] + 2,
                seq_len=2 * p["n_pairs"] + 8)


def recall_meta(p):
    return {"task": "recall", "recall.n_pairs": str(p["n_pairs"]), "recall.n_keys": str(p["n_keys"]),
            "recall.n_values": str(p["n_values"]), "recall.seq_len": str(2 * p["n_pairs"] + 8),
            "recall.absent_fraction": repr(p["absent_fraction"])}


def make_recall_model(path, p, seed):
    return write_safetensors(path, recall_cfg(p), recall_meta(p), seed)


def _workdir():
    global WORK
    if WORK is None:
        WORK = H.Workdir(prefix="attnd-models-")
        models = WORK.mkdir("models")
        H.make_model(os.path.join(models, "tiny.safetensors"), H.TINY, 1)
        make_recall_model(os.path.join(models, "mqar-8x64.safetensors"), BIG, 11)
        make_recall_model(os.path.join(models, "small-recall.safetensors"), SMALL, 12)
        trained = WORK.mkdir("data-main", "models")
        make_recall_model(os.path.join(trained, "trained-recall.safetensors"), SMALL, 13)
        H.make_model(os.path.join(trained, "trained-text.safetensors"), H.TINY, 2)
        # what must not load: corrupt, a name the models dir has, a .bin
        # (the data dir holds safetensors only), a writer's temporary file
        with open(os.path.join(trained, "corrupt.safetensors"), "wb") as f:
            f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
        make_recall_model(os.path.join(trained, "tiny.safetensors"), SMALL, 14)
        H.make_model(os.path.join(trained, "legacy.bin"), H.TINY, 3, fmt="llama2c")
        make_recall_model(os.path.join(trained, "partial.safetensors.tmp.123"), SMALL, 15)
        # an hour old: a write that will never finish (a young one may be
        # another replica's write in progress, in a shared dir: kept)
        old = time.time() - 3600
        os.utime(os.path.join(trained, "partial.safetensors.tmp.123"), (old, old))
        make_recall_model(os.path.join(trained, "young.safetensors.tmp.124"), SMALL, 15)
    return WORK


def _main():
    w = _workdir()
    return H.Server(["--host", "127.0.0.1", "--port", "0", "--models-dir", w.sub("models"),
                     "--data-dir", w.sub("data-main"), "--threads", "2", "--grace-seconds", "3"],
                    name="attnd-main", workdir=w.path).start()


def _real():
    w = _workdir()
    args = ["--host", "127.0.0.1", "--port", "0", "--data-dir", w.sub("data-real"), "--threads", "2",
            "--grace-seconds", "3", "--model", w.sub("models", "tiny.safetensors")]
    for p in BUNDLED:
        args += ["--model", p]
    return H.Server(args, name="attnd-real", workdir=w.path).start()


def _train():
    w = _workdir()
    return H.Server(["--host", "127.0.0.1", "--port", "0", "--models-dir", w.sub("models"),
                     "--data-dir", w.sub("data-train"), "--threads", "2", "--grace-seconds", "3"],
                    name="attnd-train", workdir=w.path).start()


MAIN = H.LazyServer(_main)
REAL = H.LazyServer(_real)
TRAIN = H.LazyServer(_train)
SERVERS = (MAIN, REAL, TRAIN)


def _cleanup():
    for lazy in SERVERS:
        s = lazy.server
        if s is not None:
            s.stop(timeout=10)
    if WORK is not None:
        WORK.cleanup()


# --------------------------------------------------------------------------
# base


class Base(H.ServerTest):
    lazy = MAIN

    @property
    def srv(self):
        return self.lazy.get()

    def models(self, srv=None):
        obj = self.assertAnswer((srv or self.srv).get("/models"), 200, "GET", "/models", strict=True)
        return {m["name"]: m for m in obj["models"]}

    def recall(self, body, srv=None, **kw):
        return (srv or self.srv).post("/recall", body, **kw)

    def ask(self, model, pairs, queries, srv=None, single=False, **opts):
        """engine "model": checks the shape of the answer against the
        contract (strict) and the request; returns it."""
        body = {"engine": "model", "pairs": pairs}
        if model is not None:
            body["model"] = model
        if single:
            body["query"] = queries[0]
        else:
            body["queries"] = queries
        body.update(opts)
        obj = self.assertAnswer(self.recall(body, srv=srv), 200, "POST", "/recall", strict=True)
        what = json.dumps(body)[:300]
        self.assertEqual(obj["engine"], "model", what)
        if model is not None:
            self.assertEqual(obj["model"], model, what)
        self.assertEqual(len(obj["answers"]), len(queries), what)
        for q, a in zip(queries, obj["answers"]):
            self.assertIs(type(a["query"]), int, what)
            self.assertEqual(a["query"], q, what)
            self.assertIs(a["found"], a["value"] is not None, what)
            self.assertTrue(0.0 <= a["probability"] <= 1.0, "%s: probability %r" % (what, a["probability"]))
            self.assertNotIn("attention", a, what)
        keys = {k for k, _ in pairs}
        values = {v for _, v in pairs}
        self.assertEqual(obj["usage"], {"tokens": 2 * len(pairs) + len(queries), "symbols": len(keys) + len(values)},
                         what)
        self.assertGreaterEqual(obj["timings"]["total_ms"], 0)
        self.assertNotIn("attention_ms", obj["timings"])
        return obj

    def assertRecallError(self, body, status, code, field=H.MISSING, srv=None):
        r = self.recall(body, srv=srv)
        try:
            return self.assertError(r, status, code, path="/recall", field=field)
        finally:
            self.assertHealthy("%d for %s" % (status, json.dumps(body)[:120]))


# ==========================================================================
# the contract document (no server)


class Test00Contract(unittest.TestCase):
    def test_recall_model_request_schema(self):
        s = schema_ref("RecallRequest")
        good = [{"engine": "model", "model": "m", "pairs": [[0, 1]], "queries": [0, 5]},
                {"engine": "model", "pairs": [[0, 1], [0, 2]], "query": 3},
                {"engine": "model", "pairs": [[0, 1]], "queries": [], "explain": False}]
        for b in good:
            self.assertEqual(validation_errors(b, s), [], json.dumps(b))
        bad = [{"engine": "model", "pairs": [], "queries": [0]},  # no pair
               {"engine": "model", "pairs": [["a", 1]], "queries": [0]},  # string key
               {"engine": "model", "pairs": [[0, -1]], "queries": [0]},  # negative value
               {"engine": "model", "pairs": [[0, 1]], "queries": ["a"]},
               {"engine": "model", "pairs": [[0, 1]], "query": 1.5},
               {"engine": "model", "pairs": [[0, 1]], "queries": [], "explain": True},
               {"engine": "model", "model": "", "pairs": [[0, 1]], "queries": []},
               {"model": "m", "pairs": [[0, 1]], "queries": []},  # model without engine model
               {"engine": "exact", "model": "m", "pairs": [[0, 1]], "queries": []}]
        for b in bad:
            self.assertTrue(validation_errors(b, s), "schema accepts %s" % json.dumps(b))

    def test_recall_model_answer_schema(self):
        s = schema_ref("RecallResponse")
        ok = {"engine": "model", "model": "m", "usage": {"tokens": 3, "symbols": 2}, "timings": {"total_ms": 0.1},
              "answers": [{"query": 0, "value": 1, "found": True, "probability": 0.9},
                          {"query": 2, "value": None, "found": False, "probability": 0.6}]}
        self.assertEqual(validation_errors(ok, s), [])
        for mutate in (lambda o: o.pop("model"), lambda o: o["answers"][0].pop("probability"),
                       lambda o: o["answers"][0].update(probability=1.5),
                       lambda o: o["answers"][0].update(value="1"),
                       lambda o: o["answers"][1].update(value=3),
                       lambda o: o["answers"][0].update(attention=[{"position": 0, "weight": 1.0}])):
            o = json.loads(json.dumps(ok))
            mutate(o)
            self.assertTrue(validation_errors(o, s), "schema accepts %s" % json.dumps(o))
        exact = {"engine": "exact", "usage": {"tokens": 3, "symbols": 2},
                 "timings": {"total_ms": 0.1, "attention_ms": 0.05},
                 "answers": [{"query": "a", "value": 1, "found": True}]}
        self.assertEqual(validation_errors(exact, s), [])
        for mutate in (lambda o: o["timings"].pop("attention_ms"), lambda o: o.update(model="m"),
                       lambda o: o["answers"][0].update(probability=1.0)):
            o = json.loads(json.dumps(exact))
            mutate(o)
            self.assertTrue(validation_errors(o, s), "schema accepts %s" % json.dumps(o))

    def test_model_info_schema(self):
        s = schema_ref("ModelInfo")
        cfg = {"dim": 32, "hidden_dim": 64, "n_layers": 1, "n_heads": 2, "n_kv_heads": 2, "vocab_size": 34,
               "seq_len": 16, "shared_classifier": True}
        rec = {"name": "r", "kind": "recall", "parameters": 10, "config": cfg, "tokenizer": "mqar", "source": "x",
               "origin": "trained", "weights": {"format": "f32", "bytes": 40}, "recall": {"n_pairs": 4, "n_keys": 16, "n_values": 16, "absent_fraction": 0.25}}
        self.assertEqual(validation_errors(rec, s), [])
        txt = dict(rec, kind="text", tokenizer="byte")
        txt.pop("recall")
        self.assertEqual(validation_errors(txt, s), [])
        self.assertTrue(validation_errors(dict(rec, recall=None), s))
        self.assertTrue(validation_errors({k: v for k, v in rec.items() if k != "recall"}, s))
        self.assertTrue(validation_errors(dict(txt, recall=rec["recall"]), s))
        self.assertTrue(validation_errors(dict(rec, kind="image"), s))

    def test_checkpoint_writer(self):
        """The Python writer's header: what include/tfm/checkpoint.h says."""
        w = _workdir()
        path = make_recall_model(w.sub("check.safetensors"), SMALL, 1)
        with open(path, "rb") as f:
            data = f.read()
        n = struct.unpack("<Q", data[:8])[0]
        self.assertEqual(n % 8, 0)
        hdr = json.loads(data[8:8 + n])
        self.assertEqual(hdr["__metadata__"]["task"], "recall")
        end = max(e["data_offsets"][1] for k, e in hdr.items() if k != "__metadata__")
        self.assertEqual(len(data), 8 + n + end)


# ==========================================================================
# /models: text and recall models, the data dir's trained ones


class Test01Registry(Base):
    def test_models_listed_with_kind(self):
        ms = self.models()
        self.assertEqual(set(ms), {"tiny", "mqar-8x64", "small-recall", "trained-recall", "trained-text"},
                         "the models dir, then the data dir's trained models; not the corrupt, the "
                         "duplicate, the .bin nor the temporary file")
        obj = self.srv.get("/models").json()
        names = [m["name"] for m in obj["models"]]
        self.assertEqual(names, sorted(names), "sorted by name")
        for name in ("tiny", "trained-text"):
            self.assertEqual(ms[name]["kind"], "text")
            self.assertEqual(ms[name]["tokenizer"], "byte")
            self.assertNotIn("recall", ms[name])
        for name, p in (("mqar-8x64", BIG), ("small-recall", SMALL), ("trained-recall", SMALL)):
            m = ms[name]
            self.assertEqual(m["kind"], "recall", name)
            self.assertEqual(m["tokenizer"], "mqar", name)
            self.assertEqual(m["recall"], p, name)
            cfg = recall_cfg(p)
            self.assertEqual(m["config"]["vocab_size"], cfg["vocab"], name)
            self.assertEqual(m["config"]["seq_len"], cfg["seq_len"], name)
            self.assertEqual(m["parameters"], H.param_count(cfg), name)

    def test_data_dir_models_loaded_at_start(self):
        ms = self.models()
        data = os.path.realpath(_workdir().sub("data-main", "models"))
        for name in ("trained-recall", "trained-text"):
            self.assertEqual(os.path.realpath(ms[name]["source"]),
                             os.path.join(data, name + ".safetensors"))
        # the duplicate name keeps the models dir's model, and says so
        self.assertEqual(ms["tiny"]["kind"], "text")
        self.assertEqual(os.path.realpath(ms["tiny"]["source"]),
                         os.path.realpath(_workdir().sub("models", "tiny.safetensors")))
        err = self.srv.stderr_text()
        self.assertIn('the name "tiny" is taken', err)
        self.assertIn("corrupt.safetensors", err, "a corrupt trained model is reported")
        self.assertNotIn("legacy", err)
        # a save cut short is no model: its temporary file is deleted, once
        self.assertEqual(err.count("partial.safetensors.tmp.123: removed"), 1)
        self.assertFalse(os.path.exists(os.path.join(data, "partial.safetensors.tmp.123")))
        self.assertNotIn("young", err)
        self.assertTrue(os.path.exists(os.path.join(data, "young.safetensors.tmp.124")))

    def test_readyz_counts_every_model(self):
        r = self.srv.get("/readyz")
        self.assertEqual(self.assertAnswer(r, 200, "GET", "/readyz")["models"], 5)
        fams, _, _ = self.srv.metrics()
        self.assertEqual(H.sample_value(fams, "attnd_models_loaded"), 5)

    def test_generate_serves_text_models_only(self):
        g = self.gen_ok({"model": "trained-text", "prompt": "Hi", "max_tokens": 3, "temperature": 0})
        self.assertEqual(g["model"], "trained-text")
        self.assertEqual(len(g["tokens"]), 3)
        # the default: the first text model by name, never a recall model
        g = self.gen_ok({"prompt": "Hi", "max_tokens": 2})
        self.assertEqual(g["model"], "tiny")
        for name in ("mqar-8x64", "trained-recall"):
            r = self.srv.generate({"model": name, "prompt": "Hi", "max_tokens": 2})
            err = self.assertError(r, 422, "invalid_argument", field="model")
            self.assertIn("recall model", err["message"])
        self.assertHealthy("/generate with recall models")


# ==========================================================================
# POST /recall with engine "model"


class Test02RecallModel(Base):
    def test_answer_shape(self):
        obj = self.ask("mqar-8x64", [[3, 17], [42, 5], [3, 9]], [3, 42, 7, 63, 0])
        self.ask("small-recall", [[0, 0]], [0], single=True)
        self.ask("small-recall", [[15, 15]], [])
        self.ask("trained-recall", [[1, 2], [3, 4], [5, 6], [7, 8]], list(range(16)), explain=False)
        # values are indices into the model's values; null is ⊥
        for a in obj["answers"]:
            self.assertTrue(a["value"] is None or 0 <= a["value"] < BIG["n_values"], a)

    def test_documented_example(self):
        n = 0
        for _, name, ex, body, _ in H.request_examples("/recall"):
            if body.get("engine") != "model":
                continue
            self.assertEqual(ex["x-expect"]["status"], 200, name)
            self.assertIn(ex.get("x-needs-model"), self.models(), name)
            qs = body["queries"] if "queries" in body else [body["query"]]
            self.ask(body.get("model"), body["pairs"], qs, single="query" in body)
            n += 1
        self.assertGreaterEqual(n, 1, "the contract documents an engine \"model\" request")

    def test_default_model_is_the_first_recall_model_by_name(self):
        obj = self.ask(None, [[1, 1]], [1])
        self.assertEqual(obj["model"], "mqar-8x64")

    def test_deterministic(self):
        rng = random.Random(SEED)
        for _ in range(20):
            pairs = [[k, rng.randrange(64)] for k in rng.sample(range(64), rng.randrange(1, 9))]
            qs = [rng.randrange(64) for _ in range(rng.randrange(1, 30))]
            a = self.ask("mqar-8x64", pairs, qs)
            b = self.ask("mqar-8x64", pairs, qs)
            self.assertEqual(a["answers"], b["answers"])

    def test_batched_queries_answer_as_single_ones(self):
        pairs = [[5, 1], [9, 2], [33, 3]]
        qs = [5, 9, 33, 0, 63, 5]
        many = self.ask("mqar-8x64", pairs, qs)["answers"]
        for q, a in zip(qs, many):
            one = self.ask("mqar-8x64", pairs, [q], single=True)["answers"][0]
            self.assertEqual(one["value"], a["value"], q)
            self.assertAlmostEqual(one["probability"], a["probability"], places=5)

    def test_repeated_key_means_its_latest_value(self):
        """The store the model reads keeps each key once, where it first
        appeared, with its latest value: a store with overwrites answers
        exactly as the same store written without them."""
        rng = random.Random(SEED + 1)
        for _ in range(30):
            keys = rng.sample(range(64), rng.randrange(1, 9))
            final = {k: rng.randrange(64) for k in keys}
            plain = [[k, final[k]] for k in keys]
            noisy = []
            for k in keys:
                noisy += [[k, rng.randrange(64)] for _ in range(rng.randrange(0, 3))]
                noisy.append([k, final[k]])
            # later overwrites of keys already placed
            for k in rng.sample(keys, rng.randrange(0, len(keys) + 1)):
                noisy.append([k, rng.randrange(64)])
                noisy.append([k, final[k]])
            qs = keys + [rng.randrange(64) for _ in range(4)]
            a = self.ask("mqar-8x64", plain, qs)["answers"]
            b = self.ask("mqar-8x64", noisy, qs)["answers"]
            self.assertEqual(a, b, "store %s vs %s" % (plain, noisy))

    def test_at_most_n_pairs_distinct_keys(self):
        # n_pairs distinct keys, each repeated: fine
        pairs = [[k, v] for k in range(8) for v in range(3)]
        self.ask("mqar-8x64", pairs, [0, 7, 8])
        err = self.assertRecallError({"engine": "model", "model": "mqar-8x64",
                                      "pairs": [[k, 0] for k in range(9)], "queries": [0]},
                                     422, "invalid_argument", "pairs")
        self.assertIn("8", err["message"])

    def test_422_symbols_out_of_the_models_range(self):
        I = "invalid_argument"  # noqa: E741
        M = {"engine": "model", "model": "small-recall"}

        def b(**kw):
            d = dict(M, pairs=[[1, 2], [3, 4]], queries=[1])
            d.update(kw)
            return d
        cases = [
            (b(pairs=[[16, 0]]), "pairs[0]"),  # key = n_keys
            (b(pairs=[[1, 2], [-1, 0]]), "pairs[1]"),
            (b(pairs=[[1, 16]]), "pairs[0]"),  # value = n_values
            (b(pairs=[[1, -1]]), "pairs[0]"),
            (b(pairs=[["1", 2]]), "pairs[0]"),  # a string is no key here
            (b(pairs=[[1, "2"]]), "pairs[0]"),
            (b(pairs=[[1.0, 2]]), "pairs[0]"),
            (b(pairs=[[True, 2]]), "pairs[0]"),
            (b(pairs=[[1, None]]), "pairs[0]"),
            (b(pairs=[[2 ** 40, 2]]), "pairs[0]"),
            (b(pairs=[[1, 2, 3]]), "pairs[0]"),
            (b(pairs=[1]), "pairs[0]"),
            (b(pairs=[]), "pairs"),  # the model needs a store
            (b(queries=[16]), "queries[0]"),  # query = n_keys
            (b(queries=[0, -1]), "queries[1]"),
            (b(queries=[0, 1, "a"]), "queries[2]"),
            (b(queries=[1.5]), "queries[0]"),
            (dict(M, pairs=[[1, 2]], query=99), "query"),
            (dict(M, pairs=[[1, 2]], query="1"), "query"),
            (b(explain=True), "explain"),  # no attention weights from a model
            (b(explain="yes"), "explain"),
            (b(pairs=[[k, 0] for k in range(5)]), "pairs"),  # n_pairs + 1 distinct keys
        ]
        failures = []
        for body, field in cases:
            try:
                self.assertRecallError(body, 422, I, field)
            except AssertionError as e:
                failures.append("%s: %s" % (json.dumps(body)[:120], str(e).splitlines()[0][:200]))
        if failures:
            self.fail("\n  ".join(["%d of %d answered wrongly:" % (len(failures), len(cases))] + failures))

    def test_model_field_errors(self):
        I = "invalid_argument"  # noqa: E741
        body = {"engine": "model", "pairs": [[1, 2]], "queries": [1]}
        self.assertRecallError(dict(body, model="nope"), 404, "model_not_found", "model")
        for text in ("tiny", "trained-text"):
            err = self.assertRecallError(dict(body, model=text), 422, I, "model")
            self.assertIn("text model", err["message"])
        self.assertRecallError(dict(body, model=5), 422, I, "model")
        self.assertRecallError(dict(body, model=""), 422, I, "model")
        self.assertRecallError(dict(body, model=None), 422, I, "model")
        # model belongs to engine "model"
        b = {"pairs": [[1, 2]], "queries": [1], "model": "small-recall"}
        self.assertRecallError(b, 422, I, "model")
        self.assertRecallError(dict(b, engine="exact"), 422, I, "model")
        self.assertRecallError(dict(body, engine="Model"), 422, I, "engine")
        # the exact engine is untouched: strings and all
        r = self.recall({"pairs": [["a", 1], [1, "b"]], "queries": ["a", 1, "c"]})
        obj = self.assertAnswer(r, 200, "POST", "/recall", strict=True)
        self.assertEqual([a["value"] for a in obj["answers"]], [1, "b", None])
        self.assertNotIn("model", obj)

    def test_limits_still_apply(self):
        I = "invalid_argument"  # noqa: E741
        self.assertRecallError({"engine": "model", "model": "small-recall", "pairs": [[1, 2]] * 4097,
                                "queries": [1]}, 422, I, "pairs")
        self.assertRecallError({"engine": "model", "model": "small-recall", "pairs": [[1, 2]],
                                "queries": [1] * 1025}, 422, I, "queries")
        # the most queries at once: one batch of sequences
        obj = self.ask("small-recall", [[1, 2], [3, 4]], [i % 16 for i in range(1024)])
        self.assertEqual(len(obj["answers"]), 1024)

    def test_concurrent_with_generation(self):
        """Recall on the worker, generation on the engine, /models on the
        HTTP thread, all at once: every answer right (TSan watches)."""
        pairs = [[1, 2], [3, 4]]
        want = self.ask("small-recall", pairs, [1, 3, 5])["answers"]

        def recall():
            out = []
            for _ in range(15):
                r = self.recall({"engine": "model", "model": "small-recall", "pairs": pairs, "queries": [1, 3, 5]})
                out.append((r.status, r.json()["answers"] if r.status == 200 else r.body))
            return out

        def generate():
            return [self.srv.generate({"model": m, "prompt": "Hi", "max_tokens": 4}).status
                    for m in ("tiny", "trained-text") * 4]

        def listing():
            return [self.srv.get("/models").status for _ in range(20)]
        res = H.run_threads([recall, recall, recall, generate, generate, listing])
        for x in res:
            self.assertNotIsInstance(x, BaseException, repr(x))
        for x in res[:3]:
            for status, answers in x:
                self.assertEqual(status, 200, answers)
                self.assertEqual(answers, want)
        for x in res[3:]:
            self.assertEqual(set(x), {200})


# ==========================================================================
# /metrics


class Test03Metrics(Base):
    def test_counted_by_engine(self):
        def scrape():
            return self.srv.metrics()[0]

        def d(f0, f1, fam, **lab):
            return H.sample_value(f1, fam, **lab) - H.sample_value(f0, fam, **lab)
        f0 = scrape()
        self.ask("small-recall", [[1, 2], [3, 4], [1, 5]], [1, 3, 9])
        self.ask("small-recall", [[1, 2]], [1], single=True)
        self.recall({"pairs": [["a", 1]], "queries": ["a", "b"]})
        self.recall({"engine": "model", "model": "small-recall", "pairs": [[99, 1]], "queries": [1]})  # 422
        f1 = scrape()
        got = {
            "model requests": d(f0, f1, "attnd_recall_requests_total", engine="model"),
            "model queries": d(f0, f1, "attnd_recall_queries_total", engine="model"),
            "exact requests": d(f0, f1, "attnd_recall_requests_total", engine="exact"),
            "exact queries": d(f0, f1, "attnd_recall_queries_total", engine="exact"),
            "tokens": d(f0, f1, "attnd_recall_tokens_total"),
            "200": d(f0, f1, "attnd_requests_total", route="/recall", code="200"),
            "422": d(f0, f1, "attnd_requests_total", route="/recall", code="422"),
        }
        self.assertEqual(got, {"model requests": 2, "model queries": 4, "exact requests": 1, "exact queries": 2,
                               "tokens": (6 + 3) + (2 + 1) + (2 + 2), "200": 3, "422": 1})
        # the model engine's forward is in the op accounting: phase prefill, kernel naive, one
        # call per query (a sequence of its own) and layer (small-recall has one)

        def calls(f):
            return sum(val for name, lab, val, _ in f["attnd_attention_calls_total"].samples
                       if lab.get("phase") == "prefill" and lab.get("kernel") == "naive")
        self.assertEqual(calls(f1) - calls(f0), 4)
        self.assertGreater(d(f0, f1, "attnd_op_flops_total", **{"class": "tensor_contraction", "phase": "prefill"}), 0)
        for fam in ("attnd_recall_requests_total", "attnd_recall_queries_total"):
            self.assertEqual(f1[fam].type, "counter")
            self.assertTrue((f1[fam].help or "").strip())
            self.assertEqual({lab["engine"] for _, lab, _, _ in f1[fam].samples}, {"exact", "model"})


# ==========================================================================
# the bundled trained recall model: correct answers


class Test04TrainedModelAccuracy(Base):
    lazy = REAL

    def setUp(self):
        if not BUNDLED:
            self.skipTest("no bundled models/recall-*.safetensors in %s: accuracy of a trained model not "
                          "checked" % H.REPO)
        super().setUp()

    def test_accuracy_against_a_dict(self):
        ms = self.models()
        recall_models = [m for m in ms.values() if m["kind"] == "recall"]
        self.assertEqual(len(recall_models), len(BUNDLED))
        rng = random.Random(SEED + 2)
        report = []
        for m in recall_models:
            p = m["recall"]
            n_pairs, n_keys, n_values = p["n_pairs"], p["n_keys"], p["n_values"]
            right = total = right_absent = absent = overwritten = 0
            conn = self.srv.connect()
            try:
                for i in range(N_ACCURACY_STORES):
                    # full stores, and (every other one) smaller ones: the
                    # bundled model trained on 1 .. n_pairs pairs
                    size = n_pairs if i % 2 == 0 else rng.randint(1, n_pairs)
                    keys = rng.sample(range(n_keys), size)
                    pairs = [[k, rng.randrange(n_values)] for k in keys]
                    if i % 5 == 0:  # overwrites: the latest value is the answer
                        for _ in range(rng.randrange(1, 4)):
                            pairs.append([rng.choice(keys), rng.randrange(n_values)])
                            overwritten += 1
                    store = dict((k, v) for k, v in pairs)
                    others = [k for k in range(n_keys) if k not in store]
                    qs = [rng.choice(keys) if (rng.random() < 0.75 or not others) else rng.choice(others)
                          for _ in range(8)]
                    r = self.recall({"engine": "model", "model": m["name"], "pairs": pairs, "queries": qs},
                                    conn=conn)
                    obj = self.assertAnswer(r, 200, "POST", "/recall")
                    for q, a in zip(qs, obj["answers"]):
                        want = store.get(q)
                        total += 1
                        right += a["value"] == want
                        if want is None:
                            absent += 1
                            right_absent += a["value"] is None
            finally:
                conn.close()
            acc = right / total
            report.append("%s: %.4f over %d queries (absent %d, right %d; %d overwrites)"
                          % (m["name"], acc, total, absent, right_absent, overwritten))
            self.assertGreater(absent, 100, "the premise: absent keys were asked")
            self.assertGreaterEqual(acc, 0.99, "accuracy over %d random stores: %s"
                                    % (N_ACCURACY_STORES, report[-1]))
        if H.OPTS.verbose:
            sys.stderr.write("\n".join(report) + "\n")


# ==========================================================================
# run-time registration: a training job's model, served by name at once


def _has_train():
    return "/train" in H.openapi()["paths"]


class Test05RunTimeRegistration(Base):
    lazy = TRAIN

    def setUp(self):
        if not _has_train():
            self.skipTest("no POST /train in api/openapi.yaml yet: run-time registration (srv_models_add) "
                          "is tested through start-up loading only")
        super().setUp()

    def train(self, body, timeout=240):
        r = self.srv.post("/train", body)
        self.assertEqual(r.status, 202, r.body[:400])
        job = r.json()["id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.srv.get("/train/%s" % job).json()
            if st["status"] in ("succeeded", "failed", "cancelled"):
                self.assertEqual(st["status"], "succeeded", st)
                return st
            time.sleep(0.2)
        self.fail("job %s did not finish within %ds" % (job, timeout))

    def test_recall_job_served_at_once(self):
        before = set(self.models())
        self.assertNotIn("fresh-recall", before)
        self.train({"task": "recall", "name": "fresh-recall",
                    "model": {"dim": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 2, "hidden_dim": 64},
                    "steps": 20, "batch_size": 8, "seq_len": 16,
                    "recall": {"n_pairs": 4, "n_keys": 16, "n_values": 16, "absent_fraction": 0.25}})
        ms = self.models()
        self.assertEqual(set(ms), before | {"fresh-recall"})
        m = ms["fresh-recall"]
        self.assertEqual(m["kind"], "recall")
        self.assertEqual(m["recall"], {"n_pairs": 4, "n_keys": 16, "n_values": 16, "absent_fraction": 0.25})
        self.ask("fresh-recall", [[1, 2], [3, 4]], [1, 3, 5])
        self.assertRecallError({"engine": "model", "model": "fresh-recall", "pairs": [[16, 0]], "queries": [1]},
                               422, "invalid_argument", "pairs[0]")
        r = self.srv.generate({"model": "fresh-recall", "prompt": "x", "max_tokens": 1})
        self.assertError(r, 422, "invalid_argument", field="model")

    def test_text_job_served_at_once(self):
        self.train({"task": "text", "name": "fresh-text",
                    "model": {"dim": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 2, "hidden_dim": 64},
                    "steps": 10, "batch_size": 4, "seq_len": 32,
                    "text": {"text": "In the beginning was the word. " * 40}})
        ms = self.models()
        self.assertEqual(ms["fresh-text"]["kind"], "text")
        g = self.gen_ok({"model": "fresh-text", "prompt": "In the", "max_tokens": 5, "temperature": 0})
        self.assertEqual(g["model"], "fresh-text")
        # the start-up default does not move to a model trained later
        g = self.gen_ok({"prompt": "In the", "max_tokens": 1})
        self.assertEqual(g["model"], "tiny")


class Test06Restart(Base):
    """A registered model survives a restart: it is loaded from the data dir."""
    lazy = TRAIN

    def test_trained_models_after_restart(self):
        if not _has_train():
            self.skipTest("no POST /train yet (start-up loading of the data dir is Test01's)")
        srv = self.srv
        trained = {n for n, m in self.models().items() if n.startswith("fresh-")}
        if not trained:
            self.skipTest("no job of Test05 succeeded")
        rc, _, killed = TRAIN.stop(timeout=10)
        self.assertEqual((rc, killed), (0, False), srv.output_tail())
        again = _train()
        try:
            ms = self.models(srv=again)
            self.assertTrue(trained <= set(ms), "after a restart: %s of %s" % (sorted(ms), sorted(trained)))
            if "fresh-recall" in ms:
                self.ask("fresh-recall", [[1, 2]], [1], srv=again)
        finally:
            again.stop(timeout=10)


# ==========================================================================
# every answer of the run against api/openapi.yaml; clean exits (last)


class Test98Contract(H.ContractTest):
    pass


class Test99Shutdown(H.ShutdownTest):
    servers = SERVERS
    names = "main, real, train"


if __name__ == "__main__":
    H.run(sys.modules[__name__], description=__doc__.splitlines()[0], cleanup=_cleanup)
