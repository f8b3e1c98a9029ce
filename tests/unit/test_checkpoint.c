/*
 * test_checkpoint.c — safetensors and llama2.c files: bit-exact round trips,
 * hand-written llama2.c files, format detection, and hostile input
 * (truncation, corrupt headers, wrong shapes, oversize lengths, trailing
 * bytes, fuzzed headers), plus the atomic-write guarantees: no temporary
 * file survives a failure and a failed save leaves the old file intact.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"
#include "tfm/checkpoint.h"

/* dim 16, 4 heads of 4, 2 kv heads (GQA), hidden 40, 3 layers, vocab 37. */
static tfm_model *small_model(int shared, uint64_t seed)
{
    return tu_random_model(16, 40, 3, 4, 2, 37, 12, shared, seed);
}

static void save_ok(const tfm_model *m, const char *path, tfm_ckpt_format fmt)
{
    char err[256] = "";
    tfm_status s = tfm_checkpoint_save(m, path, fmt, err, sizeof err);
    if (s != TFM_OK)
        fail_msg("save %s: %s: %s", path, tfm_status_name(s), err);
}

static tfm_model *load_ok(const char *path, tfm_ckpt_format fmt)
{
    char err[256] = "";
    tfm_model *m = NULL;
    tfm_status s = tfm_checkpoint_load(path, fmt, &m, err, sizeof err);
    if (s != TFM_OK)
        fail_msg("load %s: %s: %s", path, tfm_status_name(s), err);
    return m;
}

/* Loading must fail with want, leave *out NULL, and name needle in err. */
static void expect_load(const char *path, tfm_ckpt_format fmt, tfm_status want, const char *needle)
{
    char err[256] = "";
    tfm_model *m = (tfm_model *)&err; /* must be reset to NULL */
    tfm_status s = tfm_checkpoint_load(path, fmt, &m, err, sizeof err);
    if (s != want)
        fail_msg("load %s: got %s (%s), want %s", path, tfm_status_name(s), err,
                 tfm_status_name(want));
    assert_null(m);
    assert_true(err[0] != '\0');
    if (needle && !strstr(err, needle))
        fail_msg("error \"%s\" does not mention \"%s\"", err, needle);
}

static void assert_same_model(const tfm_model *a, const tfm_model *b, int with_meta)
{
    assert_int_equal(a->cfg.dim, b->cfg.dim);
    assert_int_equal(a->cfg.hidden_dim, b->cfg.hidden_dim);
    assert_int_equal(a->cfg.n_layers, b->cfg.n_layers);
    assert_int_equal(a->cfg.n_heads, b->cfg.n_heads);
    assert_int_equal(a->cfg.n_kv_heads, b->cfg.n_kv_heads);
    assert_int_equal(a->cfg.vocab_size, b->cfg.vocab_size);
    assert_int_equal(a->cfg.seq_len, b->cfg.seq_len);
    assert_int_equal(a->cfg.shared_classifier, b->cfg.shared_classifier);
    assert_true(a->cfg.norm_eps == b->cfg.norm_eps);
    assert_true(a->cfg.rope_theta == b->cfg.rope_theta);
    assert_int_equal(a->n_floats, b->n_floats);
    if (memcmp(a->data, b->data, a->n_floats * sizeof(float)) != 0)
        tu_check_tensor("weights", b->data, a->data, a->n_floats, 0.0f);
    /* The pointers land on the same offsets. */
    assert_int_equal(b->w.wk - b->data, a->w.wk - a->data);
    assert_int_equal(b->w.w3 - b->data, a->w.w3 - a->data);
    assert_int_equal(b->w.wcls - b->data, a->w.wcls - a->data);
    if (b->cfg.shared_classifier)
        assert_ptr_equal(b->w.wcls, b->w.token_embedding);
    if (with_meta) {
        assert_int_equal(a->tokenizer, b->tokenizer);
        assert_int_equal(a->n_meta, b->n_meta);
        for (int i = 0; i < a->n_meta; i++) {
            const char *v = tfm_model_meta_get(b, a->meta[i].key);
            assert_non_null(v);
            assert_string_equal(v, a->meta[i].value);
        }
    }
}

/* No "*.tmp.*" file left in the test directory. */
static void assert_no_temp_files(void)
{
    DIR *d = opendir(tu_tmpdir());
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".tmp."))
            fail_msg("temporary file left behind: %s", e->d_name);
    closedir(d);
}

