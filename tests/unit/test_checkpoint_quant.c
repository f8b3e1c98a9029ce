/*
 * test_checkpoint_quant.c — quantised safetensors (core/checkpoint_quant.c):
 * each format's round trip gives the bytes and the logits of the same
 * model converted at load time (tfm_model_quantize), saving again gives the
 * same file, and corrupt files are refused with a status and a message:
 * non-finite scales, q8 values of -128, wrong dtypes, wrong shapes, short
 * spans, truncated data, missing or unknown tensors, an unknown "weights",
 * q8 on a dim that is not a multiple of 32, plus random mutations.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "testutil.h"
#include "tfm/checkpoint.h"
#include "tfm/quant.h"

enum { DIM = 64, HID = 96, LAYERS = 2, HEADS = 4, KV = 2, VOCAB = 37, SEQ = 16, T = 10 };
static const int fmts[3] = {TFM_WF_BF16, TFM_WF_Q8, TFM_WF_Q4};

static tfm_model *quantised(int fmt, int shared)
{
    char err[160] = "";
    tfm_model *m = tu_random_model(DIM, HID, LAYERS, HEADS, KV, VOCAB, SEQ, shared, 5);
    if (tfm_model_quantize(m, fmt, err, sizeof err) != TFM_OK)
        fail_msg("quantize: %s", err);
    return m;
}

static void save_ok(const tfm_model *m, const char *path)
{
    char err[256] = "";
    tfm_status s = tfm_checkpoint_save(m, path, TFM_CKPT_AUTO, err, sizeof err);
    if (s != TFM_OK)
        fail_msg("save %s: %s: %s", path, tfm_status_name(s), err);
}

static tfm_model *load_ok(const char *path)
{
    char err[256] = "";
    tfm_model *m = NULL;
    tfm_status s = tfm_checkpoint_load(path, TFM_CKPT_AUTO, &m, err, sizeof err);
    if (s != TFM_OK)
        fail_msg("load %s: %s: %s", path, tfm_status_name(s), err);
    return m;
}

static void expect_load(const char *path, tfm_status want, const char *needle)
{
    char err[256] = "";
    tfm_model *m = (tfm_model *)&err;
    tfm_status s = tfm_checkpoint_load(path, TFM_CKPT_AUTO, &m, err, sizeof err);
    if (s != want)
        fail_msg("load %s: got %s (%s), want %s", path, tfm_status_name(s), err,
                 tfm_status_name(want));
    assert_null(m);
    if (needle && !strstr(err, needle))
        fail_msg("error \"%s\" does not mention \"%s\"", err, needle);
}

/* Every matrix's data and scales, and the float32 kept, byte for byte. */
static void assert_same_qmodel(const tfm_model *a, const tfm_model *b)
{
    assert_int_equal(tfm_model_wformat(a), tfm_model_wformat(b));
    assert_non_null(b->q);
    assert_int_equal(a->q->bytes, b->q->bytes);
    assert_int_equal(a->n_floats, b->n_floats);
    assert_memory_equal(a->data, b->data, a->n_floats * sizeof(float));
    for (int i = 0; i <= LAYERS * TFM__QM_PER_LAYER; i++) {
        const tfm_qmat *x = i < LAYERS * TFM__QM_PER_LAYER ? &a->q->layer[i] : &a->q->cls;
        const tfm_qmat *y = i < LAYERS * TFM__QM_PER_LAYER ? &b->q->layer[i] : &b->q->cls;
        size_t db, sb;
        assert_int_equal(x->fmt, y->fmt);
        assert_int_equal(x->n, y->n);
        assert_int_equal(x->d, y->d);
        assert_int_equal(tfm_qmat_bytes((tfm_wformat)x->fmt, x->n, x->d, &db, &sb), TFM_OK);
        assert_memory_equal(x->data, y->data, db);
        if (sb)
            assert_memory_equal(x->scale, y->scale, sb);
        /* the same offsets in the buffer as tfm_model_quantize's */
        assert_int_equal((const char *)x->data - (const char *)a->q->buf,
                         (const char *)y->data - (const char *)b->q->buf);
    }
    assert_string_equal(tfm_model_meta_get(b, "weights"), tfm_wformat_name((tfm_wformat)b->q->fmt));
}

