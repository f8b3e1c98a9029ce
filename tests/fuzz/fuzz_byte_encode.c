/*
 * fuzz_byte_encode.c — the byte tokenizer on arbitrary bytes.
 *
 * tfm/tokenizer.h: "ids 0..255 are the bytes themselves, 256 is BOS, 257
 * is EOS; any byte string round-trips exactly."  Input: byte 0 chooses
 * BOS, EOS and a truncated output size; the rest is the text.  Checked:
 * the ids are the bytes (between the optional BOS and EOS), decoding
 * them gives the text back, every id decodes, and a short output buffer
 * gives TFM_E_RANGE, the full count and the first ids.
 */
#include "fuzz_util.h"

#include "tfm/tokenizer.h"

static tfm_tokenizer *tok;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!tok && tfm_tokenizer_create_byte(&tok) != TFM_OK)
        abort();
    if (size == 0)
        return 0;
    int bos = data[0] & 1, eos = data[0] >> 1 & 1;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    int want = (int)len + bos + eos;

    int *ids = malloc(((size_t)want + 1) * sizeof *ids);
    int n = -1;
    FUZZ_CHECK(tfm_tokenizer_encode(tok, text, len, bos, eos, ids, want, &n) == TFM_OK,
               "encode");
    FUZZ_CHECK(n == want, "%d ids for %zu bytes", n, len);
    FUZZ_CHECK(!bos || ids[0] == TFM_BYTE_BOS, "no BOS");
    FUZZ_CHECK(!eos || ids[n - 1] == TFM_BYTE_EOS, "no EOS");
    char *out = malloc(len + 1);
    size_t olen = 0;
    for (int i = 0; i < n; i++) {
        if (i >= bos && i < bos + (int)len)
            FUZZ_CHECK(ids[i] == (unsigned char)text[i - bos], "id %d is %d", i, ids[i]);
        const char *piece;
        size_t pl;
        FUZZ_CHECK(tfm_tokenizer_decode(tok, i ? ids[i - 1] : -1, ids[i], &piece, &pl) == TFM_OK,
                   "decode %d", ids[i]);
        FUZZ_CHECK(olen + pl <= len, "decoded text too long");
        memcpy(out + olen, piece, pl);
        olen += pl;
    }
    FUZZ_CHECK(olen == len && memcmp(out, text, len) == 0, "round trip lost bytes");
    free(out);

    int k = n > 0 ? (int)(data[0] >> 2) % n : 0;
    if (k < n) {
        int *part = malloc(((size_t)k + 1) * sizeof *part);
        int pn = -1;
        FUZZ_CHECK(tfm_tokenizer_encode(tok, text, len, bos, eos, part, k, &pn) == TFM_E_RANGE,
                   "short buffer");
        FUZZ_CHECK(pn == n, "short buffer: count %d, want %d", pn, n);
        FUZZ_CHECK(memcmp(part, ids, (size_t)k * sizeof *ids) == 0, "short buffer: other ids");
        free(part);
    }
    free(ids);
    /* ids outside the vocabulary are refused, never read */
    const char *piece;
    size_t pl;
    FUZZ_CHECK(tfm_tokenizer_decode(tok, -1, TFM_BYTE_VOCAB, &piece, &pl) == TFM_E_INVALID, "258");
    FUZZ_CHECK(tfm_tokenizer_decode(tok, -1, -1, &piece, &pl) == TFM_E_INVALID, "-1");
    return 0;
}
