#!/usr/bin/python3
"""train_torch.py — a PyTorch reference of attnd's model, data and trainer.

What it mirrors (include/tfm/model.h, include/tfm/train.h):

  model     llama2.c's run.c decoder: x = tok_emb[token]; per layer
            x += wo . attn(rope(wq . rms(x)), rope(wk . rms(x)), wv . rms(x))
            x += w2 . (silu(w1 . rms(x)) * (w3 . rms(x)));  logits = wcls . rms(x)
            RMSNorm w * x / sqrt(mean(x^2) + 1e-5), no biases, causal softmax
            attention scaled 1/sqrt(head_size), RoPE on ADJACENT pairs
            (2i, 2i+1) of each head at angle pos * 10000^(-2i/head_size),
            grouped-query heads (query head h reads kv head h // (H / H_kv)),
            matrices (out, in), classifier tied to the embedding.
  init      tfm_model_init_train, draw for draw (its Box-Muller over
            splitmix64): normal with std 1/sqrt(fan-in), the embedding
            1/sqrt(dim), wo and w2 also times 1/sqrt(2 n_layers), norm
            weights 1.  Same seed, the C trainer's weights, bit for bit.
            (--init FILE starts from any attnd safetensors instead.)
  trainer   mean cross-entropy over targets >= 0; torch.optim.AdamW
            (betas 0.9/0.95, eps 1e-8), decay on 2-D tensors only; global
            norm clipping (clip_grad_norm_); warmup + cosine in
            tfm_train_lr's float arithmetic (lr_at below).
  data      the MQAR generator (min_pairs included) and the byte-text
            batches, bit-identical to core/tasks.c (splitmix64 streams keyed
            by seed, stream, index).  Vectorised over the batch with numpy
            uint64 (modular, like C); `selftest` checks it against a plain
            scalar transcription.

  Checked against build/attn (seed 1, recall 8 pairs, min_pairs 1, d 64,
  B 16, lr 3e-3, 50 steps): the same initial weights (0 of 139,712 differ),
  the same loss and gradient norm at every step to the 6-7 digits the C log
  prints, weights within 6e-6 after 50 steps.

Modes:

  bench     step time (forward + backward + clip + AdamW, median over --steps
            after --warmup) of the issue's two configs, one JSON line per
            (config, threads):
              mqar  vocab 128 (63 keys + 63 values + NULL + PAD), d 64,
                    2 layers, 2 heads, hidden 256, T 64, B 64
              text  vocab 258 (ours: 256 bytes + BOS + EOS; the issue says
                    256), d 128, 4 layers, 4 heads, hidden 512, T 128, B 32
  mqar      trains on MQAR and evaluates on 1000 held-out sequences (stream
            1) every --eval-every steps; JSON lines on stdout, and a final
            line with the steps and seconds to first reach 90% and 99%.
  dump      prints a batch's inputs and targets (one sequence per two lines,
            "in" then "tgt") to diff against the C generator.
  selftest  vectorised generator == scalar reference; model sanity checks.

    /usr/bin/python3 tests/bench/train_torch.py bench --threads 1
    /usr/bin/python3 tests/bench/train_torch.py bench --threads 1 2
    /usr/bin/python3 tests/bench/train_torch.py mqar --min-pairs 1 --lr 3e-3 \
        --warmup 100 --steps 2000 --eval-every 50 --stop-at 0.99
    /usr/bin/python3 tests/bench/train_torch.py dump mqar --seed 1 --step 0 --batch 2
    /usr/bin/python3 tests/bench/train_torch.py dump text --corpus FILE --step 3 --batch 2
    /usr/bin/python3 tests/bench/train_torch.py selftest

Threads: --threads N sets torch.set_num_threads(N), set_num_interop_threads(1)
and OMP_NUM_THREADS=N; OPENBLAS_NUM_THREADS is --blas-threads, default 1.
Debian's torch multiplies through OpenBLAS, whose own pool
torch.set_num_threads does not control, and numpy loads OpenBLAS on import:
so both are read from argv and exported before any import.  With OpenMP 2
and OpenBLAS 2 the two pools fight over the 2 cores (mqar 210 ms a step
against 100 ms with OpenBLAS 1, here; ../shared/PEERS.md saw the same), so
torch's best 2-thread setting, OpenBLAS 1, is the default.  For several
thread counts, bench re-runs itself once per count in a fresh process.

Debian's python3-torch (1.13) and numpy; no other dependency.
"""

import argparse
import json
import math
import os
import statistics
import struct
import subprocess
import sys
import time


def _early_threads():
    """OpenBLAS sizes its pool when first loaded, and numpy loads it on
    import: the --threads value must be in the environment before that."""
    val = {"--threads": "1", "--blas-threads": None}
    for i, arg in enumerate(sys.argv):
        for k in val:
            if arg == k and i + 1 < len(sys.argv):
                val[k] = sys.argv[i + 1]
            elif arg.startswith(k + "="):
                val[k] = arg.split("=", 1)[1]
    n, nb = val["--threads"], val["--blas-threads"] or "1"
    if n.isdigit() and nb.isdigit():
        os.environ["OMP_NUM_THREADS"] = n
        os.environ["OPENBLAS_NUM_THREADS"] = nb


_early_threads()
import numpy as np  # noqa: E402