static uint64_t le64(const unsigned char *p)
{
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | p[i];
    return n;
}

/* Writes a safetensors file with header json (padded to alignment) and
 * data_bytes zero bytes of data. */
static void write_st(const char *path, const char *json, size_t data_bytes)
{
    size_t len = strlen(json), pad = (8 - len % 8) % 8, n = 8 + len + pad + data_bytes;
    unsigned char *buf = calloc(1, n);
    assert_non_null(buf);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)(len + pad) >> (8 * i));
    memcpy(buf + 8, json, len);
    memset(buf + 8 + len, ' ', pad);
    tu_spit(path, buf, n);
    free(buf);
}

/* Copies safetensors file src to dst with the first occurrence of from in
 * the header replaced by to (re-padded; the data section is unchanged). */
static void edit_header(const char *src, const char *dst, const char *from, const char *to)
{
    size_t n;
    unsigned char *buf = tu_slurp(src, &n);
    size_t hlen = (size_t)le64(buf);
    char *json = calloc(1, hlen + 1 + strlen(to));
    assert_non_null(json);
    memcpy(json, buf + 8, hlen);
    while (hlen && json[hlen - 1] == ' ')
        json[--hlen] = 0;
    char *at = strstr(json, from);
    if (!at)
        fail_msg("header has no \"%s\"", from);
    size_t flen = strlen(from), tlen = strlen(to);
    memmove(at + tlen, at + flen, strlen(at + flen) + 1);
    memcpy(at, to, tlen);
    size_t data_at = 8 + (size_t)le64(buf);
    size_t len = strlen(json), pad = (8 - len % 8) % 8, m = 8 + len + pad + (n - data_at);
    unsigned char *out = malloc(m);
    assert_non_null(out);
    for (int i = 0; i < 8; i++)
        out[i] = (unsigned char)((uint64_t)(len + pad) >> (8 * i));
    memcpy(out + 8, json, len);
    memset(out + 8 + len, ' ', pad);
    memcpy(out + 8 + len + pad, buf + data_at, n - data_at);
    tu_spit(dst, out, m);
    free(out);
    free(json);
    free(buf);
}

/* ---- round trips ----------------------------------------------------------- */

static void test_checkpoint_safetensors_roundtrip(void **state)
{
    (void)state;
    for (int shared = 0; shared <= 1; shared++) {
        tfm_model *m = small_model(shared, 100 + (uint64_t)shared);
        if (!shared) { /* non-default config values must survive "%.9g" */
            m->cfg.norm_eps = 1e-6f;
            m->cfg.rope_theta = 500000.0f;
            m->tokenizer = TFM_TOKENIZER_LLAMA2C;
        }
        assert_int_equal(tfm_model_meta_set(m, "name", "tiny \"stories\" \xc3\xa9"), TFM_OK);
        assert_int_equal(tfm_model_meta_set(m, "trained_steps", "1234"), TFM_OK);
        const char *path = tu_path(shared ? "rt_shared.safetensors" : "rt_untied.safetensors");
        save_ok(m, path, TFM_CKPT_SAFETENSORS);

        /* Data starts 8-byte aligned; the header is a JSON object. */
        size_t n;
        unsigned char *buf = tu_slurp(path, &n);
        uint64_t hlen = le64(buf);
        assert_int_equal((8 + hlen) % 8, 0);
        assert_int_equal(buf[8], '{');
        assert_int_equal(n, 8 + hlen + m->n_floats * sizeof(float));
        assert_int_equal(memcmp(buf + 8 + hlen, m->data, m->n_floats * sizeof(float)), 0);
        assert_true((strstr((char *)buf + 8, "\"output.weight\"") != NULL) == !shared);
        free(buf);

        tfm_model *a = load_ok(path, TFM_CKPT_SAFETENSORS);
        assert_same_model(m, a, 1);
        tfm_model *b = load_ok(path, TFM_CKPT_AUTO);
        assert_same_model(m, b, 1);
        tfm_model_destroy(a);
        tfm_model_destroy(b);
        tfm_model_destroy(m);
    }
    assert_no_temp_files();
}