/* Logits of a T-token prefill (every row) and 4 decode steps. */
static void logits(const tfm_model *m, float *out)
{
    tfm_workspace *ws;
    tfm_state *st;
    int toks[T + 4];
    for (int i = 0; i < T + 4; i++)
        toks[i] = (i * 7 + 3) % VOCAB;
    assert_int_equal(tfm_workspace_create(m, T, 1, &ws), TFM_OK);
    assert_int_equal(tfm_state_create(m, 0, &st), TFM_OK);
    assert_int_equal(tfm_prefill_rows(ws, st, toks, T, out), TFM_OK);
    for (int s = 0; s < 4; s++)
        assert_int_equal(tfm_decode(ws, &st, &toks[T + s], 1, out + (size_t)(T + s) * VOCAB),
                         TFM_OK);
    tfm_state_destroy(st);
    tfm_workspace_destroy(ws);
}

static void test_checkpoint_quant_roundtrip(void **state)
{
    (void)state;
    size_t nl = (size_t)(T + 4) * VOCAB;
    float *la = malloc(nl * sizeof *la), *lb = malloc(nl * sizeof *lb);
    for (int shared = 0; shared <= 1; shared++)
        for (int i = 0; i < 3; i++) {
            tfm_model *a = quantised(fmts[i], shared);
            const char *p1 = tu_path("q1.safetensors"), *p2 = tu_path("q2.safetensors");
            save_ok(a, p1);
            tfm_model *b = load_ok(p1);
            assert_same_qmodel(a, b);
            assert_int_equal(b->tokenizer, a->tokenizer);
            logits(a, la);
            logits(b, lb);
            assert_memory_equal(la, lb, nl * sizeof *la); /* bit for bit */
            /* saving the loaded model writes the same file */
            save_ok(b, p2);
            size_t n1, n2;
            unsigned char *f1 = tu_slurp(p1, &n1), *f2 = tu_slurp(p2, &n2);
            assert_int_equal(n1, n2);
            assert_memory_equal(f1, f2, n1);
            /* and the file is smaller than float32's by about the format's ratio */
            tfm_model *f32 = tu_random_model(DIM, HID, LAYERS, HEADS, KV, VOCAB, SEQ, shared, 5);
            save_ok(f32, p2);
            size_t nf;
            free(tu_slurp(p2, &nf));
            printf("# %s shared %d: %zu bytes (f32 %zu)\n", tfm_wformat_name(fmts[i]), shared, n1,
                   nf);
            assert_true(n1 < nf);
            free(f1);
            free(f2);
            tfm_model_destroy(f32);
            tfm_model_destroy(a);
            tfm_model_destroy(b);
        }
    free(la);
    free(lb);
}

/* ---- corrupt files ---------------------------------------------------------- */

static uint64_t le64(const unsigned char *b)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | b[i];
    return v;
}

/* A copy of the file at src with its header's first `from` replaced by
 * `to` (the length prefix rewritten, the data kept), written to dst. */
static void edit_header(const char *src, const char *dst, const char *from, const char *to)
{
    size_t n;
    unsigned char *f = tu_slurp(src, &n);
    size_t hn = (size_t)le64(f);
    char *h = malloc(hn + 1);
    memcpy(h, f + 8, hn);
    h[hn] = 0;
    char *at = strstr(h, from);
    if (!at)
        fail_msg("'%s' not in the header", from);
    size_t out_hn = hn - strlen(from) + strlen(to);
    unsigned char *o = malloc(8 + out_hn + (n - 8 - hn));
    for (int i = 0; i < 8; i++)
        o[i] = (unsigned char)((uint64_t)out_hn >> (8 * i));
    size_t pre = (size_t)(at - h);
    memcpy(o + 8, h, pre);
    memcpy(o + 8 + pre, to, strlen(to));
    memcpy(o + 8 + pre + strlen(to), at + strlen(from), hn - pre - strlen(from));
    memcpy(o + 8 + out_hn, f + 8 + hn, n - 8 - hn);
    tu_spit(dst, o, 8 + out_hn + (n - 8 - hn));
    free(o);
    free(h);
    free(f);
}

/* The file offset of tensor name's data (parsed from its header entry). */
static size_t data_offset(const unsigned char *f, const char *name)
{
    size_t hn = (size_t)le64(f);
    char key[128];
    snprintf(key, sizeof key, "\"%s\":", name);
    const char *h = (const char *)f + 8, *at = strstr(h, key);
    assert_non_null(at);
    assert_true(at < h + hn);
    const char *o = strstr(at, "\"data_offsets\":[");
    assert_non_null(o);
    unsigned long long b = 0;
    assert_int_equal(sscanf(o + 16, "%llu", &b), 1);
    return 8 + hn + (size_t)b;
}

