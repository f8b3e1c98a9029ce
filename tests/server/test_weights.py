#!/usr/bin/env python3
"""attnd --weights: text models converted to bf16, q8 or q4 as they load.

  formats     for each format: /models shows it with fewer bytes than f32
              (each format smaller than the last), /metrics exports
              attnd_model_weight_bytes{model,format}, greedy /generate
              answers; bf16 and q8 agree with f32's greedy text on the
              bundled-shaped random model for the first tokens; a recall
              model stays f32 and answers /recall
  refusals    --weights q5 (and ATTND_WEIGHTS=q5) exits 2 naming the flag;
              a model whose widths are not multiples of 32 is served in f32
              with a log line, the others converted
  kv cache    --kv-cache bf16 and q8 (and ATTND_KV_CACHE): greedy /generate
              of 200 tokens answers 200 and agrees with the f32 cache's for
              the first tokens, also on the odd model (head size 12);
              --kv-cache q4 exits 2 naming the flag
"""

import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

WORK = None
SERVERS = []
SHAPE = dict(dim=64, hidden=128, layers=2, heads=4, kv_heads=2, vocab=258, seq_len=256)
ODD = dict(dim=48, hidden=80, layers=1, heads=4, kv_heads=2, vocab=258, seq_len=64)


def work():
    global WORK
    if WORK is None:
        WORK = H.Workdir(prefix="attnd-weights-")
        d = WORK.mkdir("models")
        H.make_model(os.path.join(d, "even.safetensors"), SHAPE, 7)
        H.make_model(os.path.join(d, "odd.safetensors"), ODD, 8)
    return WORK


def server(fmt):
    w = work()
    s = H.Server(["--host", "127.0.0.1", "--port", "0", "--models-dir", w.sub("models"),
                  "--data-dir", w.mkdir("data-" + fmt), "--threads", "1", "--quiet",
                  "--weights", fmt], name="attnd-" + fmt, workdir=w.path)
    SERVERS.append(s)
    return s.start()


def cleanup():
    for s in SERVERS:
        s.stop(timeout=10)
    if WORK is not None:
        WORK.cleanup()


class Test01Formats(unittest.TestCase):
    def models(self, srv):
        r = srv.get("/models")
        self.assertEqual(r.status, 200)
        errs = H.validation_errors(r.json(), H.response_schema("GET", "/models", 200))
        self.assertEqual(errs, [], r.body[:300])
        return {m["name"]: m for m in r.json()["models"]}

    def greedy(self, srv):
        r = srv.generate({"model": "even", "prompt": "In the beginning", "max_tokens": 24,
                          "temperature": 0, "ignore_eos": True})
        self.assertEqual(r.status, 200, r.body[:300])
        return r.json()["tokens"] if "tokens" in r.json() else r.json()["text"]

    def test_each_format(self):
        base = server("f32")
        ref = self.models(base)
        ref_text = self.greedy(base)
        self.assertEqual(ref["even"]["weights"]["format"], "f32")
        # the float32 embedding stays (a quarter of this small model)
        last = ref["even"]["weights"]["bytes"]
        for fmt, share in (("bf16", 0.75), ("q8", 0.5), ("q4", 0.42)):
            srv = server(fmt)
            ms = self.models(srv)
            w = ms["even"]["weights"]
            self.assertEqual(w["format"], fmt)
            self.assertLess(w["bytes"], ref["even"]["weights"]["bytes"] * share, fmt)
            self.assertLess(w["bytes"], last, fmt)
            last = w["bytes"]
            self.assertEqual(ms["odd"]["weights"]["format"], "f32" if fmt != "bf16" else "bf16")
            if fmt != "bf16":
                self.assertIn("model odd: kept in f32", srv.stderr_text())
            fams, _, _ = srv.metrics()
            self.assertEqual(H.sample_value(fams, "attnd_model_weight_bytes", model="even", format=fmt),
                             w["bytes"])
            text = self.greedy(srv)
            if fmt in ("bf16", "q8"):
                # the first tokens agree with f32's (later ones may part)
                self.assertEqual(text[:4], ref_text[:4], "%s: %r vs %r" % (fmt, text, ref_text))
            srv.stop(timeout=10)

    def test_recall_model_stays_f32(self):
        w = work()
        rdir = w.mkdir("recall-models")
        bundled = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "models",
                               "recall-mqar8.safetensors")
        if not os.path.exists(bundled):
            self.skipTest("no bundled recall model")
        s = H.Server(["--host", "127.0.0.1", "--port", "0", "--model", bundled, "--model",
                      w.sub("models", "even.safetensors"), "--data-dir", w.mkdir("data-recall"),
                      "--threads", "1", "--quiet", "--weights", "q8"], name="attnd-recall",
                     workdir=w.path)
        SERVERS.append(s)
        s.start()
        ms = self.models(s)
        self.assertEqual(ms["recall-mqar8"]["weights"]["format"], "f32")
        self.assertEqual(ms["even"]["weights"]["format"], "q8")
        r = s.post("/recall", {"engine": "model", "model": "recall-mqar8", "pairs": [[3, 17], [42, 5]],
                               "queries": [3, 42]})
        self.assertEqual(r.status, 200, r.body[:300])
        self.assertEqual([a["value"] for a in r.json()["answers"]], [17, 5])
        del rdir


class Test02Refusals(unittest.TestCase):
    def test_bad_format(self):
        for args, env in ((["--weights", "q5"], {}), ([], {"ATTND_WEIGHTS": "q5"})):
            r = subprocess.run([H.OPTS.attnd, "--port", "0"] + args, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=30, env=H.clean_env(**env),
                               stdin=subprocess.DEVNULL)
            self.assertEqual(r.returncode, 2, r.stderr[-300:])
            self.assertIn(b"--weights must be f32, bf16, q8 or q4", r.stderr)