static void test_checkpoint_llama2c_roundtrip(void **state)
{
    (void)state;
    for (int shared = 0; shared <= 1; shared++) {
        tfm_model *m = small_model(shared, 200 + (uint64_t)shared);
        assert_int_equal(tfm_model_meta_set(m, "dropped", "yes"), TFM_OK);
        const char *path = tu_path(shared ? "rt_shared.bin" : "rt_untied.bin");
        save_ok(m, path, TFM_CKPT_AUTO); /* .bin: llama2.c */

        size_t n;
        unsigned char *buf = tu_slurp(path, &n);
        int32_t h[7];
        memcpy(h, buf, sizeof h);
        assert_int_equal(h[0], 16);
        assert_int_equal(h[4], 2);
        assert_int_equal(h[5], shared ? 37 : -37);
        size_t rope = 12 * 2, wcls = shared ? 0 : 37 * 16;
        assert_int_equal(n, 28 + (m->n_floats + 2 * rope) * sizeof(float));
        /* The RoPE tables as run.c's export writes them: cos, then sin. */
        const unsigned char *r = buf + 28 + (m->n_floats - wcls) * sizeof(float);
        assert_int_equal(memcmp(r, m->rope_cos, rope * sizeof(float)), 0);
        assert_int_equal(memcmp(r + rope * sizeof(float), m->rope_sin, rope * sizeof(float)), 0);
        free(buf);

        tfm_model *a = load_ok(path, TFM_CKPT_AUTO);
        assert_same_model(m, a, 0);
        assert_int_equal(a->tokenizer, TFM_TOKENIZER_LLAMA2C);
        assert_int_equal(a->n_meta, 0); /* llama2.c files carry no metadata */
        tfm_model *b = load_ok(path, TFM_CKPT_LLAMA2C);
        assert_same_model(m, b, 0);
        tfm_model_destroy(a);
        tfm_model_destroy(b);
        tfm_model_destroy(m);
    }
    assert_no_temp_files();
}

/* A file laid out by hand exactly as run.c reads it: float i holds i. */
static void test_checkpoint_llama2c_handwritten(void **state)
{
    (void)state;
    enum { D = 8, H = 12, L = 2, NH = 2, NKV = 1, V = 10, S = 4 };
    const size_t hs = D / NH, kv = hs * NKV;
    const size_t before_rope = V * D + L * D + L * D * D + 2 * L * kv * D + L * D * D + L * D +
                               3 * L * H * D + D;
    const size_t rope = 2 * S * hs / 2;
    for (int shared = 0; shared <= 1; shared++) {
        size_t total = before_rope + rope + (shared ? 0 : V * D);
        size_t bytes = 28 + total * sizeof(float);
        unsigned char *buf = malloc(bytes);
        assert_non_null(buf);
        int32_t h[7] = {D, H, L, NH, NKV, shared ? V : -V, S};
        memcpy(buf, h, sizeof h);
        float *f = (float *)(buf + 28);
        for (size_t i = 0; i < total; i++)
            f[i] = (float)i;
        for (size_t i = 0; i < rope; i++)
            f[before_rope + i] = -1.0f; /* must not reach the weights */
        const char *path = tu_path("hand.bin");
        tu_spit(path, buf, bytes);

        tfm_model *m = load_ok(path, TFM_CKPT_AUTO);
        assert_int_equal(m->cfg.vocab_size, V);
        assert_int_equal(m->cfg.shared_classifier, shared);
        assert_int_equal(m->tokenizer, TFM_TOKENIZER_LLAMA2C);
        size_t wk = V * D + L * D + L * D * D; /* first wk float */
        assert_true(m->w.wk[0] == (float)wk);
        assert_true(m->w.wk[kv * D] == (float)(wk + kv * D)); /* layer 1 */
        assert_true(m->w.wv[0] == (float)(wk + L * kv * D));
        assert_true(m->w.rms_final[D - 1] == (float)(before_rope - 1));
        if (shared) {
            assert_ptr_equal(m->w.wcls, m->w.token_embedding);
        } else {
            assert_true(m->w.wcls[0] == (float)(before_rope + rope));
            assert_true(m->w.wcls[V * D - 1] == (float)(total - 1));
        }
        for (size_t i = 0; i < m->n_floats; i++)
            assert_true(m->data[i] >= 0.0f);
        tfm_model_destroy(m);

        /* One byte too many, one too few. */
        unsigned char *longer = calloc(1, bytes + 4);
        assert_non_null(longer);
        memcpy(longer, buf, bytes);
        tu_spit(path, longer, bytes + 4);
        expect_load(path, TFM_CKPT_AUTO, TFM_E_FORMAT, "trailing");
        tu_spit(path, buf, bytes - 1);
        expect_load(path, TFM_CKPT_LLAMA2C, TFM_E_TRUNCATED, NULL);
        free(longer);
        free(buf);
    }
}

