#!/usr/bin/python3
"""test_openai.py — the OpenAI-compatible routes of attnd (/v1/completions,
/v1/chat/completions, /v1/models, /v1/models/{id}), against the real server.

    /usr/bin/python3 tests/server/test_openai.py --attnd build/attnd --attn build/attn [-k NAME] [-v]

One attnd serves every test here, started on first use on an ephemeral port
with random byte-level models made by `attn random`: tiny (seq_len 256,
seed 1), other (seed 2), templ (tiny's shape, seed 4, with a chat template
written into its safetensors metadata), untied (tiny's shape, seed 5, an
untied output head) and slow4k (seq_len 4096, for the disconnect tests). attnd's own /generate is the reference: a /v1 answer
must carry the same text for the same prompt, sampling and seed (choice j
of a prompt samples with seed + j).

A random model with a tied head repeats the prompt's last byte, greedy or
sampled ("Hello" -> "ooooo...": that byte's logit leads by ~23 nats), which
the penalty and logit_bias tests use; the untied model's distribution is
flat enough that sampling at temperature 1 varies, which the seed, n and
stop tests use.

Every JSON answer and every stream chunk is checked against
api/openapi.yaml; mismatches are listed by the last test class.
"""

import json
import os
import re
import struct
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
from harness import schema_ref  # noqa: E402

GRACE = 3
WORK = None
TEMPLATE = "<|{role}|>{content}<|end|>"
GEN_PROMPT = "<|assistant|>"


def add_metadata(path, extra):
    """Rewrites a safetensors file with extra __metadata__ strings (the
    tensors' offsets are relative to the data, so only the header moves)."""
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header["__metadata__"].update(extra)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data[8 + n:])


def _start():
    global WORK
    if WORK is None:
        WORK = H.Workdir()
        models = WORK.mkdir("models")
        H.make_model(os.path.join(models, "tiny.safetensors"), H.TINY, 1)
        H.make_model(os.path.join(models, "other.safetensors"), H.TINY, 2)
        templ = H.make_model(os.path.join(models, "templ.safetensors"), H.TINY, 4)
        add_metadata(templ, {"chat_template": TEMPLATE, "chat_generation_prompt": GEN_PROMPT})
        H.make_model(os.path.join(models, "untied.safetensors"), H.TINY, 5, extra=["--untied"])
        H.make_model(os.path.join(models, "slow4k.safetensors"), H.SLOW, 3)
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


CMPL = "/v1/completions"
CHAT = "/v1/chat/completions"
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error",
               422: "invalid_request_error", 429: "rate_limit_error", 503: "server_error",
               504: "server_error"}
# stream chunk schemas, by the names api/openapi.yaml may give them
CHUNK_SCHEMAS = {False: ("CompletionChunk", "CompletionStreamChunk", "CreateCompletionStreamResponse"),
                 True: ("ChatCompletionChunk", "ChatCompletionStreamChunk", "CreateChatCompletionStreamResponse")}


def chunk_schema(chat):
    names = H.openapi().get("components", {}).get("schemas", {})
    for n in CHUNK_SCHEMAS[chat]:
        if n in names:
            return schema_ref(n)
    return None


