/*
 * fuzz_bpe_encode.c — the llama2.c (BPE) encoder on arbitrary bytes:
 * valid UTF-8, invalid UTF-8, NUL bytes.
 *
 * The vocabulary is built here, in memory, once: the 3 specials and 256
 * byte tokens every llama2.c vocabulary has, then printable ASCII, a few
 * multi-byte characters (and one cut-short sequence), common English
 * merges, pieces with NUL, a duplicate piece, tied scores, a NaN score
 * and one at run.c's -1e10 floor (neither may ever merge).  It goes
 * through tfm_tokenizer_load_llama2c_mem like any tokenizer.bin.
 *
 * Input: byte 0 chooses BOS, EOS and a truncated output size; the rest is
 * the text.  Promises checked (tfm/tokenizer.h):
 *   - the ids are run.c's (ref_bpe.h), for texts up to 192 bytes;
 *   - decoding the ids gives the text back byte for byte (this vocabulary
 *     has a " " piece and its only "<0xNN>" pieces are the byte tokens,
 *     so the dummy prefix is stripped after BOS and byte fallback is
 *     exact);
 *   - a size query (no ids) and a short output buffer report the same
 *     count, TFM_E_RANGE, and the first ids unchanged.
 */
#include "fuzz_util.h"
#include "ref_bpe.h"

#include "tfm/tokenizer.h"

#define MAX_PIECES 512

static tfm_tokenizer *tok;
static ref_vocab ref;
static const char *pieces[MAX_PIECES];
static int plens[MAX_PIECES];
static float pscores[MAX_PIECES];
static int n_pieces;
static char byte_names[256][8];

static void add(const char *s, int len, float score)
{
    if (n_pieces == MAX_PIECES)
        abort();
    pieces[n_pieces] = s, plens[n_pieces] = len, pscores[n_pieces] = score;
    n_pieces++;
}

static void adds(const char *s, float score)
{
    add(s, (int)strlen(s), score);
}

static const char *const merges[] = {
    "th", "he", "in", "er", "an", " t", " a", "the", " the", "ing", " th", "re", "on", "at",
    "en", "nd", "es", "or", "te", "of", " of", "ed", "is", "it", "al", "ar", "st", "to", "nt",
    "ng", "se", "ha", "as", "ou", "io", "le", "ve", "co", "me", "de", "hi", "ri", "ro", "ic",
    "ne", "ea", "ra", "ce", "li", "ch", "ll", "be", "ma", "si", "om", "ur", " i", " s", " w",
    "  ", "   ", "\n\n", "中文", " 中", "éé", "e\xcc\x81", "ab", "abc", "bc", "bcd", "cd",
    "aa", "aaa", "aaaa", "{\"", "\":", "\",", "\\n", "th" /* duplicate: id of the first wins */};