static void test_checkpoint_auto_detection(void **state)
{
    (void)state;
    tfm_model *m = small_model(1, 300);
    /* AUTO save: .bin is llama2.c, anything else safetensors. */
    const char *bin = tu_path("auto.bin"), *st = tu_path("auto.model");
    save_ok(m, bin, TFM_CKPT_AUTO);
    save_ok(m, st, TFM_CKPT_AUTO);
    size_t n;
    unsigned char *b = tu_slurp(bin, &n);
    int32_t dim;
    memcpy(&dim, b, 4);
    assert_int_equal(dim, 16);
    free(b);
    b = tu_slurp(st, &n);
    assert_int_equal(b[8], '{');
    free(b);
    /* An explicit format overrides the extension. */
    const char *st_bin = tu_path("really_safetensors.bin");
    save_ok(m, st_bin, TFM_CKPT_SAFETENSORS);
    tfm_model *a = load_ok(st_bin, TFM_CKPT_AUTO);
    assert_same_model(m, a, 1);
    tfm_model_destroy(a);
    a = load_ok(bin, TFM_CKPT_AUTO);
    assert_same_model(m, a, 0);
    tfm_model_destroy(a);
    /* The wrong explicit format is an error, not a crash. */
    expect_load(st, TFM_CKPT_LLAMA2C, TFM_E_FORMAT, "llama2.c header");
    expect_load(bin, TFM_CKPT_SAFETENSORS, TFM_E_FORMAT, NULL);
    tfm_model_destroy(m);
}

/* ---- hostile input --------------------------------------------------------- */

static void test_checkpoint_truncated(void **state)
{
    (void)state;
    tfm_model *m = small_model(0, 400);
    const char *st = tu_path("trunc_src.safetensors"), *bin = tu_path("trunc_src.bin");
    const char *cut = tu_path("trunc.out");
    save_ok(m, st, TFM_CKPT_SAFETENSORS);
    save_ok(m, bin, TFM_CKPT_LLAMA2C);

    size_t n;
    unsigned char *buf = tu_slurp(st, &n);
    size_t data_at = 8 + (size_t)le64(buf);
    size_t cuts[] = {0, 1, 7, 8, 9, data_at / 2, data_at - 1, data_at, data_at + 4, n / 2, n - 4,
                     n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        tu_spit(cut, buf, cuts[i]);
        for (int fmt = TFM_CKPT_AUTO; fmt <= TFM_CKPT_SAFETENSORS; fmt++) {
            char err[256] = "";
            tfm_model *out = NULL;
            tfm_status s = tfm_checkpoint_load(cut, (tfm_ckpt_format)fmt, &out, err, sizeof err);
            if (s != TFM_E_TRUNCATED && s != TFM_E_FORMAT)
                fail_msg("cut at %zu: %s (%s)", cuts[i], tfm_status_name(s), err);
            assert_null(out);
        }
        /* Short of the length, the header or the data: all TRUNCATED. */
        expect_load(cut, TFM_CKPT_SAFETENSORS, TFM_E_TRUNCATED, NULL);
    }
    free(buf);

    buf = tu_slurp(bin, &n);
    size_t bcuts[] = {0, 3, 27, 28, 32, n / 2, n - 1};
    for (size_t i = 0; i < sizeof bcuts / sizeof bcuts[0]; i++) {
        tu_spit(cut, buf, bcuts[i]);
        expect_load(cut, TFM_CKPT_LLAMA2C, TFM_E_TRUNCATED, NULL);
        expect_load(cut, TFM_CKPT_AUTO, TFM_E_TRUNCATED, NULL);
    }
    free(buf);
    tfm_model_destroy(m);
}

