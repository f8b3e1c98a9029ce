#!/usr/bin/python3
"""test_tgi.py — attnd's TGI-compatible routes (POST /generate with TGI's
body, POST /generate_stream, POST /, GET /info) and llama-server's POST
/tokenize and /detokenize, against the real server.

    /usr/bin/python3 tests/server/test_tgi.py --attnd build/attnd --attn build/attn [-k NAME] [-v]

One attnd serves every test here, started on first use on an ephemeral port
with random models made by `attn random`: tiny (seq_len 256, seed 1),
untied (tiny's shape, seed 5, an untied output head: sampling at
temperature 1 varies), zslow4k (seq_len 4096, for the disconnect tests), a
random recall model (which has no text tokenizer) and, when the fixture
../shared/fixtures/llama2c-tokenizer.bin is there, a llama2.c-format model
(zllama) with that tokenizer; tiny is the default model. attnd's own /generate is the reference: a TGI answer
must carry the same text and tokens for the same prompt, sampling and seed.

Every JSON answer is checked against api/openapi.yaml; mismatches are
listed by the last test class.
"""

import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
import test_models as TM  # noqa: E402  (random recall checkpoints)

GRACE = 3
WORK = None
TOKENIZER_BIN = os.path.join(os.path.dirname(H.REPO), "shared", "fixtures", "llama2c-tokenizer.bin")
LLAMA = dict(dim=64, hidden=128, layers=1, heads=4, kv_heads=4, vocab=32000, seq_len=128)
BOS, EOS = 256, 257


