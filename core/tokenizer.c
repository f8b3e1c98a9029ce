/*
 * tokenizer.c — byte and llama2.c tokenizers (see tfm/tokenizer.h).
 *
 * Byte: ids are the bytes; nothing to load, nothing to merge.
 *
 * llama2c: the whole tokenizer.bin is parsed into owned buffers at load:
 *   scores  (vocab_size)    float32 merge priority of each piece
 *   offs    (vocab_size+1)  piece i is blob[offs[i] .. offs[i+1])
 *   blob                    all piece bytes back to back
 *   index   (vocab_size)    pieces sorted by bytes, for binary search
 * Pieces are compared as byte strings with a length, not as C strings, so
 * text with NUL bytes works; for files without NULs in pieces (every real
 * one) this orders and matches exactly as run.c's strcmp does.  Duplicate
 * pieces resolve to the lowest id (run.c's bsearch picks an unspecified one).
 *
 * Encoding gives the same ids as run.c's encode().  run.c rescans all pairs
 * after every merge (quadratic in the text, with a lookup per pair); here the
 * candidate pairs live in a max-heap ordered by (score, position) over a
 * linked list of tokens, so each merge costs O(log n) plus two lookups.  The
 * result is the same because run.c picks the highest score and, on equal
 * scores, the leftmost pair, and a node's index (its first byte's position)
 * orders the list the same way for as long as it lives.  Stale heap entries
 * are recognised by per-node version counters and skipped.
 *
 * Where run.c would crash, this file does something defined instead: a vocab
 * without a " " piece gets the byte token for the dummy prefix, and the
 * loader rejects vocabularies too small for the 256 byte tokens (ids 3..258)
 * that byte fallback emits.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tfm/tokenizer.h"

#define L2C_BOS 1
#define L2C_EOS 2
#define L2C_BYTE0 3 /* <0x00> .. <0xFF> are ids 3 .. 258 */
#define L2C_MIN_VOCAB (L2C_BYTE0 + 256)
/* run.c starts its best score at -1e10, so pairs scoring no more never merge. */
#define L2C_NO_MERGE (-1e10f)
/* Refuse to slurp absurd files; the real one is 434 KB. */
#define L2C_MAX_FILE ((long)1 << 30)

typedef struct piece_ref {
    const char *str; /* into blob */
    int len;
    int id;
} piece_ref;

struct tfm_tokenizer {
    tfm_tokenizer_kind kind;
    int vocab_size;
    int max_len;           /* longest piece in bytes (llama2c) */
    float *scores;         /* (vocab_size) */
    size_t *offs;          /* (vocab_size + 1) */
    char *blob;            /* piece bytes */
    piece_ref *index;      /* (vocab_size) sorted by piece bytes, then id */
    char bytes[256];       /* bytes[b] == b: what byte tokens decode to */
};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static tfm_tokenizer *tokenizer_alloc(tfm_tokenizer_kind kind, int vocab_size)
{
    tfm_tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->kind = kind;
    t->vocab_size = vocab_size;
    for (int b = 0; b < 256; b++)
        t->bytes[b] = (char)b;
    return t;
}

tfm_status tfm_tokenizer_create_byte(tfm_tokenizer **out)
{
    if (!out)
        return TFM_E_INVALID;
    *out = tokenizer_alloc(TFM_TOKENIZER_BYTE, TFM_BYTE_VOCAB);
    return *out ? TFM_OK : TFM_E_NOMEM;
}

void tfm_tokenizer_destroy(tfm_tokenizer *t)
{
    if (!t)
        return;
    free(t->scores);
    free(t->offs);
    free(t->blob);
    free(t->index);
    free(t);
}

/* ---- llama2c loading ------------------------------------------------------ */

/* The file is little-endian whatever the host. */
static uint32_t rd_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int32_t rd_i32(const unsigned char *p)
{
    uint32_t u = rd_u32(p);
    int32_t v;
    memcpy(&v, &u, sizeof v);
    return v;
}

static float rd_f32(const unsigned char *p)
{
    uint32_t u = rd_u32(p);
    float v;
    memcpy(&v, &u, sizeof v);
    return v;
}