static void test_checkpoint_corrupt_header(void **state)
{
    (void)state;
    const char *p = tu_path("corrupt.safetensors");
    write_st(p, "this is not json", 0);
    expect_load(p, TFM_CKPT_SAFETENSORS, TFM_E_FORMAT, "header");
    write_st(p, "{\"a\": [1, 2", 0);
    expect_load(p, TFM_CKPT_AUTO, TFM_E_FORMAT, "header");
    write_st(p, "[1, 2, 3]", 16);
    expect_load(p, TFM_CKPT_SAFETENSORS, TFM_E_FORMAT, "not a JSON object");
    write_st(p, "{}", 16);
    expect_load(p, TFM_CKPT_AUTO, TFM_E_FORMAT, "__metadata__");
    write_st(p, "{\"__metadata__\": {\"dim\": \"8\", \"dim\": \"8\"}}", 0);
    expect_load(p, TFM_CKPT_AUTO, TFM_E_FORMAT, "header");
    write_st(p, "{\"__metadata__\": \"x\"}", 0);
    expect_load(p, TFM_CKPT_AUTO, TFM_E_FORMAT, "__metadata__");

    /* Edits of a valid file: each names what is wrong. */
    tfm_model *m = small_model(1, 500);
    const char *src = tu_path("corrupt_src.safetensors");
    save_ok(m, src, TFM_CKPT_SAFETENSORS);
    static const struct {
        const char *from, *to;
        tfm_status want;
        const char *needle;
    } cases[] = {
        {"\"dim\":\"16\"", "\"dimm\":\"16\"", TFM_E_FORMAT, "'dim'"},
        {"\"n_layers\":\"3\"", "\"n_layers\":\"3x\"", TFM_E_FORMAT, "'n_layers'"},
        {"\"n_layers\":\"3\"", "\"n_layers\":\" 3\"", TFM_E_FORMAT, "'n_layers'"},
        {"\"seq_len\":\"12\"", "\"seq_len\":12", TFM_E_FORMAT, "'seq_len'"},
        {"\"vocab_size\":\"37\"", "\"vocab_size\":\"99999999999\"", TFM_E_FORMAT, "vocab_size"},
        {"\"norm_eps\":\"", "\"norm_eps\":\"x", TFM_E_FORMAT, "'norm_eps'"},
        {"\"rope_theta\":\"10000\"", "\"rope_theta\":\"inf\"", TFM_E_FORMAT, "'rope_theta'"},
        {"\"shared_classifier\":\"1\"", "\"shared_classifier\":\"2\"", TFM_E_FORMAT,
         "shared_classifier"},
        {"\"n_kv_heads\":\"2\"", "\"n_kv_heads\":\"3\"", TFM_E_FORMAT, "n_kv_heads"},
        {"\"tokenizer\":\"byte\"", "\"tokenizer\":\"sentencepiece\"", TFM_E_FORMAT, "tokenizer"},
        {"\"format\":\"attnd\"", "\"format\":\"attnd\",\"n\":5", TFM_E_FORMAT, "'n'"},
        {"\"norm.weight\"", "\"nrom.weight\"", TFM_E_FORMAT, "unknown tensor nrom.weight"},
        {"\"layers.0.", "\"layers.00.", TFM_E_FORMAT, "unknown tensor"},
        {"\"layers.2.ffn_norm.weight\"", "\"layers.3.ffn_norm.weight\"", TFM_E_FORMAT,
         "unknown tensor"},
        {"\"tok_embeddings.weight\"", "\"output.weight\"", TFM_E_FORMAT, "unknown tensor"},
        {"\"dtype\":\"F32\"", "\"dtype\":\"BF16\"", TFM_E_UNSUPPORTED, "BF16"},
        {"\"dtype\":\"F32\"", "\"dtype\":32", TFM_E_FORMAT, "dtype"},
        {"\"layers.1.attention.wk.weight\":{\"dtype\":\"F32\",\"shape\":[8,16]",
         "\"layers.1.attention.wk.weight\":{\"dtype\":\"F32\",\"shape\":[16,8]", TFM_E_SHAPE,
         "layers.1.attention.wk.weight: shape [16, 8], expected [8, 16]"},
        {"\"norm.weight\":{\"dtype\":\"F32\",\"shape\":[16]",
         "\"norm.weight\":{\"dtype\":\"F32\",\"shape\":[16,1]", TFM_E_SHAPE, "norm.weight"},
        {"\"shape\":[37,16]", "\"shape\":[37,-16]", TFM_E_FORMAT, "shape"},
        {"\"shape\":[37,16]", "\"shape\":\"37x16\"", TFM_E_FORMAT, "shape"},
        {"\"data_offsets\":[0,", "\"data_offsets\":[4,", TFM_E_FORMAT, "data_offsets"},
        {"\"data_offsets\":[0,", "\"data_offsets\":[-1,", TFM_E_FORMAT, "data_offsets"},
        {"\"data_offsets\":[0,", "\"data_offsets\":[0,1,", TFM_E_FORMAT, "data_offsets"},
        {"\"data_offsets\":[0,", "\"data_offsets\":[99999999999999999999,", TFM_E_FORMAT,
         "header"},
        {"\"data_offsets\":[0,2368]", "\"data_offsets\":[1000000,1002368]", TFM_E_TRUNCATED,
         "tok_embeddings.weight"},
        {"\"data_offsets\":[0,2368]", "\"data_offsets\":[9223372036854770000,9223372036854772368]",
         TFM_E_TRUNCATED, "tok_embeddings.weight"},
    };
    const char *p2 = tu_path("corrupt_edit.safetensors");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        edit_header(src, p2, cases[i].from, cases[i].to);
        expect_load(p2, TFM_CKPT_AUTO, cases[i].want, cases[i].needle);
    }
    /* A tensor missing from a hand-made header (1 layer, vocab 2, dim 2). */
    char json[1024];
    snprintf(json, sizeof json,
             "{\"__metadata__\":{\"dim\":\"2\",\"hidden_dim\":\"2\",\"n_layers\":\"1\","
             "\"n_heads\":\"1\",\"n_kv_heads\":\"1\",\"vocab_size\":\"2\",\"seq_len\":\"2\","
             "\"shared_classifier\":\"1\",\"norm_eps\":\"1e-5\",\"rope_theta\":\"10000\"},"
             "\"tok_embeddings.weight\":{\"dtype\":\"F32\",\"shape\":[2,2],"
             "\"data_offsets\":[0,16]}}");
    write_st(p, json, 16);
    expect_load(p, TFM_CKPT_AUTO, TFM_E_TRUNCATED, "config needs");
    write_st(p, json, 1024);
    expect_load(p, TFM_CKPT_AUTO, TFM_E_FORMAT, "missing tensor layers.0.attention_norm.weight");
    /* A huge config in a tiny file is refused before anything is allocated. */
    edit_header(src, p2, "\"dim\":\"16\"", "\"dim\":\"8192\""); /* 2.4 GB */
    expect_load(p2, TFM_CKPT_AUTO, TFM_E_TRUNCATED, "config needs");
    tfm_model_destroy(m);
}

