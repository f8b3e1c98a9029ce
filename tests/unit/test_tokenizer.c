/*
 * test_tokenizer.c — byte and llama2.c tokenizers.
 *
 * The llama2c tests write small tokenizer.bin files with chosen pieces and
 * scores (3 specials, the 256 <0xNN> byte tokens, then a handful of pieces),
 * so each expected merge sequence can be worked out by hand from run.c's
 * rule: repeatedly merge the adjacent pair whose concatenation is the
 * best-scoring piece, the leftmost on ties.  A last test uses the real
 * 32000-token file when the fixture is present.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tfm/tokenizer.h"

/* ---- building tokenizer.bin files ----------------------------------------- */

typedef struct extra_piece {
    const char *str;
    float score;
} extra_piece;

/* Ids of the extra pieces of the test vocab (after the 259 fixed ones). */
enum {
    T_SPACE = 259, /* " " */
    T_A,
    T_B,
    T_C,
    T_AB,
    T_BC,
    T_ABC,
    T_SP_A, /* " a" */
    T_AA,
    T_E_ACUTE, /* "é" */
    T_SP_E_ACUTE, /* " é" */
    T_CHECK,   /* "✓" */
    T_END
};

static const extra_piece test_pieces[] = {
    {" ", -100}, {"a", -101}, {"b", -102}, {"c", -103},
    {"ab", -5},  {"bc", -3},  {"abc", -1}, {" a", -10},
    {"aa", -4},  {"é", -50}, {" é", -6},  {"✓", -60},
};
#define N_TEST_PIECES ((int)(sizeof test_pieces / sizeof test_pieces[0]))

typedef struct bin {
    unsigned char *data;
    size_t len, cap;
} bin;