/* Byte-string order; equal to strcmp's for strings without NUL. */
static int piece_cmp(const char *a, int alen, const char *b, int blen)
{
    int n = alen < blen ? alen : blen;
    int c = n > 0 ? memcmp(a, b, (size_t)n) : 0;
    if (c != 0)
        return c;
    return (alen > blen) - (alen < blen);
}

static int piece_ref_cmp(const void *pa, const void *pb)
{
    const piece_ref *a = pa, *b = pb;
    int c = piece_cmp(a->str, a->len, b->str, b->len);
    return c != 0 ? c : (a->id > b->id) - (a->id < b->id);
}

/* The id of the piece equal to s[0..len), the lowest if several, or -1. */
static int lookup(const tfm_tokenizer *t, const char *s, int len)
{
    int lo = 0, hi = t->vocab_size; /* first index whose piece is >= s */
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        const piece_ref *r = &t->index[mid];
        if (piece_cmp(r->str, r->len, s, len) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < t->vocab_size && piece_cmp(t->index[lo].str, t->index[lo].len, s, len) == 0)
        return t->index[lo].id;
    return -1;
}

tfm_status tfm_tokenizer_load_llama2c_mem(const void *buf, size_t len, int vocab_size,
                                          tfm_tokenizer **out, char *err, size_t errlen)
{
    const unsigned char *p = buf;
    tfm_tokenizer *t = NULL;
    tfm_status st = TFM_E_NOMEM;

    if (err && errlen > 0)
        err[0] = '\0';
    if (!out || (!buf && len > 0)) {
        set_err(err, errlen, "invalid argument");
        return TFM_E_INVALID;
    }
    *out = NULL;
    if (vocab_size < L2C_MIN_VOCAB) {
        set_err(err, errlen,
                "vocab_size %d is too small: llama2c needs 3 special and 256 byte tokens",
                vocab_size);
        return TFM_E_INVALID;
    }
    if (len < 4) {
        set_err(err, errlen, "file of %zu bytes ends inside the max_token_length header", len);
        return TFM_E_TRUNCATED;
    }
    int32_t max_token_length = rd_i32(p);
    if (max_token_length < 0) {
        set_err(err, errlen, "max_token_length %d is negative", (int)max_token_length);
        return TFM_E_FORMAT;
    }
    /* Each token takes at least 8 bytes: reject a short file before
     * allocating vocab_size-sized arrays for it. */
    if ((len - 4) / 8 < (size_t)vocab_size) {
        set_err(err, errlen, "file of %zu bytes cannot hold %d tokens", len, vocab_size);
        return TFM_E_TRUNCATED;
    }

    t = tokenizer_alloc(TFM_TOKENIZER_LLAMA2C, vocab_size);
    if (!t)
        goto fail;
    size_t n = (size_t)vocab_size;
    t->scores = malloc(n * sizeof *t->scores);
    t->offs = malloc((n + 1) * sizeof *t->offs);
    t->blob = malloc(len); /* more than the piece bytes, which follow the header */
    t->index = malloc(n * sizeof *t->index);
    if (!t->scores || !t->offs || !t->blob || !t->index)
        goto fail;

    size_t off = 4, used = 0;
    for (int i = 0; i < vocab_size; i++) {
        if (len - off < 8) {
            set_err(err, errlen, "file ends in the header of token %d of %d", i, vocab_size);
            st = TFM_E_TRUNCATED;
            goto fail;
        }
        float score = rd_f32(p + off);
        int32_t plen = rd_i32(p + off + 4);
        off += 8;
        if (plen < 0) {
            set_err(err, errlen, "token %d has a negative length %d", i, (int)plen);
            st = TFM_E_FORMAT;
            goto fail;
        }
        if (plen > max_token_length) {
            set_err(err, errlen, "token %d has length %d, more than max_token_length %d", i,
                    (int)plen, (int)max_token_length);
            st = TFM_E_FORMAT;
            goto fail;
        }
        if ((size_t)plen > len - off) {
            set_err(err, errlen, "token %d of length %d runs past the end of the file", i,
                    (int)plen);
            st = TFM_E_TRUNCATED;
            goto fail;
        }
        t->scores[i] = score;
        t->offs[i] = used;
        memcpy(t->blob + used, p + off, (size_t)plen);
        used += (size_t)plen;
        off += (size_t)plen;
        if (plen > t->max_len)
            t->max_len = plen;
    }
    t->offs[n] = used;
    if (off != len) {
        set_err(err, errlen,
                "%zu bytes left after %d tokens: the file has more tokens than the model",
                len - off, vocab_size);
        st = TFM_E_FORMAT;
        goto fail;
    }

    for (int i = 0; i < vocab_size; i++) {
        t->index[i].str = t->blob + t->offs[i];
        t->index[i].len = (int)(t->offs[i + 1] - t->offs[i]);
        t->index[i].id = i;
    }
    qsort(t->index, n, sizeof *t->index, piece_ref_cmp);
    *out = t;
    return TFM_OK;

fail:
    if (st == TFM_E_NOMEM)
        set_err(err, errlen, "out of memory loading %d tokens", vocab_size);
    tfm_tokenizer_destroy(t);
    return st;
}