class Base(H.ServerTest):
    lazy = SRV

    @property
    def srv(self):
        return SRV.get()

    # ---- answers checked against the contract

    def answer(self, r, status, method, path, tmpl=None):
        """status as expected, a JSON body valid against the documented
        schema (a route or schema openapi.yaml lacks is recorded as a
        violation, not failed here). tmpl: the documented path of a
        concrete one ("/v1/models/{id}"). A 405 on a /v1 path is checked
        against OpenAIError (the document's generic 405 is attnd's shape).
        Returns the decoded body."""
        if r.status != status:
            self.fail("%s %s: status %d, want %d; body %r" % (method, path, r.status, status, r.body[:600]))
        self.assertEqual(r.media_type, "application/json", "%s %s: Content-Type %r"
                         % (method, path, r.header("Content-Type")))
        obj = r.json()
        try:
            if status == 405 and path.startswith("/v1/"):
                schema = schema_ref("OpenAIError")
            else:
                schema = H.response_schema(method, tmpl or path, status)
        except AssertionError as e:
            H.record_violation("%s %s -> %d" % (method, path.split("?")[0], status), [str(e)], json.dumps(obj))
            return obj
        self.checkSchema(obj, schema, "%s %s -> %d" % (method, H.route_template(path) or path, status))
        return obj

    def v1_error(self, r, status, param=H.MISSING, code=None, method="POST", path=CMPL, tmpl=None):
        """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
        obj = self.answer(r, status, method, path, tmpl)
        self.assertEqual(set(obj), {"error"}, obj)
        err = obj["error"]
        self.assertEqual(set(err), {"message", "type", "param", "code"}, err)
        self.assertIsInstance(err["message"], str)
        self.assertTrue(err["message"])
        self.assertEqual(err["type"], ERROR_TYPES.get(status, "invalid_request_error"), err)
        if param is not H.MISSING:
            self.assertEqual(err["param"], param, "param %r, want %r: %s" % (err["param"], param, err))
        if code is not None:
            self.assertEqual(err["code"], code, err)
        return err

    def post(self, path, body, **kw):
        return self.srv.post(path, body, **kw)

    def cmpl(self, prompt="Hello", max_tokens=8, **kw):
        b = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        b.update(kw)
        return self.answer(self.post(CMPL, b), 200, "POST", CMPL)

    def chat(self, messages, **kw):
        b = {"model": "tiny", "messages": messages, "temperature": 0}
        b.update(kw)
        return self.answer(self.post(CHAT, b), 200, "POST", CHAT)

    def generate(self, prompt, max_tokens, model="tiny", **kw):
        b = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        b.update(kw)
        return self.gen_ok(b)

    def stream(self, path, body):
        """POST with stream true: the chunks (decoded), after checking the
        framing, [DONE], one id, and the chunk schema."""
        b = dict(body, stream=True)
        r = self.post(path, b)
        self.assertEqual(r.status, 200, "stream: %r" % r)
        self.assertEqual(r.media_type, "text/event-stream", r.header("Content-Type"))
        datas = H.parse_sse(r.body)
        self.assertEqual(datas[-1], "[DONE]", "last event %r" % datas[-1][:200])
        chunks = [json.loads(d) for d in datas[:-1]]
        chat = path == CHAT
        schema = chunk_schema(chat)
        for c in chunks:
            if "error" in c:
                continue
            if schema is None:
                H.record_violation("stream chunk of %s" % path, ["openapi.yaml has no chunk schema (tried %s)"
                                                                  % ", ".join(CHUNK_SCHEMAS[chat])], json.dumps(c))
            else:
                self.checkSchema(c, schema, "stream chunk of %s" % path)
            self.assertEqual(c["object"], "chat.completion.chunk" if chat else "text_completion", c)
        ids = {c["id"] for c in chunks if "id" in c}
        self.assertLessEqual(len(ids), 1, "chunks of one stream carry different ids: %s" % ids)
        return chunks

    def texts_of_stream(self, chunks, chat=False):
        """{index: (concatenated text, finish_reason)} of a stream."""
        out = {}
        for c in chunks:
            for ch in c.get("choices", []):
                t, f = out.get(ch["index"], ("", None))
                piece = ch["delta"].get("content", "") if chat else ch["text"]
                self.assertIsNone(f, "a chunk after the finish chunk of choice %d: %s" % (ch["index"], c))
                out[ch["index"]] = (t + (piece or ""), ch["finish_reason"])
        return out

    def sampled_text(self, seed, prompt="Once upon a time", n=64):
        """/generate's sample of the untied model at temperature 1."""
        return self.gen_ok({"model": "untied", "prompt": prompt, "max_tokens": n, "temperature": 1,
                            "seed": seed})

    def varied_seed(self):
        """A seed whose sample varies (>= 8 distinct bytes, 40 tokens) and
        has a printable ASCII pair, first seen at index i >= 5, to stop at:
        (seed, /generate's answer, i)."""
        for seed in range(7, 40):
            r = self.sampled_text(seed)
            if len(set(r["tokens"])) < 8 or len(r["tokens"]) < 40:
                continue
            t = r["text"]
            for i in range(5, len(t) - 2):
                if all(0x21 <= ord(ch) <= 0x7E for ch in t[i:i + 2]) and t.find(t[i:i + 2]) == i:
                    return seed, r, i
        self.fail("premise: no seed in 7..39 gives a varied sample with an ASCII pair")


# ==========================================================================
# validation: 422 naming the field (param), 400, 404, unknown fields


BAD_COMPLETION_FIELDS = [
    ("model", 5), ("prompt", 5), ("prompt", []), ("prompt", [1, 2, 3]), ("prompt", ["a"] * 17),
    ("prompt", ["a", 3]),
    ("max_tokens", 0), ("max_tokens", 4097), ("max_tokens", "8"), ("max_tokens", 1.5),
    ("temperature", -0.1), ("temperature", 2.5), ("temperature", "hot"),
    ("top_p", 0), ("top_p", 1.5), ("n", 0), ("n", 17), ("n", "2"),
    ("stop", 5), ("stop", ["a", "b", "c", "d", "e"]), ("stop", [""]), ("stop", [1]),
    ("seed", -1), ("seed", "7"), ("seed", 1.5), ("seed", 2 ** 64),
    ("stream", "yes"), ("stream_options", 5), ("stream_options", {"include_usage": 3}),
    ("logprobs", 6), ("logprobs", -1), ("logprobs", True), ("echo", "yes"),
    ("presence_penalty", 2.5), ("frequency_penalty", -2.5), ("presence_penalty", "x"),
    ("logit_bias", []), ("logit_bias", {"x": 1}), ("logit_bias", {"258": 1}), ("logit_bias", {"-1": 1}),
    ("logit_bias", {"5": 101}), ("logit_bias", {"5": "a"}),
    ("logit_bias", {str(i): 1 for i in range(1025)}),
    ("user", 5), ("top_k", -1), ("top_k", 1.5), ("min_p", 1.5), ("min_p", -0.1),
    ("repetition_penalty", 0), ("repetition_penalty", 11), ("ignore_eos", 1), ("timeout_ms", 0),
]

