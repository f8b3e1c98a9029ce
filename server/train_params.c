/*
 * train_params.c — POST /train's body into a tfm_train_spec (see
 * train_params.h).
 *
 * Order of the checks, so that the first error a client sees is the most
 * useful one: unknown fields (a typo must not fall back to a default),
 * then each field's type and the service's range, then the core's
 * tfm_train_spec_prepare (defaults, cross-field rules such as
 * warmup_steps <= steps or n_heads dividing dim), then what the job would
 * cost: parameters, tokens per step and an estimate of the trainer's
 * memory, so that no request can take the machine.  Field names are the
 * request's ("model.dim", "recall.n_keys", "learning_rate"); the core's
 * names ("train.learning_rate", "model.seq_len") are mapped back.
 *
 * A text corpus named by `corpus` is only read when the job starts (a
 * missing or short file fails the job, not the request); here its name is
 * checked and the core's text rules are applied to the inline text only.
 */
#include "train_params.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct perr {
    char *field, *msg;
    size_t fieldlen, msglen;
} perr;

__attribute__((format(printf, 3, 4))) static int fail(perr *e, const char *field,
                                                      const char *fmt, ...)
{
    snprintf(e->field, e->fieldlen, "%s", field ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, e->msglen, fmt, ap);
    va_end(ap);
    return -1;
}

/* Every key of obj is in known[]; else the first unknown one, as
 * prefix + key. */
static int only_known(perr *e, json_t *obj, const char *prefix, const char *const *known,
                      size_t n)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        size_t i = 0;
        while (i < n && strcmp(key, known[i]))
            i++;
        if (i == n) {
            char f[128];
            snprintf(f, sizeof f, "%s%s", prefix, key);
            return fail(e, f, "unknown field \"%s\"", f);
        }
    }
    return 0;
}

/* An integer member in [lo, hi]; absent leaves *out as it is. */
static int get_int(perr *e, json_t *obj, const char *prefix, const char *key, long long lo,
                   long long hi, long long *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return 0;
    char f[96];
    snprintf(f, sizeof f, "%s%s", prefix, key);
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return fail(e, f, "%s must be an integer between %lld and %lld", f, lo, hi);
    *out = json_integer_value(v);
    return 0;
}

static int get_i(perr *e, json_t *obj, const char *prefix, const char *key, int lo, int hi,
                 int *out)
{
    long long v = *out;
    if (get_int(e, obj, prefix, key, lo, hi, &v))
        return -1;
    *out = (int)v;
    return 0;
}

/* A number member in [lo, hi] (lo excluded when lo_open). */
static int get_f(perr *e, json_t *obj, const char *prefix, const char *key, double lo,
                 double hi, int lo_open, float *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return 0;
    char f[96];
    snprintf(f, sizeof f, "%s%s", prefix, key);
    double d = json_is_number(v) ? json_number_value(v) : NAN;
    if (!isfinite(d) || d < lo || d > hi || (lo_open && d == lo))
        return fail(e, f, "%s must be a number %s %g and <= %g", f, lo_open ? ">" : ">=", lo, hi);
    *out = (float)d;
    return 0;
}

/* An optional object member; NULL when absent, -1 when not an object. */
static int get_obj(perr *e, json_t *body, const char *key, json_t **out)
{
    *out = json_object_get(body, key);
    if (*out && !json_is_object(*out))
        return fail(e, key, "%s must be an object", key);
    return 0;
}

static int valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 64 || !((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= '0' && s[0] <= '9')))
        return 0;
    for (size_t i = 1; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '.' ||
              s[i] == '_' || s[i] == '-'))
            return 0;
    return 1;
}

/* A file name under <data-dir>/corpora: no path, no hidden file. */
static int valid_corpus(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 255 || s[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '.' || s[i] == '_' || s[i] == '-'))
            return 0;
    return 1;
}