tfm_status tfm_tokenizer_load_llama2c(const char *path, int vocab_size, tfm_tokenizer **out,
                                      char *err, size_t errlen)
{
    if (err && errlen > 0)
        err[0] = '\0';
    if (!path || !out) {
        set_err(err, errlen, "invalid argument");
        return TFM_E_INVALID;
    }
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        return TFM_E_IO;
    }
    unsigned char *buf = NULL;
    tfm_status st = TFM_E_IO;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) {
        set_err(err, errlen, "%s: cannot determine the file size", path);
        goto done;
    }
    if (size > L2C_MAX_FILE) {
        set_err(err, errlen, "%s: %ld bytes is too large for a tokenizer", path, size);
        st = TFM_E_FORMAT;
        goto done;
    }
    buf = malloc((size_t)size + 1);
    if (!buf) {
        set_err(err, errlen, "%s: out of memory", path);
        st = TFM_E_NOMEM;
        goto done;
    }
    if (fread(buf, 1, (size_t)size, f) != (size_t)size) {
        set_err(err, errlen, "%s: read error", path);
        goto done;
    }
    st = tfm_tokenizer_load_llama2c_mem(buf, (size_t)size, vocab_size, out, err, errlen);
done:
    free(buf);
    fclose(f);
    return st;
}

/* ---- accessors ------------------------------------------------------------ */

tfm_tokenizer_kind tfm_tokenizer_kind_of(const tfm_tokenizer *t)
{
    return t->kind;
}

int tfm_tokenizer_vocab_size(const tfm_tokenizer *t)
{
    return t->vocab_size;
}

int tfm_tokenizer_bos(const tfm_tokenizer *t)
{
    return t->kind == TFM_TOKENIZER_BYTE ? TFM_BYTE_BOS : L2C_BOS;
}

int tfm_tokenizer_eos(const tfm_tokenizer *t)
{
    return t->kind == TFM_TOKENIZER_BYTE ? TFM_BYTE_EOS : L2C_EOS;
}

/* ---- llama2c encoding ----------------------------------------------------- */

typedef struct merge_cand {
    float score;
    int left, right; /* node indices of the pair */
    int id;          /* the merged piece */
    unsigned ver_left, ver_right;
} merge_cand;

typedef struct merge_state {
    const tfm_tokenizer *t;
    int *tok;       /* (n) token of each node, -1 once merged away */
    int *next;      /* (n) following live node or -1 */
    int *prev;      /* (n) preceding live node or -1 */
    unsigned *ver;  /* (n) bumped whenever tok changes */
    merge_cand *heap; /* (3n) */
    int heap_n;
    char *buf;      /* (2 * max_len + 1) concatenation of a pair */
} merge_state;

/* Whether a pops before b: higher score, then the leftmost pair. */
static int cand_before(const merge_cand *a, const merge_cand *b)
{
    if (a->score != b->score)
        return a->score > b->score;
    return a->left < b->left;
}

