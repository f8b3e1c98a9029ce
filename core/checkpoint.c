/*
 * checkpoint.c — model files: safetensors and llama2.c's legacy .bin (see
 * tfm/checkpoint.h).  The one core file that includes <jansson.h>.
 *
 * Layout.  model.c keeps every weight in one float array in llama2.c's order
 * (embedding, then each per-layer kind stacked over the layers, rms_final,
 * wcls).  A safetensors file names one tensor per layer; "slot" numbers them
 * kind-major (0 the embedding, 1 + k*L + layer the per-layer kinds, 9L+1 the
 * final norm, 9L+2 the classifier when not shared), which is exactly the
 * order of the data array.  So a file we write has its data section equal
 * to model->data byte for byte, and each tensor of any file we read is
 * copied straight into its slice with one fread.  A llama2.c body is the
 * same array with the RoPE tables (cos, then sin) between rms_final and
 * wcls: two reads around a skip.
 *
 * Hostile input.  tfm_config_validate bounds every shape (so no size product
 * overflows), the file must be long enough for the config before the model
 * is allocated, the header length is capped (HEADER_MAX), and each tensor's
 * offsets are checked against its shape and the file size before reading.
 * Errors name the key or tensor: TFM_E_FORMAT (malformed), TFM_E_TRUNCATED
 * (data past the end), TFM_E_SHAPE, TFM_E_UNSUPPORTED (a dtype other than the
 * tensor's: F32, or a quantised model's).
 *
 * Writes go to "<path>.tmp.<pid>" in the same directory: big fwrites,
 * fflush, fsync, fclose, rename over path, then fsync of the directory so the
 * rename itself is durable.  Any failure removes the temporary file.  Two
 * threads of one process must not save to the same path at once (they would
 * share the temporary name).
 *
 * Linear-attention layers (model_mixer.c) add "mixer" ("softmax" when
 * absent, "linear", or a word per layer) and "feature_dim" to the metadata
 * and a tensor layers.{l}.attn.feature (f, head_size) per linear layer: the
 * slots after the classifier, in layer order, as wfeat follows wcls in the
 * data array.  Files of softmax models do not name them (they are as
 * before).  llama2.c files cannot hold them.
 *
 * Quantised models (m->q, "weights" in the metadata) keep the same names
 * but other dtypes and extra ".scales" tensors: checkpoint_quant.c lists
 * them (tfm__qckpt_plan, each with its bytes in the model), and the same
 * entry checks and reads run over that list (read_qtensors).
 *
 * Floats are written and read as raw bits: a little-endian host is assumed,
 * as both formats are little-endian.
 */
#include "tfm/checkpoint.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "checkpoint_quant.h"
#include "internal.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoint.c writes raw little-endian floats: big-endian hosts are not supported"
#endif

#define HEADER_MAX ((uint64_t)100 << 20) /* safetensors JSON header cap */
#define IO_CHUNK ((size_t)64 << 20)      /* bytes per fwrite */
#define LLAMA2C_HEADER 28                /* seven int32 */
#define N_LAYER_KINDS 9

static const char *const layer_names[N_LAYER_KINDS] = {
    "attention_norm.weight",  "attention.wq.weight",    "attention.wk.weight",
    "attention.wv.weight",    "attention.wo.weight",    "ffn_norm.weight",
    "feed_forward.w1.weight", "feed_forward.w2.weight", "feed_forward.w3.weight",
};

/* Metadata keys that carry the config (the integers first, then the two
 * floats); every other key is model meta. */
static const char *const config_keys[] = {
    "dim",     "hidden_dim", "n_layers", "n_heads",    "n_kv_heads", "vocab_size",
    "seq_len", "shared_classifier",      "norm_eps",   "rope_theta", "tokenizer",  "format",
    "mixer",   "feature_dim"};
#define N_INT_KEYS 8
#define N_CONFIG_KEYS (sizeof config_keys / sizeof config_keys[0])

__attribute__((format(printf, 4, 5))) static tfm_status
set_err(char *err, size_t errlen, tfm_status s, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return s;
}

static int is_config_key(const char *key)
{
    for (size_t i = 0; i < N_CONFIG_KEYS; i++)
        if (strcmp(key, config_keys[i]) == 0)
            return 1;
    return 0;
}

/* ---- tensor slots ---------------------------------------------------------- */

typedef struct tensor {
    char name[64];
    float *ptr;  /* the slice of model->data */
    size_t dims[2];
    int ndim;
    size_t n;    /* dims[0] * dims[1] */
} tensor;

static int n_slots(const tfm_config *c)
{
    return N_LAYER_KINDS * c->n_layers + 2 + !c->shared_classifier + tfm_config_n_linear(c);
}

/* The first feature-projection slot (linear layers, after the classifier). */
static int feature_slot0(const tfm_config *c)
{
    return N_LAYER_KINDS * c->n_layers + 2 + !c->shared_classifier;
}

/* Fills t for slot (see the file comment).  Products cannot overflow: the
 * config was validated, which bounds the parameter count. */