static void bin_put(bin *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2;
        b->data = realloc(b->data, b->cap);
        assert_non_null(b->data);
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void bin_i32(bin *b, int32_t v)
{
    bin_put(b, &v, 4); /* the test hosts are little-endian, like the format */
}

static void bin_token(bin *b, const char *s, int32_t len, float score)
{
    bin_put(b, &score, 4);
    bin_i32(b, len);
    bin_put(b, s, len > 0 ? (size_t)len : 0);
}

/* The test vocab: <unk>, <s>, </s>, <0x00>..<0xFF>, then test_pieces. */
static bin build_vocab(void)
{
    bin b = {0};
    bin_i32(&b, 8);
    bin_token(&b, "<unk>", 5, 0);
    bin_token(&b, "\n<s>\n", 5, 0);
    bin_token(&b, "\n</s>\n", 6, 0);
    for (int i = 0; i < 256; i++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", i);
        bin_token(&b, s, 6, 0);
    }
    for (int i = 0; i < N_TEST_PIECES; i++)
        bin_token(&b, test_pieces[i].str, (int32_t)strlen(test_pieces[i].str),
                  test_pieces[i].score);
    return b;
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static tfm_tokenizer *load_test_vocab(void)
{
    bin b = build_vocab();
    const char *path = tu_path("tok-test.bin");
    write_file(path, b.data, b.len);
    free(b.data);
    tfm_tokenizer *t = NULL;
    char err[256] = "";
    tfm_status s = tfm_tokenizer_load_llama2c(path, T_END, &t, err, sizeof err);
    if (s != TFM_OK)
        fail_msg("load: %s: %s", tfm_strerror(s), err);
    return t;
}

/* Encodes text (a C string) and compares with want[0..n). */
static void check_encode(const tfm_tokenizer *t, const char *text, int bos, int eos,
                         const int *want, int n)
{
    int ids[256];
    int got = -1;
    assert_int_equal(tfm_tokenizer_encode(t, text, strlen(text), bos, eos, ids, 256, &got),
                     TFM_OK);
    for (int i = 0; i < n && i < got; i++)
        if (ids[i] != want[i])
            fail_msg("\"%s\": id %d is %d, want %d", text, i, ids[i], want[i]);
    assert_int_equal(got, n);
}

/* Decodes ids[0..n) as a generation loop would (prev = the previous id). */
static size_t decode_all(const tfm_tokenizer *t, const int *ids, int n, char *out, size_t cap)
{
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        const char *piece;
        size_t plen;
        assert_int_equal(tfm_tokenizer_decode(t, i > 0 ? ids[i - 1] : -1, ids[i], &piece, &plen),
                         TFM_OK);
        assert_true(len + plen <= cap);
        memcpy(out + len, piece, plen);
        len += plen;
    }
    return len;
}

/* ---- byte tokenizer --------------------------------------------------------- */

static void test_byte_round_trip_random_bytes(void **state)
{
    (void)state;
    tfm_tokenizer *t = NULL;
    assert_int_equal(tfm_tokenizer_create_byte(&t), TFM_OK);
    assert_int_equal(tfm_tokenizer_kind_of(t), TFM_TOKENIZER_BYTE);
    assert_int_equal(tfm_tokenizer_vocab_size(t), TFM_BYTE_VOCAB);
    assert_int_equal(tfm_tokenizer_bos(t), TFM_BYTE_BOS);
    assert_int_equal(tfm_tokenizer_eos(t), TFM_BYTE_EOS);

    enum { N = 4096 };
    static char text[N], back[N];
    static int ids[N + 2];
    uint64_t rng = 0x1234;
    for (int i = 0; i < N; i++)
        text[i] = (char)(tu_rng(&rng) & 0xFF);
    text[7] = '\0';   /* NUL inside the text */
    text[8] = '\xC3'; /* a lone lead byte: invalid UTF-8 */
    int n = 0;
    assert_int_equal(tfm_tokenizer_encode(t, text, N, 1, 1, ids, N + 2, &n), TFM_OK);
    assert_int_equal(n, N + 2);
    assert_int_equal(ids[0], TFM_BYTE_BOS);
    assert_int_equal(ids[N + 1], TFM_BYTE_EOS);
    for (int i = 0; i < N; i++)
        assert_int_equal(ids[i + 1], (unsigned char)text[i]);
    assert_int_equal(decode_all(t, ids, n, back, N), N);
    assert_memory_equal(back, text, N);

    const char *piece;
    size_t len;
    assert_int_equal(tfm_tokenizer_decode(t, -1, TFM_BYTE_VOCAB, &piece, &len), TFM_E_INVALID);
    assert_int_equal(tfm_tokenizer_decode(t, -1, -1, &piece, &len), TFM_E_INVALID);
    tfm_tokenizer_destroy(t);
}

static void test_byte_encode_range(void **state)
{
    (void)state;
    tfm_tokenizer *t = NULL;
    assert_int_equal(tfm_tokenizer_create_byte(&t), TFM_OK);
    int ids[4], n = 0;
    assert_int_equal(tfm_tokenizer_encode(t, "hello", 5, 1, 0, ids, 4, &n), TFM_E_RANGE);
    assert_int_equal(n, 6);
    assert_int_equal(ids[0], TFM_BYTE_BOS);
    assert_int_equal(ids[3], 'l');
    assert_int_equal(tfm_tokenizer_encode(t, NULL, 0, 0, 0, NULL, 0, &n), TFM_OK);
    assert_int_equal(n, 0);
    assert_int_equal(tfm_tokenizer_encode(t, NULL, 3, 0, 0, ids, 4, &n), TFM_E_INVALID);
    tfm_tokenizer_destroy(t);
    tfm_tokenizer_destroy(NULL);
}

/* ---- llama2c on a hand-made vocab --------------------------------------- */

static void test_llama2c_merges_best_score_first(void **state)
{
    (void)state;
    tfm_tokenizer *t = load_test_vocab();
    assert_int_equal(tfm_tokenizer_kind_of(t), TFM_TOKENIZER_LLAMA2C);
    assert_int_equal(tfm_tokenizer_bos(t), 1);
    assert_int_equal(tfm_tokenizer_eos(t), 2);
    /* [" ",a,b,c]: "bc" (-3) beats "ab" (-5) and " a" (-10); then "abc" (-1)
     * beats " a"; " abc" is no piece.  Left to right would give " a","bc". */
    check_encode(t, "abc", 0, 0, (int[]){T_SPACE, T_ABC}, 2);
    /* BOS takes part in merging (nothing to merge with) and EOS comes after. */
    check_encode(t, "abc", 1, 1, (int[]){1, T_SPACE, T_ABC, 2}, 4);
    /* [" ",a,b]: "ab" (-5) beats " a" (-10). */
    check_encode(t, "ab", 0, 0, (int[]){T_SPACE, T_AB}, 2);
    /* [" ",a,a,a]: " a" (-10) loses to "aa" (-4) twice; the leftmost wins. */
    check_encode(t, "aaa", 0, 0, (int[]){T_SPACE, T_AA, T_A}, 3);
    /* " a" happens when nothing better is around */
    check_encode(t, "a", 0, 0, (int[]){T_SP_A}, 1);
    /* [" ",a," ",c]: " a" merges, " c" is no piece */
    check_encode(t, "a c", 0, 0, (int[]){T_SP_A, T_SPACE, T_C}, 3);
    tfm_tokenizer_destroy(t);
}

static void test_llama2c_empty_text_has_no_dummy_prefix(void **state)
{
    (void)state;
    tfm_tokenizer *t = load_test_vocab();
    check_encode(t, "", 1, 1, (int[]){1, 2}, 2);
    check_encode(t, "", 0, 0, NULL, 0);
    tfm_tokenizer_destroy(t);
}

static void test_llama2c_utf8_and_byte_fallback(void **state)
{
    (void)state;
    tfm_tokenizer *t = load_test_vocab();
    /* "é" is a piece and " é" merges; "ö" (C3 B6) is not: byte tokens. */
    check_encode(t, "é ö", 0, 0, (int[]){T_SP_E_ACUTE, T_SPACE, 3 + 0xC3, 3 + 0xB6}, 4);
    /* three-byte piece; a four-byte code point not in the vocab */
    check_encode(t, "✓😀", 0, 0, (int[]){T_SPACE, T_CHECK, 3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80},
                 6);
    /* "x" is no piece: <0x78>; stray continuation bytes and a truncated
     * sequence fall back to bytes too */
    check_encode(t, "x\x80\x80\xE2\x9C", 0, 0,
                 (int[]){T_SPACE, 3 + 'x', 3 + 0x80, 3 + 0x80, 3 + 0xE2, 3 + 0x9C}, 6);
    /* a NUL inside the text is a byte like any other */
    int ids[8], n = 0;
    assert_int_equal(tfm_tokenizer_encode(t, "a\0b", 3, 0, 0, ids, 8, &n), TFM_OK);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], T_SP_A);
    assert_int_equal(ids[1], 3);
    assert_int_equal(ids[2], T_B);
    tfm_tokenizer_destroy(t);
}