static const char *const known_top[] = {
    "task",         "name",          "model",         "steps",          "batch_size",
    "seq_len",      "learning_rate", "warmup_steps",  "min_lr_ratio",   "weight_decay",
    "grad_clip",    "seed",          "eval_every",    "eval_sequences", "checkpoint_every",
    "recall",       "text",          "attention"};
static const char *const known_model[] = {"dim",     "n_layers",   "n_heads",
                                          "n_kv_heads", "hidden_dim", "max_seq_len"};
static const char *const known_recall[] = {"n_pairs", "n_keys", "n_values", "absent_fraction",
                                           "min_pairs"};
static const char *const known_text[] = {"text", "corpus", "eval_fraction"};
static const char *const known_text_record[] = {"text_bytes", "corpus", "eval_fraction"};
#define N_OF(a) (sizeof a / sizeof *a)

static int is_model_field(const char *name)
{
    for (size_t i = 0; i < N_OF(known_model); i++)
        if (!strcmp(name, known_model[i]))
            return 1;
    return 0;
}

/* The core's error names its field first ("train.learning_rate must ...",
 * "model.seq_len must ..."): the request's name for it, and the message
 * spelled with that name. */
static int core_error(perr *e, const char *err, const srv_train_params *p)
{
    size_t n = strspn(err, "abcdefghijklmnopqrstuvwxyz_.");
    char tok[64];
    snprintf(tok, sizeof tok, "%.*s", (int)(n < sizeof tok ? n : sizeof tok - 1), err);
    const char *field = tok;
    if (!strncmp(tok, "train.", 6))
        field = tok + 6;
    else if (!strcmp(tok, "model.seq_len"))
        field = "model.max_seq_len";
    else if (!strcmp(tok, "model.vocab_size"))
        field = "task";
    else if (!strcmp(tok, "text"))
        field = p->corpus[0] ? "text.corpus" : "text.text";
    else if (!strcmp(tok, "threads"))
        return fail(e, NULL, "--train-threads: %s", err);
    else if (!strncmp(tok, "model.", 6) && !is_model_field(tok + 6)) {
        /* "model.head size (dim / n_heads) must be even": a sentence, not
         * a field; the heads are what to change */
        return fail(e, strstr(err, "n_heads") ? "model.n_heads" : "model", "model: %s", err + 6);
    }
    return fail(e, field, "%s%s", field, err + n);
}

/* Floats of the trainer's buffers (core/train.c's trainer_create): per
 * layer the activations of B x T rows and the B x heads x T x T attention
 * weights; the logits, their gradient and the row buffers once; weights,
 * gradients and AdamW's two moments. */
static double trainer_floats(const tfm_config *c, tfm_attn_kernel k, int B, int T, int n_threads)
{
    double N = (double)B * T, d = c->dim, H = c->hidden_dim, V = c->vocab_size;
    double kvd = d / c->n_heads * c->n_kv_heads;
    /* attention as asked, or as the trainer's AUTO picks it: (T, T)
     * probabilities and a dP per thread, or each row's log-sum-exp and two
     * 64 x 128 tiles */
    if (k == TFM_ATTN_AUTO)
        k = tfm_trainer_attention_pick(c, B, T, n_threads);
    int tiled = k == TFM_ATTN_TILED;
    double layer = N * (6 * d + 2 * kvd + 2 + 3 * H) + (double)B * c->n_heads * T * (tiled ? 1 : T);
    double once = N * (6 * d + 2 * kvd + 2 * H + 2 * V + 1) +
                  (double)n_threads * (tiled ? 2 * 64 * 128 + T : (double)T * T);
    return c->n_layers * layer + once + 4.0 * (double)tfm_config_n_params(c);
}