static void build(void)
{
    static char printable[128][2];
    adds("<unk>", 0), adds("\n<s>\n", 0), adds("\n</s>\n", 0);
    for (int b = 0; b < 256; b++) {
        snprintf(byte_names[b], sizeof byte_names[b], "<0x%02X>", b);
        adds(byte_names[b], 0);
    }
    adds(" ", -1);
    for (int c = 0x21; c < 0x7F; c++) {
        printable[c][0] = (char)c;
        add(printable[c], 1, -2 - (float)(c % 7)); /* ties among single characters */
    }
    adds("\n", -3), adds("\t", -3);
    adds("é", -4), adds("ü", -4), adds("ß", -4), adds("中", -4), adds("文", -4);
    adds("€", -4), adds("😀", -4), adds("\xF0\x9F\x98", -4); /* a cut-short sequence */
    add("\0", 1, -5), add("a\0", 2, -5), add("\0a", 2, -5);
    for (size_t i = 0; i < sizeof merges / sizeof *merges; i++)
        adds(merges[i], -10.0f - (float)(i / 3)); /* groups of three tie */
    adds("the ", __builtin_nanf(""));           /* NaN: never merges */
    adds("in ", -1e10f);                        /* run.c's floor: never merges */
    adds("ing ", __builtin_inff());

    /* as a tokenizer.bin: max_token_length, then (score, length, bytes) */
    size_t cap = 4;
    for (int i = 0; i < n_pieces; i++)
        cap += 8 + (size_t)plens[i];
    unsigned char *bin = malloc(cap), *p = bin;
    int32_t maxlen = 0;
    for (int i = 0; i < n_pieces; i++)
        maxlen = plens[i] > maxlen ? plens[i] : maxlen;
    memcpy(p, &maxlen, 4), p += 4;
    for (int i = 0; i < n_pieces; i++) {
        int32_t l = plens[i];
        memcpy(p, &pscores[i], 4), memcpy(p + 4, &l, 4), p += 8;
        memcpy(p, pieces[i], (size_t)l), p += l;
    }
    char err[256] = "";
    if (tfm_tokenizer_load_llama2c_mem(bin, cap, n_pieces, &tok, err, sizeof err) != TFM_OK ||
        ref_vocab_init(&ref, n_pieces, pieces, plens, pscores) != 0) {
        fprintf(stderr, "fuzz_bpe_encode: vocabulary: %s\n", err);
        abort();
    }
    free(bin);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!tok)
        build();
    if (size == 0)
        return 0;
    int bos = data[0] & 1, eos = data[0] >> 1 & 1;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;

    int n = -1;
    FUZZ_CHECK(tfm_tokenizer_encode(tok, text, len, bos, eos, NULL, 0, &n) ==
                   (len + bos + eos ? TFM_E_RANGE : TFM_OK),
               "size query");
    int *ids = malloc((len + 3) * sizeof *ids);
    int got = -1;
    FUZZ_CHECK(tfm_tokenizer_encode(tok, text, len, bos, eos, ids, (int)len + 3, &got) == TFM_OK,
               "encode");
    FUZZ_CHECK(got == n, "size query said %d, encode gave %d", n, got);
    FUZZ_CHECK(got <= (int)len + bos + eos + 1, "%d ids for %zu bytes", got, len);

    if (len <= 192) {
        int *want = malloc((len + 3) * sizeof *want);
        int wn = ref_encode(&ref, text, len, bos, eos, want);
        FUZZ_CHECK(wn == got, "run.c gives %d ids, the core %d", wn, got);
        for (int i = 0; i < got; i++)
            FUZZ_CHECK(want[i] == ids[i], "id %d: run.c %d, the core %d", i, want[i], ids[i]);
        free(want);
    }

    /* decode: the text again, after BOS without the dummy space */
    char *out = malloc(len + 8);
    size_t olen = 0;
    for (int i = 0; i < got; i++) {
        const char *piece;
        size_t pl;
        FUZZ_CHECK(tfm_tokenizer_decode(tok, i ? ids[i - 1] : -1, ids[i], &piece, &pl) == TFM_OK,
                   "decode id %d", ids[i]);
        FUZZ_CHECK(olen + pl <= len + 8, "decoded text longer than the input");
        memcpy(out + olen, piece, pl);
        olen += pl;
    }
    size_t lead = len > 0 && !bos; /* the dummy prefix stays without BOS */
    FUZZ_CHECK(olen == len + lead, "decoded %zu bytes of %zu", olen, len);
    FUZZ_CHECK(!lead || out[0] == ' ', "the dummy prefix is not a space");
    FUZZ_CHECK(memcmp(out + lead, text, len) == 0, "decoded text differs");
    free(out);

    /* a short buffer: the count, TFM_E_RANGE, the first ids */
    int k = got > 0 ? (int)(data[0] >> 2) % got : 0;
    if (k < got) {
        int *part = malloc(((size_t)k + 1) * sizeof *part);
        int pn = -1;
        FUZZ_CHECK(tfm_tokenizer_encode(tok, text, len, bos, eos, part, k, &pn) == TFM_E_RANGE,
                   "short buffer of %d for %d ids", k, got);
        FUZZ_CHECK(pn == got, "short buffer: count %d, want %d", pn, got);
        FUZZ_CHECK(memcmp(part, ids, (size_t)k * sizeof *ids) == 0, "short buffer: other ids");
        free(part);
    }
    free(ids);
    return 0;
}