/* Metadata that does not fit the model's table is an error, not a loss. */
static void test_checkpoint_metadata_limits(void **state)
{
    (void)state;
    tfm_model *m = small_model(1, 600);
    const char *src = tu_path("meta_src.safetensors"), *p = tu_path("meta.safetensors");
    save_ok(m, src, TFM_CKPT_SAFETENSORS);
    char many[2048] = "\"format\":\"attnd\"";
    for (int i = 0; i <= TFM_META_MAX; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), ",\"k%d\":\"v\"", i);
    edit_header(src, p, "\"format\":\"attnd\"", many);
    expect_load(p, TFM_CKPT_AUTO, TFM_E_FORMAT, "metadata");
    char longkey[128];
    snprintf(longkey, sizeof longkey, "\"format\":\"attnd\",\"%060d\":\"v\"", 0);
    edit_header(src, p, "\"format\":\"attnd\"", longkey);
    expect_load(p, TFM_CKPT_AUTO, TFM_E_FORMAT, "metadata");
    /* Exactly TFM_META_MAX entries fit. */
    many[0] = 0;
    strcpy(many, "\"format\":\"attnd\"");
    for (int i = 0; i < TFM_META_MAX; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), ",\"k%d\":\"v%d\"", i, i);
    edit_header(src, p, "\"format\":\"attnd\"", many);
    tfm_model *a = load_ok(p, TFM_CKPT_AUTO);
    assert_int_equal(a->n_meta, TFM_META_MAX);
    assert_string_equal(tfm_model_meta_get(a, "k15"), "v15");
    tfm_model_destroy(a);
    /* A meta key that would shadow the config cannot be saved. */
    assert_int_equal(tfm_model_meta_set(m, "dim", "4096"), TFM_OK);
    char err[256] = "";
    assert_int_equal(tfm_checkpoint_save(m, p, TFM_CKPT_SAFETENSORS, err, sizeof err),
                     TFM_E_INVALID);
    assert_non_null(strstr(err, "dim"));
    assert_no_temp_files();
    tfm_model_destroy(m);
}