static int parse_model(perr *e, json_t *m, tfm_config *c)
{
    c->dim = 64;
    c->n_layers = 2;
    c->n_heads = 2;
    if (!m)
        return 0;
    if (only_known(e, m, "model.", known_model, N_OF(known_model)) ||
        get_i(e, m, "model.", "dim", 2, 4096, &c->dim) ||
        get_i(e, m, "model.", "n_layers", 1, 64, &c->n_layers) ||
        get_i(e, m, "model.", "n_heads", 1, 256, &c->n_heads) ||
        get_i(e, m, "model.", "n_kv_heads", 1, 256, &c->n_kv_heads) ||
        get_i(e, m, "model.", "hidden_dim", 1, 16384, &c->hidden_dim) ||
        get_i(e, m, "model.", "max_seq_len", 2, 8192, &c->seq_len))
        return -1;
    return 0;
}

static int parse_recall(perr *e, json_t *r, tfm_mqar *q)
{
    *q = (tfm_mqar){.n_pairs = 8, .n_keys = 64, .n_values = 64, .absent_fraction = 0.1f};
    if (!r)
        return 0;
    if (only_known(e, r, "recall.", known_recall, N_OF(known_recall)) ||
        get_i(e, r, "recall.", "n_pairs", 1, 4096, &q->n_pairs) ||
        get_i(e, r, "recall.", "n_keys", 1, 65536, &q->n_keys) ||
        get_i(e, r, "recall.", "n_values", 1, 65536, &q->n_values) ||
        get_f(e, r, "recall.", "absent_fraction", 0, 1, 0, &q->absent_fraction) ||
        get_i(e, r, "recall.", "min_pairs", 0, 4096, &q->min_pairs))
        return -1;
    return 0;
}

static int parse_text(perr *e, json_t *t, int from_record, srv_train_params *p)
{
    if (!t)
        return fail(e, "text", "text is required for task \"text\": {\"text\": ...} or "
                               "{\"corpus\": ...}");
    if (from_record ? only_known(e, t, "text.", known_text_record, N_OF(known_text_record))
                    : only_known(e, t, "text.", known_text, N_OF(known_text)))
        return -1;
    json_t *inline_text = json_object_get(t, "text"), *corpus = json_object_get(t, "corpus");
    if (inline_text && corpus)
        return fail(e, "text.corpus", "give text.text or text.corpus, not both");
    if (corpus) {
        if (!json_is_string(corpus) || !valid_corpus(json_string_value(corpus)))
            return fail(e, "text.corpus",
                        "text.corpus must name a file of <data-dir>/corpora: 1 to 255 of "
                        "[A-Za-z0-9._-], not starting with a dot");
        snprintf(p->corpus, sizeof p->corpus, "%s", json_string_value(corpus));
    } else if (from_record) {
        long long n = 0;
        if (get_int(e, t, "text.", "text_bytes", 1, SRV_TRAIN_MAX_CORPUS, &n))
            return -1;
        if (n == 0)
            return fail(e, "text.text_bytes", "the record gives neither corpus nor text_bytes");
        p->text_len = (size_t)n;
    } else {
        if (!inline_text || !json_is_string(inline_text) || json_string_length(inline_text) == 0)
            return fail(e, "text.text",
                        inline_text ? "text.text must be a non-empty string"
                                    : "give text.text (the corpus inline) or text.corpus");
        p->text = json_string_value(inline_text);
        p->text_len = json_string_length(inline_text);
    }
    p->spec.eval_fraction = 0.1f;
    return get_f(e, t, "text.", "eval_fraction", 0, 1, 1, &p->spec.eval_fraction);
}