static void slot_info(const tfm_model *m, int slot, tensor *t)
{
    const tfm_config *c = &m->cfg;
    size_t d = (size_t)c->dim, h = (size_t)c->hidden_dim, L = (size_t)c->n_layers;
    size_t kv = d / (size_t)c->n_heads * (size_t)c->n_kv_heads, V = (size_t)c->vocab_size;
    t->ndim = 2;
    if (slot >= feature_slot0(c)) { /* j-th linear layer's wfeat */
        int j = slot - feature_slot0(c), layer = 0;
        for (int seen = -1; layer < c->n_layers; layer++)
            if (tfm_config_layer_linear(c, layer) && ++seen == j)
                break;
        size_t f = (size_t)c->feature_dim, hs = d / (size_t)c->n_heads;
        snprintf(t->name, sizeof t->name, "layers.%d.attn.feature", layer);
        t->ptr = m->w.wfeat + (size_t)j * f * hs, t->dims[0] = f, t->dims[1] = hs;
    } else if (slot == 0) {
        snprintf(t->name, sizeof t->name, "tok_embeddings.weight");
        t->ptr = m->w.token_embedding, t->dims[0] = V, t->dims[1] = d;
    } else if ((size_t)slot == N_LAYER_KINDS * L + 1) {
        snprintf(t->name, sizeof t->name, "norm.weight");
        t->ptr = m->w.rms_final, t->dims[0] = d, t->dims[1] = 1, t->ndim = 1;
    } else if ((size_t)slot == N_LAYER_KINDS * L + 2) {
        snprintf(t->name, sizeof t->name, "output.weight");
        t->ptr = m->w.wcls, t->dims[0] = V, t->dims[1] = d;
    } else {
        size_t k = (size_t)(slot - 1) / L, layer = (size_t)(slot - 1) % L;
        float *const base[N_LAYER_KINDS] = {m->w.rms_att, m->w.wq, m->w.wk,
                                            m->w.wv,      m->w.wo, m->w.rms_ffn,
                                            m->w.w1,      m->w.w2, m->w.w3};
        const size_t rows[N_LAYER_KINDS] = {d, d, kv, kv, d, d, h, d, h};
        const size_t cols[N_LAYER_KINDS] = {1, d, d, d, d, 1, d, h, d};
        snprintf(t->name, sizeof t->name, "layers.%zu.%s", layer, layer_names[k]);
        t->dims[0] = rows[k], t->dims[1] = cols[k];
        t->ndim = cols[k] == 1 ? 1 : 2;
        t->ptr = base[k] + layer * rows[k] * cols[k];
    }
    t->n = t->dims[0] * t->dims[1];
}

/* The slot of a tensor name, or -1 when the name is not one of this model's.
 * Layer numbers are canonical decimals (no sign, no leading zero). */
static int slot_of(const tfm_config *c, const char *name)
{
    int L = c->n_layers;
    if (strcmp(name, "tok_embeddings.weight") == 0)
        return 0;
    if (strcmp(name, "norm.weight") == 0)
        return N_LAYER_KINDS * L + 1;
    if (strcmp(name, "output.weight") == 0)
        return c->shared_classifier ? -1 : N_LAYER_KINDS * L + 2;
    if (strncmp(name, "layers.", 7) != 0)
        return -1;
    const char *p = name + 7;
    if (!isdigit((unsigned char)p[0]) || (p[0] == '0' && isdigit((unsigned char)p[1])))
        return -1;
    int layer = 0;
    for (; isdigit((unsigned char)*p); p++) {
        layer = layer * 10 + (*p - '0');
        if (layer >= L)
            return -1;
    }
    if (*p++ != '.')
        return -1;
    if (strcmp(p, "attn.feature") == 0)
        return tfm_config_layer_linear(c, layer)
                   ? feature_slot0(c) + tfm__linear_ordinal(c, layer)
                   : -1;
    for (int k = 0; k < N_LAYER_KINDS; k++)
        if (strcmp(p, layer_names[k]) == 0)
            return 1 + k * L + layer;
    return -1;
}

/* ---- input helpers --------------------------------------------------------- */

static tfm_status open_input(const char *path, FILE **out, uint64_t *size, char *err,
                             size_t errlen)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return set_err(err, errlen, errno == ENOENT ? TFM_E_NOTFOUND : TFM_E_IO, "open %s: %s",
                       path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return set_err(err, errlen, TFM_E_IO, "%s: not a regular file", path);
    }
    *out = f;
    *size = (uint64_t)sb.st_size;
    return TFM_OK;
}

static tfm_status read_exact(FILE *f, void *dst, size_t n, const char *what, char *err,
                             size_t errlen)
{
    if (fread(dst, 1, n, f) == n)
        return TFM_OK;
    if (ferror(f))
        return set_err(err, errlen, TFM_E_IO, "read %s: %s", what, strerror(errno));
    return set_err(err, errlen, TFM_E_TRUNCATED, "%s: unexpected end of file", what);
}

static tfm_status seek_to(FILE *f, uint64_t off, char *err, size_t errlen)
{
    if (off > (uint64_t)INT64_MAX || fseeko(f, (off_t)off, SEEK_SET) != 0)
        return set_err(err, errlen, TFM_E_IO, "seek: %s", strerror(errno));
    return TFM_OK;
}

/* ---- safetensors: load ----------------------------------------------------- */

/* "mixer" (absent: every layer softmax) and, with linear layers,
 * "feature_dim" (required then), once n_layers is known. */