static void test_llama2c_decode_rules(void **state)
{
    (void)state;
    tfm_tokenizer *t = load_test_vocab();
    const char *piece;
    size_t len;
    /* the leading space of a piece is dropped right after BOS only */
    assert_int_equal(tfm_tokenizer_decode(t, 1, T_SP_A, &piece, &len), TFM_OK);
    assert_int_equal(len, 1);
    assert_memory_equal(piece, "a", 1);
    assert_int_equal(tfm_tokenizer_decode(t, T_A, T_SP_A, &piece, &len), TFM_OK);
    assert_int_equal(len, 2);
    assert_memory_equal(piece, " a", 2);
    assert_int_equal(tfm_tokenizer_decode(t, 1, T_SPACE, &piece, &len), TFM_OK);
    assert_int_equal(len, 0);
    /* <0xNN> is the raw byte */
    assert_int_equal(tfm_tokenizer_decode(t, -1, 3 + 0xC3, &piece, &len), TFM_OK);
    assert_int_equal(len, 1);
    assert_int_equal((unsigned char)piece[0], 0xC3);
    assert_int_equal(tfm_tokenizer_decode(t, -1, 3, &piece, &len), TFM_OK);
    assert_int_equal(len, 1);
    assert_int_equal(piece[0], '\0');
    /* BOS and EOS decode to nothing; ids out of range are refused */
    assert_int_equal(tfm_tokenizer_decode(t, -1, 1, &piece, &len), TFM_OK);
    assert_int_equal(len, 0);
    assert_int_equal(tfm_tokenizer_decode(t, 5, 2, &piece, &len), TFM_OK);
    assert_int_equal(len, 0);
    assert_int_equal(tfm_tokenizer_decode(t, -1, T_END, &piece, &len), TFM_E_INVALID);
    tfm_tokenizer_destroy(t);
}

