/*
 * tfm/tokenizer.h — text to token ids and back.
 *
 * Two kinds:
 *   byte     ids 0..255 are the bytes themselves, 256 is BOS, 257 is EOS
 *            (vocab 258); any byte string round-trips exactly.  Models
 *            trained here use it.
 *   llama2c  llama2.c's tokenizer.bin: int32 max_token_length, then per token
 *            float32 score, int32 length, bytes.  Encoding follows run.c
 *            exactly: optional BOS (id 1), a dummy-prefix space token when the
 *            text is not empty (the leading-space rule), each UTF-8 code point
 *            looked up as a token or else emitted as byte tokens <0xNN> (id
 *            byte + 3), then repeatedly merge the adjacent pair whose merged
 *            string is a token with the highest score.  Decoding strips the
 *            leading space of a piece that follows BOS and turns <0xNN> into
 *            the raw byte.
 *
 * A tokenizer is immutable after creation and may be shared by threads.
 * Encode allocates its scratch per call (it is not on the per-token path).
 */
#ifndef TFM_TOKENIZER_H
#define TFM_TOKENIZER_H

#include <stddef.h>

#include "tfm/model.h"
#include "tfm/status.h"

typedef struct tfm_tokenizer tfm_tokenizer;

#define TFM_BYTE_BOS 256
#define TFM_BYTE_EOS 257
#define TFM_BYTE_VOCAB 258

tfm_status tfm_tokenizer_create_byte(tfm_tokenizer **out);

/* Loads a tokenizer.bin of exactly vocab_size tokens (the model's).  A
 * truncated or malformed file gives TFM_E_TRUNCATED or TFM_E_FORMAT with a
 * message naming the problem in err (may be NULL). */
tfm_status tfm_tokenizer_load_llama2c(const char *path, int vocab_size, tfm_tokenizer **out,
                                      char *err, size_t errlen);
/* Same, from memory (len bytes at buf, copied). */
tfm_status tfm_tokenizer_load_llama2c_mem(const void *buf, size_t len, int vocab_size,
                                          tfm_tokenizer **out, char *err, size_t errlen);
void tfm_tokenizer_destroy(tfm_tokenizer *t); /* NULL is a no-op */

tfm_tokenizer_kind tfm_tokenizer_kind_of(const tfm_tokenizer *t);
int tfm_tokenizer_vocab_size(const tfm_tokenizer *t);
int tfm_tokenizer_bos(const tfm_tokenizer *t); /* 256 byte, 1 llama2c */
int tfm_tokenizer_eos(const tfm_tokenizer *t); /* 257 byte, 2 llama2c */

/* Encodes len bytes of text (any bytes; invalid UTF-8 falls back to byte
 * tokens).  bos/eos non-zero add those tokens.  Writes at most max_ids ids;
 * *n_ids receives the number the text needs, and TFM_E_RANGE is returned
 * when that exceeds max_ids. */
tfm_status tfm_tokenizer_encode(const tfm_tokenizer *t, const char *text, size_t len, int bos,
                                int eos, int *ids, int max_ids, int *n_ids);

/* The bytes that token id adds to the text when it follows token prev
 * (-1 for none).  *piece points into the tokenizer (valid for its
 * lifetime), *len its length; BOS and EOS decode to "".  TFM_E_INVALID for an
 * id out of range. */
tfm_status tfm_tokenizer_decode(const tfm_tokenizer *t, int prev, int id, const char **piece,
                                size_t *len);

#endif /* TFM_TOKENIZER_H */