static tfm_status parse_mixer(json_t *meta, tfm_config *c, char *err, size_t errlen)
{
    json_t *mv = json_object_get(meta, "mixer");
    if (!mv)
        return TFM_OK;
    char msg[160] = "";
    if (!json_is_string(mv) ||
        tfm_mixer_parse(json_string_value(mv), c->n_layers, &c->linear_layers, msg, sizeof msg) !=
            TFM_OK)
        return set_err(err, errlen, TFM_E_FORMAT, "metadata: 'mixer': %s",
                       *msg ? msg : "not a string");
    if (!c->linear_layers)
        return TFM_OK;
    const char *s = json_string_value(json_object_get(meta, "feature_dim"));
    char *end = NULL;
    long v = s && isdigit((unsigned char)s[0]) ? strtol(s, &end, 10) : 0;
    if (!s || end == s || *end || v < 1 || v > TFM_LINATTN_MAX_F)
        return set_err(err, errlen, TFM_E_FORMAT,
                       "metadata: 'feature_dim' missing or not an integer in 1..%d (linear "
                       "layers need it)",
                       TFM_LINATTN_MAX_F);
    c->feature_dim = (int)v;
    return TFM_OK;
}

/* The config from __metadata__: every field required, as a decimal string. */
static tfm_status parse_config(json_t *meta, tfm_config *c, tfm_tokenizer_kind *tok, char *err,
                               size_t errlen)
{
    int *const ints[N_INT_KEYS] = {&c->dim,        &c->hidden_dim, &c->n_layers,
                                   &c->n_heads,    &c->n_kv_heads, &c->vocab_size,
                                   &c->seq_len,    &c->shared_classifier};
    float *const floats[2] = {&c->norm_eps, &c->rope_theta};
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < N_INT_KEYS + 2; i++) {
        const char *key = config_keys[i];
        const char *s = json_string_value(json_object_get(meta, key));
        if (!s)
            return set_err(err, errlen, TFM_E_FORMAT, "metadata: '%s' missing or not a string",
                           key);
        char *end = (char *)s;
        errno = 0;
        if (i < N_INT_KEYS) {
            long v = isdigit((unsigned char)s[0]) || s[0] == '-' ? strtol(s, &end, 10) : 0;
            if (v < INT_MIN || v > INT_MAX)
                errno = ERANGE;
            *ints[i] = (int)v;
        } else if (!isspace((unsigned char)s[0])) {
            *floats[i - N_INT_KEYS] = strtof(s, &end);
            if (!isfinite(*floats[i - N_INT_KEYS]))
                errno = ERANGE;
        }
        if (end == s || *end || errno)
            return set_err(err, errlen, TFM_E_FORMAT, "metadata: '%s' is not a%s: \"%.40s\"", key,
                           i < N_INT_KEYS ? "n integer" : " number", s);
    }
    if (c->shared_classifier != 0 && c->shared_classifier != 1)
        return set_err(err, errlen, TFM_E_FORMAT, "metadata: 'shared_classifier' must be 0 or 1");
    json_t *tv = json_object_get(meta, "tokenizer"); /* absent: the byte tokenizer */
    const char *s = json_string_value(tv);
    *tok = s && strcmp(s, "llama2c") == 0 ? TFM_TOKENIZER_LLAMA2C : TFM_TOKENIZER_BYTE;
    if (tv && (!s || (strcmp(s, "llama2c") != 0 && strcmp(s, "byte") != 0)))
        return set_err(err, errlen, TFM_E_FORMAT, "metadata: unknown 'tokenizer' (byte, llama2c)");
    tfm_status st = parse_mixer(meta, c, err, errlen);
    if (st != TFM_OK)
        return st;
    char msg[200] = "";
    if (tfm_config_validate(c, msg, sizeof msg) != TFM_OK)
        return set_err(err, errlen, TFM_E_FORMAT, "metadata: invalid config: %s", msg);
    return TFM_OK;
}

/* Reads a JSON array of non-negative integers into v[0..n), n <= max. */
static int int_array(json_t *a, uint64_t *v, size_t max, size_t *n)
{
    if (!json_is_array(a) || json_array_size(a) > max)
        return -1;
    *n = json_array_size(a);
    for (size_t i = 0; i < *n; i++) {
        json_t *e = json_array_get(a, i);
        if (!json_is_integer(e) || json_integer_value(e) < 0)
            return -1;
        v[i] = (uint64_t)json_integer_value(e);
    }
    return 0;
}

/* What an entry must be: name, dtype, shape and byte count. */
typedef struct expect {
    const char *name, *dtype;
    int ndim;
    const size_t *dims;
    uint64_t bytes;
} expect;

/* Checks one tensor entry against what it must be; *begin is its data
 * offset. */
