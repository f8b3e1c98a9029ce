#!/usr/bin/python3
"""test_server.py — attnd's HTTP contract (api/openapi.yaml), against the
real server.

    /usr/bin/python3 tests/server/test_server.py --attnd build/attnd --attn build/attn [-k NAME] [-v]

One attnd serves every test here. It is started on first use on an
ephemeral port of 127.0.0.1 with three random byte-level models made by
`attn random`: tiny (seq_len 256, seed 1), other (same shape, seed 2) and
slow4k (seq_len 4096, big enough that a 4096-token generation takes
seconds, for the disconnect and batching tests). Classes run in name
order; the last one stops the server with SIGTERM and checks it exits 0.

A note on random models: their greedy output repeats the prompt's last
byte ("Hello" -> "ooooo..."), and at temperature 1 too. At temperature 5
the output varies, so the tests that need varied text (seeds, stop strings,
UTF-8 handling) sample at temperature 5 with a fixed seed.
"""

import json
import os
import select
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
from harness import MISSING, schema_ref, validation_errors  # noqa: E402

GRACE = 3
WORK = None


def _start():
    global WORK
    if WORK is None:
        WORK = H.Workdir()
        models = WORK.mkdir("models")
        H.make_model(os.path.join(models, "tiny.safetensors"), H.TINY, 1)
        H.make_model(os.path.join(models, "other.safetensors"), H.TINY, 2)
        H.make_model(os.path.join(models, "slow4k.safetensors"), H.SLOW, 3)
    models = WORK.sub("models")
    srv = H.Server(["--host", "127.0.0.1", "--port", "0", "--models-dir", models,
                    "--data-dir", WORK.sub("data"), "--threads", "2", "--grace-seconds", str(GRACE)],
                   name="attnd", workdir=WORK.path)
    return srv.start()


SRV = H.LazyServer(_start)


def _cleanup():
    s = SRV.server
    if s is not None:
        s.stop(timeout=GRACE + 5)
    if WORK is not None:
        WORK.cleanup()


