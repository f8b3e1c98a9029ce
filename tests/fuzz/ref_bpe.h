/*
 * ref_bpe.h — llama2.c's encode() (run.c) written out as plainly as run.c
 * does it, as the oracle for core/tokenizer.c's heap-based merge.
 *
 * tfm/tokenizer.h promises that encoding "follows run.c exactly"; the
 * core gets there with a max-heap over a linked list, this with run.c's
 * quadratic rescan after every merge.  Where run.c relies on C strings
 * and an unspecified bsearch hit, this follows the header: pieces are
 * byte strings with a length (NUL bytes allowed) and a piece that occurs
 * twice resolves to its lowest id.  Lookups go through a hash table, so
 * that the oracle shares no search code with what it checks.  Quadratic:
 * the targets call it on short texts only.
 */
#ifndef ATTND_REF_BPE_H
#define ATTND_REF_BPE_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct ref_vocab {
    int n;
    const char **piece; /* (n) borrowed */
    const int *len;     /* (n) */
    const float *score; /* (n) */
    int *slot;          /* (cap) hash table of ids, -1 empty */
    size_t cap;
} ref_vocab;

static inline uint64_t ref_hash(const char *s, int len)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (int i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

/* Builds the table; 0 ok, -1 out of memory. */
static inline int ref_vocab_init(ref_vocab *v, int n, const char **piece, const int *len,
                          const float *score)
{
    v->n = n, v->piece = piece, v->len = len, v->score = score;
    v->cap = 16;
    while (v->cap < 2 * (size_t)n)
        v->cap *= 2;
    v->slot = malloc(v->cap * sizeof *v->slot);
    if (!v->slot)
        return -1;
    memset(v->slot, 0xff, v->cap * sizeof *v->slot);
    for (int id = 0; id < n; id++) { /* ascending ids: the first stored wins */
        size_t h = ref_hash(piece[id], len[id]) & (v->cap - 1);
        for (;; h = (h + 1) & (v->cap - 1)) {
            int o = v->slot[h];
            if (o < 0) {
                v->slot[h] = id;
                break;
            }
            if (len[o] == len[id] && !memcmp(piece[o], piece[id], (size_t)len[id]))
                break;
        }
    }
    return 0;
}

static inline void ref_vocab_deinit(ref_vocab *v)
{
    free(v->slot);
    v->slot = NULL;
}

static inline int ref_lookup(const ref_vocab *v, const char *s, int len)
{
    for (size_t h = ref_hash(s, len) & (v->cap - 1);; h = (h + 1) & (v->cap - 1)) {
        int o = v->slot[h];
        if (o < 0)
            return -1;
        if (v->len[o] == len && !memcmp(v->piece[o], s, (size_t)len))
            return o;
    }
}

/* run.c's encode: tok must hold len + 3; returns the count, -1 out of
 * memory.  BOS is 1, EOS 2, byte b is b + 3. */
static inline int ref_encode(const ref_vocab *v, const char *text, size_t len, int bos, int eos,
                      int *tok)
{
    int maxp = 1;
    for (int i = 0; i < v->n; i++)
        if (v->len[i] > maxp)
            maxp = v->len[i];
    char *buf = malloc(2 * (size_t)maxp + 4);
    if (!buf)
        return -1;
    int n = 0;
    if (bos)
        tok[n++] = 1;
    if (len > 0) {
        int dummy = ref_lookup(v, " ", 1);
        tok[n++] = dummy >= 0 ? dummy : 3 + ' ';
    }
    size_t str_len = 0;
    for (size_t c = 0; c < len; c++) {
        if (((unsigned char)text[c] & 0xC0) != 0x80)
            str_len = 0;
        buf[str_len++] = text[c];
        if (c + 1 < len && ((unsigned char)text[c + 1] & 0xC0) == 0x80 && str_len < 4)
            continue;
        int id = ref_lookup(v, buf, (int)str_len);
        if (id != -1) {
            tok[n++] = id;
        } else {
            for (size_t i = 0; i < str_len; i++)
                tok[n++] = (unsigned char)buf[i] + 3;
        }
        str_len = 0;
    }
    for (;;) {
        float best_score = -1e10f;
        int best_id = -1, best_idx = -1;
        for (int i = 0; i < n - 1; i++) {
            int a = tok[i], b = tok[i + 1];
            memcpy(buf, v->piece[a], (size_t)v->len[a]);
            memcpy(buf + v->len[a], v->piece[b], (size_t)v->len[b]);
            int id = ref_lookup(v, buf, v->len[a] + v->len[b]);
            if (id != -1 && v->score[id] > best_score) {
                best_score = v->score[id];
                best_id = id;
                best_idx = i;
            }
        }
        if (best_idx == -1)
            break;
        tok[best_idx] = best_id;
        for (int i = best_idx + 1; i < n - 1; i++)
            tok[i] = tok[i + 1];
        n--;
    }
    if (eos)
        tok[n++] = 2;
    free(buf);
    return n;
}

#endif