int srv_train_params_parse(json_t *body, int from_record, int n_threads, srv_train_params *p,
                           char *field, size_t fieldlen, char *msg, size_t msglen)
{
    perr e = {field, msg, fieldlen, msglen};
    memset(p, 0, sizeof *p);
    field[0] = 0;
    tfm_train_spec *s = &p->spec;
    if (!json_is_object(body))
        return fail(&e, NULL, "the body must be a JSON object");
    if (only_known(&e, body, "", known_top, N_OF(known_top)))
        return -1;

    json_t *task = json_object_get(body, "task");
    const char *tk = json_is_string(task) ? json_string_value(task) : "";
    if (!strcmp(tk, "recall"))
        s->task = TFM_TASK_RECALL;
    else if (!strcmp(tk, "text"))
        s->task = TFM_TASK_TEXT;
    else
        return fail(&e, "task", task ? "task must be \"recall\" or \"text\""
                                     : "task is required: \"recall\" or \"text\"");
    json_t *name = json_object_get(body, "name");
    if (!name || !json_is_string(name) || !valid_name(json_string_value(name)))
        return fail(&e, "name", name ? "name must match [a-z0-9][a-z0-9._-]{0,63}"
                                     : "name is required: the model to produce");
    snprintf(p->name, sizeof p->name, "%s", json_string_value(name));

    json_t *model, *recall, *text;
    if (get_obj(&e, body, "model", &model) || get_obj(&e, body, "recall", &recall) ||
        get_obj(&e, body, "text", &text) || parse_model(&e, model, &s->model))
        return -1;
    if (recall && s->task != TFM_TASK_RECALL)
        return fail(&e, "recall", "recall applies to task \"recall\"");
    if (text && s->task != TFM_TASK_TEXT)
        return fail(&e, "text", "text applies to task \"text\"");

    tfm_train_config *c = &s->train;
    tfm_train_config_defaults(c);
    long long seed = (long long)c->seed;
    int warmup = -1;
    if (get_i(&e, body, "", "steps", 1, SRV_TRAIN_MAX_STEPS, &c->steps) ||
        get_i(&e, body, "", "batch_size", 1, 4096, &c->batch_size) ||
        get_i(&e, body, "", "seq_len", 2, 4096, &c->seq_len) ||
        get_f(&e, body, "", "learning_rate", 0, 1, 1, &c->learning_rate) ||
        get_i(&e, body, "", "warmup_steps", 0, SRV_TRAIN_MAX_STEPS, &warmup) ||
        get_f(&e, body, "", "min_lr_ratio", 0, 1, 0, &c->min_lr_ratio) ||
        get_f(&e, body, "", "weight_decay", 0, 10, 0, &c->weight_decay) ||
        get_f(&e, body, "", "grad_clip", 0, 1e6, 0, &c->grad_clip) ||
        get_int(&e, body, "", "seed", 0, INT64_MAX, &seed) ||
        get_i(&e, body, "", "eval_every", 0, SRV_TRAIN_MAX_STEPS, &s->eval_every) ||
        get_i(&e, body, "", "eval_sequences", 0, 100000, &s->eval_sequences) ||
        get_i(&e, body, "", "checkpoint_every", 0, SRV_TRAIN_MAX_STEPS, &s->checkpoint_every))
        return -1;
    c->seed = (uint64_t)seed;
    json_t *att = json_object_get(body, "attention");
    if (att) {
        const char *a = json_is_string(att) ? json_string_value(att) : "";
        tfm_attn_kernel k = TFM_ATTN_AUTO;
        while (k <= TFM_ATTN_TILED && strcmp(a, tfm_attn_kernel_name(k)))
            k++;
        if (k > TFM_ATTN_TILED)
            return fail(&e, "attention", "attention must be \"auto\", \"naive\" or \"tiled\"");
        c->attention = k;
    }
    /* the core's 100 warmup steps would refuse every short run */
    c->warmup_steps = warmup >= 0 ? warmup : (c->steps / 10 < 100 ? c->steps / 10 : 100);
    if ((long long)c->batch_size * c->seq_len > SRV_TRAIN_MAX_TOKENS)
        return fail(&e, "batch_size", "batch_size x seq_len is %lld tokens a step; at most %d",
                    (long long)c->batch_size * c->seq_len, SRV_TRAIN_MAX_TOKENS);
    if (s->task == TFM_TASK_RECALL) {
        if (parse_recall(&e, recall, &s->recall))
            return -1;
    } else if (parse_text(&e, text, from_record, p)) {
        return -1;
    }
    s->n_threads = n_threads;

    /* The core's rules.  A corpus file is not read yet: its length is
     * checked when the job starts, so a stand-in long enough passes here;
     * inline text (or its recorded size) is checked for real. */
    static const unsigned char stand_in[1];
    if (s->task == TFM_TASK_TEXT) {
        s->text = stand_in;
        s->text_len = p->corpus[0] ? SRV_TRAIN_MAX_CORPUS : p->text_len;
    }
    char err[256] = "";
    tfm_status st = tfm_train_spec_prepare(s, err, sizeof err);
    s->text = NULL;
    s->text_len = 0;
    if (st != TFM_OK)
        return core_error(&e, err, p);

    size_t n_params = tfm_config_n_params(&s->model);
    if (n_params > SRV_TRAIN_MAX_PARAMS)
        return fail(&e, "model", "the model has %zu parameters; at most %d", n_params,
                    SRV_TRAIN_MAX_PARAMS);
    double bytes = 4.0 * trainer_floats(&s->model, c->attention, c->batch_size, c->seq_len, n_threads);
    if (bytes > (double)SRV_TRAIN_MAX_BYTES)
        return fail(&e, "batch_size",
                    "training this model on batch_size x seq_len = %d x %d needs about %.1f GiB; "
                    "at most %.0f GiB: make the batch, the sequences or the model smaller",
                    c->batch_size, c->seq_len, bytes / (1 << 30),
                    (double)SRV_TRAIN_MAX_BYTES / (1 << 30));
    p->est_bytes = (size_t)bytes;
    return 0;
}