static void test_llama2c_round_trip_after_bos(void **state)
{
    (void)state;
    tfm_tokenizer *t = load_test_vocab();
    const char *texts[] = {"abc abc", "aaaa b", " leading space", "é ö ✓ 😀!", "a\xFF\x80z"};
    for (size_t k = 0; k < sizeof texts / sizeof texts[0]; k++) {
        int ids[64], n = 0;
        size_t len = strlen(texts[k]);
        assert_int_equal(tfm_tokenizer_encode(t, texts[k], len, 1, 0, ids, 64, &n), TFM_OK);
        char back[128];
        size_t blen = decode_all(t, ids, n, back, sizeof back);
        assert_int_equal(blen, len);
        assert_memory_equal(back, texts[k], len);
        /* without BOS the dummy-prefix space stays */
        assert_int_equal(tfm_tokenizer_encode(t, texts[k], len, 0, 0, ids, 64, &n), TFM_OK);
        blen = decode_all(t, ids, n, back, sizeof back);
        assert_int_equal(blen, len + 1);
        assert_int_equal(back[0], ' ');
        assert_memory_equal(back + 1, texts[k], len);
    }
    tfm_tokenizer_destroy(t);
}

static void test_llama2c_encode_range(void **state)
{
    (void)state;
    tfm_tokenizer *t = load_test_vocab();
    int ids[2] = {-7, -7}, n = 0;
    assert_int_equal(tfm_tokenizer_encode(t, "abc", 3, 1, 1, ids, 2, &n), TFM_E_RANGE);
    assert_int_equal(n, 4);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], T_SPACE);
    assert_int_equal(tfm_tokenizer_encode(t, "abc", 3, 1, 1, NULL, 0, &n), TFM_E_RANGE);
    assert_int_equal(n, 4);
    assert_int_equal(tfm_tokenizer_encode(t, "abc", 3, 0, 0, ids, 2, &n), TFM_OK);
    assert_int_equal(n, 2);
    tfm_tokenizer_destroy(t);
}

/* ---- hostile files --------------------------------------------------------- */

static tfm_status load_mem(const void *p, size_t len, int vocab, char *err, size_t errlen)
{
    tfm_tokenizer *t = (tfm_tokenizer *)&t; /* must be reset to NULL on failure */
    tfm_status s = tfm_tokenizer_load_llama2c_mem(p, len, vocab, &t, err, errlen);
    if (s == TFM_OK)
        assert_non_null(t);
    else
        assert_null(t);
    tfm_tokenizer_destroy(t);
    return s;
}

