#!/usr/bin/env bash
# Regenerates the committed seed corpora under tests/fuzz/corpus/ from
# api/examples, small models written by `attn random` with tiny dims, and
# inputs written here; every file is a few KB at most.  Usage:
#   tests/fuzz/make_corpus.sh build/attn
# The corpus is committed; run this only to change it.
set -euo pipefail
attn=${1:?usage: make_corpus.sh path/to/attn}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
c=$here/corpus
rm -rf "$c"
mkdir -p "$c"/{safetensors,llama2c,tokenizer_bin,byte_encode,bpe_encode,utf8_stream,json_guard,train_params,generate,recall,train_record,openai,tgi}

# models: the smallest shapes the config allows, tied and untied, both kinds
tiny="--dim 4 --hidden 8 --layers 1 --heads 2 --kv-heads 1 --vocab 6 --seq-len 4"
"$attn" random --out "$c/safetensors/tiny.safetensors" $tiny --seed 1
"$attn" random --out "$c/safetensors/untied.safetensors" $tiny --untied --seed 2
"$attn" random --out "$c/safetensors/two-layers.safetensors" --dim 4 --hidden 4 --layers 2 \
  --heads 1 --kv-heads 1 --vocab 3 --seq-len 2 --tokenizer-kind llama2c --seed 3
# quantised files (q8 and q4 need widths that are multiples of 32)
"$attn" random --out "$c/q32.safetensors" --dim 32 --hidden 32 --layers 1 --heads 2 --kv-heads 1 \
  --vocab 6 --seq-len 4 --untied --seed 4
for f in bf16 q8 q4; do
  "$attn" quantize --in "$c/q32.safetensors" --out "$c/safetensors/$f.safetensors" --format $f 2>/dev/null
done
rm "$c/q32.safetensors"
"$attn" random --out "$c/llama2c/tiny.bin" $tiny --seed 1
"$attn" random --out "$c/llama2c/untied.bin" $tiny --untied --seed 2
"$attn" random --out "$c/llama2c/gqa.bin" --dim 8 --hidden 4 --layers 1 --heads 4 --kv-heads 2 \
  --vocab 3 --seq-len 2 --seed 3

python3 - "$c" "$root" <<'PY'
import json, os, struct, sys, glob
c, root = sys.argv[1], sys.argv[2]
def put(d, name, data):
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(c, d, name), "wb") as f:
        f.write(data)

# tokenizer.bin: the 3 specials, the 256 byte tokens, then a few merges
def tokbin(extra):
    toks = [(0.0, b"<unk>"), (0.0, b"\n<s>\n"), (0.0, b"\n</s>\n")]
    toks += [(0.0, b"<0x%02X>" % b) for b in range(256)]
    toks += extra
    out = struct.pack("<i", max(len(p) for _, p in toks))
    for s, p in toks:
        out += struct.pack("<fi", s, len(p)) + p
    return out
put("tokenizer_bin", "bytes-only.bin", tokbin([]))
put("tokenizer_bin", "merges.bin", tokbin([(-1.0, b" "), (-2.0, b"t"), (-2.0, b"h"),
    (-2.0, b"e"), (-3.0, b"th"), (-4.0, b"the"), (-5.0, b" the"), (-2.0, "é".encode()),
    (-3.0, "éé".encode()), (-6.0, b"a\0b"), (-3.0, b"th")]))

# text for the encoders and the stream: ASCII, UTF-8, invalid bytes, NUL
texts = {
    "ascii": b"\x03the theatre thin the",
    "utf8": "\x00héllo wörld, 中文 😀 é\u0301".encode(),
    "invalid": b"\x01\xc3\x28 \xa0\xa1 \xe2\x28\xa1 \xf0\x28\x8c\xbc \xf8\xa1\xa1\xa1\xa1 \xed\xa0\x80 \xc0\xaf",
    "cut": b"\x02abc \xe4\xb8",
    "nul": b"\x00a\x00b\x00\x00ab",
}
for name, t in texts.items():
    put("byte_encode", name, t)
    put("bpe_encode", name, t)
seed = sorted(glob.glob(os.path.join(root, "..", "shared", "seed", "*.txt")))
if seed:
    prose = open(seed[0], "rb").read()[:1024]
    put("bpe_encode", "prose", b"\x01" + prose)
    put("byte_encode", "prose", b"\x01" + prose)
# the stream: records of (control byte: piece length, stop hold) + piece
def stream(pieces, hold=0):
    return b"".join(bytes([len(p) | hold << 3]) + p for p in pieces)