def _start():
    global WORK
    if WORK is None:
        WORK = H.Workdir(prefix="attnd-tgi-")
        models = WORK.mkdir("models")
        H.make_model(os.path.join(models, "tiny.safetensors"), H.TINY, 1)
        H.make_model(os.path.join(models, "untied.safetensors"), H.TINY, 5, extra=["--untied"])
        H.make_model(os.path.join(models, "zslow4k.safetensors"), H.SLOW, 3)
        TM.make_recall_model(os.path.join(models, "recall-small.safetensors"), TM.SMALL, 12)
        if os.path.exists(TOKENIZER_BIN):
            H.make_model(os.path.join(models, "zllama.bin"), LLAMA, 7, fmt="llama2c")
            shutil.copy(TOKENIZER_BIN, os.path.join(models, "tokenizer.bin"))
    srv = H.Server(["--host", "127.0.0.1", "--port", "0", "--models-dir", WORK.sub("models"),
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


TGI_ROUTES = ("/generate", "/generate_stream", "/")


def ids_of(r):
    """The token ids of a TGI answer's details."""
    return [t["id"] for t in r["details"]["tokens"]]


class Base(H.ServerTest):
    lazy = SRV

    @property
    def srv(self):
        return SRV.get()

    def answer(self, r, status, method, path):
        """status as expected, a JSON body valid against the documented
        schema (a route openapi.yaml lacks is recorded as a violation).
        Returns the decoded body."""
        if r.status != status:
            self.fail("%s %s: status %d, want %d; body %r" % (method, path, r.status, status, r.body[:600]))
        self.assertEqual(r.media_type, "application/json", "%s %s: Content-Type %r"
                         % (method, path, r.header("Content-Type")))
        obj = r.json()
        try:
            schema = H.response_schema(method, path, status)
        except AssertionError as e:
            H.record_violation("%s %s -> %d" % (method, path, status), [str(e)], json.dumps(obj))
            return obj
        self.checkSchema(obj, schema, "%s %s -> %d" % (method, H.route_template(path) or path, status))
        return obj

    def tgi_error(self, r, status, error_type=None, mentions=None, method="POST", path="/generate"):
        """TGI's error shape: {"error": message, "error_type": type}."""
        if status == 405:  # a method the path lacks: openapi.yaml has no operation to look in
            self.assertEqual(r.status, 405, r)
            obj = r.json()
            self.checkSchema(obj, H.schema_ref("TGIError"), "%s %s -> 405" % (method, path))
        else:
            obj = self.answer(r, status, method, path)
        self.assertEqual(set(obj), {"error", "error_type"}, obj)
        self.assertIsInstance(obj["error"], str)
        self.assertTrue(obj["error"])
        if error_type is not None:
            self.assertEqual(obj["error_type"], error_type, obj)
        if mentions is not None:
            self.assertIn(mentions, obj["error"], obj)
        return obj

    def post(self, path, body, **kw):
        return self.srv.post(path, body, **kw)

    def tgi(self, inputs="Hello", path="/generate", model=None, **params):
        b = {"inputs": inputs, "parameters": params}
        if model:
            b["model"] = model
        obj = self.answer(self.post(path, b), 200, "POST", path)
        if path == "/":
            self.assertIsInstance(obj, list, obj)
            self.assertEqual(len(obj), 1, obj)
            obj = obj[0]
        self.assertIsInstance(obj["generated_text"], str, obj)
        return obj

    def own(self, prompt="Hello", max_tokens=20, model=None, **kw):
        b = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        if model:
            b["model"] = model
        b.update(kw)
        return self.gen_ok(b)

    def stream(self, body, path="/generate_stream"):
        """The events of a TGI stream, after checking the framing: one
        'data: {...}' per event, no [DONE], indexes 1..n, generated_text and
        details only on the last."""
        r = self.post(path, body)
        self.assertEqual(r.status, 200, "stream: %r" % r)
        self.assertEqual(r.media_type, "text/event-stream", r.header("Content-Type"))
        datas = H.parse_sse(r.body)
        evs = [json.loads(d) for d in datas]
        self.assertTrue(evs, "empty stream")
        schema = self.event_schema()
        for i, ev in enumerate(evs):
            if schema:
                self.checkSchema(ev, schema, "TGI stream event")
            self.assertEqual(ev["index"], i + 1, ev)
            self.assertEqual(set(ev["token"]), {"id", "text", "logprob", "special"}, ev)
            self.assertLessEqual(ev["token"]["logprob"], 0.0, ev)
            if i < len(evs) - 1:
                self.assertIsNone(ev["generated_text"], ev)
                self.assertIsNone(ev["details"], ev)
        last = evs[-1]
        self.assertIsInstance(last["generated_text"], str, last)
        self.assertEqual(set(last["details"]), {"finish_reason", "generated_tokens", "seed", "input_length"},
                         last)
        self.assertEqual(last["details"]["generated_tokens"], len(evs), last)
        return evs

    def event_schema(self):
        names = H.openapi().get("components", {}).get("schemas", {})
        for n in ("TgiStreamEvent", "TGIStreamEvent", "TgiStreamResponse", "GenerateStreamEvent"):
            if n in names:
                return H.schema_ref(n)
        H.record_violation("POST /generate_stream event", ["openapi.yaml has no TGI stream event schema"], "")
        return None

    def untied_sample(self, seed, n=64, **kw):
        return self.own("Once upon a time", n, model="untied", temperature=1, seed=seed, **kw)

    def varied_seed(self):
        """A seed whose untied sample varies and has a printable ASCII pair
        first seen at index i >= 5: (seed, /generate's answer, i)."""
        for seed in range(7, 40):
            r = self.untied_sample(seed)
            if len(set(r["tokens"])) < 8 or len(r["tokens"]) < 40:
                continue
            t = r["text"]
            for i in range(5, len(t) - 2):
                if all(0x21 <= ord(ch) <= 0x7E for ch in t[i:i + 2]) and t.find(t[i:i + 2]) == i:
                    return seed, r, i
        self.fail("premise: no seed in 7..39 gives a varied sample with an ASCII pair")

    def eos_seed(self):
        """A seed with which the untied model at temperature 100 (nearly
        uniform) samples EOS within 200 tokens: (seed, /generate's answer)."""
        for seed in range(1, 60):
            r = self.own("Hi", 200, model="untied", temperature=100, seed=seed)
            if r["finish_reason"] == "eos":
                return seed, r
        self.fail("premise: no seed in 1..59 ends with EOS")


# ==========================================================================
# validation: TGI's error shape, the field named in the message


BAD_PARAMETERS = [
    ("max_new_tokens", 0), ("max_new_tokens", 4097), ("max_new_tokens", "8"), ("max_new_tokens", 1.5),
    ("temperature", 0), ("temperature", -1), ("temperature", 101), ("temperature", "hot"),
    ("top_p", 0), ("top_p", 1.5), ("top_k", 0), ("top_k", -1), ("top_k", 2.5),
    ("seed", -1), ("seed", "7"), ("seed", 1.5), ("seed", 2 ** 64),
    ("stop", 5), ("stop", ["a", "b", "c", "d", "e"]), ("stop", [""]), ("stop", [1]),
    ("do_sample", "yes"), ("details", 1), ("decoder_input_details", "x"), ("return_full_text", 0),
    ("repetition_penalty", 0), ("repetition_penalty", 11), ("frequency_penalty", 2.5),
    ("top_n_tokens", 6), ("top_n_tokens", -1), ("best_of", 2), ("best_of", 0), ("watermark", True),
    ("watermark", "no"), ("typical_p", 0.5), ("truncate", 10), ("grammar", {"type": "json", "value": {}}),
]


class Test01Validation(Base):
    def test_each_bad_parameter_is_422_naming_it(self):
        for path in TGI_ROUTES:
            for field, value in BAD_PARAMETERS:
                with self.subTest(path=path, field=field, value=str(value)[:40]):
                    params = {"max_new_tokens": 2, field: value}
                    if field == "seed":
                        params["do_sample"] = True
                    r = self.post(path, {"inputs": "Hi", "parameters": params})
                    self.tgi_error(r, 422, "invalid_argument", mentions=field, path=path)

    def test_bad_body(self):
        cases = [({"parameters": {}}, "inputs"), ({"inputs": 5}, "inputs"), ({"inputs": ""}, "inputs"),
                 ({"inputs": "Hi", "parameters": 5}, "parameters"), ({"inputs": "Hi", "model": 5}, "model"),
                 ({"inputs": "Hi", "parameters": [], "stream": False}, "parameters"),
                 ({"inputs": "Hi", "model": "recall-small"}, "model")]
        for path in TGI_ROUTES:
            for body, field in cases:
                with self.subTest(path=path, body=body):
                    if path == "/generate" and "inputs" not in body:
                        # no inputs: attnd's own body, which has no "parameters"
                        self.assertError(self.post(path, body), 422, "invalid_argument", field="parameters")
                        continue
                    self.tgi_error(self.post(path, body), 422, "invalid_argument", mentions=field, path=path)
        for path in ("/generate", "/"):
            self.tgi_error(self.post(path, {"inputs": "Hi", "stream": "yes"}), 422, "invalid_argument",
                           mentions="stream", path=path)

    def test_404_unknown_model(self):
        for path in TGI_ROUTES:
            self.tgi_error(self.post(path, {"inputs": "Hi", "model": "nope"}), 404, "model_not_found",
                           mentions="nope", path=path)

    def test_400_malformed_json(self):
        for path in TGI_ROUTES:
            r = H.http_request(self.srv.port, "POST", path, b'{"inputs": "Hi", "parameters": {',
                               headers={"Content-Type": "application/json"})
            self.tgi_error(r, 400, "invalid_json", path=path)

    def test_prompt_longer_than_the_context_is_422(self):
        for path in TGI_ROUTES:
            r = self.post(path, {"inputs": "x" * 300, "model": "tiny"})
            self.tgi_error(r, 422, "invalid_argument", mentions="context", path=path)

    def test_405_and_415_are_tgi_shaped(self):
        r = self.srv.get("/generate_stream")
        self.tgi_error(r, 405, "method_not_allowed", method="GET", path="/generate_stream")
        self.assertEqual(r.header("Allow"), "POST")
        r = H.http_request(self.srv.port, "POST", "/generate_stream", b'{"inputs": "Hi"}',
                           headers={"Content-Type": "text/plain"})
        self.tgi_error(r, 415, "unsupported_media_type", path="/generate_stream")
        r = H.http_request(self.srv.port, "POST", "/info", b"{}", headers={"Content-Type": "application/json"})
        self.tgi_error(r, 405, "method_not_allowed", path="/info")

    def test_nulls_and_unknown_parameters_are_accepted(self):
        # huggingface_hub sends every parameter, most of them null
        params = {"max_new_tokens": 3, "temperature": None, "top_k": None, "top_p": None, "seed": None,
                  "stop": None, "details": None, "typical_p": None, "truncate": None, "grammar": None,
                  "best_of": None, "watermark": False, "adapter_id": None, "some_future_field": 1}
        for path in TGI_ROUTES[::2]:
            r = self.tgi("Hi", path=path, **params)
            self.assertEqual(r["generated_text"], self.own("Hi", 3)["text"])
        r = self.answer(self.post("/generate", {"inputs": "Hi", "parameters": None, "extra": 1}), 200,
                        "POST", "/generate")
        self.assertEqual(r["generated_text"], self.own("Hi", 20)["text"])

    def test_seeds_up_to_2_64_minus_1(self):
        r = self.tgi("Hi", model="untied", max_new_tokens=4, do_sample=True, seed=2 ** 64 - 1, details=True)
        self.assertEqual(r["details"]["seed"], 2 ** 64 - 1)
        own = self.own("Hi", 4, model="untied", temperature=1, seed=2 ** 64 - 1)
        self.assertEqual(r["generated_text"], own["text"])

    def test_attnd_body_unchanged(self):
        r = self.own("Hello", 4)
        self.assertEqual(set(r) >= {"text", "tokens", "finish_reason", "usage"}, True, r)
        self.assertError(self.srv.generate({"prompt": "Hi", "max_token": 3}), 422, "invalid_argument",
                         field="max_token")
        self.assertError(self.srv.generate({"prompt": "Hi", "model": "nope"}), 404, "model_not_found",
                         field="model")


# ==========================================================================
# POST /generate (and POST /): TGI's answer equals attnd's own


class Test02Generate(Base):
    def test_greedy_equals_attnd(self):
        for prompt in ("Hello", "Once upon a time", "h\u00e9llo \u4e16\u754c"):
            for model in ("tiny", "untied"):
                with self.subTest(prompt=prompt, model=model):
                    own = self.own(prompt, 24, model=model)
                    r = self.tgi(prompt, model=model, max_new_tokens=24, details=True)
                    self.assertEqual(r["generated_text"], own["text"])
                    d = r["details"]
                    ids = [t["id"] for t in d["tokens"]]
                    if own["finish_reason"] == "eos":
                        self.assertEqual(d["finish_reason"], "eos_token")
                        self.assertTrue(d["tokens"][-1]["special"])
                        ids = ids[:-1]
                    else:
                        self.assertEqual(d["finish_reason"], "length")
                    self.assertEqual(ids, own["tokens"])
                    self.assertEqual(d["generated_tokens"], len(d["tokens"]))
                    self.assertIsNone(d["seed"], "greedy: no seed")
                    self.assertEqual(d["prefill"], [])

    def test_compat_route_is_an_array_of_one(self):
        own = self.own("Hello", 6)
        r = self.answer(self.post("/", {"inputs": "Hello", "parameters": {"max_new_tokens": 6}}), 200, "POST", "/")
        self.assertEqual(r, [{"generated_text": own["text"]}])
        r = self.tgi("Hello", path="/", max_new_tokens=6, details=True)
        self.assertEqual([t["id"] for t in r["details"]["tokens"]], own["tokens"])

    def test_plain_answer_has_no_details_unless_asked(self):
        r = self.answer(self.post("/generate", {"inputs": "Hello", "parameters": {"max_new_tokens": 3}}), 200,
                        "POST", "/generate")
        self.assertEqual(set(r), {"generated_text"})

    def test_default_max_new_tokens_is_20(self):
        r = self.tgi("Hello", details=True)
        self.assertEqual(r["details"]["generated_tokens"], 20)
        self.assertEqual(r["generated_text"], self.own("Hello", 20)["text"])

    def test_details_tokens(self):
        r = self.tgi("Once upon a time", model="untied", max_new_tokens=32, details=True, top_n_tokens=3)
        d = r["details"]
        self.assertEqual(len(d["tokens"]), d["generated_tokens"])
        for t in d["tokens"]:
            self.assertEqual(set(t), {"id", "text", "logprob", "special"}, t)
            self.assertLessEqual(t["logprob"], 0.0)
            self.assertEqual(t["special"], t["id"] in (BOS, EOS))
            self.assertEqual(t["text"], H.byte_text([t["id"]]))
        if all(t["id"] < 128 for t in d["tokens"]):
            self.assertEqual("".join(t["text"] for t in d["tokens"]), r["generated_text"])
        # greedy: the chosen token is the most likely, its logprob the top one's
        self.assertEqual(len(d["top_tokens"]), len(d["tokens"]))
        for t, top in zip(d["tokens"], d["top_tokens"]):
            self.assertEqual(len(top), 3)
            self.assertEqual(top[0]["id"], t["id"])
            self.assertAlmostEqual(top[0]["logprob"], t["logprob"], places=5)
            lps = [x["logprob"] for x in top]
            self.assertEqual(lps, sorted(lps, reverse=True))

    def test_decoder_input_details(self):
        prompt = "h\u00e9llo"
        r = self.tgi(prompt, max_new_tokens=2, details=True, decoder_input_details=True)
        pre = r["details"]["prefill"]
        ids = self.answer(self.post("/tokenize", {"content": prompt, "add_special": True}), 200, "POST",
                          "/tokenize")["tokens"]
        self.assertEqual([p["id"] for p in pre], ids)
        self.assertEqual(ids[0], BOS)
        for i, p in enumerate(pre):
            self.assertEqual(set(p), {"id", "text", "logprob"}, p)
            if i == 0:
                self.assertIsNone(p["logprob"], "the first token has none, as in TGI")
            else:
                self.assertLessEqual(p["logprob"], 0.0)
        self.assertEqual(pre[1]["text"], "h")

    def test_prefill_logprobs_equal_the_generated_ones(self):
        # greedy: the generated tokens' log-probabilities come back as the
        # prefill's when the answer is sent again as the inputs
        gen = self.tgi("Once upon", max_new_tokens=6, details=True)
        toks = gen["details"]["tokens"]
        r = self.tgi("Once upon" + gen["generated_text"], max_new_tokens=1, details=True,
                     decoder_input_details=True)
        pre = r["details"]["prefill"][-len(toks):]
        self.assertEqual([p["id"] for p in pre], [t["id"] for t in toks])
        for p, t in zip(pre, toks):
            self.assertAlmostEqual(p["logprob"], t["logprob"], delta=1e-4)

    def test_return_full_text(self):
        own = self.own("Hello", 5)
        for path in ("/generate", "/"):
            r = self.tgi("Hello", path=path, max_new_tokens=5, return_full_text=True)
            self.assertEqual(r["generated_text"], "Hello" + own["text"])
            r = self.tgi("Hello", path=path, max_new_tokens=5, return_full_text=False)
            self.assertEqual(r["generated_text"], own["text"])

    def test_sampling_equals_attnd(self):
        for params, own_kw in (({"do_sample": True}, {"temperature": 1}),
                               ({"temperature": 0.7}, {"temperature": 0.7}),
                               ({"do_sample": True, "top_k": 5, "top_p": 0.9}, {"temperature": 1, "top_k": 5,
                                                                                 "top_p": 0.9})):
            with self.subTest(params=params):
                r = self.tgi("Once upon a time", model="untied", max_new_tokens=32, seed=11, details=True, **params)
                own = self.own("Once upon a time", 32, model="untied", seed=11, **own_kw)
                self.assertEqual(r["generated_text"], own["text"])
                self.assertEqual(ids_of(r), own["tokens"] + ([EOS] if own["finish_reason"] == "eos" else []))
                self.assertEqual(r["details"]["seed"], 11)

    def test_do_sample_false_with_neutral_fields_is_greedy(self):
        r = self.tgi("Hello", max_new_tokens=8, do_sample=False, temperature=1.0, top_p=1.0, seed=5,
                     details=True)
        self.assertEqual(r["generated_text"], self.own("Hello", 8)["text"])
        self.assertIsNone(r["details"]["seed"])

    def test_seed_determinism(self):
        a = self.tgi("Once upon a time", model="untied", max_new_tokens=40, do_sample=True, seed=3)
        b = self.tgi("Once upon a time", model="untied", max_new_tokens=40, do_sample=True, seed=3)
        c = self.tgi("Once upon a time", model="untied", max_new_tokens=40, do_sample=True, seed=4)
        self.assertEqual(a, b)
        self.assertNotEqual(a["generated_text"], c["generated_text"])
        # no seed: a fresh one, reported, that reproduces the answer
        r = self.tgi("Once upon a time", model="untied", max_new_tokens=40, do_sample=True, details=True)
        seed = r["details"]["seed"]
        self.assertIsInstance(seed, int)
        again = self.tgi("Once upon a time", model="untied", max_new_tokens=40, do_sample=True, seed=seed)
        self.assertEqual(again["generated_text"], r["generated_text"])

    def test_stop_sequences(self):
        seed, full, i = self.varied_seed()
        stop = full["text"][i:i + 2]
        r = self.tgi("Once upon a time", model="untied", max_new_tokens=64, do_sample=True, seed=seed,
                     stop=["\x01never", stop], details=True)
        self.assertEqual(r["details"]["finish_reason"], "stop_sequence")
        self.assertEqual(r["generated_text"], full["text"][:i])
        own = self.untied_sample(seed, stop=["\x01never", stop])
        self.assertEqual(r["generated_text"], own["text"])
        self.assertEqual([t["id"] for t in r["details"]["tokens"]], own["tokens"])

    def test_eos_token(self):
        seed, own = self.eos_seed()
        r = self.tgi("Hi", model="untied", max_new_tokens=200, temperature=100, seed=seed, details=True)
        d = r["details"]
        self.assertEqual(d["finish_reason"], "eos_token")
        self.assertEqual(r["generated_text"], own["text"])
        self.assertEqual([t["id"] for t in d["tokens"]], own["tokens"] + [EOS])
        self.assertEqual(d["tokens"][-1]["special"], True)
        self.assertEqual(d["tokens"][-1]["text"], "")
        self.assertEqual(d["generated_tokens"], len(own["tokens"]) + 1)


# ==========================================================================
# streams: the events concatenated are the plain answer


class Test03Stream(Base):
    def check_same(self, inputs, model="tiny", path="/generate_stream", **params):
        plain = self.tgi(inputs, model=model, details=True, **params)
        body = {"inputs": inputs, "model": model, "parameters": params}
        if path != "/generate_stream":
            body["stream"] = True
        evs = self.stream(body, path)
        last = evs[-1]
        self.assertEqual(last["generated_text"], plain["generated_text"])
        text = "".join(ev["token"]["text"] for ev in evs)
        prefix = inputs if params.get("return_full_text") else ""
        self.assertEqual(prefix + text, plain["generated_text"], "the events' texts concatenated")
        pd = plain["details"]
        self.assertEqual([ev["token"]["id"] for ev in evs], [t["id"] for t in pd["tokens"]])
        for ev, t in zip(evs, pd["tokens"]):
            self.assertAlmostEqual(ev["token"]["logprob"], t["logprob"], places=5)
            self.assertEqual(ev["token"]["special"], t["special"])
        self.assertEqual(last["details"]["finish_reason"], pd["finish_reason"])
        self.assertEqual(last["details"]["seed"], pd["seed"])
        self.assertEqual(last["details"]["input_length"],
                         len(self.post("/tokenize", {"content": inputs, "add_special": True,
                                                     "model": model}).json()["tokens"]))
        return evs

    def test_greedy(self):
        for path in ("/generate_stream", "/", "/generate"):
            with self.subTest(path=path):
                self.check_same("Hello", path=path, max_new_tokens=16)

    def test_sampled_utf8(self):
        self.check_same("Once upon a time", model="untied", max_new_tokens=64, do_sample=True, seed=9)
        self.check_same("\u00e9t\u00e9", model="untied", max_new_tokens=64, temperature=2.0, seed=21)

    def test_stop(self):
        seed, full, i = self.varied_seed()
        evs = self.check_same("Once upon a time", model="untied", max_new_tokens=64, do_sample=True, seed=seed,
                              stop=[full["text"][i:i + 2]])
        self.assertEqual(evs[-1]["details"]["finish_reason"], "stop_sequence")
        self.assertEqual(evs[-1]["generated_text"], full["text"][:i])

    def test_return_full_text(self):
        evs = self.check_same("Hello", max_new_tokens=4, return_full_text=True)
        self.assertTrue(evs[-1]["generated_text"].startswith("Hello"))

    def test_top_tokens(self):
        evs = self.check_same("Hello", max_new_tokens=5, top_n_tokens=2)
        for ev in evs:
            self.assertEqual(len(ev["top_tokens"]), 2, ev)
            self.assertEqual(ev["top_tokens"][0]["id"], ev["token"]["id"])

    def test_eos_is_the_last_event(self):
        seed, own = self.eos_seed()
        evs = self.check_same("Hi", model="untied", max_new_tokens=200, temperature=100, seed=seed)
        self.assertEqual(evs[-1]["token"], dict(evs[-1]["token"], id=EOS, special=True, text=""))
        self.assertEqual(evs[-1]["details"]["finish_reason"], "eos_token")
        self.assertEqual(evs[-1]["details"]["generated_tokens"], len(own["tokens"]) + 1)

    def test_stream_error_before_it_begins_is_plain_json(self):
        r = self.post("/generate_stream", {"inputs": "x" * 300, "model": "tiny"})
        self.tgi_error(r, 422, path="/generate_stream")


# ==========================================================================
# GET /info


class Test04Info(Base):
    def test_fields(self):
        info = self.answer(self.srv.get("/info"), 200, "GET", "/info")
        models = self.answer(self.srv.get("/models"), 200, "GET", "/models")["models"]
        text = sorted(m["name"] for m in models if m["kind"] == "text")
        self.assertEqual(info["model_id"], text[0], "the default model: the first text model by name")
        seq = [m for m in models if m["name"] == info["model_id"]][0]["config"]["seq_len"]
        self.assertEqual(info["max_input_tokens"], seq - 1)
        self.assertEqual(info["max_input_length"], seq - 1)
        self.assertEqual(info["max_total_tokens"], seq)
        self.assertEqual(info["model_dtype"], "float32")
        self.assertEqual(info["model_device_type"], "cpu")
        self.assertEqual(info["model_pipeline_tag"], "text-generation")
        self.assertEqual(info["max_best_of"], 1)
        self.assertEqual(info["max_stop_sequences"], 4)
        self.assertEqual(info["max_top_n_tokens"], 5)
        self.assertGreater(info["max_concurrent_requests"], 0)
        self.assertIsInstance(info["version"], str)
        for k in ("sha", "docker_label", "model_sha"):
            self.assertIn(k, info)
            self.assertIsNone(info[k])

    def test_max_input_tokens_is_the_limit(self):
        info = self.answer(self.srv.get("/info"), 200, "GET", "/info")
        # the byte tokenizer: BOS + one token per byte
        n = info["max_input_tokens"] - 1
        r = self.tgi("a" * n, model=info["model_id"], max_new_tokens=4, details=True)
        self.assertEqual(r["details"]["generated_tokens"], 1, "a prompt at the limit leaves room for one token")
        self.tgi_error(self.post("/generate", {"inputs": "a" * (n + 1), "model": info["model_id"]}), 422)


# ==========================================================================
# POST /tokenize, POST /detokenize


class Test05Tokenize(Base):
    TEXT = "h\u00e9llo, \u4e16\u754c \u2713 \U0001F642"

    def tok(self, body, status=200):
        return self.answer(self.post("/tokenize", body), status, "POST", "/tokenize")

    def detok(self, body, status=200):
        return self.answer(self.post("/detokenize", body), status, "POST", "/detokenize")

    def test_round_trip(self):
        for text in ("", "Hello", self.TEXT, "a\x01b\n\t\"\\"):
            with self.subTest(text=text):
                ids = self.tok({"content": text})["tokens"]
                self.assertEqual(ids, list(text.encode()))
                self.assertEqual(self.detok({"tokens": ids})["content"], text)
                ids = self.tok({"content": text, "add_special": True, "model": "untied"})["tokens"]
                self.assertEqual(ids, [BOS] + list(text.encode()))
                self.assertEqual(self.detok({"tokens": ids + [EOS], "model": "untied"})["content"], text)

    def test_count_is_the_prompt_tokens(self):
        ids = self.tok({"content": self.TEXT, "add_special": True})["tokens"]
        self.assertEqual(len(ids), self.own(self.TEXT, 1)["usage"]["prompt_tokens"])

    def test_pieces(self):
        r = self.tok({"content": "a\u00e9", "with_pieces": True, "add_special": True})
        self.assertEqual(r["tokens"], [{"id": BOS, "piece": ""}, {"id": 97, "piece": "a"},
                                       {"id": 0xC3, "piece": [0xC3]}, {"id": 0xA9, "piece": [0xA9]}])
        r = self.tok({"content": self.TEXT, "with_pieces": False})
        self.assertTrue(all(isinstance(t, int) for t in r["tokens"]))

    def test_invalid_utf8_is_repaired(self):
        self.assertEqual(self.detok({"tokens": [0x61, 0xC3]})["content"], "a\ufffd")
        self.assertEqual(self.detok({"tokens": [0xFF, 0x62]})["content"], "\ufffdb")
        self.assertEqual(self.detok({"tokens": []})["content"], "")

    def test_llama2c_tokenizer(self):
        if not os.path.exists(TOKENIZER_BIN):
            self.skipTest("fixture %s absent" % TOKENIZER_BIN)
        text = "Once upon a time, h\u00e9llo"
        ids = self.tok({"content": text, "model": "zllama", "add_special": True})["tokens"]
        self.assertEqual(ids[0], 1, "BOS of the llama2.c tokenizer")
        self.assertEqual(len(ids), self.own(text, 1, model="zllama")["usage"]["prompt_tokens"])
        self.assertEqual(self.detok({"tokens": ids, "model": "zllama"})["content"], text)
        plain = self.tok({"content": text, "model": "zllama"})["tokens"]
        self.assertEqual(plain, ids[1:])
        pieces = self.tok({"content": "Once upon", "model": "zllama", "with_pieces": True})["tokens"]
        self.assertEqual("".join(p["piece"] for p in pieces), " Once upon", pieces)

    def test_validation(self):
        cases = [("/tokenize", {"content": "x", "parse_special": True}, "parse_special"),
                 ("/tokenize", {}, "content"), ("/tokenize", {"content": 5}, "content"),
                 ("/tokenize", {"content": "x", "add_special": "yes"}, "add_special"),
                 ("/tokenize", {"content": "x", "with_pieces": 1}, "with_pieces"),
                 ("/tokenize", {"content": "x", "model": 5}, "model"),
                 ("/tokenize", {"content": "x", "model": "recall-small"}, "model"),
                 ("/detokenize", {}, "tokens"), ("/detokenize", {"tokens": "1 2"}, "tokens"),
                 ("/detokenize", {"tokens": [1, 258]}, "tokens"), ("/detokenize", {"tokens": [-1]}, "tokens"),
                 ("/detokenize", {"tokens": ["a"]}, "tokens"), ("/detokenize", {"tokens": [1.5]}, "tokens"),
                 ("/detokenize", {"tokens": [1], "content": "x"}, "content"),
                 ("/detokenize", {"tokens": [1], "model": "recall-small"}, "model")]
        for path, body, field in cases:
            with self.subTest(path=path, body=body):
                self.assertError(self.post(path, body), 422, "invalid_argument", path=path, field=field)
        for path, body in (("/tokenize", {"content": "x", "model": "nope"}),
                           ("/detokenize", {"tokens": [1], "model": "nope"})):
            self.assertError(self.post(path, body), 404, "model_not_found", path=path, field="model")
        for path in ("/tokenize", "/detokenize"):
            r = H.http_request(self.srv.port, "POST", path, b'{"content": ', headers={"Content-Type": "application/json"})
            self.assertError(r, 400, "invalid_json", path=path)
            self.assertError(self.post(path, [1]), 422, "invalid_argument", path=path, field=None)
            self.assertError(self.srv.get(path), 405, "method_not_allowed", method="GET", path=path)


# ==========================================================================
# /metrics counts the routes


class Test06Metrics(Base):
    def test_routes_are_counted(self):
        f0, _, _ = self.srv.metrics()
        self.tgi("Hi", max_new_tokens=1)
        self.tgi("Hi", path="/", max_new_tokens=1)
        self.stream({"inputs": "Hi", "parameters": {"max_new_tokens": 2}})
        self.post("/generate_stream", {"inputs": ""})
        self.srv.get("/info")
        self.post("/tokenize", {"content": "x"})
        self.post("/tokenize", {"content": "x"})
        self.post("/detokenize", {"tokens": [1]})
        self.post("/detokenize", {"tokens": [999]})
        time.sleep(0.2)
        f1, _, _ = self.srv.metrics()

        def d(route, code):
            return (H.sample_value(f1, "attnd_requests_total", route=route, code=code)
                    - H.sample_value(f0, "attnd_requests_total", route=route, code=code))
        self.assertEqual(d("/generate", "200"), 1)
        self.assertEqual(d("/", "200"), 1)
        self.assertEqual(d("/generate_stream", "200"), 1)
        self.assertEqual(d("/generate_stream", "422"), 1)
        self.assertEqual(d("/info", "200"), 1)
        self.assertEqual(d("/tokenize", "200"), 2)
        self.assertEqual(d("/detokenize", "200"), 1)
        self.assertEqual(d("/detokenize", "422"), 1)


# ==========================================================================
# clients that go away


class Test07Disconnect(H.DisconnectChecks, Base):
    LONG = {"inputs": "Hello", "model": "zslow4k", "parameters": {"max_new_tokens": 4096}}

    def next_request(self):
        r = self.tgi("Hi", max_new_tokens=8, details=True)
        self.assertEqual(r["details"]["generated_tokens"], 8)

    def test_stream_disconnect_frees_the_slot(self):
        for path, extra in (("/generate_stream", {}), ("/", {"stream": True})):
            with self.subTest(path=path):
                self.cut(path, dict(self.LONG, **extra), stream=True)

    def test_non_stream_disconnect(self):
        self.cut("/generate", self.LONG, stream=False)


# ==========================================================================
# the contract, then shutdown (last)


class Test98Contract(H.ContractTest):
    pass


class Test99Shutdown(H.ShutdownTest):
    servers = (SRV,)
    names = "the TGI server"


if __name__ == "__main__":
    H.run(sys.modules[__name__], description=__doc__.splitlines()[0], cleanup=_cleanup)