static void test_checkpoint_oversize_header(void **state)
{
    (void)state;
    const char *p = tu_path("oversize.safetensors");
    unsigned char b[16] = {0};
    b[8] = '{';
    uint64_t lens[] = {(uint64_t)200 << 20, (uint64_t)1 << 31, ((uint64_t)1 << 32) - 1,
                       (uint64_t)1 << 63, UINT64_MAX};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        for (int k = 0; k < 8; k++)
            b[k] = (unsigned char)(lens[i] >> (8 * k));
        tu_spit(p, b, sizeof b);
        expect_load(p, TFM_CKPT_SAFETENSORS, TFM_E_FORMAT, "100 MB");
        char err[256];
        tfm_model *m = NULL;
        assert_true(tfm_checkpoint_load(p, TFM_CKPT_AUTO, &m, err, sizeof err) < 0);
        assert_null(m);
    }
    /* Under the cap but longer than the file: truncated. */
    b[0] = 0xe8, b[1] = 0x03; /* 1000 */
    memset(b + 2, 0, 6);
    tu_spit(p, b, sizeof b);
    expect_load(p, TFM_CKPT_AUTO, TFM_E_TRUNCATED, "exceeds the file");
}

/* Random bytes, and a valid header with random bytes changed: always a
 * status, never a crash (run under ASan/UBSan in CI). */
static void test_checkpoint_fuzz(void **state)
{
    (void)state;
    const char *p = tu_path("fuzz.out");
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 100; i++) {
        size_t n = (size_t)(tu_rng(&rng) % 300);
        unsigned char buf[300];
        for (size_t k = 0; k < n; k++)
            buf[k] = (unsigned char)tu_rng(&rng);
        if (i % 2 && n > 9) /* look like safetensors half the time */
            memset(buf + 1, 0, 7), buf[0] = (unsigned char)(n - 8), buf[8] = '{';
        tu_spit(p, buf, n);
        tfm_model *m = NULL;
        char err[256];
        assert_true(tfm_checkpoint_load(p, TFM_CKPT_AUTO, &m, err, sizeof err) < 0);
        assert_null(m);
    }
    tfm_model *src = small_model(0, 700);
    const char *sp = tu_path("fuzz_src.safetensors");
    save_ok(src, sp, TFM_CKPT_SAFETENSORS);
    size_t n;
    unsigned char *orig = tu_slurp(sp, &n);
    size_t data_at = 8 + (size_t)le64(orig);
    unsigned char *buf = malloc(n);
    assert_non_null(buf);
    for (int i = 0; i < 300; i++) {
        memcpy(buf, orig, n);
        for (int k = 0; k < 1 + i % 4; k++) {
            size_t at = 8 + (size_t)(tu_rng(&rng) % (data_at - 8));
            static const char alphabet[] = "{}[]\",:0123456789-.e FI";
            uint64_t r = tu_rng(&rng);
            buf[at] = i % 3 ? (unsigned char)alphabet[r % (sizeof alphabet - 1)]
                            : (unsigned char)r;
        }
        tu_spit(p, buf, n);
        tfm_model *m = NULL;
        char err[256];
        tfm_status s = tfm_checkpoint_load(p, TFM_CKPT_AUTO, &m, err, sizeof err);
        assert_true((s == TFM_OK) == (m != NULL));
        tfm_model_destroy(m);
    }
    free(buf);
    free(orig);
    tfm_model_destroy(src);
}

static void test_checkpoint_not_a_file(void **state)
{
    (void)state;
    expect_load(tu_path("does-not-exist"), TFM_CKPT_AUTO, TFM_E_NOTFOUND, "does-not-exist");
    expect_load(tu_tmpdir(), TFM_CKPT_AUTO, TFM_E_IO, "not a regular file");
    const char *empty = tu_path("empty");
    tu_spit(empty, "", 0);
    expect_load(empty, TFM_CKPT_AUTO, TFM_E_TRUNCATED, NULL);
    expect_load(empty, TFM_CKPT_SAFETENSORS, TFM_E_TRUNCATED, NULL);
    tfm_model *m = NULL;
    assert_int_equal(tfm_checkpoint_load(NULL, TFM_CKPT_AUTO, &m, NULL, 0), TFM_E_INVALID);
    assert_int_equal(tfm_checkpoint_load(empty, (tfm_ckpt_format)42, &m, NULL, 0), TFM_E_INVALID);
}

/* ---- writes ---------------------------------------------------------------- */