put("utf8_stream", "split-chars", stream([b"h\xc3", b"\xa9", b"\xe4\xb8", b"\xad", b"\xf0\x9f", b"\x98", b"\x80"]))
put("utf8_stream", "invalid", stream([b"\xc3(", b"\xa0\xa1", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe0"]))
put("utf8_stream", "stop-hold", stream([b"Hello", b" wo", "rld é".encode(), b"\n\n", b"\xe2\x82"], hold=2))
put("utf8_stream", "json-escapes", stream([b"\"quote\"", b"\\back", b"\x00\x01\x1f", b"\x7f\t\r\n"]))

# JSON bodies: the API's examples, and edges of the guard's limits
ex = {os.path.basename(p)[:-5]: open(p, "rb").read() for p in sorted(glob.glob(os.path.join(root, "api", "examples", "*.json")))}
for name, body in ex.items():
    put("json_guard", name, b"\x00" + body)
    if name.startswith("train-"):
        put("train_params", name, body)
    if name.startswith("generate-"):
        put("generate", name, body)
    if name.startswith("recall-"):
        put("recall", name, body)
put("json_guard", "deep-32", b"\x00" + b"[" * 32 + b"]" * 32)
put("json_guard", "deep-33", b"\x00" + b"[" * 33 + b"]" * 33)
put("json_guard", "deep-1000", b"\x40" + b"[" * 1000 + b"]" * 1000)
put("json_guard", "small-limits", b"\x9b" + b'{"a":[1,2,3],"b":"\\u00e9\\"x","c":{"d":[[]]}}')
put("json_guard", "escapes", b"\x00" + '["\\ud83d\\ude00", "\\\\", "\\"", "é", {"k\\u0000": 1}]'.encode())
put("generate", "seed-u64", b'{"prompt": "Hi", "seed": 18446744073709551615, "temperature": 0.5}')
put("generate", "all-fields", b'{"model":"tiny","prompt":"Once \\u00e9","max_tokens":4,"temperature":0.8,'
    b'"top_k":5,"top_p":0.9,"seed":42,"stop":["\\n","end"],"stream":true,"ignore_eos":false,'
    b'"attention":"tiled","timeout_ms":1000}')
put("generate", "recall-model", b'{"model":"mqar","prompt":"x"}')
put("generate", "big-int", b'{"prompt":"x","max_tokens":123456789012345678901234567890}')
put("recall", "model-engine", b'{"engine":"model","model":"mqar","pairs":[[1,2],[3,4],[1,5]],"queries":[1,3,7]}')
put("recall", "model-query", b'{"engine":"model","pairs":[[0,15]],"query":0,"timeout_ms":50}')
put("recall", "symbols", b'{"pairs":[["1",1],[1,"1"],[null,2]],"queries":["1",1,true]}')
put("train_params", "text-corpus-record", b'{"task":"text","name":"t","text":{"text_bytes":500,"eval_fraction":0.2}}')
# /v1 bodies: the first byte picks the route (0 completions, 1 chat)
oai = {
    "cmpl-minimal": b'\x00{"prompt":"Hi"}',
    "cmpl-all": b'\x00{"model":"tiny","prompt":["Once","Hi \\u00e9"],"max_tokens":4,"temperature":0.8,'
        b'"top_p":0.9,"n":3,"stop":["\\n","end"],"seed":18446744073709551615,"stream":true,'
        b'"stream_options":{"include_usage":true},"logprobs":5,"echo":true,"presence_penalty":0.5,'
        b'"frequency_penalty":-0.5,"logit_bias":{"10":-100,"65":2.5},"user":"u","top_k":5,'
        b'"min_p":0.1,"repetition_penalty":1.3,"ignore_eos":false,"timeout_ms":1000,"extra":{"a":[1]}}',
    "cmpl-nulls": b'\x00{"prompt":"x","max_tokens":null,"stop":null,"logprobs":null,"seed":null}',
    "cmpl-bad-bias": b'\x00{"prompt":"x","logit_bias":{"999999":1,"x":2}}',
    "cmpl-too-many": b'\x00{"prompt":["a","b","c","d","e"],"n":16}',
    "cmpl-recall-model": b'\x00{"model":"mqar","prompt":"x"}',
    "cmpl-url-model": b'\x00{"model":"http://127.0.0.1:8080","prompt":"x"}',
    "cmpl-big-int": b'\x00{"prompt":"x","max_tokens":123456789012345678901234567890}',
    "chat-minimal": b'\x01{"messages":[{"role":"user","content":"Hi"}]}',
    "chat-all": b'\x01{"model":"tiny","messages":[{"role":"system","content":"Be brief."},'
        b'{"role":"developer","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},'
        b'{"role":"user","content":"Hi","name":"me"},{"role":"assistant","content":"Hello"}],'
        b'"max_completion_tokens":8,"logprobs":true,"top_logprobs":20,"n":2,"stream":true,'
        b'"tools":[],"response_format":{"type":"text"}}',
    "chat-bad-part": b'\x01{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}',
    "chat-bad-role": b'\x01{"messages":[{"role":"tool","content":"x"}]}',
}
for name, body in oai.items():
    put("openai", name, body)
# TGI bodies: the first byte picks the route (0 /generate, 1 /generate_stream, 2 POST /)
tgi = {
    "generate-minimal": b'\x00{"inputs":"Hi"}',
    "generate-all": b'\x00{"inputs":"Once \\u00e9","model":"tiny","stream":false,"parameters":{'
        b'"max_new_tokens":8,"temperature":0.7,"top_k":5,"top_p":0.9,"seed":18446744073709551615,'
        b'"stop":["\\n","end"],"do_sample":true,"repetition_penalty":1.2,"frequency_penalty":0.5,'
        b'"details":true,"decoder_input_details":true,"return_full_text":true,"top_n_tokens":5,'
        b'"best_of":1,"watermark":false,"truncate":null,"typical_p":null,"extra":[1]}}',
    "generate-greedy": b'\x00{"inputs":"Hi","parameters":{"max_new_tokens":4,"do_sample":false}}',
    "stream-minimal": b'\x01{"inputs":"Hi","parameters":{"max_new_tokens":2}}',
    "compat-stream": b'\x02{"inputs":"Hi","stream":true,"parameters":{"details":true}}',
    "compat-array": b'\x02{"inputs":"Hi","parameters":{"max_new_tokens":3}}',
    "bad-typical": b'\x00{"inputs":"Hi","parameters":{"typical_p":0.5}}',
    "bad-best-of": b'\x00{"inputs":"Hi","parameters":{"best_of":2}}',
    "recall-model": b'\x00{"inputs":"x","model":"mqar"}',
    "big-seed": b'\x01{"inputs":"x","parameters":{"seed":123456789012345678901234567890}}',
}
for name, body in tgi.items():
    put("tgi", name, body)

# job records: a real one (finished recall job) and variants
rec = {"id": "tr-1", "name": "probe-1", "task": "recall", "status": "succeeded", "step": 30,
       "steps": 30, "loss": 3.2211287, "model": "probe-1", "error": None,
       "created_at": "2026-12-03T00:27:09.805Z", "started_at": "2026-12-03T00:27:09.807Z",
       "finished_at": "2026-12-03T00:27:09.815Z",
       "eval": {"step": 30, "accuracy": 0.104166667, "accuracy_present": 0.1,
                "accuracy_absent": 0.125, "loss": 2.96024156, "n_queries": 96},
       "loss_history": [[1, 3.748298], [2, 3.2948077], [3, 3.5359867], [30, 3.2211287]],
       "tokens_per_s": 591435.824, "eta_s": None, "checkpoint_step": 0, "threads": 1,
       "request": {"task": "recall", "name": "probe-1",
                   "model": {"dim": 16, "n_layers": 1, "n_heads": 2, "n_kv_heads": 2,
                             "hidden_dim": 64, "max_seq_len": 16},
                   "steps": 30, "batch_size": 4, "seq_len": 16, "learning_rate": 0.001,
                   "warmup_steps": 3, "min_lr_ratio": 0.1, "weight_decay": 0.1, "grad_clip": 1.0,
                   "seed": 1, "eval_every": 0, "eval_sequences": 16, "checkpoint_every": 0,
                   "recall": {"n_pairs": 2, "n_keys": 8, "n_values": 8, "absent_fraction": 0.1,
                              "min_pairs": 0}},
       "note": None, "history_stride": 1}
put("train_record", "succeeded", json.dumps(rec, indent=1))
r = json.loads(json.dumps(rec))
r.update(status="running", step=12, checkpoint_step=10, finished_at=None, model=None, eval=None)
put("train_record", "running", json.dumps(r))
r = json.loads(json.dumps(rec))
r.update(status="failed", error="checkpoint: " + "e" * 600, note="state ¿corrupt?")
put("train_record", "failed-long-error", json.dumps(r, ensure_ascii=False))
r = json.loads(json.dumps(rec))
r.update(task="text", status="queued", step=0, eval=None, loss=None, loss_history=[])
r["request"].pop("recall")
r["request"].update(task="text", text={"text_bytes": 4000, "eval_fraction": 0.2})
put("train_record", "queued-text", json.dumps(r))
PY
du -sh "$c"; find "$c" -type f | wc -l