static tfm_status check_entry(const expect *t, json_t *e, uint64_t data_size, uint64_t *begin,
                              char *err, size_t errlen)
{
    if (!json_is_object(e))
        return set_err(err, errlen, TFM_E_FORMAT, "tensor %s: entry is not an object", t->name);
    json_t *dtype = json_object_get(e, "dtype");
    if (!json_is_string(dtype))
        return set_err(err, errlen, TFM_E_FORMAT, "tensor %s: missing dtype", t->name);
    if (strcmp(json_string_value(dtype), t->dtype) != 0)
        return set_err(err, errlen, TFM_E_UNSUPPORTED, "tensor %s: dtype %.16s, expected %s",
                       t->name, json_string_value(dtype), t->dtype);
    uint64_t shape[8], off[2];
    size_t nd, no;
    if (int_array(json_object_get(e, "shape"), shape, 8, &nd) != 0)
        return set_err(err, errlen, TFM_E_FORMAT, "tensor %s: bad shape", t->name);
    int same = nd == (size_t)t->ndim;
    for (size_t i = 0; same && i < nd; i++)
        same = shape[i] == t->dims[i];
    if (!same) {
        char got[96] = "[", want[48], *p = got + 1;
        for (size_t i = 0; i < nd && p < got + sizeof got - 24; i++)
            p += sprintf(p, "%s%llu", i ? ", " : "", (unsigned long long)shape[i]);
        strcpy(p, "]");
        snprintf(want, sizeof want, t->ndim == 1 ? "[%zu]" : "[%zu, %zu]", t->dims[0], t->dims[1]);
        return set_err(err, errlen, TFM_E_SHAPE, "tensor %s: shape %s, expected %s", t->name, got,
                       want);
    }
    if (int_array(json_object_get(e, "data_offsets"), off, 2, &no) != 0 || no != 2 ||
        off[0] > off[1])
        return set_err(err, errlen, TFM_E_FORMAT, "tensor %s: bad data_offsets", t->name);
    if (off[1] - off[0] != t->bytes)
        return set_err(err, errlen, TFM_E_FORMAT,
                       "tensor %s: data_offsets span %llu bytes, shape needs %llu", t->name,
                       (unsigned long long)(off[1] - off[0]), (unsigned long long)t->bytes);
    if (off[1] > data_size)
        return set_err(err, errlen, TFM_E_TRUNCATED,
                       "tensor %s: data ends at byte %llu, data section has %llu", t->name,
                       (unsigned long long)off[1], (unsigned long long)data_size);
    *begin = off[0];
    return TFM_OK;
}

/* Reads the length and the JSON header; *root (an object) is the caller's. */
static tfm_status read_header(FILE *f, uint64_t size, json_t **root, uint64_t *n, char *err,
                              size_t errlen)
{
    unsigned char b[8];
    tfm_status st = read_exact(f, b, 8, "safetensors header length", err, errlen);
    if (st != TFM_OK)
        return st;
    *n = 0;
    for (int i = 7; i >= 0; i--)
        *n = *n << 8 | b[i];
    if (*n > HEADER_MAX)
        return set_err(err, errlen, TFM_E_FORMAT, "safetensors header length %llu exceeds 100 MB",
                       (unsigned long long)*n);
    if (size < 8 || *n > size - 8)
        return set_err(err, errlen, TFM_E_TRUNCATED,
                       "safetensors header length %llu exceeds the file (%llu bytes)",
                       (unsigned long long)*n, (unsigned long long)size);
    char *hdr = malloc(*n ? *n : 1);
    if (!hdr)
        return set_err(err, errlen, TFM_E_NOMEM, "out of memory for the header");
    json_error_t je;
    if ((st = read_exact(f, hdr, *n, "safetensors header", err, errlen)) == TFM_OK &&
        !(*root = json_loadb(hdr, *n, JSON_REJECT_DUPLICATES, &je)))
        st = set_err(err, errlen, TFM_E_FORMAT, "safetensors header: %s (byte %d)", je.text,
                     je.position);
    free(hdr);
    if (st == TFM_OK && !json_is_object(*root))
        st = set_err(err, errlen, TFM_E_FORMAT, "safetensors header is not a JSON object");
    return st;
}

/* Checks every tensor entry of root, then reads each into its slice. */
static tfm_status read_tensors(FILE *f, tfm_model *m, json_t *root, uint64_t data_start,
                               uint64_t size, char *err, size_t errlen)
{
    int ns = n_slots(&m->cfg);
    uint64_t *offs = malloc((size_t)ns * sizeof *offs);
    if (!offs)
        return set_err(err, errlen, TFM_E_NOMEM, "out of memory");
    for (int i = 0; i < ns; i++)
        offs[i] = UINT64_MAX; /* absent */
    tfm_status st = TFM_OK;
    const char *key;
    json_t *v;
    tensor t;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "__metadata__") == 0)
            continue;
        int slot = slot_of(&m->cfg, key);
        if (slot < 0) {
            st = set_err(err, errlen, TFM_E_FORMAT, "unknown tensor %.80s", key);
            break;
        }
        slot_info(m, slot, &t);
        expect ex = {t.name, "F32", t.ndim, t.dims, (uint64_t)t.n * sizeof(float)};
        if ((st = check_entry(&ex, v, size - data_start, &offs[slot], err, errlen)) != TFM_OK)
            break;
    }
    for (int i = 0; st == TFM_OK && i < ns; i++) {
        slot_info(m, i, &t);
        if (offs[i] == UINT64_MAX)
            st = set_err(err, errlen, TFM_E_FORMAT, "missing tensor %s", t.name);
        else if ((st = seek_to(f, data_start + offs[i], err, errlen)) == TFM_OK)
            st = read_exact(f, t.ptr, t.n * sizeof(float), t.name, err, errlen);
    }
    free(offs);
    return st;
}

/* The same for a quantised model (checkpoint_quant.c): each entry checked
 * against the plan's tensor of its name, then each read into place, then
 * the values a shape cannot vouch for (scales) checked. */