class Base(H.ServerTest):
    lazy = SRV

    @property
    def srv(self):
        return SRV.get()

    def greedy(self, prompt="Hello", n=16, model="tiny", **kw):
        b = {"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0}
        b.update(kw)
        return self.gen_ok(b)

    def sampled(self, seed, prompt="Once upon a time", n=100, model="tiny", **kw):
        b = {"model": model, "prompt": prompt, "max_tokens": n, "temperature": 5, "seed": seed}
        b.update(kw)
        return self.gen_ok(b)

    def varied_sample(self, need_high_byte=False, n=100):
        """A seeded temperature-5 sample whose text varies (>= 8 distinct
        tokens, >= 40 tokens) — the premise of the seed and stop tests.
        Returns (seed, response)."""
        last = None
        for seed in range(1234, 1246):
            r = self.sampled(seed, n=n)
            last = r
            toks = r["tokens"]
            if len(toks) < 40 or len(set(toks)) < 8:
                continue
            if need_high_byte and not any(128 <= t < 256 for t in toks):
                continue
            return seed, r
        self.fail("premise: no seed in 1234..1245 gives a varied temperature-5 sample; last: %s"
                  % json.dumps(last)[:400])

    def check_usage(self, r, prompt_tokens=None):
        u = r["usage"]
        self.assertEqual(u["completion_tokens"], len(r["tokens"]), "completion_tokens != len(tokens): %s" % u)
        self.assertEqual(u["total_tokens"], u["prompt_tokens"] + u["completion_tokens"], "total_tokens: %s" % u)
        if prompt_tokens is not None:
            self.assertEqual(u["prompt_tokens"], prompt_tokens, "prompt_tokens (BOS + one per byte): %s" % u)


def pick_stop(text, width=2, start=4):
    """The first index i >= start where text[i:i+width] is printable ASCII
    (no U+FFFD) and occurs there for the first time. (i, stop) or None."""
    for i in range(start, len(text) - width + 1):
        s = text[i:i + width]
        if all(0x21 <= ord(c) <= 0x7E for c in s) and text.find(s) == i:
            return i, s
    return None


# ==========================================================================
# the contract document itself (no server)


class Test00Contract(unittest.TestCase):
    def test_openapi_is_3_1(self):
        doc = H.openapi()
        self.assertTrue(str(doc.get("openapi", "")).startswith("3.1"), doc.get("openapi"))
        for p in ("/generate", "/recall", "/models", "/healthz", "/readyz", "/metrics"):
            self.assertIn(p, doc["paths"])

    def test_schemas_are_valid_2020_12(self):
        import jsonschema
        for name, s in H.openapi()["components"]["schemas"].items():
            try:
                jsonschema.Draft202012Validator.check_schema(s)
            except jsonschema.SchemaError as e:
                self.fail("schema %s: %s" % (name, e.message))

    def test_every_ref_resolves(self):
        bad = []

        def walk(node, where):
            if isinstance(node, dict):
                if "$ref" in node:
                    try:
                        H.resolve_ref({"$ref": node["$ref"]})
                    except (KeyError, ValueError) as e:
                        bad.append("%s -> %s (%r)" % (where, node["$ref"], e))
                for k, v in node.items():
                    walk(v, where + "/" + str(k))
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    walk(v, "%s/%d" % (where, i))
        walk(H.openapi(), "#")
        self.assertEqual(bad, [])

    def test_every_example_file_is_referenced(self):
        refs = set()
        for _, _, ex, _, _ in H.request_examples():
            if "externalValue" in ex:
                refs.add(os.path.basename(ex["externalValue"]))
                self.assertTrue(os.path.exists(os.path.join(H.API_DIR, ex["externalValue"])), ex["externalValue"])
        files = set(f for f in os.listdir(H.EXAMPLES_DIR) if f.endswith(".json"))
        self.assertEqual(files - refs, set(), "example files openapi.yaml does not reference")

    def test_request_examples_against_schema(self):
        for path, name, ex, body, schema in H.request_examples():
            expect = ex.get("x-expect", {"status": 200})
            errs = validation_errors(body, schema)
            if expect["status"] == 422:
                self.assertTrue(errs, "example %s of %s should be invalid against its schema" % (name, path))
                self.assertTrue(any(H.field_in_schema_error(expect["field"], e) for e in errs),
                                "example %s: schema errors do not mention %s: %s" % (name, expect["field"], errs))
            else:
                self.assertEqual(errs, [], "example %s of %s" % (name, path))

    def test_response_examples_against_schema(self):
        doc = H.openapi()
        n = 0
        for path, item in doc["paths"].items():
            for method, op in item.items():
                for status, resp in op["responses"].items():
                    resp = H.resolve_ref(resp)
                    c = resp.get("content", {}).get("application/json")
                    if c and "example" in c:
                        n += 1
                        errs = validation_errors(c["example"], c["schema"])
                        self.assertEqual(errs, [], "%s %s %s example" % (method, path, status))
        self.assertGreater(n, 5)

    def test_stream_example_parses(self):
        op = H.openapi()["paths"]["/generate"]["post"]
        ex = op["responses"]["200"]["content"]["text/event-stream"]["example"]
        datas = H.parse_sse(ex.encode())
        self.assertEqual(datas[-1], "[DONE]")
        for d in datas[:-2]:
            self.assertEqual(validation_errors(json.loads(d), schema_ref("StreamTokenEvent")), [])
        self.assertEqual(validation_errors(json.loads(datas[-2]), schema_ref("StreamFinalEvent")), [])

    def test_schema_rejects_what_the_contract_rejects(self):
        bad = [{"prompt": "a", "max_tokens": 0}, {"prompt": "a", "max_tokens": 4097}, {"prompt": "a", "top_p": 0},
               {"prompt": "a", "temperature": 100.5}, {"prompt": "a", "seed": -1}, {"prompt": "a", "seed": 2 ** 64},
               {"prompt": "a", "stop": ["a"] * 5}, {"prompt": "a", "stop": [""]}, {"prompt": "a", "top_k": -1},
               {"prompt": "a", "stream": "yes"}, {"prompt": 5}, {}, {"prompt": "a", "max_tokens": 1.5}, []]
        for b in bad:
            self.assertTrue(validation_errors(b, schema_ref("GenerateRequest")), "schema accepts %r" % (b,))
        good = [{"prompt": ""}, {"prompt": "a", "seed": 2 ** 64 - 1, "temperature": 0, "top_p": 1, "top_k": 0,
                                 "max_new_tokens": 4096, "stop": "x", "stream": False, "model": "m"}]
        for b in good:
            self.assertEqual(validation_errors(b, schema_ref("GenerateRequest")), [], b)


# ==========================================================================
# health, readiness, the log


class Test01Health(Base):
    def test_listening_line(self):
        self.assertEqual(self.srv.host, "127.0.0.1")
        self.assertGreater(self.srv.port, 0)
        self.assertNotEqual(self.srv.port, 8080, "--port 0 should pick an ephemeral port")

    def test_healthz(self):
        obj = self.assertAnswer(self.srv.get("/healthz"), 200, "GET", "/healthz", strict=True)
        self.assertEqual(obj, {"status": "ok"})

    def test_readyz(self):
        obj = self.assertAnswer(self.srv.get("/readyz"), 200, "GET", "/readyz", strict=True)
        self.assertEqual(obj, {"status": "ready", "models": 3})

    def test_keep_alive(self):
        conn = self.srv.connect()
        try:
            socks = []
            for path in ("/healthz", "/readyz", "/models", "/metrics", "/healthz"):
                r = self.srv.get(path, conn=conn)
                self.assertEqual(r.status, 200, path)
                socks.append(conn.sock)
            r = self.srv.generate({"model": "tiny", "prompt": "hi", "max_tokens": 2, "temperature": 0}, conn=conn)
            self.assertEqual(r.status, 200)
            socks.append(conn.sock)
            self.assertTrue(all(s is not None and s is socks[0] for s in socks),
                            "the server closed a keep-alive connection between requests")
        finally:
            conn.close()

    def test_one_log_line_per_request(self):
        probe = "/log-probe-%d" % os.getpid()

        def pred(ln):
            return ln.startswith("GET %s " % probe)
        for _ in range(3):
            self.srv.get(probe)
        n = self.srv.wait_log(pred, 3, timeout=2)
        self.assertEqual(n, 3, "want 3 log lines for GET %s, saw %d" % (probe, n))
        time.sleep(0.2)
        lines = [ln for ln in self.srv.lines if pred(ln)]
        self.assertEqual(len(lines), 3, lines)
        for ln in lines:
            self.assertRegex(ln, H.LOG_RE, "log line format: METHOD PATH STATUS 12.3ms")
            self.assertEqual(H.LOG_RE.match(ln).group(3), "404")

    def test_log_line_for_generate(self):
        def pred(ln):
            return ln.startswith("POST /generate 200 ")
        n0 = self.srv.log_count(pred)
        self.greedy(n=2)
        # (>=: the line of an earlier request may land late, after n0 was taken)
        self.assertGreaterEqual(self.srv.wait_log(pred, n0 + 1), n0 + 1, "no log line for POST /generate")
        ln = [ln for ln in self.srv.lines if pred(ln)][-1]
        self.assertRegex(ln, H.LOG_RE)


# ==========================================================================
# GET /models


class Test02Models(Base):
    def models(self):
        obj = self.assertAnswer(self.srv.get("/models"), 200, "GET", "/models")
        return {m["name"]: m for m in obj["models"]}

    def assertConfig(self, got, want):
        # only the contract's keys here; extra keys are test_schema's business
        self.assertEqual({k: got.get(k) for k in want}, want)

    def test_schema(self):
        self.assertAnswer(self.srv.get("/models"), 200, "GET", "/models", strict=True)

    def test_names(self):
        self.assertEqual(set(self.models()), {"tiny", "other", "slow4k"})

    def test_tiny(self):
        m = self.models()["tiny"]
        self.assertEqual(m["kind"], "text")
        self.assertEqual(m["tokenizer"], "byte")
        self.assertConfig(m["config"], {"dim": 64, "hidden_dim": 128, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                                        "vocab_size": 258, "seq_len": 256, "shared_classifier": True})
        self.assertEqual(m["parameters"], H.param_count(H.TINY))
        self.assertEqual(os.path.basename(m["source"]), "tiny.safetensors")

    def test_slow4k(self):
        m = self.models()["slow4k"]
        c = H.SLOW
        self.assertConfig(m["config"], {"dim": c["dim"], "hidden_dim": c["hidden"], "n_layers": c["layers"],
                                        "n_heads": c["heads"], "n_kv_heads": c["kv_heads"], "vocab_size": 258,
                                        "seq_len": 4096, "shared_classifier": True})
        self.assertEqual(m["parameters"], H.param_count(c))


# ==========================================================================
# POST /generate


class Test03Generate(Base):
    def test_greedy_example(self):
        body = H.load_example("generate-greedy.json")
        r = self.assertAnswer(self.srv.generate(body), 200, "POST", "/generate", strict=True)
        self.assertEqual(r["model"], "tiny")
        self.assertEqual(r["finish_reason"], "length")
        self.assertEqual(len(r["tokens"]), body["max_tokens"])
        self.check_usage(r, prompt_tokens=len(body["prompt"]) + 1)
        self.assertEqual(r["text"], H.byte_text(r["tokens"]))

    def test_same_tokens_as_the_cli(self):
        prompt = "Once upon a time"
        cli = subprocess.run([H.OPTS.attn, "generate", "--model", os.path.join(WORK.path, "models", "tiny.safetensors"),
                              "--prompt", prompt, "-n", "40", "--temperature", "0", "--print-ids"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(cli.returncode, 0, cli.stderr)
        ids = [int(x) for x in cli.stdout.split()]
        r = self.greedy(prompt, n=40)
        self.assertEqual(r["tokens"], ids, "server greedy tokens differ from `attn generate --temperature 0`")

    def test_prompt_tokens_count_bos_and_bytes(self):
        for prompt in ("", "a", "Hello, world", "h\u00e9llo w\u00f6rld", "\u65e5\u672c\u8a9e", "tab\there\nnewline"):
            r = self.greedy(prompt, n=3)
            self.check_usage(r, prompt_tokens=len(prompt.encode("utf-8")) + 1)

    def test_max_tokens_respected(self):
        for n in (1, 7, 33):
            r = self.greedy(n=n)
            self.assertEqual(len(r["tokens"]), n)
            self.assertEqual(r["finish_reason"], "length")
            self.check_usage(r, prompt_tokens=6)

    def test_max_new_tokens_alias(self):
        r = self.gen_ok({"model": "tiny", "prompt": "Hello", "max_new_tokens": 9, "temperature": 0})
        self.assertEqual(len(r["tokens"]), 9)
        self.check_usage(r)

    def test_default_max_tokens_is_128(self):
        r = self.gen_ok({"model": "tiny", "prompt": "Hello", "temperature": 0})
        self.assertEqual(len(r["tokens"]), 128, "greedy 'Hello' on tiny never ends by eos; default max_tokens 128")

    def test_default_model_is_first_by_name(self):
        obj = self.assertAnswer(self.srv.get("/models"), 200, "GET", "/models")
        first = sorted(m["name"] for m in obj["models"] if m["kind"] == "text")[0]
        r = self.gen_ok({"prompt": "Hello", "max_tokens": 4, "temperature": 0})
        self.assertEqual(r["model"], first)

    def test_model_selection(self):
        a = self.sampled(77, n=40, model="tiny")
        b = self.sampled(77, n=40, model="other")
        self.assertEqual(a["model"], "tiny")
        self.assertEqual(b["model"], "other")
        self.assertNotEqual(a["tokens"], b["tokens"], "same seed on two different models gave the same tokens")

    def test_text_is_the_decoded_tokens(self):
        _, r = self.varied_sample(need_high_byte=True)
        self.assertEqual(H.squeeze_fffd(r["text"]), H.squeeze_fffd(H.byte_text(r["tokens"])),
                         "text is not the UTF-8 decoding (U+FFFD for invalid bytes) of the tokens")
        r["text"].encode("utf-8")  # valid UTF-8 by construction of json.loads; no lone surrogates
        self.check_usage(r)

    def test_generation_stops_at_the_context_end(self):
        prompt = "ab" * 100  # 201 tokens with BOS, seq_len 256
        r = self.gen_ok({"model": "tiny", "prompt": prompt, "max_tokens": 100, "temperature": 0})
        self.assertEqual(r["finish_reason"], "length")
        self.check_usage(r, prompt_tokens=201)
        self.assertEqual(r["usage"]["total_tokens"], 256, "generation should end at the context's end (seq_len 256)")

    def test_prompt_one_short_of_the_context(self):
        r = self.gen_ok({"model": "tiny", "prompt": "x" * 254, "max_tokens": 5, "temperature": 0})
        self.check_usage(r, prompt_tokens=255)
        self.assertEqual(len(r["tokens"]), 1)
        self.assertEqual(r["finish_reason"], "length")

    def test_prompt_that_fills_the_context_is_422(self):
        for n in (255, 256, 1000):
            r = self.srv.generate({"model": "tiny", "prompt": "x" * n, "max_tokens": 5})
            self.assertError(r, 422, "invalid_argument", field="prompt")
        self.assertHealthy("prompt too long")

    def test_accepted_edge_values(self):
        base = {"model": "tiny", "prompt": "Hello", "max_tokens": 3}
        cases = [{"temperature": 0}, {"temperature": 0.0}, {"temperature": 100}, {"temperature": 1},
                 {"top_k": 0}, {"top_k": 1}, {"top_k": 100000}, {"top_p": 1}, {"top_p": 1e-9},
                 {"seed": 0}, {"seed": 2 ** 64 - 1}, {"seed": 2 ** 63}, {"max_tokens": 1},
                 {"max_tokens": 4096, "temperature": 0}, {"stop": "\u00e9" * 128}, {"stop": ["a" * 256]},
                 {"stop": ["a", "b", "c", "d"]}, {"stop": []}, {"stream": False}]
        failures = []
        for extra in cases:
            b = dict(base)
            b.update(extra)
            r = self.srv.generate(b)
            if r.status != 200:
                failures.append("%s -> %d %s" % (json.dumps(extra)[:80], r.status, r.body[:200].decode(errors="replace")))
            else:
                self.assertAnswer(r, 200, "POST", "/generate")
        if failures:
            self.fail("valid requests refused:\n  " + "\n  ".join(failures))

    def test_content_type_with_charset(self):
        body = json.dumps({"model": "tiny", "prompt": "Hi", "max_tokens": 2}).encode()
        for ct in ("application/json; charset=utf-8", "application/json;charset=UTF-8", "Application/JSON"):
            r = self.srv.generate(body, headers={"Content-Type": ct})
            self.assertAnswer(r, 200, "POST", "/generate")

    def test_documented_examples(self):
        # every route's: /generate's here, /recall's too (test_recall.py
        # checks those answers further)
        for path, name, ex, body, _ in H.request_examples():
            if ex.get("x-needs-model"):
                continue  # a trained model this server lacks: test_models.py runs it
            if path == "/train":
                continue  # 202 starts a job: test_train.py runs these
            expect = ex.get("x-expect", {"status": 200})
            r = self.srv.post(path, body)
            if body.get("stream") and expect["status"] == 200:
                self.assertEqual(r.status, 200, "example %s: %r" % (name, r))
                self.assertEqual(r.media_type, "text/event-stream", "example %s" % name)
                continue
            if expect["status"] == 200:
                obj = self.assertAnswer(r, 200, "POST", path)
                if "values" in expect:  # /recall: the answers' values, in order
                    self.assertEqual([a["value"] for a in obj["answers"]], expect["values"],
                                     "example %s of %s" % (name, path))
            else:
                self.assertError(r, expect["status"], expect["code"], path=path,
                                 field=expect.get("field", MISSING))

    def test_timings(self):
        r = self.greedy(n=64)
        t = r["timings"]
        self.assertGreater(t["decode_ms"], 0, t)
        self.assertGreater(t["decode_tokens_per_s"], 0, t)
        self.assertGreater(t["prefill_tokens_per_s"], 0, t)


# ==========================================================================
# determinism


class Test04Determinism(Base):
    def test_greedy_is_repeatable(self):
        a = self.greedy("Once upon a time", n=40)
        b = self.greedy("Once upon a time", n=40)
        self.assertEqual(a["tokens"], b["tokens"])
        self.assertEqual(a["text"], b["text"])

    def test_greedy_ignores_the_seed(self):
        ref = self.greedy("The quick brown fox", n=30)["tokens"]
        for seed in (1, 2, 99999, 2 ** 63 - 1):
            self.assertEqual(self.greedy("The quick brown fox", n=30, seed=seed)["tokens"], ref, "seed %d" % seed)

    def test_same_seed_same_tokens(self):
        seed, a = self.varied_sample()
        b = self.sampled(seed)
        self.assertEqual(a["tokens"], b["tokens"])
        self.assertEqual(a["text"], b["text"])

    def test_seeds_up_to_2_64_minus_1(self):
        for big in (2 ** 63, 2 ** 64 - 3, 2 ** 64 - 1):
            a, b = self.sampled(big, n=40), self.sampled(big, n=40)
            self.assertEqual(a["tokens"], b["tokens"], "seed %d" % big)
        self.assertEqual(self.greedy("The quick brown fox", n=30, seed=2 ** 64 - 1)["tokens"],
                         self.greedy("The quick brown fox", n=30)["tokens"])
        self.assertNotEqual(self.sampled(2 ** 64 - 1)["tokens"], self.sampled(2 ** 64 - 2)["tokens"],
                            "seeds 2^64-1 and 2^64-2 give the same sample (truncated to a double or 63 bits?)")

    def test_different_seed_different_tokens(self):
        seed, a = self.varied_sample()
        b = self.sampled(seed + 1000)
        self.assertNotEqual(a["tokens"], b["tokens"], "seed has no effect on temperature-5 sampling")

    def test_no_seed_is_random(self):
        b = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 100, "temperature": 5}
        a = self.gen_ok(b)
        c = self.gen_ok(b)
        self.assertNotEqual(a["tokens"], c["tokens"], "two unseeded temperature-5 samples are identical")

    def test_top_k_1_is_greedy(self):
        ref = self.greedy("Once upon a time", n=40)["tokens"]
        r = self.sampled(5, n=40, top_k=1)
        self.assertEqual(r["tokens"], ref)

    def test_tiny_top_p_is_greedy(self):
        ref = self.greedy("Once upon a time", n=40)["tokens"]
        r = self.sampled(5, n=40, top_p=1e-6)
        self.assertEqual(r["tokens"], ref)

    def test_top_k_changes_sampling(self):
        seed, a = self.varied_sample()
        b = self.sampled(seed, top_k=2)
        self.assertNotEqual(a["tokens"], b["tokens"], "top_k 2 gave the same sample as top_k 0 at temperature 5")


# ==========================================================================
# concurrency: continuous batching must not change results


def _bodies_mixed():
    out = []
    for i, (prompt, n) in enumerate([("Hello", 150), ("abc", 220), ("The quick brown fox", 180), ("xyz!", 260)]):
        out.append({"model": "slow4k", "prompt": prompt, "max_tokens": n, "temperature": 0})
    out.append({"model": "tiny", "prompt": "Once upon a time", "max_tokens": 120, "temperature": 0})
    out.append({"model": "tiny", "prompt": "zebra", "max_tokens": 90, "temperature": 0})
    return out


class Test05Concurrency(Base):
    def compare(self, bodies, stagger=0.0):
        seq = [self.gen_ok(b) for b in bodies]

        def one(i, b):
            def fn():
                if stagger:
                    time.sleep(i * stagger)
                return self.srv.generate(b, timeout=120)
            return fn
        rs = H.run_threads([one(i, b) for i, b in enumerate(bodies)])
        for i, (b, r, s) in enumerate(zip(bodies, rs, seq)):
            if isinstance(r, BaseException):
                self.fail("concurrent request %d raised %r" % (i, r))
            c = self.assertAnswer(r, 200, "POST", "/generate")
            self.assertEqual(c["tokens"], s["tokens"], "request %d (%s) differs when run concurrently" % (i, b))
            self.assertEqual(c["text"], s["text"])
            self.assertEqual(c["finish_reason"], s["finish_reason"])
            self.assertEqual(c["usage"], s["usage"])

    def test_concurrent_greedy_equals_sequential(self):
        self.compare(_bodies_mixed()[:4])

    def test_concurrent_greedy_mixed_models(self):
        self.compare(_bodies_mixed())

    def test_attention_kernels_give_the_same_tokens(self):
        # a prompt of several hundred tokens: prefilled in chunks, with the
        # naive kernel (N x N scores) and the tiled one (online softmax)
        body = {"model": "slow4k", "prompt": "The quick brown fox. " * 30, "max_tokens": 40,
                "temperature": 0, "ignore_eos": True}
        ref = self.gen_ok(dict(body, attention="naive"))
        for k in ("tiled", "auto"):
            got = self.gen_ok(dict(body, attention=k))
            self.assertEqual(got["tokens"], ref["tokens"], "attention %s differs from naive" % k)

    def test_eight_concurrent_greedy_equal_alone(self):
        # a full default batch (--max-batch 8) of one model, prompts of
        # different lengths so the sequences sit at different positions
        bodies = [{"model": "slow4k", "prompt": "p%d " % i + "x" * (7 * i), "max_tokens": 60 + 10 * i,
                   "temperature": 0, "ignore_eos": True} for i in range(8)]
        self.compare(bodies)

    def test_staggered_joins_equal_sequential(self):
        self.compare(_bodies_mixed(), stagger=0.03)

    def test_concurrent_seeded_equals_sequential(self):
        bodies = []
        for i, m in enumerate(("slow4k", "tiny", "slow4k", "tiny")):
            bodies.append({"model": m, "prompt": "Once upon a time %d" % i, "max_tokens": 150, "temperature": 5,
                           "top_k": 50, "top_p": 0.98, "seed": 4242 + i})
        self.compare(bodies)

    def test_concurrent_requests_are_batched(self):
        f0, _, _ = self.srv.metrics()
        bodies = [{"model": "slow4k", "prompt": "batch %d" % i, "max_tokens": 250, "temperature": 0}
                  for i in range(4)]
        rs = H.run_threads([lambda b=b: self.srv.generate(b, timeout=120) for b in bodies])
        for r in rs:
            self.assertFalse(isinstance(r, BaseException), r)
            self.assertEqual(r.status, 200)
        f1, _, _ = self.srv.metrics()
        dn = H.sample_value(f1, "attnd_decode_batch_size", "attnd_decode_batch_size_count") - \
            H.sample_value(f0, "attnd_decode_batch_size", "attnd_decode_batch_size_count")
        ds = H.sample_value(f1, "attnd_decode_batch_size", "attnd_decode_batch_size_sum") - \
            H.sample_value(f0, "attnd_decode_batch_size", "attnd_decode_batch_size_sum")
        self.assertGreater(dn, 0, "attnd_decode_batch_size observed nothing")
        self.assertGreater(ds / dn, 1.0, "4 concurrent requests never shared a decode step (mean batch %.2f)"
                           % (ds / dn))


# ==========================================================================
# streaming


class Test06Stream(Base):
    def check_same(self, body):
        plain = self.gen_ok(body)
        r, evs, final = self.stream(body)
        self.assertEqual([e["token"] for e in evs], plain["tokens"], "streamed token ids differ")
        self.assertEqual("".join(e["text"] for e in evs) + final["text"], plain["text"],
                         "concatenated pieces (and the final event's held-back text) != text")
        self.assertEqual(final["finish_reason"], plain["finish_reason"])
        self.assertEqual(final["usage"], plain["usage"])
        self.assertEqual(final["model"], plain["model"])
        return plain, evs, final

    def test_stream_event_schemas(self):
        r, evs, final = self.stream({"model": "tiny", "prompt": "Hi", "max_tokens": 4, "temperature": 0})
        for e in evs:
            self.checkSchema(e, schema_ref("StreamTokenEvent"), "stream token event", strict=True)
        self.checkSchema(final, schema_ref("StreamFinalEvent"), "stream final event", strict=True)

    def test_stream_example(self):
        body = H.load_example("generate-stream.json")
        b = dict(body)
        b.pop("stream")
        plain, evs, final = self.check_same(b)
        self.assertEqual(len(evs), body["max_tokens"])
        self.assertEqual(final["finish_reason"], "length")

    def test_stream_sampled_utf8(self):
        seed, _ = self.varied_sample(need_high_byte=True)
        self.check_same({"model": "tiny", "prompt": "Once upon a time", "max_tokens": 100, "temperature": 5,
                         "seed": seed})

    def test_stream_with_stop(self):
        seed, full = self.varied_sample()
        picked = pick_stop(full["text"], 2, start=10)
        self.assertIsNotNone(picked, "premise: no ASCII pair in %r" % full["text"])
        i, stop = picked
        body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 100, "temperature": 5, "seed": seed,
                "stop": [stop]}
        plain, evs, final = self.check_same(body)
        self.assertEqual(final["finish_reason"], "stop")
        self.assertEqual(plain["text"], full["text"][:i])
        for e in evs:
            self.assertNotIn(stop, e["text"], "a piece contains the stop string")

    def test_stream_error_is_plain_json(self):
        r = self.srv.generate({"model": "tiny", "prompt": "Hello", "stream": True, "temperature": "hot"})
        self.assertError(r, 422, "invalid_argument", field="temperature")
        r = self.srv.generate({"model": "nope", "prompt": "Hello", "stream": True})
        self.assertError(r, 404, "model_not_found", field="model")

    def test_stream_is_incremental(self):
        body = json.dumps({"model": "slow4k", "prompt": "Hello", "max_tokens": 1200, "temperature": 0,
                           "stream": True}).encode()
        s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=60)
        try:
            t0 = time.monotonic()
            s.sendall(b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
            buf, t_first = b"", None
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if t_first is None and b"data: " in buf:
                    t_first = time.monotonic() - t0
                if b"data: [DONE]" in buf:
                    break
            total = time.monotonic() - t0
        finally:
            s.close()
        self.assertIn(b"data: [DONE]", buf)
        self.assertIsNotNone(t_first)
        self.assertLess(t_first, total * 0.5, "first event after %.2fs of %.2fs: the stream is buffered"
                        % (t_first, total))


# ==========================================================================
# stop strings


class Test07Stop(Base):
    def test_stop_example(self):
        body = H.load_example("generate-stop.json")
        r = self.gen_ok(body)  # greedy 'Hello' -> 'ooo...', stop 'o'
        self.assertEqual(r["finish_reason"], "stop")
        self.assertEqual(r["text"], "")
        self.check_usage(r)

    def test_stop_from_greedy_output(self):
        full = self.greedy("Hello", n=40)
        stop = full["text"][:3]
        r = self.greedy("Hello", n=40, stop=stop)
        self.assertEqual(r["finish_reason"], "stop")
        self.assertEqual(r["text"], full["text"][:full["text"].find(stop)])
        self.check_usage(r)

    def test_stop_never_matched(self):
        full = self.greedy("Hello", n=40)
        r = self.greedy("Hello", n=40, stop=["zz", "\u00e9t\u00e9"])
        self.assertEqual(r["finish_reason"], "length")
        self.assertEqual(r["text"], full["text"])
        self.assertEqual(r["tokens"], full["tokens"])

    def test_stop_from_sampled_output(self):
        seed, full = self.varied_sample()
        text = full["text"]
        for width in (1, 2, 3):
            picked = pick_stop(text, width, start=8)
            if picked is None:
                continue
            i, stop = picked
            r = self.sampled(seed, stop=stop)
            self.assertEqual(r["finish_reason"], "stop", "stop %r (first at %d of %r)" % (stop, i, text))
            self.assertEqual(r["text"], text[:i], "stop %r" % stop)
            self.check_usage(r)
            self.assertEqual(r["tokens"][:len(r["tokens"]) - 1], full["tokens"][:len(r["tokens"]) - 1],
                             "a stop string changed the tokens sampled before it")

    def test_earliest_of_several_stops(self):
        seed, full = self.varied_sample()
        text = full["text"]
        a = pick_stop(text, 2, start=6)
        self.assertIsNotNone(a, "premise: no ASCII pair in %r" % text)
        b = pick_stop(text, 2, start=a[0] + 3)
        stops = ["\x01never"] + ([b[1]] if b else []) + [a[1]]
        r = self.sampled(seed, stop=stops)
        self.assertEqual(r["finish_reason"], "stop")
        self.assertEqual(r["text"], text[:a[0]])


# ==========================================================================
# errors: every status the contract names, then the server still answers


def _raw_post(path, body, ctype="application/json", extra=b""):
    h = b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if ctype is not None:
        h += b"Content-Type: " + ctype.encode() + b"\r\n"
    return h + b"Content-Length: %d\r\n" % len(body) + extra + b"\r\n" + body


class Test08Errors(Base):
    # ---- 400

    def test_400_malformed_json(self):
        for body in (b"{", b"{\"prompt\": }", b"not json", b"{\"prompt\": \"a\"} trailing",
                     b"{\"prompt\": \"a\",}", b"\"unterminated"):
            r = self.srv.generate(body, headers={"Content-Type": "application/json"})
            self.assertError(r, 400, "invalid_json")
        self.assertHealthy("malformed JSON")

    def test_400_empty_body(self):
        r = self.srv.generate(b"", headers={"Content-Type": "application/json"})
        self.assertError(r, 400, "invalid_json")
        status, hdrs, body, _ = self.srv.raw(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                                             b"\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(status, 400)
        self.assertHealthy("empty body")

    def test_400_invalid_utf8(self):
        r = self.srv.generate(b"{\"prompt\": \"\xff\xfe\"}", headers={"Content-Type": "application/json"})
        self.assertError(r, 400, "invalid_json")
        self.assertHealthy("invalid UTF-8")

    # ---- 404

    def test_404_unknown_route(self):
        # (/v1/ paths answer OpenAI's error shape: test_openai.py; POST / is TGI's)
        for method, path in (("GET", "/nope"), ("POST", "/v2/completions"), ("GET", "/generate/x"),
                             ("DELETE", "/nope")):
            r = self.srv.request(method, path, body=({"prompt": "a"} if method == "POST" else None))
            self.assertError(r, 404, "not_found", method=method, path=path)
        self.assertHealthy("404")

    def test_404_model_not_found(self):
        r = self.srv.generate({"model": "no-such-model", "prompt": "Hello"})
        self.assertError(r, 404, "model_not_found", field="model")
        self.assertHealthy("model_not_found")

    # ---- 405

    def test_405_with_allow(self):
        for method, path, allowed in (("GET", "/generate", "POST"), ("PUT", "/generate", "POST"),
                                      ("POST", "/models", "GET"), ("DELETE", "/healthz", "GET"),
                                      ("POST", "/readyz", "GET"), ("PUT", "/metrics", "GET")):
            body = {"prompt": "a"} if method in ("POST", "PUT") else None
            r = self.srv.request(method, path, body=body)
            self.assertError(r, 405, "method_not_allowed", method=method, path=path)
            allow = r.header("Allow")
            self.assertIsNotNone(allow, "%s %s: 405 without an Allow header" % (method, path))
            self.assertIn(allowed, [m.strip() for m in allow.split(",")], "%s %s: Allow %r" % (method, path, allow))
            self.assertNotIn(method, [m.strip() for m in allow.split(",")])
        self.assertHealthy("405")

    # ---- 413

    def test_413_huge_content_length_answered_at_once(self):
        head = (b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 10000000000\r\n\r\n")
        t0 = time.monotonic()
        status, hdrs, body, first = self.srv.raw(head, timeout=5)
        elapsed = time.monotonic() - t0
        self.assertEqual(status, 413, "status %d body %r" % (status, body[:200]))
        self.assertLess(first, 2.0, "413 took %.2fs: the server waited for the body" % first)
        self.assertLess(elapsed, 5.0)
        obj = json.loads(body.decode())
        self.assertEqual(validation_errors(obj, H.response_schema("POST", "/generate", 413)), [])
        self.assertEqual(obj["error"]["code"], "payload_too_large")
        self.assertHealthy("413")

    def test_413_with_expect_100_continue(self):
        head = (b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 2000000\r\nExpect: 100-continue\r\n\r\n")
        status, hdrs, body, first = self.srv.raw(head, timeout=5)
        self.assertEqual(status, 413, "status %d (a 100 Continue would invite the body)" % status)
        self.assertLess(first, 2.0)
        self.assertHealthy("413 with Expect")

    def test_413_one_byte_over_the_limit(self):
        head = (b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1048577\r\n\r\n")
        status, hdrs, body, first = self.srv.raw(head, timeout=5)
        self.assertEqual(status, 413)
        self.assertLess(first, 2.0)
        self.assertHealthy("413 at limit + 1")

    def test_body_at_the_limit_is_read(self):
        pre, post = b'{"model": "tiny", "prompt": "', b'"}'
        body = pre + b"a" * (1048576 - len(pre) - len(post)) + post
        self.assertEqual(len(body), 1048576)
        r = self.srv.generate(body, headers={"Content-Type": "application/json"})
        self.assertError(r, 422, "invalid_argument", field="prompt")  # read, parsed, too long for the context
        self.assertHealthy("1 MiB body")

    def test_413_chunked_body_over_the_limit(self):
        s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=10)
        try:
            s.sendall(b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
            chunk = b"a" * 65536
            sent = 0
            answered = False
            s.sendall(b"%x\r\n" % 30 + b'{"model": "tiny", "prompt": "a' + b"\r\n")
            while sent < 1300000:
                try:
                    s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                except OSError:
                    answered = True
                    break
                sent += len(chunk)
                if select.select([s], [], [], 0)[0]:
                    answered = True
                    break
            if not answered:
                try:
                    s.sendall(b"2\r\n\"}\r\n0\r\n\r\n")
                except OSError:
                    pass
            status, hdrs, body, _ = H.read_http_response(s, 5.0)
        finally:
            s.close()
        self.assertEqual(status, 413, "chunked body of %d bytes: %d %r" % (sent, status, body[:200]))
        self.assertHealthy("chunked 413")

    # ---- 415

    def test_415_not_json(self):
        body = json.dumps({"model": "tiny", "prompt": "Hello", "max_tokens": 2}).encode()
        for ct in ("text/plain", "application/x-www-form-urlencoded", "application/jsonx", None):
            hdrs = {"Content-Type": ct} if ct else {}
            r = self.srv.generate(body, headers=hdrs)
            self.assertError(r, 415, "unsupported_media_type")
        self.assertHealthy("415")

    # ---- 422

    def test_422_invalid_fields(self):
        S = "a" * 257
        cases = [
            ({"max_tokens": 5}, "prompt"), ({"prompt": 5}, "prompt"), ({"prompt": None}, "prompt"),
            ({"prompt": ["a"]}, "prompt"), ({"prompt": {"a": 1}}, "prompt"),
            ({"prompt": "a", "model": 5}, "model"), ({"prompt": "a", "model": ["tiny"]}, "model"),
            ({"prompt": "a", "max_tokens": 0}, "max_tokens"), ({"prompt": "a", "max_tokens": 4097}, "max_tokens"),
            ({"prompt": "a", "max_tokens": -1}, "max_tokens"), ({"prompt": "a", "max_tokens": "10"}, "max_tokens"),
            ({"prompt": "a", "max_tokens": 5.0}, "max_tokens"), ({"prompt": "a", "max_tokens": 1.5}, "max_tokens"),
            ({"prompt": "a", "max_tokens": True}, "max_tokens"), ({"prompt": "a", "max_tokens": 2 ** 40}, "max_tokens"),
            ({"prompt": "a", "max_new_tokens": 0}, "max_new_tokens"),
            ({"prompt": "a", "attention": "fast"}, "attention"), ({"prompt": "a", "attention": 1}, "attention"),
            ({"prompt": "a", "max_new_tokens": 5000}, "max_new_tokens"),
            ({"prompt": "a", "temperature": -0.1}, "temperature"), ({"prompt": "a", "temperature": 100.5}, "temperature"),
            ({"prompt": "a", "temperature": "hot"}, "temperature"), ({"prompt": "a", "temperature": True}, "temperature"),
            ({"prompt": "a", "temperature": 1e300}, "temperature"),
            ({"prompt": "a", "top_k": -1}, "top_k"), ({"prompt": "a", "top_k": 1.5}, "top_k"),
            ({"prompt": "a", "top_k": "3"}, "top_k"),
            ({"prompt": "a", "top_p": 0}, "top_p"), ({"prompt": "a", "top_p": -0.5}, "top_p"),
            ({"prompt": "a", "top_p": 1.01}, "top_p"), ({"prompt": "a", "top_p": "0.9"}, "top_p"),
            ({"prompt": "a", "seed": -1}, "seed"), ({"prompt": "a", "seed": 2 ** 64}, "seed"),
            ({"prompt": "a", "seed": 1.5}, "seed"), ({"prompt": "a", "seed": "7"}, "seed"),
            ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"prompt": "a", "stop": [""]}, "stop"),
            ({"prompt": "a", "stop": ""}, "stop"), ({"prompt": "a", "stop": S}, "stop"),
            ({"prompt": "a", "stop": [S]}, "stop"), ({"prompt": "a", "stop": ["\u00e9" * 129]}, "stop"),
            ({"prompt": "a", "stop": [1]}, "stop"), ({"prompt": "a", "stop": 7}, "stop"),
            ({"prompt": "a", "stop": {"a": 1}}, "stop"),
            ({"prompt": "a", "stream": "yes"}, "stream"), ({"prompt": "a", "stream": 1}, "stream"),
            ({"prompt": "a", "n_predict": 5}, "n_predict"), ({"prompt": "a", "Prompt": "b"}, "Prompt"),
        ]
        failures = []
        for body, field in cases:
            b = dict(body)
            if "model" not in b:
                b["model"] = "tiny"
            r = self.srv.generate(b)
            try:
                self.assertError(r, 422, "invalid_argument", field=field)
            except AssertionError as e:
                failures.append("%s: %s" % (json.dumps(b)[:120], str(e).splitlines()[0][:300]))
        self.assertHealthy("422s")
        if failures:
            self.fail("%d of the requests were answered wrongly:\n  " % len(failures) + "\n  ".join(failures))

    def test_422_body_not_an_object(self):
        failures = []
        for body in (b"[]", b"[{\"prompt\": \"a\"}]", b"\"hello\"", b"42", b"null", b"true"):
            r = self.srv.generate(body, headers={"Content-Type": "application/json"})
            try:
                self.assertError(r, 422, "invalid_argument", field=None)
            except AssertionError as e:
                failures.append("%s: %s" % (body.decode(), str(e).splitlines()[0][:300]))
        self.assertHealthy("non-object bodies")
        if failures:
            self.fail("%d of the requests were answered wrongly:\n  " % len(failures) + "\n  ".join(failures))

    def test_error_on_a_keep_alive_connection(self):
        conn = self.srv.connect()
        try:
            r = self.srv.generate({"model": "tiny", "prompt": "a", "top_p": 2}, conn=conn)
            self.assertError(r, 422, "invalid_argument", field="top_p")
            r = self.srv.get("/healthz", conn=conn)
            self.assertEqual(r.status, 200)
        finally:
            conn.close()


# ==========================================================================
# GET /metrics


FAMILIES = {
    "attnd_requests_total": ("counter", {"route", "code"}),
    "attnd_request_duration_seconds": ("histogram", {"route"}),
    "attnd_prompt_tokens_total": ("counter", set()),
    "attnd_completion_tokens_total": ("counter", set()),
    "attnd_time_to_first_token_seconds": ("histogram", set()),
    "attnd_time_per_output_token_seconds": ("histogram", set()),
    "attnd_queue_wait_seconds": ("histogram", set()),
    "attnd_requests_in_flight": ("gauge", set()),
    "attnd_queue_depth": ("gauge", set()),
    "attnd_decode_batch_size": ("histogram", set()),
    "attnd_op_seconds_total": ("counter", {"class", "phase"}),
    "attnd_op_flops_total": ("counter", {"class", "phase"}),
}
ROUTES = {"/generate", "/recall", "/models", "/models/reload", "/models/{id}", "/metrics", "/healthz", "/readyz", "/train", "/train/{id}", "other",
          "/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/models/{id}",
          "/generate_stream", "/", "/ui/{id}", "/info", "/tokenize", "/detokenize"}
CLASSES = {"tensor_contraction", "normalization", "elementwise"}
PHASES = {"prefill", "decode", "train"}


class Test09Metrics(Base):
    def setUp(self):
        super().setUp()
        # something in every family
        self.greedy(n=8)

    def test_content_type(self):
        r = self.srv.get("/metrics")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("Content-Type"), "text/plain; version=0.0.4; charset=utf-8")

    def test_families_help_type(self):
        fams, text, _ = self.srv.metrics()
        for name, (typ, labels) in FAMILIES.items():
            self.assertIn(name, fams, "family %s missing" % name)
            f = fams[name]
            self.assertIsNotNone(f.help, "%s has no HELP" % name)
            self.assertTrue(f.help.strip(), "%s has an empty HELP" % name)
            self.assertEqual(f.type, typ, "%s TYPE" % name)
            self.assertTrue(f.samples, "%s has no samples" % name)
            for sname, lab, _, _ in f.samples:
                got = set(lab) - {"le"}
                self.assertEqual(got, labels, "%s labels %s" % (sname, lab))
        for name, f in fams.items():
            self.assertTrue(name.startswith("attnd_"), "family %s lacks the attnd_ prefix" % name)
            self.assertIsNotNone(f.type, "%s has no TYPE" % name)
            self.assertIsNotNone(f.help, "%s has no HELP" % name)

    def test_label_values(self):
        fams, _, _ = self.srv.metrics()
        for _, lab, _, _ in fams["attnd_requests_total"].samples:
            self.assertIn(lab["route"], ROUTES)
            self.assertRegex(lab["code"], r"^[1-5][0-9][0-9]$")
        for _, lab, _, _ in fams["attnd_request_duration_seconds"].samples:
            self.assertIn(lab["route"], ROUTES)
        for fam in ("attnd_op_seconds_total", "attnd_op_flops_total"):
            for _, lab, v, _ in fams[fam].samples:
                self.assertIn(lab["class"], CLASSES, fam)
                self.assertIn(lab["phase"], PHASES, fam)
                self.assertGreaterEqual(v, 0)

    def test_histograms_consistent(self):
        fams, _, _ = self.srv.metrics()
        self.assertEqual(H.check_histograms(fams), [])

    def test_no_c_nan(self):
        _, text, _ = self.srv.metrics()
        for bad in ("-nan", " nan", " inf", "-inf\n"):
            self.assertNotIn(bad, text, "%r in the exposition" % bad)

    def test_promtool(self):
        promtool = "/usr/bin/promtool"
        if not os.path.exists(promtool):
            self.skipTest("no %s" % promtool)
        _, text, _ = self.srv.metrics()
        p = subprocess.run([promtool, "check", "metrics"], input=text.encode(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        self.assertEqual((p.returncode, p.stdout.decode()), (0, ""), "promtool check metrics")

    def test_request_counters_increase(self):
        f0, _, _ = self.srv.metrics()
        for _ in range(3):
            self.srv.get("/healthz")
        self.srv.get("/no-such-route-for-metrics")
        self.srv.generate({"model": "tiny", "prompt": "a", "temperature": -1})
        self.srv.get("/models")
        f1, _, _ = self.srv.metrics()

        def d(route, code):
            return (H.sample_value(f1, "attnd_requests_total", route=route, code=code)
                    - H.sample_value(f0, "attnd_requests_total", route=route, code=code))
        self.assertEqual(d("/healthz", 200), 3)
        self.assertEqual(d("other", 404), 1)
        self.assertEqual(d("/generate", 422), 1)
        self.assertEqual(d("/models", 200), 1)
        for fams in (f0, f1):
            for _, lab, _, _ in fams["attnd_requests_total"].samples:
                self.assertNotIn("no-such", lab["route"], "raw paths must not become label values")

        def dh(route):
            s = "attnd_request_duration_seconds_count"
            return (H.sample_value(f1, "attnd_request_duration_seconds", s, route=route)
                    - H.sample_value(f0, "attnd_request_duration_seconds", s, route=route))
        self.assertEqual(dh("/healthz"), 3)

    def test_generation_metrics_increase(self):
        f0, _, _ = self.srv.metrics()
        r = self.greedy("metrics!", n=20)
        f1, _, _ = self.srv.metrics()

        def d(fam, sample=None, **lab):
            return H.sample_value(f1, fam, sample, **lab) - H.sample_value(f0, fam, sample, **lab)
        self.assertEqual(d("attnd_prompt_tokens_total"), r["usage"]["prompt_tokens"])
        self.assertEqual(d("attnd_completion_tokens_total"), r["usage"]["completion_tokens"])
        self.assertEqual(d("attnd_requests_total", route="/generate", code="200"), 1)
        self.assertEqual(d("attnd_time_to_first_token_seconds", "attnd_time_to_first_token_seconds_count"), 1)
        self.assertEqual(d("attnd_queue_wait_seconds", "attnd_queue_wait_seconds_count"), 1)
        self.assertGreaterEqual(d("attnd_time_per_output_token_seconds",
                                  "attnd_time_per_output_token_seconds_count"), 1)
        self.assertGreaterEqual(d("attnd_decode_batch_size", "attnd_decode_batch_size_count"), 1)
        self.assertEqual(d("attnd_request_duration_seconds", "attnd_request_duration_seconds_count",
                           route="/generate"), 1)
        for phase in ("prefill", "decode"):
            self.assertGreater(d("attnd_op_flops_total", **{"class": "tensor_contraction", "phase": phase}), 0,
                               "tensor_contraction %s FLOPs did not grow" % phase)
            self.assertGreater(d("attnd_op_seconds_total", **{"class": "tensor_contraction", "phase": phase}), 0,
                               "tensor_contraction %s seconds did not grow" % phase)
        for cls in CLASSES:
            self.assertGreater(d("attnd_op_flops_total", **{"class": cls, "phase": "decode"}), 0, cls)

    def test_idle_gauges_are_zero(self):
        fams, _, _ = self.srv.metrics()
        self.assertEqual(H.sample_value(fams, "attnd_requests_in_flight"), 0)
        self.assertEqual(H.sample_value(fams, "attnd_queue_depth"), 0)


# ==========================================================================
# clients that go away


class Test10Disconnect(H.DisconnectChecks, Base):
    LONG = {"model": "slow4k", "prompt": "Hello", "max_tokens": 4096, "temperature": 0}

    def next_request(self):
        r = self.greedy(n=8)
        self.assertEqual(len(r["tokens"]), 8)

    def test_stream_client_disconnects(self):
        self.cut("/generate", dict(self.LONG, stream=True), stream=True)

    def test_non_stream_client_disconnects(self):
        self.cut("/generate", self.LONG, stream=False, settle=0.2)


# ==========================================================================
# every answer of the run against api/openapi.yaml, then shutdown (last)


class Test98Contract(H.ContractTest):
    pass



class Test99Shutdown(Base):
    def test_no_crash_during_the_run(self):
        SRV.check_died()
        self.assertEqual(SRV.deaths, 0, "attnd died %d time(s) during the run (see the output above)" % SRV.deaths)

    def test_sigterm_exits_zero(self):
        srv = self.srv
        self.assertHealthy("all tests")
        rc, took, killed = SRV.stop(timeout=GRACE + 5)
        self.assertFalse(killed, "attnd ignored SIGTERM for %ds\n%s" % (GRACE + 5, srv.output_tail()))
        self.assertEqual(rc, 0, "attnd exited %s on SIGTERM\n%s" % (rc, srv.output_tail()))
        self.assertLess(took, GRACE + 1)


if __name__ == "__main__":
    H.run(sys.modules[__name__], description=__doc__.splitlines()[0], cleanup=_cleanup)