static void test_llama2c_rejects_every_truncation(void **state)
{
    (void)state;
    bin b = build_vocab();
    assert_int_equal(load_mem(b.data, b.len, T_END, NULL, 0), TFM_OK);
    char err[256];
    for (size_t cut = 0; cut < b.len; cut++) {
        err[0] = '\0';
        tfm_status s = load_mem(b.data, cut, T_END, err, sizeof err);
        if (s != TFM_E_TRUNCATED)
            fail_msg("cut at %zu: %s (%s)", cut, tfm_status_name(s), err);
        assert_true(err[0] != '\0');
    }
    /* through the file path too */
    const char *path = tu_path("tok-trunc.bin");
    write_file(path, b.data, b.len / 2);
    tfm_tokenizer *t = NULL;
    assert_int_equal(tfm_tokenizer_load_llama2c(path, T_END, &t, err, sizeof err),
                     TFM_E_TRUNCATED);
    assert_null(t);
    assert_non_null(strstr(err, "token"));
    assert_int_equal(tfm_tokenizer_load_llama2c(tu_path("no-such-file.bin"), T_END, &t, err,
                                                sizeof err),
                     TFM_E_IO);
    free(b.data);
}

static void test_llama2c_rejects_bad_lengths_and_counts(void **state)
{
    (void)state;
    char err[256];
    bin b = build_vocab();
    /* one token fewer or more than the model says */
    assert_int_equal(load_mem(b.data, b.len, T_END + 1, err, sizeof err), TFM_E_TRUNCATED);
    assert_int_equal(load_mem(b.data, b.len, T_END - 1, err, sizeof err), TFM_E_FORMAT);
    assert_non_null(strstr(err, "tokens"));
    /* too small a vocabulary for byte fallback */
    assert_int_equal(load_mem(b.data, b.len, 100, err, sizeof err), TFM_E_INVALID);
    free(b.data);

    /* a negative max_token_length */
    b = build_vocab();
    int32_t neg = -1;
    memcpy(b.data, &neg, 4);
    assert_int_equal(load_mem(b.data, b.len, T_END, err, sizeof err), TFM_E_FORMAT);
    assert_non_null(strstr(err, "max_token_length"));
    free(b.data);

    /* the length of token 0 (at byte 8): negative, huge, beyond the maximum */
    const int32_t lens[] = {-1, INT32_MIN, INT32_MAX, 9};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        b = build_vocab();
        memcpy(b.data + 8, &lens[i], 4);
        err[0] = '\0';
        assert_int_equal(load_mem(b.data, b.len, T_END, err, sizeof err), TFM_E_FORMAT);
        assert_non_null(strstr(err, "token 0"));
        free(b.data);
    }
    /* a huge length that max_token_length allows runs off the end */
    b = build_vocab();
    int32_t big = INT32_MAX;
    memcpy(b.data, &big, 4);
    memcpy(b.data + 8, &big, 4);
    assert_int_equal(load_mem(b.data, b.len, T_END, err, sizeof err), TFM_E_TRUNCATED);
    free(b.data);
    /* a file far too small for the vocab is refused before allocating */
    assert_int_equal(load_mem("\x10\0\0\0", 4, 1 << 30, err, sizeof err), TFM_E_TRUNCATED);
}

static void test_llama2c_survives_corruption(void **state)
{
    (void)state;
    bin b = build_vocab();
    unsigned char *copy = malloc(b.len);
    assert_non_null(copy);
    uint64_t rng = 99;
    for (int trial = 0; trial < 300; trial++) {
        memcpy(copy, b.data, b.len);
        for (int k = 0; k < 4; k++)
            copy[tu_rng(&rng) % b.len] = (unsigned char)tu_rng(&rng);
        tfm_tokenizer *t = NULL;
        char err[128];
        tfm_status s = tfm_tokenizer_load_llama2c_mem(copy, b.len, T_END, &t, err, sizeof err);
        if (s != TFM_OK) {
            assert_true(s == TFM_E_FORMAT || s == TFM_E_TRUNCATED);
            continue;
        }
        /* whatever loaded must encode and decode without faults */
        int ids[64], n = 0;
        const char *text = "abc é ✓ <0x41> xyz";
        assert_int_equal(tfm_tokenizer_encode(t, text, strlen(text), 1, 1, ids, 64, &n), TFM_OK);
        char back[1024];
        for (int i = 0; i < n; i++)
            assert_true(ids[i] >= 0 && ids[i] < T_END);
        decode_all(t, ids, n, back, sizeof back);
        tfm_tokenizer_destroy(t);
    }
    free(copy);
    free(b.data);
}