/* Writes src with two bytes at tensor name's element i set to v. */
static void poke16(const char *src, const char *dst, const char *name, size_t i, uint16_t v)
{
    size_t n;
    unsigned char *f = tu_slurp(src, &n);
    size_t at = data_offset(f, name) + 2 * i;
    f[at] = (unsigned char)v, f[at + 1] = (unsigned char)(v >> 8);
    tu_spit(dst, f, n);
    free(f);
}

static void test_checkpoint_quant_corrupt(void **state)
{
    (void)state;
    const char *q8 = tu_path("c_q8.safetensors"), *q4 = tu_path("c_q4.safetensors");
    const char *bad = tu_path("c_bad.safetensors");
    tfm_model *m8 = quantised(TFM_WF_Q8, 0), *m4 = quantised(TFM_WF_Q4, 1);
    save_ok(m8, q8);
    save_ok(m4, q4);
    const char *sc = "layers.1.feed_forward.w2.weight.scales";
    /* scales that are not finite: NaN, +inf, -inf */
    const uint16_t nonfinite[3] = {0x7e00, 0x7c00, 0xfc00};
    for (int i = 0; i < 3; i++) {
        poke16(q8, bad, sc, 5, nonfinite[i]);
        expect_load(bad, TFM_E_FORMAT, "not finite");
        poke16(q4, bad, "layers.0.attention.wq.weight.scales", 0, nonfinite[i]);
        expect_load(bad, TFM_E_FORMAT, "not finite");
    }
    poke16(q8, bad, "output.weight.scales", 3, 0x7e00);
    expect_load(bad, TFM_E_FORMAT, "output.weight.scales");
    /* a q8 value of -128 */
    {
        size_t n;
        unsigned char *f = tu_slurp(q8, &n);
        f[data_offset(f, "layers.0.attention.wk.weight") + 17] = 0x80;
        tu_spit(bad, f, n);
        free(f);
        expect_load(bad, TFM_E_FORMAT, "-128");
    }
    /* wrong dtypes: a matrix, its scales, a norm */
    edit_header(q8, bad, "\"dtype\":\"I8\"", "\"dtype\":\"U8\"");
    expect_load(bad, TFM_E_UNSUPPORTED, "expected I8");
    edit_header(q8, bad, "\"dtype\":\"F16\"", "\"dtype\":\"BF16\"");
    expect_load(bad, TFM_E_UNSUPPORTED, "expected F16");
    edit_header(q4, bad, "\"dtype\":\"U8\"", "\"dtype\":\"I8\"");
    expect_load(bad, TFM_E_UNSUPPORTED, "expected U8");
    edit_header(q8, bad, "\"dtype\":\"F32\"", "\"dtype\":\"F16\"");
    expect_load(bad, TFM_E_UNSUPPORTED, "expected F32");
    /* a wrong shape: q4 data is [n, d/2], its scales [n, d/32] */
    edit_header(q4, bad, "\"shape\":[64,32]", "\"shape\":[64,64]");
    expect_load(bad, TFM_E_SHAPE, "expected [64, 32]");
    edit_header(q8, bad, "\"shape\":[64,2]", "\"shape\":[64,1]");
    expect_load(bad, TFM_E_SHAPE, "scales");
    /* a short span: the scales' end offset one element early */
    {
        size_t n;
        unsigned char *f = tu_slurp(q8, &n);
        char key[96], from[64], to[64];
        snprintf(key, sizeof key, "\"%s\":", sc);
        char *o = strstr(strstr((char *)f + 8, key), "\"data_offsets\":[");
        unsigned long long b, e;
        assert_int_equal(sscanf(o + 16, "%llu,%llu", &b, &e), 2);
        snprintf(from, sizeof from, "[%llu,%llu]", b, e);
        snprintf(to, sizeof to, "[%llu,%llu]", b, e - 2);
        free(f);
        edit_header(q8, bad, from, to);
        expect_load(bad, TFM_E_FORMAT, "span");
    }
    /* data cut short */
    {
        size_t n;
        unsigned char *f = tu_slurp(q8, &n);
        tu_spit(bad, f, n - 3);
        free(f);
        expect_load(bad, TFM_E_TRUNCATED, NULL);
    }
    /* a missing scales tensor, and an unknown one in its place */
    edit_header(q8, bad, "\"layers.0.attention.wv.weight.scales\"", "\"layers.0.attention.wv.weight.scalez\"");
    expect_load(bad, TFM_E_FORMAT, "unknown tensor");
    {
        size_t n;
        unsigned char *f = tu_slurp(q8, &n);
        const char *key = "\"layers.0.attention.wv.weight.scales\":";
        char *at = strstr((char *)f + 8, key), *end = strchr(strchr(at, ']') + 1, ']') + 2;
        char entry[256];
        snprintf(entry, sizeof entry, "%.*s", (int)(end - at), at);
        assert_true(entry[strlen(entry) - 1] == '}');
        strcat(entry, ",");
        free(f);
        edit_header(q8, bad, entry, "");
        expect_load(bad, TFM_E_FORMAT, "missing tensor layers.0.attention.wv.weight.scales");
    }
    /* "weights" naming no format, or a format the tensors are not in */
    edit_header(q8, bad, "\"weights\":\"q8\"", "\"weights\":\"q9\"");
    expect_load(bad, TFM_E_FORMAT, "'weights'");
    edit_header(q8, bad, "\"weights\":\"q8\"", "\"weights\":\"q4\"");
    expect_load(bad, TFM_E_UNSUPPORTED, "expected U8");
    edit_header(q8, bad, "\"weights\":\"q8\"", "\"weights\":\"f32\"");
    expect_load(bad, TFM_E_TRUNCATED, NULL); /* a quarter of float32's bytes */
    /* an f32 file that says q8 but whose dim is 16 */
    {
        tfm_model *f = tu_random_model(16, 40, 1, 4, 2, 37, 8, 1, 3);
        const char *fp = tu_path("c_f32.safetensors");
        save_ok(f, fp);
        edit_header(fp, bad, "\"format\":\"attnd\"", "\"format\":\"attnd\",\"weights\":\"q8\"");
        expect_load(bad, TFM_E_SHAPE, "multiples of 32");
        edit_header(fp, bad, "\"format\":\"attnd\"", "\"format\":\"attnd\",\"weights\":\"bf16\"");
        expect_load(bad, TFM_E_UNSUPPORTED, "expected BF16");
        tfm_model_destroy(f);
    }
    /* a recall model answers through the trainer's float32 forward */
    tfm_model_meta_set(m8, "task", "recall");
    save_ok(m8, bad);
    expect_load(bad, TFM_E_UNSUPPORTED, "recall");
    /* llama2.c files are float32 only */
    char err[160] = "";
    assert_int_equal(tfm_checkpoint_save(m8, tu_path("c.bin"), TFM_CKPT_AUTO, err, sizeof err),
                     TFM_E_UNSUPPORTED);
    assert_non_null(strstr(err, "safetensors only"));
    tfm_model_destroy(m8);
    tfm_model_destroy(m4);
}