json_t *srv_json_float(float f)
{
    char buf[32];
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        if (strtof(buf, NULL) == f)
            break;
    }
    return json_real(strtod(buf, NULL));
}

json_t *srv_train_params_json(const srv_train_params *p)
{
    const tfm_train_spec *s = &p->spec;
    const tfm_train_config *c = &s->train;
    const tfm_config *m = &s->model;
    json_t *o = json_pack(
        "{s:s,s:s,s:{s:i,s:i,s:i,s:i,s:i,s:i},s:i,s:i,s:i,s:o,s:i,s:o,s:o,s:o,s:I,s:i,s:i,s:i}",
        "task", s->task == TFM_TASK_RECALL ? "recall" : "text", "name", p->name, "model", "dim",
        m->dim, "n_layers", m->n_layers, "n_heads", m->n_heads, "n_kv_heads", m->n_kv_heads,
        "hidden_dim", m->hidden_dim, "max_seq_len", m->seq_len, "steps", c->steps, "batch_size",
        c->batch_size, "seq_len", c->seq_len, "learning_rate", srv_json_float(c->learning_rate),
        "warmup_steps", c->warmup_steps, "min_lr_ratio", srv_json_float(c->min_lr_ratio),
        "weight_decay", srv_json_float(c->weight_decay), "grad_clip",
        srv_json_float(c->grad_clip), "seed", (json_int_t)c->seed, "eval_every", s->eval_every,
        "eval_sequences", s->eval_sequences, "checkpoint_every", s->checkpoint_every);
    if (!o || json_object_set_new(o, "attention", json_string(tfm_attn_kernel_name(c->attention)))) {
        json_decref(o);
        return NULL;
    }
    json_t *task;
    if (s->task == TFM_TASK_RECALL)
        task = json_pack("{s:i,s:i,s:i,s:o,s:i}", "n_pairs", s->recall.n_pairs, "n_keys",
                         s->recall.n_keys, "n_values", s->recall.n_values, "absent_fraction",
                         srv_json_float(s->recall.absent_fraction), "min_pairs",
                         s->recall.min_pairs);
    else if (p->corpus[0])
        task = json_pack("{s:s,s:o}", "corpus", p->corpus, "eval_fraction",
                         srv_json_float(s->eval_fraction));
    else
        task = json_pack("{s:I,s:o}", "text_bytes", (json_int_t)p->text_len, "eval_fraction",
                         srv_json_float(s->eval_fraction));
    if (!task || json_object_set_new(o, s->task == TFM_TASK_RECALL ? "recall" : "text", task)) {
        json_decref(o);
        return NULL;
    }
    return o;
}