static tfm_status read_qtensors(FILE *f, tfm_model *m, json_t *root, uint64_t data_start,
                                uint64_t size, char *err, size_t errlen)
{
    tfm__qtensor *t = NULL;
    int nt = 0;
    uint64_t *offs = NULL;
    if (tfm__qckpt_plan(m, &t, &nt) != TFM_OK || !(offs = malloc((size_t)nt * sizeof *offs))) {
        free(t);
        return set_err(err, errlen, TFM_E_NOMEM, "out of memory");
    }
    for (int i = 0; i < nt; i++)
        offs[i] = UINT64_MAX;
    tfm_status st = TFM_OK;
    const char *key;
    json_t *v;
    int hint = 0; /* files we write list the tensors in plan order */
    json_object_foreach(root, key, v) {
        if (strcmp(key, "__metadata__") == 0)
            continue;
        int i = -1;
        for (int k = 0; k < nt && i < 0; k++)
            if (strcmp(t[(hint + k) % nt].name, key) == 0)
                i = (hint + k) % nt;
        if (i < 0) {
            st = set_err(err, errlen, TFM_E_FORMAT, "unknown tensor %.80s (a %s model)", key,
                         tfm_wformat_name((tfm_wformat)m->q->fmt));
            break;
        }
        hint = i + 1;
        expect ex = {t[i].name, t[i].dtype, t[i].ndim, t[i].dims, t[i].bytes};
        if ((st = check_entry(&ex, v, size - data_start, &offs[i], err, errlen)) != TFM_OK)
            break;
    }
    for (int i = 0; st == TFM_OK && i < nt; i++) {
        if (offs[i] == UINT64_MAX)
            st = set_err(err, errlen, TFM_E_FORMAT, "missing tensor %s", t[i].name);
        else if ((st = seek_to(f, data_start + offs[i], err, errlen)) == TFM_OK)
            st = read_exact(f, t[i].ptr, t[i].bytes, t[i].name, err, errlen);
    }
    free(offs);
    free(t);
    if (st == TFM_OK)
        st = tfm__qckpt_finish(m, err, errlen);
    return st;
}

/* The weight format "weights" in the metadata names: absent or "f32" is
 * float32. */
static tfm_status parse_wformat(json_t *meta, tfm_wformat *wf, char *err, size_t errlen)
{
    json_t *v = json_object_get(meta, "weights");
    *wf = TFM_WF_F32;
    if (v && (!json_is_string(v) || tfm_wformat_parse(json_string_value(v), wf) != TFM_OK))
        return set_err(err, errlen, TFM_E_FORMAT,
                       "metadata: 'weights' must be f32, bf16, q8 or q4");
    return TFM_OK;
}

static tfm_status load_safetensors(FILE *f, uint64_t size, tfm_model **out, char *err,
                                   size_t errlen)
{
    json_t *root = NULL;
    tfm_model *m = NULL;
    tfm_config cfg;
    tfm_tokenizer_kind tok = TFM_TOKENIZER_BYTE;
    uint64_t n = 0;
    tfm_status st;
    *out = NULL;

    if ((st = read_header(f, size, &root, &n, err, errlen)) != TFM_OK)
        goto fail;
    json_t *meta = json_object_get(root, "__metadata__");
    if (!json_is_object(meta)) {
        st = set_err(err, errlen, TFM_E_FORMAT, "safetensors header: no __metadata__ object");
        goto fail;
    }
    tfm_wformat wf;
    if ((st = parse_config(meta, &cfg, &tok, err, errlen)) != TFM_OK ||
        (st = parse_wformat(meta, &wf, err, errlen)) != TFM_OK)
        goto fail;
    /* A tiny file must not make us allocate a huge model. */
    uint64_t need = wf == TFM_WF_F32 ? (uint64_t)tfm_config_n_params(&cfg) * sizeof(float)
                                     : tfm__qckpt_bytes(&cfg, wf);
    if (need == 0) {
        st = set_err(err, errlen, TFM_E_SHAPE, "%s needs dim and hidden_dim multiples of %d",
                     tfm_wformat_name(wf), TFM_QK);
        goto fail;
    }
    if (size - 8 - n < need) {
        st = set_err(err, errlen, TFM_E_TRUNCATED,
                     "safetensors data is %llu bytes, the config needs %llu",
                     (unsigned long long)(size - 8 - n), (unsigned long long)need);
        goto fail;
    }
    if ((st = wf == TFM_WF_F32 ? tfm_model_create(&cfg, &m, err, errlen)
                               : tfm__model_create_quantized(&cfg, wf, &m, err, errlen)) != TFM_OK)
        goto fail;
    m->tokenizer = tok;
    const char *key;
    json_t *v;
    json_object_foreach(meta, key, v) {
        if (is_config_key(key))
            continue;
        if (!json_is_string(v) || tfm_model_meta_set(m, key, json_string_value(v)) != TFM_OK) {
            st = set_err(err, errlen, TFM_E_FORMAT,
                         "metadata: cannot keep '%.48s' (string values only; at most %d "
                         "entries, keys < %zu bytes, values < %zu bytes)",
                         key, TFM_META_MAX, sizeof m->meta[0].key, sizeof m->meta[0].value);
            goto fail;
        }
    }
    if ((st = wf == TFM_WF_F32 ? read_tensors(f, m, root, 8 + n, size, err, errlen)
                               : read_qtensors(f, m, root, 8 + n, size, err, errlen)) != TFM_OK)
        goto fail;
    json_decref(root);
    *out = m;
    return TFM_OK;
fail:
    json_decref(root);
    tfm_model_destroy(m);
    return st;
}

/* ---- llama2.c: load -------------------------------------------------------- */