static void heap_push(merge_state *m, merge_cand c)
{
    int i = m->heap_n++;
    while (i > 0) {
        int parent = (i - 1) / 2;
        if (!cand_before(&c, &m->heap[parent]))
            break;
        m->heap[i] = m->heap[parent];
        i = parent;
    }
    m->heap[i] = c;
}

static merge_cand heap_pop(merge_state *m)
{
    merge_cand top = m->heap[0];
    merge_cand last = m->heap[--m->heap_n];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= m->heap_n)
            break;
        if (c + 1 < m->heap_n && cand_before(&m->heap[c + 1], &m->heap[c]))
            c++;
        if (!cand_before(&m->heap[c], &last))
            break;
        m->heap[i] = m->heap[c];
        i = c;
    }
    if (m->heap_n > 0)
        m->heap[i] = last;
    return top;
}

/* Queues the pair (left, right) if their concatenation is a piece that may
 * merge. */
static void consider_pair(merge_state *m, int left, int right)
{
    if (left < 0 || right < 0)
        return;
    const tfm_tokenizer *t = m->t;
    int a = m->tok[left], b = m->tok[right];
    size_t alen = t->offs[a + 1] - t->offs[a], blen = t->offs[b + 1] - t->offs[b];
    memcpy(m->buf, t->blob + t->offs[a], alen);
    memcpy(m->buf + alen, t->blob + t->offs[b], blen);
    int id = lookup(t, m->buf, (int)(alen + blen));
    if (id < 0 || !(t->scores[id] > L2C_NO_MERGE)) /* NaN scores never merge */
        return;
    merge_cand c = {t->scores[id], left, right, id, m->ver[left], m->ver[right]};
    heap_push(m, c);
}

/* Merges tok[0..*n) in place, as run.c's merge loop does. */
static tfm_status merge_pairs(const tfm_tokenizer *t, int *tok, int *n)
{
    int count = *n;
    if (count < 2)
        return TFM_OK;
    merge_state m = {.t = t, .tok = tok};
    m.next = malloc((size_t)count * sizeof *m.next);
    m.prev = malloc((size_t)count * sizeof *m.prev);
    m.ver = calloc((size_t)count, sizeof *m.ver);
    /* n-1 initial pairs, at most two new ones per merge, at most n-1 merges */
    m.heap = malloc(3 * (size_t)count * sizeof *m.heap);
    m.buf = malloc(2 * (size_t)t->max_len + 1);
    tfm_status st = TFM_E_NOMEM;
    if (!m.next || !m.prev || !m.ver || !m.heap || !m.buf)
        goto done;

    for (int i = 0; i < count; i++) {
        m.next[i] = i + 1 < count ? i + 1 : -1;
        m.prev[i] = i - 1;
    }
    for (int i = 0; i + 1 < count; i++)
        consider_pair(&m, i, i + 1);
    while (m.heap_n > 0) {
        merge_cand c = heap_pop(&m);
        if (tok[c.left] < 0 || tok[c.right] < 0 || m.next[c.left] != c.right ||
            m.ver[c.left] != c.ver_left || m.ver[c.right] != c.ver_right)
            continue; /* a neighbour changed since it was queued */
        /* The right node is absorbed, so node 0 stays the head. */
        tok[c.left] = c.id;
        m.ver[c.left]++;
        tok[c.right] = -1;
        m.next[c.left] = m.next[c.right];
        if (m.next[c.right] >= 0)
            m.prev[m.next[c.right]] = c.left;
        consider_pair(&m, m.prev[c.left], c.left);
        consider_pair(&m, c.left, m.next[c.left]);
    }
    int k = 0;
    for (int i = 0; i >= 0; i = m.next[i])
        tok[k++] = tok[i]; /* k <= i: compaction in place is safe */
    *n = k;
    st = TFM_OK;
done:
    free(m.next);
    free(m.prev);
    free(m.ver);
    free(m.heap);
    free(m.buf);
    return st;
}