# ---- random streams (splitmix64), as the C core --------------------------------

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
STREAM_MUL = 0xC2B2AE3D27D4EB4F
INDEX_MUL = 0x165667B19E3779F9


def stream_state(seed, stream, index):
    """The initial state of sequence (seed, stream, index)."""
    return ((seed * GOLDEN) ^ (stream * STREAM_MUL) ^ (index * INDEX_MUL)) & M64


class ScalarRng:
    """Plain transcription of the C generator: the reference for selftest."""

    def __init__(self, seed, stream, index):
        self.s = stream_state(seed, stream, index)

    def next(self):
        self.s = (self.s + GOLDEN) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * MIX1) & M64
        z = ((z ^ (z >> 27)) * MIX2) & M64
        return z ^ (z >> 31)

    def below(self, n):
        return ((self.next() >> 32) * n) >> 32

    def uniform(self):
        return (self.next() >> 40) / 16777216.0


class BatchRng:
    """B independent streams advanced in lockstep (numpy uint64 wraps as C)."""

    def __init__(self, seed, stream, indices):
        idx = np.asarray(indices, dtype=np.uint64)
        base = ((seed * GOLDEN) ^ (stream * STREAM_MUL)) & M64
        with np.errstate(over="ignore"):
            self.s = np.uint64(base) ^ (idx * np.uint64(INDEX_MUL))

    @classmethod
    def from_state(cls, s):
        r = cls.__new__(cls)
        r.s = np.array(s, dtype=np.uint64)
        return r

    def next(self):
        with np.errstate(over="ignore"):
            self.s = self.s + np.uint64(GOLDEN)
            z = self.s
            z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
        return z ^ (z >> np.uint64(31))

    @staticmethod
    def reduce(r, n):
        """below(n) of a draw r: (r >> 32) * n >> 32 (n < 2^32, no overflow)."""
        n = np.asarray(n, dtype=np.uint64)
        return ((r >> np.uint64(32)) * n) >> np.uint64(32)

    def below(self, n):
        return self.reduce(self.next(), n)

    def uniform(self):
        return (self.next() >> np.uint64(40)).astype(np.float64) / 16777216.0


# ---- MQAR ------------------------------------------------------------------------