static tfm_status load_llama2c(FILE *f, uint64_t size, tfm_model **out, char *err, size_t errlen)
{
    tfm_model *m = NULL;
    tfm_status st;
    int32_t h[7];
    *out = NULL;

    if ((st = read_exact(f, h, sizeof h, "llama2.c header", err, errlen)) != TFM_OK)
        goto fail;
    tfm_config c = {0};
    c.dim = h[0], c.hidden_dim = h[1], c.n_layers = h[2], c.n_heads = h[3];
    c.n_kv_heads = h[4], c.seq_len = h[6];
    /* vocab > 0: shared classifier; negative: a separate one follows. */
    c.shared_classifier = h[5] > 0;
    c.vocab_size = h[5] == INT32_MIN ? 0 : h[5] < 0 ? -h[5] : h[5];
    tfm_config_defaults(&c);
    char msg[200] = "";
    if (tfm_config_validate(&c, msg, sizeof msg) != TFM_OK) {
        st = set_err(err, errlen, TFM_E_FORMAT, "llama2.c header: %s", msg);
        goto fail;
    }
    /* Bounded by validate: no product below can overflow 64 bits. */
    size_t n_params = tfm_config_n_params(&c);
    size_t wcls = c.shared_classifier ? 0 : (size_t)c.vocab_size * (size_t)c.dim;
    size_t rope = (size_t)c.seq_len * (size_t)(c.dim / c.n_heads); /* cos + sin */
    uint64_t want = LLAMA2C_HEADER + (uint64_t)(n_params + rope) * sizeof(float);
    if (size != want) {
        st = set_err(err, errlen, size < want ? TFM_E_TRUNCATED : TFM_E_FORMAT,
                     "llama2.c file is %llu bytes, expected %llu%s", (unsigned long long)size,
                     (unsigned long long)want, size > want ? " (trailing bytes)" : "");
        goto fail;
    }
    if ((st = tfm_model_create(&c, &m, err, errlen)) != TFM_OK)
        goto fail;
    m->tokenizer = TFM_TOKENIZER_LLAMA2C;
    size_t body = (n_params - wcls) * sizeof(float);
    if ((st = read_exact(f, m->data, body, "llama2.c weights", err, errlen)) != TFM_OK)
        goto fail;
    if (wcls) {
        uint64_t at = LLAMA2C_HEADER + body + (uint64_t)rope * sizeof(float);
        if ((st = seek_to(f, at, err, errlen)) != TFM_OK ||
            (st = read_exact(f, m->w.wcls, wcls * sizeof(float), "llama2.c classifier", err,
                             errlen)) != TFM_OK)
            goto fail;
    }
    *out = m;
    return TFM_OK;
fail:
    tfm_model_destroy(m);
    return st;
}

tfm_status tfm_checkpoint_load(const char *path, tfm_ckpt_format fmt, tfm_model **out, char *err,
                               size_t errlen)
{
    if (!out)
        return set_err(err, errlen, TFM_E_INVALID, "out is NULL");
    *out = NULL;
    if (!path || (fmt != TFM_CKPT_AUTO && fmt != TFM_CKPT_SAFETENSORS && fmt != TFM_CKPT_LLAMA2C))
        return set_err(err, errlen, TFM_E_INVALID, "bad path or format");
    FILE *f;
    uint64_t size = 0;
    tfm_status st = open_input(path, &f, &size, err, errlen);
    if (st != TFM_OK)
        return st;
    if (fmt == TFM_CKPT_AUTO) {
        /* safetensors: a u64 header length then '{'.  A llama2.c file has
         * hidden_dim > 0 in bytes 4..7, so those bytes being zero (a header
         * under 4 GB) keeps the two apart. */
        unsigned char b[9];
        fmt = TFM_CKPT_LLAMA2C;
        if (size >= 9 && fread(b, 1, 9, f) == 9 && b[8] == '{' && !b[4] && !b[5] && !b[6] &&
            !b[7])
            fmt = TFM_CKPT_SAFETENSORS;
        rewind(f);
    }
    if (fmt == TFM_CKPT_SAFETENSORS)
        st = load_safetensors(f, size, out, err, errlen);
    else
        st = load_llama2c(f, size, out, err, errlen);
    fclose(f);
    return st;
}

/* ---- atomic writes --------------------------------------------------------- */

static void io_err(tfm__afile *af, const char *what, int e)
{
    if (af->st == TFM_OK)
        af->st = set_err(af->err, af->errlen, TFM_E_IO, "%s %s: %s", what, af->tmp, strerror(e));
}

tfm_status tfm__afile_open(tfm__afile *af, const char *path, char *err, size_t errlen)
{
    *af = (tfm__afile){.path = path, .err = err, .errlen = errlen};
    size_t len = strlen(path) + 32;
    if (!(af->tmp = malloc(len)))
        return set_err(err, errlen, TFM_E_NOMEM, "out of memory");
    snprintf(af->tmp, len, "%s.tmp.%ld", path, (long)getpid());
    if (!(af->f = fopen(af->tmp, "wbe"))) { /* e: O_CLOEXEC */
        io_err(af, "create", errno);
        free(af->tmp);
        return af->st;
    }
    return TFM_OK;
}

void tfm__afile_write(tfm__afile *af, const void *buf, size_t n)
{
    for (const char *p = buf; n && af->st == TFM_OK;) {
        size_t k = n < IO_CHUNK ? n : IO_CHUNK;
        errno = 0;
        if (fwrite(p, 1, k, af->f) != k)
            io_err(af, "write", errno ? errno : EIO);
        p += k, n -= k;
    }
}