/* Random bytes in the header and the data of each format's file: a status,
 * never a crash (the sanitizer build watches the reads). */
static void test_checkpoint_quant_mutations(void **state)
{
    (void)state;
    uint64_t rng = 77;
    for (int fi = 0; fi < 3; fi++) {
        tfm_model *m = quantised(fmts[fi], fi & 1);
        const char *p = tu_path("mut_src.safetensors"), *bad = tu_path("mut.safetensors");
        save_ok(m, p);
        size_t n;
        unsigned char *orig = tu_slurp(p, &n), *buf = malloc(n);
        size_t hn = (size_t)le64(orig);
        int ok = 0;
        for (int i = 0; i < 200; i++) {
            memcpy(buf, orig, n);
            for (int k = 0; k < 1 + i % 3; k++) {
                size_t at = i % 2 ? 8 + (size_t)(tu_rng(&rng) % hn)
                                  : 8 + hn + (size_t)(tu_rng(&rng) % (n - 8 - hn));
                static const char alphabet[] = "{}[]\",:0123456789-.eFIU8 ";
                uint64_t r = tu_rng(&rng);
                buf[at] = i % 4 == 1 ? (unsigned char)alphabet[r % (sizeof alphabet - 1)]
                                     : (unsigned char)r;
            }
            tu_spit(bad, buf, n);
            tfm_model *got = NULL;
            char err[256];
            tfm_status s = tfm_checkpoint_load(bad, TFM_CKPT_AUTO, &got, err, sizeof err);
            assert_true((s == TFM_OK) == (got != NULL));
            ok += s == TFM_OK;
            tfm_model_destroy(got);
        }
        printf("# %s: %d of 200 mutated files loaded (data bytes are free)\n",
               tfm_wformat_name(fmts[fi]), ok);
        free(buf);
        free(orig);
        tfm_model_destroy(m);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checkpoint_quant_roundtrip),
        cmocka_unit_test(test_checkpoint_quant_corrupt),
        cmocka_unit_test(test_checkpoint_quant_mutations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