class Test03KvCache(unittest.TestCase):
    def greedy(self, srv, model):
        r = srv.generate({"model": model, "prompt": "In the beginning", "max_tokens": 200,
                          "temperature": 0, "ignore_eos": True})
        self.assertEqual(r.status, 200, r.body[:300])
        body = r.json()
        return body["tokens"] if "tokens" in body else body["text"]

    def kv_server(self, args, env=None, tag=""):
        w = work()
        s = H.Server(["--host", "127.0.0.1", "--port", "0", "--models-dir", w.sub("models"),
                      "--data-dir", w.mkdir("data-kv" + tag), "--threads", "1", "--quiet"] + args,
                     env=env, name="attnd-kv" + tag, workdir=w.path)
        SERVERS.append(s)
        return s.start()

    def test_formats_agree(self):
        base = self.kv_server([], tag="f32")
        ref = {m: self.greedy(base, m) for m in ("even", "odd")}
        f32_models = Test01Formats.models(self, base)
        self.assertEqual(f32_models["even"]["kv_cache"]["format"], "f32")
        # even: 2 layers x (keys, values) x 2 kv heads of 16, float32
        self.assertEqual(f32_models["even"]["kv_cache"]["bytes_per_token"], 2 * 2 * 32 * 4)
        base.stop(timeout=10)
        for fmt, args, env in (("bf16", ["--kv-cache", "bf16"], None),
                               ("q8", [], H.clean_env(ATTND_KV_CACHE="q8"))):
            srv = self.kv_server(args, env=env, tag=fmt)
            ms = Test01Formats.models(self, srv)
            per = ms["even"]["kv_cache"]["bytes_per_token"]
            self.assertEqual(ms["even"]["kv_cache"]["format"], fmt)
            # bf16 half of f32; q8 a byte a value and a float scale per head row
            self.assertEqual(per, 2 * 2 * 32 * 2 if fmt == "bf16" else 2 * 2 * (32 + 2 * 4))
            for m in ("even", "odd"):
                self.assertIn("model %s: KV cache %s" % (m, fmt), srv.stderr_text())
                got = self.greedy(srv, m)
                self.assertGreater(len(got), 0, fmt)
                self.assertEqual(got[:4], ref[m][:4], "%s %s: %r vs %r" % (fmt, m, got, ref[m]))
            srv.stop(timeout=10)

    def test_bad_kv_cache(self):
        for args, env in ((["--kv-cache", "q4"], {}), ([], {"ATTND_KV_CACHE": "fp8"})):
            r = subprocess.run([H.OPTS.attnd, "--port", "0"] + args, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=30, env=H.clean_env(**env),
                               stdin=subprocess.DEVNULL)
            self.assertEqual(r.returncode, 2, r.stderr[-300:])
            self.assertIn(b"--kv-cache must be f32, bf16 or q8", r.stderr)


class Test04Mixer(unittest.TestCase):
    """A model with a linear-attention layer (attn random --mixer): /models
    shows its mixer, feature_dim and the recurrent state beside the KV cache
    of its one softmax layer; it generates, and /metrics books kernel
    "linear"."""

    def test_hybrid_model(self):
        w = work()
        d = w.mkdir("mixer-models")
        H.make_model(os.path.join(d, "hybrid.safetensors"), SHAPE, 9,
                     extra=("--mixer", "linear,softmax", "--feature-dim", "8"))
        s = H.Server(["--host", "127.0.0.1", "--port", "0", "--models-dir", d,
                      "--data-dir", w.mkdir("data-mixer"), "--threads", "1", "--quiet"],
                     name="attnd-mixer", workdir=w.path)
        SERVERS.append(s)
        s.start()
        r = s.get("/models")
        self.assertEqual(r.status, 200)
        self.assertEqual(H.validation_errors(r.json(), H.response_schema("GET", "/models", 200)), [])
        m = {x["name"]: x for x in r.json()["models"]}["hybrid"]
        self.assertEqual(m["config"]["mixer"], "linear,softmax")
        self.assertEqual(m["config"]["feature_dim"], 8)
        head = SHAPE["dim"] // SHAPE["heads"]
        # keys and values of the one softmax layer, f32
        self.assertEqual(m["kv_cache"]["bytes_per_token"], 2 * SHAPE["kv_heads"] * head * 4)
        # S (1 + f + f^2, head) and z (1 + f + f^2) per kv head of the
        # linear layer, floats, the layer's storage rounded up to 64 bytes
        need = 4 * SHAPE["kv_heads"] * (1 + 8 + 64) * (head + 1)
        self.assertTrue(need <= m["kv_cache"]["state_bytes"] < need + 64, m["kv_cache"])
        r = s.generate({"model": "hybrid", "prompt": "In the beginning", "max_tokens": 40,
                        "temperature": 0, "ignore_eos": True})
        self.assertEqual(r.status, 200, r.body[:300])
        again = s.generate({"model": "hybrid", "prompt": "In the beginning", "max_tokens": 40,
                            "temperature": 0, "ignore_eos": True})
        self.assertEqual(again.json()["text"], r.json()["text"], "greedy is deterministic")
        _, text, _ = s.metrics()
        self.assertIn('kernel="linear"', text)


class Test99Contract(H.ContractTest):
    pass


if __name__ == "__main__":
    H.run(sys.modules[__name__], description=__doc__.splitlines()[0], cleanup=cleanup)