/* Makes the file durable and renames it over path, or removes it after any
 * error (a sticky one included). */
tfm_status tfm__afile_commit(tfm__afile *af)
{
    if (af->st == TFM_OK && fflush(af->f) != 0)
        io_err(af, "write", errno);
    if (af->st == TFM_OK && fsync(fileno(af->f)) != 0)
        io_err(af, "fsync", errno);
    if (fclose(af->f) != 0)
        io_err(af, "close", errno);
    if (af->st == TFM_OK && rename(af->tmp, af->path) != 0)
        io_err(af, "rename", errno);
    if (af->st != TFM_OK) {
        unlink(af->tmp);
        free(af->tmp);
        return af->st;
    }
    free(af->tmp);
    /* The rename is durable only once the directory entry is on disk
     * (EINVAL: the file system cannot sync directories; nothing to do). */
    char *copy = strdup(af->path);
    if (!copy)
        return set_err(af->err, af->errlen, TFM_E_NOMEM, "out of memory");
    const char *dir = dirname(copy);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || (fsync(fd) != 0 && errno != EINVAL))
        af->st = set_err(af->err, af->errlen, TFM_E_IO, "fsync directory %s: %s", dir,
                         strerror(errno));
    if (fd >= 0)
        close(fd);
    free(copy);
    return af->st;
}

/* ---- safetensors: save ----------------------------------------------------- */

static int set_str(json_t *obj, const char *key, const char *value)
{
    return json_object_set_new(obj, key, json_string(value));
}

/* The header JSON; *text is malloc'd (free it). */
static tfm_status safetensors_header(const tfm_model *m, char **text, char *err, size_t errlen)
{
    const tfm_config *c = &m->cfg;
    json_t *root = json_object(), *meta = json_object();
    tfm_status st = TFM_OK;
    int bad = !root || !meta || json_object_set(root, "__metadata__", meta) != 0;
    json_decref(meta); /* root holds it */
    *text = NULL;
    if (bad)
        goto fail;
    const int ivals[N_INT_KEYS] = {c->dim,        c->hidden_dim, c->n_layers,
                                   c->n_heads,    c->n_kv_heads, c->vocab_size,
                                   c->seq_len,    c->shared_classifier ? 1 : 0};
    char buf[32];
    bad |= set_str(meta, "format", "attnd");
    for (size_t i = 0; i < N_INT_KEYS; i++) {
        snprintf(buf, sizeof buf, "%d", ivals[i]);
        bad |= set_str(meta, config_keys[i], buf);
    }
    snprintf(buf, sizeof buf, "%.9g", (double)c->norm_eps);
    bad |= set_str(meta, "norm_eps", buf);
    snprintf(buf, sizeof buf, "%.9g", (double)c->rope_theta);
    bad |= set_str(meta, "rope_theta", buf);
    bad |= set_str(meta, "tokenizer", m->tokenizer == TFM_TOKENIZER_LLAMA2C ? "llama2c" : "byte");
    if (c->linear_layers) { /* softmax models' headers stay as they were */
        char mix[64 * 8 + 1];
        bad |= tfm_mixer_format(c, mix, sizeof mix) != TFM_OK || set_str(meta, "mixer", mix);
        snprintf(buf, sizeof buf, "%d", c->feature_dim);
        bad |= set_str(meta, "feature_dim", buf);
    }
    if (bad)
        goto fail;
    for (int i = 0; i < m->n_meta; i++) {
        const char *k = m->meta[i].key;
        if (is_config_key(k)) {
            st = set_err(err, errlen, TFM_E_INVALID, "meta key '%s' is reserved for the config", k);
            goto fail;
        }
        if (set_str(meta, k, m->meta[i].value) != 0) {
            st = set_err(err, errlen, TFM_E_INVALID, "meta entry '%s' is not valid UTF-8", k);
            goto fail;
        }
    }
    uint64_t off = 0;
    if (m->q) { /* a quantised model's tensors (checkpoint_quant.c), in plan order */
        tfm__qtensor *t;
        int nt;
        if (tfm__qckpt_plan(m, &t, &nt) != TFM_OK)
            goto fail;
        for (int i = 0; i < nt && !bad; i++) {
            json_int_t d0 = (json_int_t)t[i].dims[0], d1 = (json_int_t)t[i].dims[1];
            json_t *e = json_pack("{s:s, s:o, s:[I,I]}", "dtype", t[i].dtype, "shape",
                                  t[i].ndim == 1 ? json_pack("[I]", d0) : json_pack("[I,I]", d0, d1),
                                  "data_offsets", (json_int_t)off, (json_int_t)(off + t[i].bytes));
            bad = !e || json_object_set_new(root, t[i].name, e) != 0;
            off += t[i].bytes;
        }
        free(t);
        if (bad)
            goto fail;
        goto dump;
    }
    /* Slots follow the data array, so offsets are running sums. */
    for (int i = 0, ns = n_slots(c); i < ns; i++) {
        tensor t;
        slot_info(m, i, &t);
        uint64_t end = off + (uint64_t)t.n * sizeof(float);
        json_int_t d0 = (json_int_t)t.dims[0], d1 = (json_int_t)t.dims[1];
        json_t *e = json_pack("{s:s, s:o, s:[I,I]}", "dtype", "F32", "shape",
                              t.ndim == 1 ? json_pack("[I]", d0) : json_pack("[I,I]", d0, d1),
                              "data_offsets", (json_int_t)off, (json_int_t)end);
        if (!e || json_object_set_new(root, t.name, e) != 0)
            goto fail;
        off = end;
    }
    if (off != (uint64_t)m->n_floats * sizeof(float)) {
        st = set_err(err, errlen, TFM_E_INTERNAL, "tensor slots do not cover the weights");
        goto fail;
    }
dump:
    *text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!*text)
        goto fail;
    json_decref(root);
    return TFM_OK;