BAD_CHAT_FIELDS = [
    ("messages", "hi"), ("messages", []), ("messages", [{"role": "user", "content": "x"}] * 257),
    ("messages", ["hi"]), ("messages", [{"role": "tool", "content": "x"}]),
    ("messages", [{"content": "x"}]), ("messages", [{"role": "user", "content": 5}]),
    ("messages", [{"role": "user"}]),
    ("messages", [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
    ("messages", [{"role": "user", "content": [{"type": "text"}]}]),
    ("max_tokens", 0), ("max_completion_tokens", 4097), ("logprobs", 1), ("top_logprobs", 21),
    ("temperature", 3), ("n", 17), ("stop", 5), ("logit_bias", {"1000": 1}), ("seed", "x"),
]


class Test01Validation(Base):
    def test_each_bad_completion_field_is_422_naming_it(self):
        for field, value in BAD_COMPLETION_FIELDS:
            with self.subTest(field=field, value=str(value)[:40]):
                b = {"model": "tiny", "prompt": "Hello", "max_tokens": 2}
                b[field] = value
                self.v1_error(self.post(CMPL, b), 422, field, "invalid_argument")

    def test_each_bad_chat_field_is_422_naming_it(self):
        for field, value in BAD_CHAT_FIELDS:
            with self.subTest(field=field, value=str(value)[:40]):
                b = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
                b[field] = value
                self.v1_error(self.post(CHAT, b), 422, field, "invalid_argument", path=CHAT)

    def test_required_fields(self):
        self.v1_error(self.post(CMPL, {"model": "tiny"}), 422, "prompt", "invalid_argument")
        self.v1_error(self.post(CHAT, {"model": "tiny"}), 422, "messages", "invalid_argument", path=CHAT)

    def test_top_logprobs_needs_logprobs(self):
        b = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "top_logprobs": 2}
        self.v1_error(self.post(CHAT, b), 422, "top_logprobs", path=CHAT)
        b["logprobs"] = False
        self.v1_error(self.post(CHAT, b), 422, "top_logprobs", path=CHAT)

    def test_too_many_sequences_is_422_n(self):
        b = {"model": "tiny", "prompt": ["a", "b", "c", "d", "e"], "n": 13, "max_tokens": 1}
        err = self.v1_error(self.post(CMPL, b), 422, "n", "invalid_argument")
        self.assertIn("64", err["message"])
        b["n"] = 12  # 60 sequences: accepted
        r = self.answer(self.post(CMPL, b), 200, "POST", CMPL)
        self.assertEqual(len(r["choices"]), 60)

    def test_malformed_json_is_400(self):
        for path in (CMPL, CHAT):
            r = self.post(path, '{"prompt": "Hello",', headers={"Content-Type": "application/json"})
            self.v1_error(r, 400, None, "invalid_json", path=path)

    def test_body_not_an_object_is_422(self):
        for path in (CMPL, CHAT):
            self.v1_error(self.post(path, [1, 2]), 422, None, "invalid_argument", path=path)

    def test_unknown_model_is_404(self):
        err = self.v1_error(self.post(CMPL, {"model": "nope", "prompt": "x"}), 404, "model", "model_not_found")
        self.assertIn("nope", err["message"])
        b = {"model": "nope", "messages": [{"role": "user", "content": "x"}]}
        self.v1_error(self.post(CHAT, b), 404, "model", "model_not_found", path=CHAT)

    def test_a_url_as_the_model_is_the_default_model(self):
        # @huggingface/inference 4 sends its endpointUrl as the model
        url = "http://127.0.0.1:%d" % self.srv.port
        r = self.post(CMPL, {"model": url, "prompt": "Hi", "max_tokens": 2, "temperature": 0})
        self.assertEqual(r.status, 200, r.body)
        default = self.srv.post("/generate", {"prompt": "Hi", "max_tokens": 1}).json()["model"]
        self.assertEqual(r.json()["model"], default)

    def test_unknown_fields_are_ignored(self):
        r = self.cmpl(max_tokens=3, frobnicate={"a": 1}, suffix="x", best_of=1, n_predict=4)
        self.assertEqual(r["usage"]["completion_tokens"], 3)
        r = self.chat([{"role": "user", "content": "Hi", "name": "me"}], max_tokens=3,
                      response_format={"type": "text"}, tools=[], parallel_tool_calls=False)
        self.assertEqual(r["usage"]["completion_tokens"], 3)

    def test_null_means_the_default(self):
        r = self.cmpl(max_tokens=None, stop=None, logprobs=None, seed=None, n=None, ignore_eos=True,
                      logit_bias=None, stream_options=None, user=None)
        self.assertEqual(r["usage"]["completion_tokens"], 16, "max_tokens null is 16")
        self.assertIsNone(r["choices"][0]["logprobs"])

    def test_default_max_tokens_is_16(self):
        r = self.answer(self.post(CMPL, {"model": "tiny", "prompt": "Hello", "ignore_eos": True}), 200, "POST", CMPL)
        self.assertEqual(r["usage"]["completion_tokens"], 16)

    def test_accepted_edges(self):
        self.cmpl(max_tokens=1, temperature=2, top_p=1, n=16, seed=2 ** 64 - 1, presence_penalty=-2,
                  frequency_penalty=2, logprobs=5, logit_bias={"0": -100, "257": 100}, min_p=1,
                  repetition_penalty=10, top_k=0, user="u", stop=["a", "b", "c", "d"], echo=False)
        self.cmpl(prompt=["x"] * 16, max_tokens=1, logprobs=0, logit_bias={})

    def test_other_statuses_are_openai_shaped(self):
        r = self.srv.get(CMPL)
        self.v1_error(r, 405, None, method="GET", path=CMPL)
        self.assertIn("POST", r.header("Allow", ""))
        self.v1_error(self.srv.get("/v1/nothing"), 404, None, method="GET", path="/v1/nothing")
        r = self.post(CMPL, "prompt=x", headers={"Content-Type": "text/plain"})
        self.v1_error(r, 415, None)
        status, _, body, _ = self.srv.raw(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                                          b"application/json\r\nContent-Length: 2000000\r\n\r\n")
        self.assertEqual(status, 413, body[:300])
        err = json.loads(body)["error"]
        self.assertEqual((err["type"], err["param"], err["code"]), ("invalid_request_error", None, "payload_too_large"))

    def test_prompt_too_long_is_422_prompt(self):
        self.v1_error(self.post(CMPL, {"model": "tiny", "prompt": "x" * 300}), 422, "prompt", "invalid_argument")
        b = {"model": "tiny", "messages": [{"role": "user", "content": "x" * 300}]}
        self.v1_error(self.post(CHAT, b), 422, "messages", "invalid_argument", path=CHAT)


# ==========================================================================
# /v1/completions


class Test02Completions(Base):
    def test_shape(self):
        t0 = time.time()
        r = self.cmpl()
        self.assertRegex(r["id"], r"^cmpl-[0-9a-f]{32}$")
        self.assertEqual(r["object"], "text_completion")
        self.assertEqual(r["model"], "tiny")
        self.assertLessEqual(abs(r["created"] - t0), 5)
        self.assertEqual([c["index"] for c in r["choices"]], [0])
        self.assertEqual(r["choices"][0]["finish_reason"], "length")
        u = r["usage"]
        self.assertEqual(u["total_tokens"], u["prompt_tokens"] + u["completion_tokens"])
        self.assertNotEqual(self.cmpl()["id"], r["id"], "two answers with one id")

    def test_greedy_equals_generate(self):
        for prompt, n in (("Hello", 24), ("Once upon a time", 40), ("", 5), ("é ü 日本", 12)):
            with self.subTest(prompt=prompt):
                want = self.generate(prompt, n)
                got = self.cmpl(prompt, n)
                self.assertEqual(got["choices"][0]["text"], want["text"])
                self.assertEqual(got["usage"]["prompt_tokens"], want["usage"]["prompt_tokens"])
                self.assertEqual(got["usage"]["completion_tokens"], want["usage"]["completion_tokens"])

    def test_seeded_sample_equals_generate(self):
        for seed in (1, 99, 2 ** 64 - 1):
            want = self.sampled_text(seed)
            got = self.cmpl("Once upon a time", 64, model="untied", temperature=1, seed=seed)
            self.assertEqual(got["choices"][0]["text"], want["text"], "seed %d" % seed)

    def test_default_model_is_generates(self):
        want = self.gen_ok({"prompt": "Hi", "max_tokens": 4, "temperature": 0})
        r = self.answer(self.post(CMPL, {"prompt": "Hi", "max_tokens": 4, "temperature": 0}), 200, "POST", CMPL)
        self.assertEqual(r["model"], want["model"])
        self.assertEqual(r["choices"][0]["text"], want["text"])

    def test_prompt_array_and_n_in_index_order(self):
        prompts = ["Hello", "Once upon a time", "ab"]
        r = self.cmpl(prompts, 10, n=2)
        self.assertEqual([c["index"] for c in r["choices"]], list(range(6)))
        want = [self.generate(p, 10) for p in prompts]
        for i, w in enumerate(want):
            for j in range(2):
                self.assertEqual(r["choices"][i * 2 + j]["text"], w["text"], "prompt %d choice %d" % (i, j))
        self.assertEqual(r["usage"]["prompt_tokens"], sum(w["usage"]["prompt_tokens"] for w in want),
                         "prompt_tokens counts each prompt once")
        self.assertEqual(r["usage"]["completion_tokens"], 2 * sum(w["usage"]["completion_tokens"] for w in want))

    def test_n_equal_under_greedy(self):
        r = self.cmpl("Once upon a time", 20, n=5)
        self.assertEqual(len({c["text"] for c in r["choices"]}), 1, r["choices"])

    def test_n_differ_under_sampling_and_follow_seed_plus_index(self):
        seed, _, _ = self.varied_seed()
        r = self.cmpl("Once upon a time", 64, model="untied", temperature=1, seed=seed, n=4)
        texts = [c["text"] for c in r["choices"]]
        self.assertGreaterEqual(len(set(texts)), 3, "4 sampled choices: %s" % texts)
        for j in range(4):
            self.assertEqual(texts[j], self.sampled_text(seed + j)["text"], "choice %d is seed + %d" % (j, j))
        again = self.cmpl("Once upon a time", 64, model="untied", temperature=1, seed=seed, n=4)
        self.assertEqual([c["text"] for c in again["choices"]], texts, "the same seed, the same choices")

    def test_stop_strings(self):
        seed, full, i = self.varied_seed()
        text = full["text"]
        stop = text[i:i + 2]
        kw = {"model": "untied", "temperature": 1, "seed": seed}
        r = self.cmpl("Once upon a time", 64, stop=stop, **kw)
        self.assertEqual(r["choices"][0]["text"], text[:i])
        self.assertEqual(r["choices"][0]["finish_reason"], "stop")
        r = self.cmpl("Once upon a time", 64, stop=["\x01never", stop], **kw)
        self.assertEqual(r["choices"][0]["text"], text[:i])
        # greedy "Hello" -> "ooo": stop "o" gives ""
        r = self.cmpl("Hello", 8, stop="o")
        self.assertEqual((r["choices"][0]["text"], r["choices"][0]["finish_reason"]), ("", "stop"))

    def test_echo(self):
        want = self.generate("Hello", 6)
        r = self.cmpl("Hello", 6, echo=True)
        self.assertEqual(r["choices"][0]["text"], "Hello" + want["text"])
        r = self.cmpl("Hello", 6, echo=True, logprobs=2)
        lp = r["choices"][0]["logprobs"]
        n_prompt = r["usage"]["prompt_tokens"]
        self.assertEqual(len(lp["tokens"]), n_prompt + 6)
        # the first prompt token has none; the others the model's own
        self.assertIsNone(lp["token_logprobs"][0])
        self.assertIsNone(lp["top_logprobs"][0])
        for t in range(1, n_prompt):
            self.assertLessEqual(lp["token_logprobs"][t], 0.0)
            self.assertEqual(len(lp["top_logprobs"][t]), 2)
            self.assertGreaterEqual(max(lp["top_logprobs"][t].values()), lp["token_logprobs"][t] - 1e-6)
        self.assertEqual("".join(lp["tokens"]), r["choices"][0]["text"])
        self.assertEqual(lp["text_offset"][n_prompt], len("Hello"))

    def test_echo_logprobs_equal_the_generated_ones(self):
        # greedy, no penalty: a generated token's log-probability is the
        # model's own, so echoing prompt + generated text gives it back
        # (prefill's numbers against decode's: 1e-4)
        gen = self.cmpl("Once upon", 8, logprobs=1)["choices"][0]
        r = self.cmpl("Once upon" + gen["text"], 1, echo=True, logprobs=1)
        lp = r["choices"][0]["logprobs"]
        n_prompt = r["usage"]["prompt_tokens"]
        echoed = lp["token_logprobs"][n_prompt - 8:n_prompt]
        self.assertEqual(lp["tokens"][n_prompt - 8:n_prompt], gen["logprobs"]["tokens"])
        for a, b in zip(echoed, gen["logprobs"]["token_logprobs"]):
            self.assertAlmostEqual(a, b, delta=1e-4)
        # with n > 1 the choices share the prefill and so the prompt's numbers
        r2 = self.cmpl("Once upon" + gen["text"], 1, echo=True, logprobs=1, n=3)
        for ch in r2["choices"]:
            self.assertEqual(ch["logprobs"]["token_logprobs"][:n_prompt], lp["token_logprobs"][:n_prompt])

    def test_logprobs(self):
        r = self.cmpl("Once upon a time", 12, logprobs=3)
        c = r["choices"][0]
        lp = c["logprobs"]
        self.assertEqual(set(lp), {"tokens", "token_logprobs", "top_logprobs", "text_offset"})
        self.assertEqual(len(lp["tokens"]), 12)
        self.assertEqual("".join(lp["tokens"]), c["text"])
        offs, pos = [], 0
        for t in lp["tokens"]:
            offs.append(pos)
            pos += len(t.encode())
        self.assertEqual(lp["text_offset"], offs)
        for tok, chosen, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
            self.assertLessEqual(chosen, 0)
            self.assertTrue(1 <= len(top) <= 3, top)
            self.assertGreaterEqual(max(top.values()), chosen - 1e-6)
            # greedy picks the most likely token: the top alternative is the chosen one
            self.assertAlmostEqual(max(top.values()), chosen, places=5)
            self.assertIn(tok, top)
            self.assertLessEqual(sum(2.718281828 ** v for v in top.values()), 1 + 1e-5)
        r0 = self.cmpl("Once upon a time", 4, logprobs=0)
        self.assertEqual(r0["choices"][0]["logprobs"]["top_logprobs"], [{}] * 4)

    def test_sampled_logprobs_are_probabilities(self):
        r = self.cmpl("Once upon a time", 32, logprobs=5, temperature=2, seed=3)
        lp = r["choices"][0]["logprobs"]
        for chosen, top in zip(lp["token_logprobs"], lp["top_logprobs"]):
            self.assertLessEqual(chosen, 0)
            self.assertGreaterEqual(max(top.values()), chosen - 1e-6)
            self.assertLessEqual(sum(2.718281828 ** v for v in top.values()), 1 + 1e-5)

    def test_logit_bias_bans_and_forces(self):
        want = self.generate("Hello", 12)
        banned = want["tokens"][0]  # a byte: greedy repeats "o"
        self.assertLess(banned, 128, "premise: an ASCII first token")
        r = self.cmpl("Hello", 12, logit_bias={str(banned): -100}, logprobs=5)
        text = r["choices"][0]["text"]
        self.assertNotEqual(text, want["text"])
        self.assertNotIn(chr(banned), text, "the banned token appears")
        for top in r["choices"][0]["logprobs"]["top_logprobs"]:
            for k, v in top.items():
                if k == chr(banned):
                    self.assertLessEqual(v, -9999, "a banned token's logprob: %s" % top)
        r = self.cmpl("Hello", 6, logit_bias={str(ord("Z")): 100})
        self.assertEqual(r["choices"][0]["text"], "Z" * 6)

    def test_penalties_change_greedy_output(self):
        # tiny repeats one byte whose logit leads by ~23: frequency (2 per
        # occurrence) and repetition penalties overcome that within 24
        # tokens, a presence penalty (2, once) cannot; on the untied model
        # it changes a greedy output that repeats a byte
        plain = self.cmpl("Hello", 24)["choices"][0]["text"]
        self.assertLessEqual(len(set(plain)), 2, "premise: greedy output repeats: %r" % plain)
        for kw in ({"frequency_penalty": 2}, {"repetition_penalty": 5}):
            with self.subTest(**kw):
                got = self.cmpl("Hello", 24, **kw)["choices"][0]["text"]
                self.assertNotEqual(got, plain, "%s did not change the greedy output" % kw)
                self.assertGreater(len(set(got)), len(set(plain)), "%s: %r" % (kw, got))
        plain = self.generate("Once upon a time", 48, model="untied", ignore_eos=True)
        self.assertLess(len(set(plain["tokens"])), len(plain["tokens"]), "premise: a byte repeats")
        got = self.cmpl("Once upon a time", 48, model="untied", presence_penalty=2,
                        ignore_eos=True)["choices"][0]["text"]
        self.assertNotEqual(got, plain["text"], "presence_penalty did not change the greedy output")

    def test_extensions_top_k_and_min_p(self):
        plain = self.cmpl("Once upon a time", 24)["choices"][0]["text"]
        for kw in ({"top_k": 1}, {"min_p": 1.0}):
            got = self.cmpl("Once upon a time", 24, temperature=2, seed=5, **kw)["choices"][0]["text"]
            self.assertEqual(got, plain, "%s at temperature 2 keeps only the top token" % kw)

    def test_finish_length_at_the_context(self):
        r = self.cmpl("x" * 250, 100, ignore_eos=True)
        self.assertEqual(r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"], 256)
        self.assertEqual(r["choices"][0]["finish_reason"], "length")

    def test_timeout(self):
        r = self.post(CMPL, {"model": "slow4k", "prompt": "x" * 3000, "max_tokens": 50, "timeout_ms": 1})
        if r.status == 200:
            self.assertEqual(self.answer(r, 200, "POST", CMPL)["choices"][0]["finish_reason"], "timeout")
        else:
            self.v1_error(r, 504, None, "timeout")


# ==========================================================================
# streaming


class Test03Stream(Base):
    def check_same(self, body, path=CMPL):
        chat = path == CHAT
        plain = self.answer(self.post(path, body), 200, "POST", path)
        chunks = self.stream(path, body)
        got = self.texts_of_stream(chunks, chat)
        want = {c["index"]: ((c["message"]["content"] if chat else c["text"]), c["finish_reason"])
                for c in plain["choices"]}
        self.assertEqual(got, want, "streamed text and finish reasons != unstreamed")
        self.assertEqual({c["model"] for c in chunks if "model" in c}, {plain["model"]})
        return plain, chunks

    def test_greedy_stream_equals_plain(self):
        plain, chunks = self.check_same({"model": "tiny", "prompt": "Once upon a time", "max_tokens": 20,
                                         "temperature": 0})
        self.assertEqual(len(chunks), 21, "one chunk per token, then the finish chunk")
        for c in chunks:
            self.assertNotIn("usage", c, "usage without include_usage")
            self.assertRegex(c["id"], r"^cmpl-[0-9a-f]{32}$")

    def test_sampled_prompts_and_n(self):
        self.check_same({"model": "untied", "prompt": ["Once upon a time", "ab"], "n": 3, "max_tokens": 30,
                         "temperature": 1, "seed": 11})

    def test_stream_with_stop(self):
        seed, full, i = self.varied_seed()
        text = full["text"]
        plain, chunks = self.check_same({"model": "untied", "prompt": "Once upon a time", "max_tokens": 64,
                                         "temperature": 1, "seed": seed, "stop": text[i:i + 2]})
        self.assertEqual(plain["choices"][0]["text"], text[:i])

    def test_include_usage(self):
        body = {"model": "tiny", "prompt": ["Hello", "Hi"], "n": 2, "max_tokens": 5, "temperature": 0,
                "stream_options": {"include_usage": True}}
        plain, chunks = self.check_same(body)
        for c in chunks[:-1]:
            self.assertIn("usage", c)
            self.assertIsNone(c["usage"])
        self.assertEqual(chunks[-1]["choices"], [])
        self.assertEqual(chunks[-1]["usage"], plain["usage"])

    def test_echo_first_chunk(self):
        chunks = self.stream(CMPL, {"model": "tiny", "prompt": ["Hello", "Hi"], "max_tokens": 3, "echo": True,
                                    "temperature": 0})
        firsts = {}
        for c in chunks:
            for ch in c["choices"]:
                firsts.setdefault(ch["index"], ch["text"])
        self.assertEqual(firsts, {0: "Hello", 1: "Hi"})
        plain = self.cmpl(["Hello", "Hi"], 3, echo=True)
        self.assertEqual({k: v[0] for k, v in self.texts_of_stream(chunks).items()},
                         {c["index"]: c["text"] for c in plain["choices"]})

    def test_stream_logprobs(self):
        body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0, "logprobs": 2}
        plain = self.cmpl("Once upon a time", 8, logprobs=2)["choices"][0]["logprobs"]
        chunks = self.stream(CMPL, body)
        got = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for c in chunks:
            lp = c["choices"][0]["logprobs"]
            if lp:
                for k in got:
                    self.assertEqual(len(lp[k]), 1, lp)
                    got[k] += lp[k]
        self.assertEqual(got, plain)

    def test_error_after_the_stream_began(self):
        body = {"model": "tiny", "prompt": ["Hello", "x" * 300], "max_tokens": 200, "temperature": 0}
        self.v1_error(self.post(CMPL, body), 422, "prompt")
        r = self.post(CMPL, dict(body, stream=True))
        if r.status == 422:  # the long prompt was refused before the stream began
            self.v1_error(r, 422, "prompt")
            return
        self.assertEqual(r.status, 200)
        datas = H.parse_sse(r.body)
        self.assertEqual(datas[-1], "[DONE]")
        err = json.loads(datas[-2])
        self.assertEqual(set(err["error"]), {"message", "type", "param", "code"})
        self.assertEqual(err["error"]["param"], "prompt")

    def test_chat_stream(self):
        msgs = [{"role": "user", "content": "Once upon a time"}]
        body = {"model": "tiny", "messages": msgs, "max_tokens": 12, "temperature": 0, "n": 2,
                "stream_options": {"include_usage": True}}
        plain, chunks = self.check_same(body, CHAT)
        for k in (0, 1):
            mine = [ch for c in chunks for ch in c["choices"] if ch["index"] == k]
            self.assertEqual(mine[0]["delta"], {"role": "assistant", "content": ""})
            self.assertTrue(all(set(ch["delta"]) == {"content"} for ch in mine[1:-1]), mine)
            self.assertEqual(mine[-1]["delta"], {})
            self.assertEqual(mine[-1]["finish_reason"], "length")
        self.assertRegex(chunks[0]["id"], r"^chatcmpl-[0-9a-f]{32}$")
        self.assertEqual(chunks[-1]["usage"], plain["usage"])

    def test_chat_stream_logprobs(self):
        msgs = [{"role": "user", "content": "Hi"}]
        body = {"model": "tiny", "messages": msgs, "max_tokens": 5, "temperature": 0, "logprobs": True,
                "top_logprobs": 2}
        plain = self.chat(msgs, max_tokens=5, logprobs=True, top_logprobs=2)
        chunks = self.stream(CHAT, body)
        got = [e for c in chunks for ch in c["choices"] if ch.get("logprobs") for e in ch["logprobs"]["content"]]
        self.assertEqual(got, plain["choices"][0]["logprobs"]["content"])


# ==========================================================================
# /v1/chat/completions


class Test04Chat(Base):
    MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    PLAIN = "system: Be brief.\nuser: Hello\nassistant:"

    def test_shape(self):
        r = self.chat(self.MSGS, max_tokens=4)
        self.assertRegex(r["id"], r"^chatcmpl-[0-9a-f]{32}$")
        self.assertEqual(r["object"], "chat.completion")
        self.assertEqual(r["model"], "tiny")
        c = r["choices"][0]
        self.assertEqual(c["message"]["role"], "assistant")
        self.assertIsInstance(c["message"]["content"], str)
        self.assertIsNone(c["logprobs"])
        self.assertEqual(c["finish_reason"], "length")

    def test_plain_template_equals_completion_of_the_rendered_prompt(self):
        for kw in ({}, {"model": "untied", "temperature": 1, "seed": 9}):
            got = self.chat(self.MSGS, max_tokens=20, **kw)
            want = self.cmpl(self.PLAIN, 20, **kw)
            self.assertEqual(got["choices"][0]["message"]["content"], want["choices"][0]["text"], kw)
            self.assertEqual(got["usage"], want["usage"])

    def test_developer_renders_as_system_and_parts_join(self):
        msgs = [{"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}]
        got = self.chat(msgs, model="untied", max_tokens=20, temperature=1, seed=4)
        want = self.cmpl("system: Be brief.\nuser: Hel\nlo\nassistant:", 20, model="untied", temperature=1, seed=4)
        self.assertEqual(got["choices"][0]["message"]["content"], want["choices"][0]["text"])
        self.assertEqual(got["usage"], want["usage"])

    def test_model_template_from_metadata(self):
        msgs = self.MSGS + [{"role": "assistant", "content": "Hi."}, {"role": "user", "content": "More"}]
        rendered = "".join(TEMPLATE.replace("{role}", m["role"]).replace("{content}", m["content"])
                           for m in msgs) + GEN_PROMPT
        got = self.chat(msgs, model="templ", max_tokens=20, temperature=2, seed=4)
        want = self.cmpl(rendered, 20, model="templ", temperature=2, seed=4)
        self.assertEqual(got["choices"][0]["message"]["content"], want["choices"][0]["text"])
        self.assertEqual(got["usage"], want["usage"])

    def test_default_max_tokens_fills_the_context(self):
        r = self.chat(self.MSGS, ignore_eos=True)
        self.assertEqual(r["usage"]["total_tokens"], 256)
        self.assertEqual(r["choices"][0]["finish_reason"], "length")

    def test_max_completion_tokens_alias(self):
        r = self.chat(self.MSGS, max_completion_tokens=3, ignore_eos=True)
        self.assertEqual(r["usage"]["completion_tokens"], 3)
        r = self.chat(self.MSGS, max_tokens=3, ignore_eos=True)
        self.assertEqual(r["usage"]["completion_tokens"], 3)

    def test_n_and_stop(self):
        r = self.chat(self.MSGS, max_tokens=10, n=3)
        self.assertEqual([c["index"] for c in r["choices"]], [0, 1, 2])
        self.assertEqual(len({c["message"]["content"] for c in r["choices"]}), 1)
        plain = r["choices"][0]["message"]["content"]
        r = self.chat(self.MSGS, max_tokens=10, stop=plain[2:4])
        self.assertEqual(r["choices"][0]["message"]["content"], plain[:plain.find(plain[2:4])])
        self.assertEqual(r["choices"][0]["finish_reason"], "stop")

    def test_logprobs(self):
        r = self.chat(self.MSGS, max_tokens=6, logprobs=True, top_logprobs=3)
        c = r["choices"][0]
        content = c["logprobs"]["content"]
        self.assertEqual(len(content), 6)
        self.assertEqual("".join(e["token"] for e in content), c["message"]["content"])
        for e in content:
            self.assertEqual(set(e), {"token", "logprob", "bytes", "top_logprobs"})
            self.assertLessEqual(e["logprob"], 0)
            self.assertEqual(bytes(e["bytes"]).decode(), e["token"])
            self.assertEqual(len(e["top_logprobs"]), 3)
            top = e["top_logprobs"]
            self.assertEqual([set(a) for a in top], [{"token", "logprob", "bytes"}] * 3)
            self.assertEqual([a["logprob"] for a in top], sorted((a["logprob"] for a in top), reverse=True))
            self.assertEqual(top[0]["token"], e["token"], "greedy picks the top alternative")
            self.assertAlmostEqual(top[0]["logprob"], e["logprob"], places=6)
        r = self.chat(self.MSGS, max_tokens=2, logprobs=True)
        self.assertEqual([e["top_logprobs"] for e in r["choices"][0]["logprobs"]["content"]], [[], []])


# ==========================================================================
# /v1/models


class Test05Models(Base):
    def test_list(self):
        r = self.answer(self.srv.get("/v1/models"), 200, "GET", "/v1/models")
        self.assertEqual(r["object"], "list")
        self.assertEqual([m["id"] for m in r["data"]], ["other", "slow4k", "templ", "tiny", "untied"])
        for m in r["data"]:
            self.assertEqual(set(m), {"id", "object", "created", "owned_by"})
            self.assertEqual((m["object"], m["owned_by"]), ("model", "attnd"))
            self.assertLessEqual(m["created"], time.time() + 1)
            self.assertGreater(m["created"], time.time() - 3600)
        self.assertEqual(len({m["created"] for m in r["data"]}), 1)

    def test_one(self):
        r = self.answer(self.srv.get("/v1/models/tiny"), 200, "GET", "/v1/models/tiny", "/v1/models/{id}")
        self.assertEqual((r["id"], r["object"], r["owned_by"]), ("tiny", "model", "attnd"))
        err = self.v1_error(self.srv.get("/v1/models/nope"), 404, "model", "model_not_found", method="GET",
                            path="/v1/models/nope", tmpl="/v1/models/{id}")
        self.assertIn("nope", err["message"])

    def test_methods(self):
        self.v1_error(self.srv.post("/v1/models", {}), 405, None, method="POST", path="/v1/models")


# ==========================================================================
# /metrics counts the /v1 routes


class Test06Metrics(Base):
    def test_v1_routes_are_counted(self):
        f0, _, _ = self.srv.metrics()
        self.cmpl(max_tokens=1)
        self.chat([{"role": "user", "content": "x"}], max_tokens=1)
        self.chat([{"role": "user", "content": "x"}], max_tokens=1)
        self.srv.get("/v1/models")
        self.srv.get("/v1/models/tiny")
        self.post(CMPL, {"model": "tiny", "prompt": "x", "n": 99})
        time.sleep(0.2)
        f1, _, _ = self.srv.metrics()

        def d(route, code):
            return (H.sample_value(f1, "attnd_requests_total", route=route, code=code)
                    - H.sample_value(f0, "attnd_requests_total", route=route, code=code))
        self.assertEqual(d(CMPL, "200"), 1)
        self.assertEqual(d(CMPL, "422"), 1)
        self.assertEqual(d(CHAT, "200"), 2)
        self.assertEqual(d("/v1/models", "200"), 1)
        self.assertEqual(d("/v1/models/{id}", "200"), 1)


# ==========================================================================
# clients that go away


class Test07Disconnect(H.DisconnectChecks, Base):
    LONG = {"model": "slow4k", "prompt": "Hello", "max_tokens": 4096, "temperature": 0, "ignore_eos": True}

    def next_request(self):
        r = self.cmpl(max_tokens=8, ignore_eos=True)
        self.assertEqual(r["usage"]["completion_tokens"], 8)

    def test_stream_disconnect_frees_the_slots(self):
        for path, extra in ((CMPL, {"n": 3}), (CHAT, {})):
            with self.subTest(path=path):
                b = dict(self.LONG, stream=True, **extra)
                if path == CHAT:
                    b["messages"] = [{"role": "user", "content": b.pop("prompt")}]
                self.cut(path, b, stream=True)

    def test_non_stream_disconnect(self):
        self.cut(CMPL, dict(self.LONG, n=2), stream=False)


# ==========================================================================
# the contract, then shutdown (last)


class Test98Contract(H.ContractTest):
    pass


class Test99Shutdown(H.ShutdownTest):
    servers = (SRV,)
    names = "the /v1 server"


if __name__ == "__main__":
    H.run(sys.modules[__name__], description=__doc__.splitlines()[0], cleanup=_cleanup)