/* Writes the tokens of text (before EOS) to tok, which holds len + 2. */
static tfm_status encode_llama2c(const tfm_tokenizer *t, const char *text, size_t len, int bos,
                                 int *tok, int *n_out)
{
    int n = 0;
    if (bos)
        tok[n++] = L2C_BOS;
    if (len > 0) {
        /* SentencePiece's add_dummy_prefix: text starts as if after a space. */
        int space = lookup(t, " ", 1);
        tok[n++] = space >= 0 ? space : L2C_BYTE0 + ' ';
    }
    for (size_t i = 0; i < len;) {
        /* One code point: this byte and up to three continuation bytes.  Like
         * run.c, this does not check the lead byte, so invalid UTF-8 forms
         * short groups that fall back to bytes. */
        int cl = 1;
        while (cl < 4 && i + (size_t)cl < len && ((unsigned char)text[i + cl] & 0xC0) == 0x80)
            cl++;
        int id = lookup(t, text + i, cl);
        if (id >= 0) {
            tok[n++] = id;
        } else {
            for (int k = 0; k < cl; k++)
                tok[n++] = L2C_BYTE0 + (unsigned char)text[i + k];
        }
        i += (size_t)cl;
    }
    tfm_status st = merge_pairs(t, tok, &n);
    *n_out = n;
    return st;
}

tfm_status tfm_tokenizer_encode(const tfm_tokenizer *t, const char *text, size_t len, int bos,
                                int eos, int *ids, int max_ids, int *n_ids)
{
    if (n_ids)
        *n_ids = 0;
    if (!t || !n_ids || (!text && len > 0) || max_ids < 0 || (!ids && max_ids > 0))
        return TFM_E_INVALID;
    if (len > (size_t)INT_MAX - 3) { /* the count would not fit an int */
        *n_ids = INT_MAX;
        return TFM_E_RANGE;
    }
    int n = 0;
    if (t->kind == TFM_TOKENIZER_BYTE) {
        n = (int)len + (bos != 0) + (eos != 0);
        int k = 0;
        if (bos && k < max_ids)
            ids[k++] = TFM_BYTE_BOS;
        for (size_t i = 0; i < len && k < max_ids; i++)
            ids[k++] = (unsigned char)text[i];
        if (eos && k < max_ids && k == n - 1)
            ids[k++] = TFM_BYTE_EOS;
    } else {
        int *tok = malloc((len + 3) * sizeof *tok);
        if (!tok)
            return TFM_E_NOMEM;
        tfm_status st = encode_llama2c(t, text, len, bos, tok, &n);
        if (st != TFM_OK) {
            free(tok);
            return st;
        }
        if (eos)
            tok[n++] = L2C_EOS; /* after merging, as run.c */
        if (max_ids > 0) /* ids may be NULL for a size query */
            memcpy(ids, tok, (size_t)(n < max_ids ? n : max_ids) * sizeof *ids);
        free(tok);
    }
    *n_ids = n;
    return n > max_ids ? TFM_E_RANGE : TFM_OK;
}

/* ---- decoding ------------------------------------------------------------- */

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

tfm_status tfm_tokenizer_decode(const tfm_tokenizer *t, int prev, int id, const char **piece,
                                size_t *len)
{
    if (!t || !piece || !len || id < 0 || id >= t->vocab_size)
        return TFM_E_INVALID;
    if (t->kind == TFM_TOKENIZER_BYTE) {
        *piece = id < 256 ? &t->bytes[id] : "";
        *len = id < 256 ? 1 : 0;
        return TFM_OK;
    }
    if (id == L2C_BOS || id == L2C_EOS) {
        *piece = "";
        *len = 0;
        return TFM_OK;
    }
    const char *s = t->blob + t->offs[id];
    size_t n = t->offs[id + 1] - t->offs[id];
    /* SentencePiece drops the dummy-prefix space at the start of a text. */
    if (prev == L2C_BOS && n > 0 && s[0] == ' ') {
        s++;
        n--;
    }
    if (n == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>') {
        int hi = hex_digit(s[3]), lo = hex_digit(s[4]);
        if (hi >= 0 && lo >= 0) {
            *piece = &t->bytes[hi * 16 + lo];
            *len = 1;
            return TFM_OK;
        }
    }
    *piece = s;
    *len = n;
    return TFM_OK;
}