fail:
    json_decref(root);
    if (st == TFM_OK)
        st = set_err(err, errlen, TFM_E_NOMEM, "out of memory building the header");
    return st;
}

static tfm_status save_safetensors(const tfm_model *m, const char *path, char *err,
                                   size_t errlen)
{
    char *json = NULL;
    tfm_status st = safetensors_header(m, &json, err, errlen);
    if (st != TFM_OK)
        return st;
    /* Pad with spaces so the data starts 8-byte aligned. */
    size_t len = strlen(json), pad = (8 - len % 8) % 8;
    uint64_t n = len + pad;
    unsigned char lenbuf[8];
    for (int i = 0; i < 8; i++)
        lenbuf[i] = (unsigned char)(n >> (8 * i));
    static const char spaces[8] = "        ";
    tfm__afile af;
    if ((st = tfm__afile_open(&af, path, err, errlen)) == TFM_OK) {
        tfm__afile_write(&af, lenbuf, 8);
        tfm__afile_write(&af, json, len);
        tfm__afile_write(&af, spaces, pad);
        if (m->q) {
            tfm__qtensor *t;
            int nt;
            if (tfm__qckpt_plan(m, &t, &nt) != TFM_OK) {
                af.st = set_err(err, errlen, TFM_E_NOMEM, "out of memory");
                nt = 0, t = NULL;
            }
            for (int i = 0; i < nt; i++)
                tfm__afile_write(&af, t[i].ptr, t[i].bytes);
            free(t);
        } else
            tfm__afile_write(&af, m->data, m->n_floats * sizeof(float));
        st = tfm__afile_commit(&af);
    }
    free(json);
    return st;
}

/* ---- llama2.c: save -------------------------------------------------------- */

/* Metadata and the tokenizer kind are dropped: the format has no place for
 * them.  The RoPE tables are written as run.c's export does (cos, then
 * sin); run.c skips them. */
static tfm_status save_llama2c(const tfm_model *m, const char *path, char *err, size_t errlen)
{
    const tfm_config *c = &m->cfg;
    if (c->norm_eps != 1e-5f || c->rope_theta != 10000.0f)
        return set_err(err, errlen, TFM_E_UNSUPPORTED,
                       "llama2.c files need norm_eps 1e-5 and rope_theta 10000 (have %g, %g)",
                       (double)c->norm_eps, (double)c->rope_theta);
    int32_t h[7] = {c->dim,     c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads,
                    c->shared_classifier ? c->vocab_size : -c->vocab_size, c->seq_len};
    size_t wcls = c->shared_classifier ? 0 : (size_t)c->vocab_size * (size_t)c->dim;
    size_t body = m->n_floats - wcls;
    size_t rope = (size_t)c->seq_len * (size_t)(c->dim / c->n_heads / 2);
    tfm__afile af;
    tfm_status st = tfm__afile_open(&af, path, err, errlen);
    if (st != TFM_OK)
        return st;
    tfm__afile_write(&af, h, sizeof h);
    tfm__afile_write(&af, m->data, body * sizeof(float));
    tfm__afile_write(&af, m->rope_cos, rope * sizeof(float));
    tfm__afile_write(&af, m->rope_sin, rope * sizeof(float));
    tfm__afile_write(&af, m->w.wcls, wcls * sizeof(float));
    return tfm__afile_commit(&af);
}

tfm_status tfm_checkpoint_save(const tfm_model *m, const char *path, tfm_ckpt_format fmt,
                               char *err, size_t errlen)
{
    if (!m || !path || !*path)
        return set_err(err, errlen, TFM_E_INVALID, "model or path is NULL");
    if (fmt == TFM_CKPT_AUTO) {
        size_t n = strlen(path);
        fmt = n >= 4 && strcmp(path + n - 4, ".bin") == 0 ? TFM_CKPT_LLAMA2C
                                                          : TFM_CKPT_SAFETENSORS;
    }
    if (m->cfg.linear_layers && fmt == TFM_CKPT_LLAMA2C)
        return set_err(err, errlen, TFM_E_UNSUPPORTED,
                       "llama2.c files cannot hold linear-attention layers (mixer): save as "
                       "safetensors");
    if (m->q && fmt == TFM_CKPT_LLAMA2C) /* float32 only (checkpoint_quant.c: safetensors) */
        return set_err(err, errlen, TFM_E_UNSUPPORTED,
                       "a %s model can be saved as safetensors only",
                       tfm_wformat_name((tfm_wformat)m->q->fmt));
    if (fmt == TFM_CKPT_SAFETENSORS)
        return save_safetensors(m, path, err, errlen);
    if (fmt == TFM_CKPT_LLAMA2C)
        return save_llama2c(m, path, err, errlen);
    return set_err(err, errlen, TFM_E_INVALID, "unknown checkpoint format %d", (int)fmt);
}