/* ---- the real llama2.c tokenizer ------------------------------------------- */

static void test_llama2c_real_vocab(void **state)
{
    (void)state;
    const char *path = tu_fixture("llama2c-tokenizer.bin");
    if (!path)
        skip();
    tfm_tokenizer *t = NULL;
    char err[256] = "";
    tfm_status s = tfm_tokenizer_load_llama2c(path, 32000, &t, err, sizeof err);
    if (s != TFM_OK)
        fail_msg("%s: %s", tfm_strerror(s), err);
    /* " Hello" is 15043 and " world" 3186: the dummy prefix merges in */
    check_encode(t, "Hello world", 1, 0, (int[]){1, 15043, 3186}, 3);
    check_encode(t, "Hello world", 1, 1, (int[]){1, 15043, 3186, 2}, 4);
    /* 29871 is the " " piece: alone when the next char does not merge */
    check_encode(t, "", 1, 0, (int[]){1}, 1);

    const char *texts[] = {
        "Hello world",
        "héllo wörld ✓",
        "Once upon a time, there was a little girl named Lily.\nShe liked to play.",
        "  two leading spaces, tabs\tand\r\nCRLF",
        "日本語のテキスト 😀 emoji",
        "bad \xFF\xFE utf-8 \xC3 and \x80 stray",
    };
    for (size_t k = 0; k < sizeof texts / sizeof texts[0]; k++) {
        int ids[256], n = 0;
        size_t len = strlen(texts[k]);
        assert_int_equal(tfm_tokenizer_encode(t, texts[k], len, 1, 0, ids, 256, &n), TFM_OK);
        assert_true(n <= (int)len + 2);
        char back[512];
        size_t blen = decode_all(t, ids, n, back, sizeof back);
        if (blen != len || memcmp(back, texts[k], len) != 0)
            fail_msg("round trip of \"%s\" gave \"%.*s\"", texts[k], (int)blen, back);
    }
    /* random bytes round trip too (with no "<0x" in them, which merges into
     * the byte token, as in run.c) */
    uint64_t rng = 5;
    for (int trial = 0; trial < 20; trial++) {
        char text[200], back[400];
        int ids[210], n = 0;
        for (int i = 0; i < 200; i++) {
            text[i] = (char)(tu_rng(&rng) & 0xFF);
            if (text[i] == '<')
                text[i] = '>';
        }
        assert_int_equal(tfm_tokenizer_encode(t, text, 200, 1, 0, ids, 210, &n), TFM_OK);
        size_t blen = decode_all(t, ids, n, back, sizeof back);
        assert_int_equal(blen, 200);
        assert_memory_equal(back, text, 200);
    }
    tfm_tokenizer_destroy(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_byte_round_trip_random_bytes),
        cmocka_unit_test(test_byte_encode_range),
        cmocka_unit_test(test_llama2c_merges_best_score_first),
        cmocka_unit_test(test_llama2c_empty_text_has_no_dummy_prefix),
        cmocka_unit_test(test_llama2c_utf8_and_byte_fallback),
        cmocka_unit_test(test_llama2c_decode_rules),
        cmocka_unit_test(test_llama2c_round_trip_after_bos),
        cmocka_unit_test(test_llama2c_encode_range),
        cmocka_unit_test(test_llama2c_rejects_every_truncation),
        cmocka_unit_test(test_llama2c_rejects_bad_lengths_and_counts),
        cmocka_unit_test(test_llama2c_survives_corruption),
        cmocka_unit_test(test_llama2c_real_vocab),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
