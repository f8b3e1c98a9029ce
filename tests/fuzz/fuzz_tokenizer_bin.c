/*
 * fuzz_tokenizer_bin.c — tfm_tokenizer_load_llama2c_mem on arbitrary
 * bytes read as a tokenizer.bin (int32 max_token_length, then per token
 * float32 score, int32 length, bytes).
 *
 * The loader needs the vocabulary size (the model's); here it is the
 * number of tokens the bytes hold, counted the way the format reads, so
 * that every well-formed file loads (at least 259: the specials and the
 * byte tokens).  Checked: no crash, leak or undefined behaviour; errors
 * are documented statuses with a message; one token more or fewer than
 * the file holds is refused; a loaded tokenizer decodes every id and
 * encodes text (the last 256 bytes of the input, so its own pieces
 * occur) to run.c's ids (ref_bpe.h), whatever the pieces and scores.
 */
#include "fuzz_util.h"
#include "ref_bpe.h"

#include "tfm/tokenizer.h"

static int32_t rd_i32(const uint8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4); /* little-endian host, as the loader assumes for floats */
    return v;
}

static int documented(tfm_status st)
{
    return st == TFM_E_TRUNCATED || st == TFM_E_FORMAT || st == TFM_E_INVALID ||
           st == TFM_E_NOMEM;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* count the tokens a reader of the format would see */
    int count = 0;
    size_t off = 4;
    while (size >= 4 && size - off >= 8 && count < 1 << 20) {
        int32_t l = rd_i32(data + off + 4);
        if (l < 0 || (size_t)l > size - off - 8)
            break;
        off += 8 + (size_t)l;
        count++;
    }
    int vocab = count >= 259 ? count : 259;
    char err[512] = "";
    tfm_tokenizer *t = NULL;
    tfm_status st = tfm_tokenizer_load_llama2c_mem(data, size, vocab, &t, err, sizeof err);
    if (st != TFM_OK) {
        FUZZ_CHECK(t == NULL, "a failed load returned a tokenizer");
        FUZZ_CHECK(documented(st), "status %d (%s)", (int)st, err);
        FUZZ_CHECK(err[0] != 0, "status %d without a message", (int)st);
        return 0;
    }
    FUZZ_CHECK(off == size && count == vocab, "loaded %d tokens, %zu of %zu bytes", vocab, off,
               size);
    FUZZ_CHECK(tfm_tokenizer_vocab_size(t) == vocab, "vocab size");
    tfm_tokenizer *other = NULL;
    FUZZ_CHECK(tfm_tokenizer_load_llama2c_mem(data, size, vocab + 1, &other, err, sizeof err) ==
                   TFM_E_TRUNCATED,
               "one token more than the file holds");
    if (vocab > 259)
        FUZZ_CHECK(tfm_tokenizer_load_llama2c_mem(data, size, vocab - 1, &other, err,
                                                  sizeof err) == TFM_E_FORMAT,
                   "one token fewer than the file holds");

    /* the pieces, for the oracle and the decode check */
    const char **pieces = malloc((size_t)vocab * sizeof *pieces);
    int *lens = malloc((size_t)vocab * sizeof *lens);
    float *scores = malloc((size_t)vocab * sizeof *scores);
    off = 4;
    for (int i = 0; i < vocab; i++) {
        memcpy(&scores[i], data + off, 4);
        lens[i] = rd_i32(data + off + 4);
        pieces[i] = (const char *)data + off + 8;
        off += 8 + (size_t)lens[i];
    }
    for (int id = 0; id < vocab; id++) {
        const char *piece;
        size_t pl;
        FUZZ_CHECK(tfm_tokenizer_decode(t, -1, id, &piece, &pl) == TFM_OK, "decode %d", id);
        FUZZ_CHECK(pl <= (size_t)lens[id], "id %d decodes to more than its piece", id);
        FUZZ_CHECK(tfm_tokenizer_decode(t, 1, id, &piece, &pl) == TFM_OK, "decode %d after BOS",
                   id);
    }
    const char *piece;
    size_t pl;
    FUZZ_CHECK(tfm_tokenizer_decode(t, -1, vocab, &piece, &pl) == TFM_E_INVALID, "id = vocab");

    size_t len = size < 256 ? size : 256;
    const char *text = (const char *)data + size - len;
    int *ids = malloc((len + 3) * sizeof *ids), *want = malloc((len + 3) * sizeof *want);
    int n = -1;
    FUZZ_CHECK(tfm_tokenizer_encode(t, text, len, 1, 1, ids, (int)len + 3, &n) == TFM_OK,
               "encode");
    ref_vocab ref;
    FUZZ_CHECK(ref_vocab_init(&ref, vocab, pieces, lens, scores) == 0, "out of memory");
    int wn = ref_encode(&ref, text, len, 1, 1, want);
    FUZZ_CHECK(wn == n, "run.c gives %d ids, the core %d", wn, n);
    for (int i = 0; i < n; i++)
        FUZZ_CHECK(want[i] == ids[i], "id %d: run.c %d, the core %d", i, want[i], ids[i]);
    ref_vocab_deinit(&ref);
    free(ids), free(want), free(pieces), free(lens), free(scores);
    tfm_tokenizer_destroy(t);
    return 0;
}