class Mqar:
    """tfm_mqar: k1 v1 ... kn vn q1 a1 q2 a2 ... [PAD]."""

    def __init__(self, n_pairs=8, n_keys=64, n_values=64, absent_fraction=0.2, seq_len=64,
                 min_pairs=0):
        self.n_pairs, self.n_keys, self.n_values = n_pairs, n_keys, n_values
        # C keeps it as a float: compare against the float's value
        self.absent_fraction = float(np.float32(absent_fraction))
        self.seq_len, self.min_pairs = seq_len, min_pairs
        # tfm_mqar_validate's rules
        if not (1 <= n_pairs <= n_keys and n_values >= 1 and 2 * n_pairs + 2 <= seq_len):
            raise ValueError("need 1 <= n_pairs <= n_keys and room for one query")
        if not 0.0 <= absent_fraction <= 1.0:
            raise ValueError("absent_fraction must be in [0, 1]")
        if absent_fraction > 0 and n_pairs == n_keys:
            raise ValueError("absent_fraction > 0 needs n_keys > n_pairs")
        if not 0 <= min_pairs <= n_pairs:
            raise ValueError("min_pairs must be between 0 and n_pairs")

    @property
    def vocab(self):
        return self.n_keys + self.n_values + 2

    @property
    def null(self):
        return self.n_keys + self.n_values

    @property
    def pad(self):
        return self.n_keys + self.n_values + 1

    @property
    def n_queries(self):
        return (self.seq_len - 2 * self.n_pairs) // 2

    def varies(self, stream):
        """Training sequences of min_pairs < n_pairs draw their store size first."""
        return stream == 0 and 0 < self.min_pairs < self.n_pairs

    def sequences(self, seed, stream, indices):
        """inputs, targets: int64 arrays (len(indices), seq_len)."""
        rng = BatchRng(seed, stream, indices)
        if not self.varies(stream):
            return self._fill(rng, self.n_pairs)
        ns = self.min_pairs + rng.below(self.n_pairs - self.min_pairs + 1).astype(np.int64)
        inp = np.empty((len(ns), self.seq_len), dtype=np.int64)
        tgt = np.empty_like(inp)
        for n in np.unique(ns):  # rows of one store size advance in lockstep
            sel = np.nonzero(ns == n)[0]
            inp[sel], tgt[sel] = self._fill(BatchRng.from_state(rng.s[sel]), int(n))
        return inp, tgt

    def _fill(self, rng, n):
        """The sequences of rng's streams, each holding n pairs."""
        K = self.n_keys
        B = len(rng.s)
        rows = np.arange(B)
        perm = np.tile(np.arange(K, dtype=np.int64), (B, 1))
        for i in range(n):  # partial Fisher-Yates: the first n are the keys
            j = i + rng.below(K - i).astype(np.int64)
            a = perm[:, i].copy()
            perm[:, i] = perm[rows, j]
            perm[rows, j] = a
        vals = np.stack([rng.below(self.n_values).astype(np.int64) for _ in range(n)], axis=1)
        inp = np.full((B, self.seq_len), self.pad, dtype=np.int64)
        tgt = np.full((B, self.seq_len), -1, dtype=np.int64)
        inp[:, 0 : 2 * n : 2] = perm[:, :n]
        inp[:, 1 : 2 * n : 2] = K + vals
        for q in range((self.seq_len - 2 * n) // 2):
            u = rng.uniform()
            r = rng.next()  # one draw either way, reduced by the branch taken
            i = rng.reduce(r, n).astype(np.int64)
            key, ans = perm[rows, i], K + vals[rows, i]
            if n < K:  # the uniform is drawn either way; only then can it be absent
                absent = u < self.absent_fraction
                a_key = perm[rows, n + rng.reduce(r, K - n).astype(np.int64)]
                key = np.where(absent, a_key, key)
                ans = np.where(absent, self.null, ans)
            inp[:, 2 * n + 2 * q] = key
            inp[:, 2 * n + 2 * q + 1] = ans
            tgt[:, 2 * n + 2 * q] = ans
        return inp, tgt

    def batch(self, seed, step, B):
        """The training batch of step: sequences step*B ... of stream 0."""
        return self.sequences(seed, 0, np.arange(step * B, step * B + B, dtype=np.uint64))

    def scalar_sequence(self, seed, stream, index):
        """One sequence, line by line as specified (selftest's reference)."""
        n, K = self.n_pairs, self.n_keys
        rng = ScalarRng(seed, stream, index)
        if self.varies(stream):
            n = self.min_pairs + rng.below(self.n_pairs - self.min_pairs + 1)
        perm = list(range(K))
        for i in range(n):
            j = i + rng.below(K - i)
            perm[i], perm[j] = perm[j], perm[i]
        vals = [rng.below(self.n_values) for _ in range(n)]
        inp, tgt = [], []
        for i in range(n):
            inp += [perm[i], K + vals[i]]
            tgt += [-1, -1]
        for _ in range((self.seq_len - 2 * n) // 2):
            u = rng.uniform()
            if n < K and u < self.absent_fraction:
                key, ans = perm[n + rng.below(K - n)], self.null
            else:
                i = rng.below(n)
                key, ans = perm[i], K + vals[i]
            inp += [key, ans]
            tgt += [ans, -1]
        while len(inp) < self.seq_len:
            inp.append(self.pad)
            tgt.append(-1)
        return inp, tgt


# ---- byte text -------------------------------------------------------------------

TEXT_VOCAB = 258
BOS = 256


def text_batch(data, n_train, T, seed, step, B):
    """BOS + T-1 bytes from offset below(n_train - T + 1) of stream 0, index
    step*B + b; targets the T bytes from that offset."""
    if n_train < T + 1:
        raise ValueError("the training part must hold seq_len + 1 bytes")
    rng = BatchRng(seed, 0, np.arange(step * B, step * B + B, dtype=np.uint64))
    span = n_train - T + 1
    if span < 1 << 32:
        off = rng.below(span).astype(np.int64)
    else:  # as tasks.c: a plain modulo past 32 bits
        off = (rng.next() % np.uint64(span)).astype(np.int64)
    buf = np.frombuffer(data, dtype=np.uint8)
    win = buf[off[:, None] + np.arange(T)[None, :]].astype(np.int64)
    inp = np.concatenate([np.full((B, 1), BOS, dtype=np.int64), win[:, :-1]], axis=1)
    return inp, win


# ---- learning rate ---------------------------------------------------------------


def lr_at(step, steps, lr, warmup, min_lr_ratio):
    """tfm_train_lr, in its float arithmetic: lr * (step + 1) / warmup during
    warmup, then cosine from lr to lr * min_lr_ratio at the last step (a run
    with no step after the warmup but one, span <= 0, gets the minimum)."""
    f32 = np.float32
    lr = f32(lr)
    if step < warmup:
        return float(lr * f32(step + 1) / f32(warmup))
    lo = lr * f32(min_lr_ratio)
    span = steps - 1 - warmup
    p = min(1.0, (step - warmup) / span) if span > 0 else 1.0
    return float(lo + f32(0.5) * (lr - lo) * f32(1.0 + math.cos(math.pi * p)))


# ---- the model (torch is imported late: the thread settings come first) -----------

torch = None
F = None


def import_torch(threads):
    global torch, F
    import torch as _torch
    import torch.nn.functional as _F

    torch, F = _torch, _F
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set in this process


LAYER_KINDS = ["attention_norm", "attention.wq", "attention.wk", "attention.wv",
               "attention.wo", "ffn_norm", "feed_forward.w1", "feed_forward.w2",
               "feed_forward.w3"]


class Config:
    def __init__(self, dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len,
                 shared_classifier=1):
        self.dim, self.hidden_dim, self.n_layers = dim, hidden_dim, n_layers
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.shared_classifier = shared_classifier
        if dim % n_heads or (dim // n_heads) % 2 or n_heads % n_kv_heads:
            raise ValueError("need head_size = dim/n_heads even and n_kv_heads | n_heads")

    def __repr__(self):
        return json.dumps(self.__dict__)


def c_normals(state, n):
    """n standard normals as train.c's fill_normal draws them (Box-Muller over
    splitmix64, two draws each), as the factors (sqrt(-2 ln u1), cos(2 pi u2))
    so the caller multiplies in C's order.  Returns (new state, r, c)."""
    k = np.arange(1, 2 * n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(state) + k * np.uint64(GOLDEN)  # splitmix's state is a counter
        z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
    z = z ^ (z >> np.uint64(31))
    u1 = ((z[0::2] >> np.uint64(11)).astype(np.float64) + 1.0) * (1.0 / 9007199254740993.0)
    u2 = (z[1::2] >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)
    return (state + 2 * n * GOLDEN) & M64, np.sqrt(-2.0 * np.log(u1)), np.cos(2.0 * math.pi * u2)


def build_model(cfg, seed, std=0.0):
    """Parameters as a dict named like attnd's safetensors (llama2.c order),
    initialised as tfm_model_init_train: normal with std 1/sqrt(fan-in) (the
    embedding 1/sqrt(dim)), wo and w2 also times 1/sqrt(2 n_layers), norms 1,
    from the same splitmix64 stream, so the weights equal the C trainer's
    (to the last bit, barring a libm ulp in log/cos).  std > 0 replaces
    every fan-in std by that constant (GPT-2's 0.02: an experiment)."""
    d, h, L, V = cfg.dim, cfg.hidden_dim, cfg.n_layers, cfg.vocab_size
    kv = d // cfg.n_heads * cfg.n_kv_heads
    f32 = np.float32
    sd = f32(1.0) / np.sqrt(f32(d)) if std <= 0 else f32(std)
    sh = f32(1.0) / np.sqrt(f32(h)) if std <= 0 else f32(std)
    res = f32(1.0) / np.sqrt(f32(2.0) * f32(L))
    state = [(seed ^ 0x5EED5EED5EED5EED) & M64]

    def fill(n, sdev):
        state[0], r, c = c_normals(state[0], n)
        return ((np.float64(sdev) * r) * c).astype(np.float32)

    emb = fill(V * d, sd)
    qkv = fill(L * d * d + 2 * L * kv * d, sd)
    blocks = {"attention.wq": qkv[: L * d * d].reshape(L, d, d),
              "attention.wk": qkv[L * d * d : L * d * d + L * kv * d].reshape(L, kv, d),
              "attention.wv": qkv[L * d * d + L * kv * d :].reshape(L, kv, d),
              "attention.wo": fill(L * d * d, sd * res).reshape(L, d, d),
              "feed_forward.w1": fill(L * h * d, sd).reshape(L, h, d),
              "feed_forward.w2": fill(L * d * h, sh * res).reshape(L, d, h),
              "feed_forward.w3": fill(L * h * d, sd).reshape(L, h, d)}
    par = lambda a: torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(a)))  # noqa: E731
    p = {"tok_embeddings.weight": par(emb.reshape(V, d))}
    for kind in LAYER_KINDS:  # kind-major, as the C data array
        for layer in range(L):
            name = "layers.%d.%s.weight" % (layer, kind)
            norm = kind.endswith("norm")
            p[name] = par(np.ones(d, np.float32) if norm else blocks[kind][layer])
    p["norm.weight"] = par(np.ones(d, np.float32))
    if not cfg.shared_classifier:
        p["output.weight"] = par(fill(V * d, sd).reshape(V, d))
    return p


def rope_tables(cfg, T):
    """cos, sin (T, head_size/2) computed in float32 as model.c's fill_rope."""
    hs = cfg.dim // cfg.n_heads
    i = np.arange(hs // 2, dtype=np.float32)
    freq = np.float32(1.0) / np.power(np.float32(10000.0), (2 * i) / np.float32(hs))
    val = np.arange(T, dtype=np.float32)[:, None] * freq[None, :]
    return torch.from_numpy(np.cos(val)), torch.from_numpy(np.sin(val))


def rmsnorm(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, cos, sin):
    """x (B, T, H, hs): rotate pairs (2i, 2i+1) by cos/sin (T, hs/2)."""
    B, T, H, hs = x.shape
    xp = x.reshape(B, T, H, hs // 2, 2)
    a, b = xp[..., 0], xp[..., 1]
    c, s = cos[None, :T, None, :], sin[None, :T, None, :]
    return torch.stack((a * c - b * s, a * s + b * c), dim=-1).reshape(B, T, H, hs)


def forward(p, cfg, tokens, rope_cs, mask):
    """tokens (B, T) int64 -> logits (B, T, vocab)."""
    B, T = tokens.shape
    H, Hkv = cfg.n_heads, cfg.n_kv_heads
    hs = cfg.dim // H
    cos, sin = rope_cs
    x = F.embedding(tokens, p["tok_embeddings.weight"])
    for l in range(cfg.n_layers):
        w = lambda kind: p["layers.%d.%s.weight" % (l, kind)]  # noqa: E731
        xn = rmsnorm(x, w("attention_norm"))
        q = rope(F.linear(xn, w("attention.wq")).view(B, T, H, hs), cos, sin).transpose(1, 2)
        k = rope(F.linear(xn, w("attention.wk")).view(B, T, Hkv, hs), cos, sin).transpose(1, 2)
        v = F.linear(xn, w("attention.wv")).view(B, T, Hkv, hs).transpose(1, 2)
        if Hkv != H:  # query head h reads kv head h // (H / Hkv)
            k = k.repeat_interleave(H // Hkv, dim=1)
            v = v.repeat_interleave(H // Hkv, dim=1)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        att = att.masked_fill(mask[:T, :T], float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, H * hs)
        x = x + F.linear(y, w("attention.wo"))
        xn = rmsnorm(x, w("ffn_norm"))
        hid = F.silu(F.linear(xn, w("feed_forward.w1"))) * F.linear(xn, w("feed_forward.w3"))
        x = x + F.linear(hid, w("feed_forward.w2"))
    x = rmsnorm(x, p["norm.weight"])
    return F.linear(x, p["tok_embeddings.weight"] if cfg.shared_classifier else p["output.weight"])


class Trainer:
    """Model + AdamW + schedule: one step() is forward, backward, clip, update."""

    def __init__(self, cfg, p, lr, warmup, steps, min_lr_ratio=0.1, weight_decay=0.1,
                 grad_clip=1.0, betas=(0.9, 0.95), eps=1e-8):
        self.cfg, self.p = cfg, p
        self.lr, self.warmup, self.steps, self.min_lr_ratio = lr, warmup, steps, min_lr_ratio
        self.grad_clip = grad_clip
        decay = [t for t in p.values() if t.dim() == 2]
        no_decay = [t for t in p.values() if t.dim() != 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=lr, betas=betas, eps=eps)
        self.rope_cs = rope_tables(cfg, cfg.seq_len)
        self.mask = torch.ones(cfg.seq_len, cfg.seq_len, dtype=torch.bool).triu(1)
        self.step_count = 0

    def loss(self, inp, tgt):
        logits = self.forward(inp)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), tgt.view(-1), ignore_index=-1)

    def forward(self, inp):
        return forward(self.p, self.cfg, inp, self.rope_cs, self.mask)

    def step(self, inp, tgt):
        """Returns (loss, grad norm before clipping, lr)."""
        lr = lr_at(self.step_count, self.steps, self.lr, self.warmup, self.min_lr_ratio)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(inp, tgt)
        loss.backward()
        if self.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.p.values(), self.grad_clip)
        else:
            norm = torch.sqrt(sum((t.grad.double() ** 2).sum() for t in self.p.values()))
        self.opt.step()
        self.step_count += 1
        return loss.item(), float(norm), lr


# ---- safetensors (attnd's layout: Meta's llama names, config in __metadata__) ------


def load_safetensors(path):
    """-> (Config, {name: tensor}, metadata)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        body = f.read()
    meta = header.pop("__metadata__", {})
    cfg = Config(*(int(meta[k]) for k in ("dim", "hidden_dim", "n_layers", "n_heads",
                                          "n_kv_heads", "vocab_size", "seq_len",
                                          "shared_classifier")))
    tensors = {}
    for name, e in header.items():
        if e["dtype"] != "F32":
            raise ValueError("%s: dtype %s (F32 only)" % (name, e["dtype"]))
        a, b = e["data_offsets"]
        arr = np.frombuffer(body[a:b], dtype="<f4").copy()
        tensors[name] = torch.from_numpy(arr).view(*e["shape"])
    return cfg, tensors, meta


def save_safetensors(path, cfg, p, extra_meta):
    """Writes p in the C data array's order, so attnd loads it (and its data
    section equals model->data byte for byte)."""
    meta = {"format": "attnd", "dim": cfg.dim, "hidden_dim": cfg.hidden_dim,
            "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads,
            "vocab_size": cfg.vocab_size, "seq_len": cfg.seq_len,
            "shared_classifier": cfg.shared_classifier, "norm_eps": "1e-05",
            "rope_theta": "10000", "tokenizer": "byte"}
    meta.update(extra_meta)
    header = {"__metadata__": {k: str(v) for k, v in meta.items()}}
    blobs, off = [], 0
    for name, t in p.items():
        b = t.detach().contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


# ---- evaluation --------------------------------------------------------------------


def mqar_evaluate(trainer, task, eval_inp, eval_tgt, batch=250):
    """Argmax over the whole vocab at the query positions (targets >= 0)."""
    n_all = n_ok = n_abs = ok_abs = 0
    loss_sum = 0.0
    with torch.no_grad():
        for i in range(0, eval_inp.shape[0], batch):
            inp, tgt = eval_inp[i : i + batch], eval_tgt[i : i + batch]
            logits = trainer.forward(inp)
            sel = tgt >= 0
            lg, t = logits[sel], tgt[sel]
            loss_sum += F.cross_entropy(lg, t, reduction="sum").item()
            hit = lg.argmax(-1) == t
            absent = t == task.null
            n_all += t.numel()
            n_ok += int(hit.sum())
            n_abs += int(absent.sum())
            ok_abs += int((hit & absent).sum())
    n_pres, ok_pres = n_all - n_abs, n_ok - ok_abs
    return {"eval_loss": loss_sum / max(1, n_all),
            "accuracy": n_ok / max(1, n_all),
            "accuracy_present": ok_pres / max(1, n_pres),
            "accuracy_absent": ok_abs / n_abs if n_abs else None,
            "n_queries": n_all}


# ---- modes ---------------------------------------------------------------------------

BENCH_CONFIGS = {
    # name: (Config args, B, T, note)
    "mqar": (dict(dim=64, hidden_dim=256, n_layers=2, n_heads=2, n_kv_heads=2, vocab_size=128,
                  seq_len=64), 64, 64, "vocab 128 = 63 keys + 63 values + NULL + PAD"),
    "text": (dict(dim=128, hidden_dim=512, n_layers=4, n_heads=4, n_kv_heads=4, vocab_size=258,
                  seq_len=128), 32, 128,
             "vocab 258 (bytes + BOS + EOS; the issue's config says 256)"),
}


def bench_one(name, threads, steps, warmup, max_seconds):
    args, B, T, note = BENCH_CONFIGS[name]
    cfg = Config(**args)
    p = build_model(cfg, 1)
    tr = Trainer(cfg, p, lr=1e-3, warmup=10, steps=10**6)
    if name == "mqar":
        task = Mqar(n_pairs=8, n_keys=63, n_values=63, absent_fraction=0.2, seq_len=T)
        batches = [task.batch(1, s, B) for s in range(8)]
    else:
        data = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
        batches = [text_batch(data, len(data), T, 1, s, B) for s in range(8)]
    batches = [(torch.from_numpy(a), torch.from_numpy(b)) for a, b in batches]
    times = []
    t_start = time.perf_counter()
    for s in range(warmup + steps):
        inp, tgt = batches[s % len(batches)]
        t0 = time.perf_counter()
        tr.step(inp, tgt)
        dt = time.perf_counter() - t0
        if s >= warmup:
            times.append(dt)
        if time.perf_counter() - t_start > max_seconds and len(times) >= 5:
            break
    med = statistics.median(times)
    tokens = B * T
    return {"config": name, "threads": threads,
            "blas_threads": int(os.environ.get("OPENBLAS_NUM_THREADS", "0")),
            "step_ms_median": round(med * 1e3, 3),
            "step_ms_min": round(min(times) * 1e3, 3), "steps": len(times), "warmup": warmup,
            "batch": B, "seq_len": T, "tokens_per_s": round(tokens / med, 1),
            "params": sum(t.numel() for t in p.values()), "torch": torch.__version__,
            "note": note}


def cmd_bench(a):
    if len(a.threads) > 1:  # one fresh process per thread count
        for t in a.threads:
            cmd = [sys.executable, os.path.abspath(__file__), "bench", "--threads", str(t),
                   "--steps", str(a.steps), "--warmup", str(a.warmup),
                   "--max-seconds", str(a.max_seconds), "--configs"] + a.configs
            cmd += ["--blas-threads", str(a.blas_threads)]
            subprocess.run(cmd, check=True)
        return
    import_torch(a.threads[0])
    for name in a.configs:
        r = bench_one(name, a.threads[0], a.steps, a.warmup, a.max_seconds)
        print(json.dumps(r), flush=True)


def cmd_mqar(a):
    import_torch(a.threads)
    task = Mqar(a.n_pairs, a.n_keys, a.n_values, a.absent_fraction, a.seq_len, a.min_pairs)
    if a.init:
        cfg, p0, _ = load_safetensors(a.init)
        if cfg.vocab_size != task.vocab or cfg.seq_len < a.seq_len:
            sys.exit("train_torch: --init model's vocab/seq_len do not fit the task")
        p = {k: torch.nn.Parameter(v) for k, v in p0.items()}
    else:
        cfg = Config(a.dim, a.hidden or 4 * a.dim, a.layers, a.heads, a.kv_heads or a.heads,
                     task.vocab, a.seq_len)
        p = build_model(cfg, a.seed, a.init_std)
    tr = Trainer(cfg, p, a.lr, a.warmup, a.steps, a.min_lr_ratio, a.weight_decay, a.clip)
    ei, et = task.sequences(a.seed, 1, np.arange(a.eval_sequences, dtype=np.uint64))
    ei, et = torch.from_numpy(ei), torch.from_numpy(et)
    run = {k: v for k, v in vars(a).items() if k not in ("func", "cmd")}
    run["params"] = sum(t.numel() for t in p.values())
    print(json.dumps({"run": run}), flush=True)
    first = {}
    train_s = 0.0
    t_start = time.perf_counter()
    best, done, rec = 0.0, 0, None
    for s in range(a.steps):
        t0 = time.perf_counter()
        inp, tgt = task.batch(a.seed, s, a.batch)
        loss, norm, lr = tr.step(torch.from_numpy(inp), torch.from_numpy(tgt))
        train_s += time.perf_counter() - t0
        if not math.isfinite(loss):
            print(json.dumps({"step": s + 1, "diverged": True}), flush=True)
            break
        done = s + 1
        if done % a.eval_every == 0 or done == a.steps:
            ev = mqar_evaluate(tr, task, ei, et)
            best = max(best, ev["accuracy"])
            rec = {"step": done, "loss": round(loss, 5), "grad_norm": round(norm, 4),
                   "lr": lr, "train_s": round(train_s, 2),
                   "wall_s": round(time.perf_counter() - t_start, 2)}
            rec.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in ev.items()})
            print(json.dumps(rec), flush=True)
            for th in (0.9, 0.99):
                if th not in first and ev["accuracy"] >= th:
                    first[th] = {"step": done, "train_s": round(train_s, 2),
                                 "wall_s": round(time.perf_counter() - t_start, 2)}
            if a.stop_at and ev["accuracy"] >= a.stop_at:
                break
    out = {"summary": True, "steps_run": done, "best_accuracy": round(best, 4),
           "final": rec,
           "first_90": first.get(0.9), "first_99": first.get(0.99),
           "train_s": round(train_s, 2), "ms_per_step": round(1e3 * train_s / max(1, done), 2)}
    print(json.dumps(out), flush=True)
    if a.save:
        save_safetensors(a.save, cfg, p, {  # tfm_mqar_to_meta's keys
            "task": "recall", "recall.n_pairs": a.n_pairs, "recall.n_keys": a.n_keys,
            "recall.n_values": a.n_values, "recall.seq_len": a.seq_len,
            "recall.min_pairs": a.min_pairs,
            "recall.absent_fraction": "%.9g" % float(np.float32(a.absent_fraction)),
            "trained_by": "tests/bench/train_torch.py"})


def cmd_dump(a):
    if a.task == "mqar":
        task = Mqar(a.n_pairs, a.n_keys, a.n_values, a.absent_fraction, a.seq_len, a.min_pairs)
        if a.stream is not None:
            inp, tgt = task.sequences(a.seed, a.stream,
                                      np.arange(a.index, a.index + a.batch, dtype=np.uint64))
        else:
            inp, tgt = task.batch(a.seed, a.step, a.batch)
    else:
        with open(a.corpus, "rb") as f:
            data = f.read()
        # as tasks.c: (size_t)(len * (1.0 - (double)eval_fraction)), the fraction a float
        n_train = a.n_train or int(len(data) * (1.0 - float(np.float32(a.eval_fraction))))
        inp, tgt = text_batch(data, n_train, a.seq_len, a.seed, a.step, a.batch)
    for i in range(inp.shape[0]):
        print("in " + " ".join(map(str, inp[i])))
        print("tgt " + " ".join(map(str, tgt[i])))


def cmd_selftest(a):
    import_torch(1)
    fails = 0
    for (n, K, V, af, T, mp) in [(8, 64, 64, 0.2, 64, 0), (8, 64, 64, 0.2, 64, 1),
                                 (4, 4, 3, 0.0, 17, 2), (3, 10, 5, 0.0, 11, 0),
                                 (5, 7, 2, 1.0, 31, 3), (1, 1, 1, 0.0, 4, 1)]:
        task = Mqar(n, K, V, af, T, mp)
        for seed, stream in [(1, 0), (12345678901234567, 1), (0, 0)]:
            idx = np.array([0, 1, 2, 7, 2**40 + 3, 2**64 - 1], dtype=np.uint64)
            vi, vt = task.sequences(seed, stream, idx)
            for r, ix in enumerate(idx):
                si, st = task.scalar_sequence(seed, stream, int(ix))
                if list(vi[r]) != si or list(vt[r]) != st:
                    print("FAIL mqar", (n, K, V, af, T, mp), seed, stream, int(ix))
                    fails += 1
    task = Mqar(8, 64, 64, 0.2, 64)
    i0, t0 = task.batch(1, 0, 4096)
    qs = t0[t0 >= 0]
    frac = float((qs == task.null).mean())
    print("absent fraction over 4096 sequences: %.4f (want ~0.2)" % frac)
    fails += abs(frac - 0.2) > 0.01
    data = bytes(range(256)) * 10
    ti, tt = text_batch(data, 2000, 16, 3, 5, 4)
    for b in range(4):
        o = ScalarRng(3, 0, 5 * 4 + b).below(2000 - 16 + 1)
        if list(ti[b]) != [BOS] + list(data[o : o + 15]) or list(tt[b]) != list(data[o : o + 16]):
            print("FAIL text", b)
            fails += 1
    # the model: causal (a later token never changes an earlier logit), GQA runs
    cfg = Config(32, 64, 2, 4, 2, task.vocab, 64)
    p = build_model(cfg, 3)
    tr = Trainer(cfg, p, 1e-3, 10, 100)
    x = torch.from_numpy(i0[:2])
    y = x.clone()
    y[:, 40:] = 0
    with torch.no_grad():
        d = (tr.forward(x)[:, :40] - tr.forward(y)[:, :40]).abs().max().item()
    print("causality: max |diff| at earlier positions %.3g" % d)
    fails += d > 1e-5
    # RoPE is a rotation of adjacent pairs: the norm of each pair is kept
    cos, sin = rope_tables(cfg, 64)
    v = torch.randn(1, 64, 4, 8)
    r = rope(v, cos, sin)
    pn = lambda t: t.view(1, 64, 4, 4, 2).pow(2).sum(-1)  # noqa: E731
    fails += (pn(v) - pn(r)).abs().max().item() > 1e-4
    fails += (r[:, 0] - v[:, 0]).abs().max().item() > 0  # position 0 unrotated
    if a.attn:
        fails += against_c(a.attn)
    print("selftest: %s" % ("ok" if not fails else "%d failures" % fails))
    sys.exit(1 if fails else 0)


def against_c(attn):
    """Trains the same small recall run with `attn train` and here: the
    initial weights must be equal, the loss and gradient norm of every step
    and the final weights equal to float rounding."""
    import csv
    import tempfile

    steps, B = 50, 16
    with tempfile.TemporaryDirectory() as tmp:
        common = ["--task", "recall", "--n-pairs", "8", "--min-pairs", "1", "--dim", "64",
                  "--layers", "2", "--heads", "2", "--hidden", "256", "--batch-size", str(B),
                  "--seed", "1", "--eval-sequences", "16"]
        init, final, log = (os.path.join(tmp, x) for x in ("init.st", "final.st", "log.csv"))
        # one step at lr 1e-30 leaves the initial weights (every change rounds away)
        subprocess.run([attn, "train", "--out", init, "--steps", "1", "--learning-rate", "1e-30",
                        "--weight-decay", "0"] + common, check=True, capture_output=True)
        subprocess.run([attn, "train", "--out", final, "--log", log, "--steps", str(steps),
                        "--warmup-steps", "10", "--learning-rate", "3e-3"] + common,
                       check=True, capture_output=True)
        _, c0, _ = load_safetensors(init)
        _, c1, _ = load_safetensors(final)
        rows = list(csv.DictReader(open(log)))
    cfg = Config(64, 256, 2, 2, 2, 130, 64)
    p = build_model(cfg, 1)
    fails = 0
    n_diff = sum(int((p[k].detach() != c0[k]).sum()) for k in c0)
    n_all = sum(v.numel() for v in c0.values())
    print("vs C: initial weights differing: %d of %d" % (n_diff, n_all))
    fails += n_diff > 0
    task = Mqar(8, 64, 64, 0.2, 64, 1)
    tr = Trainer(cfg, p, 3e-3, 10, steps, 0.1, 0.1, 1.0)
    worst = 0.0
    for s in range(steps):
        inp, tgt = task.batch(1, s, B)
        loss, norm, _ = tr.step(torch.from_numpy(inp), torch.from_numpy(tgt))
        worst = max(worst, abs(loss - float(rows[s]["loss"])) / float(rows[s]["loss"]),
                    abs(norm - float(rows[s]["grad_norm"])) / float(rows[s]["grad_norm"]))
    dw = max((p[k].detach() - c1[k]).abs().max().item() for k in c1)
    print("vs C: %d steps, worst relative loss/grad-norm difference %.2g, weights within %.2g"
          % (steps, worst, dw))
    fails += worst > 1e-4 or dw > 1e-4
    return int(fails)


def add_task_args(sp):
    sp.add_argument("--n-pairs", type=int, default=8)
    sp.add_argument("--min-pairs", type=int, default=0,
                    help="training stores hold min..n pairs (0: always n_pairs)")
    sp.add_argument("--n-keys", type=int, default=64)
    sp.add_argument("--n-values", type=int, default=64)
    sp.add_argument("--absent-fraction", type=float, default=0.2)
    sp.add_argument("--seq-len", type=int, default=64)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("bench", help="step time of the issue's two configs")
    b.add_argument("--threads", type=int, nargs="+", default=[1],
                   help="torch threads (OpenMP); one run per value")
    b.add_argument("--blas-threads", type=int, default=1,
                   help="OpenBLAS threads (default 1: the two pools fight over 2 cores)")
    b.add_argument("--configs", nargs="+", choices=sorted(BENCH_CONFIGS), default=["mqar", "text"])
    b.add_argument("--steps", type=int, default=200, help="timed steps (after warmup)")
    b.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    b.add_argument("--max-seconds", type=float, default=45.0, help="per config: stop timing after")
    b.set_defaults(func=cmd_bench)

    m = sub.add_parser("mqar", help="train on MQAR, report steps/time to 90%% and 99%%")
    add_task_args(m)
    m.add_argument("--dim", type=int, default=64)
    m.add_argument("--layers", type=int, default=2)
    m.add_argument("--heads", type=int, default=2)
    m.add_argument("--kv-heads", type=int, default=0, help="0: = heads")
    m.add_argument("--hidden", type=int, default=0, help="0: 4 * dim")
    m.add_argument("--batch", type=int, default=64)
    m.add_argument("--steps", type=int, default=3000)
    m.add_argument("--lr", type=float, default=3e-3)
    m.add_argument("--warmup", type=int, default=100)
    m.add_argument("--min-lr-ratio", type=float, default=0.1)
    m.add_argument("--weight-decay", type=float, default=0.1)
    m.add_argument("--clip", type=float, default=1.0)
    m.add_argument("--seed", type=int, default=1)
    m.add_argument("--init-std", type=float, default=0.0,
                   help="0: fan-in init as the C trainer; > 0: this std for every matrix")
    m.add_argument("--eval-every", type=int, default=100)
    m.add_argument("--eval-sequences", type=int, default=1000)
    m.add_argument("--stop-at", type=float, default=0.0, help="stop once eval accuracy >= this")
    m.add_argument("--threads", type=int, default=1)
    m.add_argument("--init", help="start from this attnd safetensors checkpoint")
    m.add_argument("--save", help="write the trained model here (attnd safetensors)")
    m.set_defaults(func=cmd_mqar)

    d = sub.add_parser("dump", help="print a batch to diff against the C generator")
    d.add_argument("task", choices=["mqar", "text"])
    add_task_args(d)
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--step", type=int, default=0)
    d.add_argument("--batch", type=int, default=1)
    d.add_argument("--stream", type=int, help="mqar: sequences --index.. of this stream instead")
    d.add_argument("--index", type=int, default=0)
    d.add_argument("--corpus", help="text: the corpus file")
    d.add_argument("--n-train", type=int, default=0,
                   help="text: training bytes (0: by --eval-fraction)")
    d.add_argument("--eval-fraction", type=float, default=0.1)
    d.set_defaults(func=cmd_dump)

    s = sub.add_parser("selftest", help="generator vs scalar reference, model checks")
    s.add_argument("--attn", help="also train beside this attn binary and compare")
    s.set_defaults(func=cmd_selftest)

    a = ap.parse_args()
    if a.cmd == "dump" and a.task == "text" and not a.corpus:
        ap.error("dump text needs --corpus")
    a.func(a)


if __name__ == "__main__":
    main()