static void test_checkpoint_save_errors(void **state)
{
    (void)state;
    tfm_model *m = small_model(1, 800);
    char err[256] = "";
    const char *nodir = tu_path("no/such/dir/m.safetensors");
    assert_int_equal(tfm_checkpoint_save(m, nodir, TFM_CKPT_AUTO, err, sizeof err), TFM_E_IO);
    assert_non_null(strstr(err, "No such file or directory"));
    assert_int_equal(tfm_checkpoint_save(m, tu_path("no/such/m.bin"), TFM_CKPT_AUTO, err,
                                         sizeof err),
                     TFM_E_IO);
    /* llama2.c cannot carry other norm_eps / rope_theta: nothing is written. */
    const char *bin = tu_path("unsupported.bin");
    m->cfg.norm_eps = 1e-6f;
    assert_int_equal(tfm_checkpoint_save(m, bin, TFM_CKPT_AUTO, err, sizeof err),
                     TFM_E_UNSUPPORTED);
    m->cfg.norm_eps = 1e-5f;
    m->cfg.rope_theta = 1e6f;
    assert_int_equal(tfm_checkpoint_save(m, bin, TFM_CKPT_LLAMA2C, err, sizeof err),
                     TFM_E_UNSUPPORTED);
    struct stat sb;
    assert_int_not_equal(stat(bin, &sb), 0);
    assert_int_equal(tfm_checkpoint_save(NULL, bin, TFM_CKPT_AUTO, err, sizeof err),
                     TFM_E_INVALID);
    assert_int_equal(tfm_checkpoint_save(m, bin, (tfm_ckpt_format)9, err, sizeof err),
                     TFM_E_INVALID);
    assert_no_temp_files();
    tfm_model_destroy(m);
}

/* Overwriting replaces the file whole; a write that fails half-way (file
 * size limit) leaves the old file untouched and no temporary behind. */
static void test_checkpoint_atomic_write(void **state)
{
    (void)state;
    tfm_model *a = small_model(0, 900), *b = small_model(0, 901);
    const char *p = tu_path("atomic.safetensors");
    save_ok(a, p, TFM_CKPT_AUTO);
    save_ok(b, p, TFM_CKPT_AUTO);
    tfm_model *got = load_ok(p, TFM_CKPT_AUTO);
    assert_same_model(b, got, 1);
    tfm_model_destroy(got);
    assert_no_temp_files();

    struct rlimit old, small;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    small = old;
    small.rlim_cur = 4096; /* the model is ~50 KB */
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &small), 0);
    char err[256] = "";
    tfm_status s1 = tfm_checkpoint_save(a, p, TFM_CKPT_SAFETENSORS, err, sizeof err);
    tfm_status s2 = tfm_checkpoint_save(a, tu_path("atomic.bin"), TFM_CKPT_LLAMA2C, err,
                                        sizeof err);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, prev);
    assert_int_equal(s1, TFM_E_IO);
    assert_int_equal(s2, TFM_E_IO);
    assert_non_null(strstr(err, ".tmp."));
    assert_no_temp_files();
    got = load_ok(p, TFM_CKPT_AUTO); /* still b, whole */
    assert_same_model(b, got, 1);
    tfm_model_destroy(got);

    /* A bare file name: the temporary and the directory sync use ".". */
    char cwd[1024];
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(tu_tmpdir()), 0);
    save_ok(b, "relative.safetensors", TFM_CKPT_AUTO);
    got = load_ok("relative.safetensors", TFM_CKPT_AUTO);
    assert_int_equal(chdir(cwd), 0);
    assert_no_temp_files();
    assert_same_model(b, got, 1);
    tfm_model_destroy(got);
    struct stat sb;
    assert_int_not_equal(stat(tu_path("atomic.bin"), &sb), 0);
    tfm_model_destroy(a);
    tfm_model_destroy(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checkpoint_safetensors_roundtrip),
        cmocka_unit_test(test_checkpoint_llama2c_roundtrip),
        cmocka_unit_test(test_checkpoint_llama2c_handwritten),
        cmocka_unit_test(test_checkpoint_auto_detection),
        cmocka_unit_test(test_checkpoint_truncated),
        cmocka_unit_test(test_checkpoint_corrupt_header),
        cmocka_unit_test(test_checkpoint_metadata_limits),
        cmocka_unit_test(test_checkpoint_oversize_header),
        cmocka_unit_test(test_checkpoint_fuzz),
        cmocka_unit_test(test_checkpoint_not_a_file),
        cmocka_unit_test(test_checkpoint_save_errors),
        cmocka_unit_test(test_checkpoint_atomic_write),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
