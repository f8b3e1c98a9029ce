/*
 * metrics.c — Prometheus registry and text exposition (format 0.0.4).
 *
 * Layout: a registry holds a list of families (srv_metric); a family holds a
 * list of series (srv_series) in creation order plus a hash table (chained,
 * power-of-two size, doubled at load 1) for lookup by label values.
 *
 * Concurrency, and why it is cheap where it matters:
 * - Values are C11 atomics updated with relaxed ordering: a metric needs each
 *   update counted exactly once, not ordered against other memory.  Doubles
 *   are stored as their bit patterns in _Atomic uint64_t and added with a CAS
 *   loop (there is no atomic double add in C11).
 * - Structure changes (new family, series, collector) take `reg->mu`.  The
 *   lists are append-only and every node is fully built before it is linked
 *   with a release store, so the renderer walks them with acquire loads and
 *   never takes the mutex; it may miss a series created during the walk.
 * - Histograms keep non-cumulative bucket counts (+Inf last) and no separate
 *   count: the renderer accumulates the buckets it read and prints that
 *   total as both le="+Inf" and _count, so they agree in every scrape.
 *
 * Everything a series renders that does not change (its escaped label
 * string, a family's HELP/TYPE block and le strings) is formatted once at
 * creation, so a render is one pass of memcpy plus number formatting into a
 * doubling buffer: linear in the output.  Numbers use the C numeric locale
 * (attnd never calls setlocale).
 */
#include "metrics.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NUM_MAX 32 /* "-1.2345678901234567e-308" fits with room */

struct srv_series {
    _Atomic(srv_series *) next; /* creation order; published with release */
    srv_series *hnext;          /* hash chain; under reg->mu */
    srv_metric *m;
    srv_metric_type type;       /* copy of m->type, for the hot path */
    uint64_t hash;
    char *key;                  /* label values, each NUL-terminated, back to back */
    char *labels;               /* `a="x",b="y"` escaped, no braces; "" without labels */
    size_t labels_len;
    atomic_int hidden;          /* not rendered (srv_series_set_hidden) */
    _Atomic uint64_t value;     /* double bits: counter/gauge value, histogram sum */
    _Atomic uint64_t counts[];  /* histogram: nbounds + 1 buckets, +Inf last */
};

struct srv_metric {
    _Atomic(srv_metric *) next; /* registration order */
    srv_registry *reg;
    srv_metric_type type;
    char *name;
    size_t name_len;
    char *header;               /* "# HELP ...\n# TYPE ...\n" */
    size_t header_len;
    int nlabels;
    char *label_names[SRV_METRICS_MAX_LABELS];
    int nbounds;
    double *bounds;             /* (nbounds) */
    char (*le)[NUM_MAX];        /* (nbounds) bounds formatted for le="..." */
    _Atomic(srv_series *) first;
    srv_series *last;           /* under reg->mu, as are the three below */
    srv_series **table;         /* (tcap) hash buckets */
    size_t tcap, nseries;
};

typedef struct collector {
    _Atomic(struct collector *) next;
    srv_metrics_collect_fn *fn;
    void *ctx;
} collector;

struct srv_registry {
    pthread_mutex_t mu;
    _Atomic(srv_metric *) first;
    srv_metric *last;           /* under mu */
    _Atomic(collector *) collectors;
    collector *clast;           /* under mu */
    _Atomic size_t last_len;    /* previous render's size: first guess for the next */
};

/* ---- small helpers ------------------------------------------------------ */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

/* Doubling, so appends are amortised O(1); after a failure only `oom` is set. */
static void sb_reserve(sbuf *b, size_t extra)
{
    if (b->oom || b->len + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    b->oom = !p;
    b->p = p ? p : b->p;
    b->cap = p ? cap : b->cap;
}

static void sb_put(sbuf *b, const char *s, size_t n)
{
    sb_reserve(b, n);
    if (!b->oom) {
        memcpy(b->p + b->len, s, n);
        b->len += n;
        b->p[b->len] = '\0';
    }
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

/* Escape for the text format: backslash and newline always, the double quote
 * inside label values only (HELP text keeps it literal). */
static void sb_escaped(sbuf *b, const char *s, int quote)
{
    const char *run = s;
    for (; *s; s++) {
        const char *esc = *s == '\\' ? "\\\\" : *s == '\n' ? "\\n"
                        : (*s == '"' && quote) ? "\\\"" : NULL;
        if (!esc)
            continue;
        sb_put(b, run, (size_t)(s - run));
        sb_put(b, esc, 2);
        run = s + 1;
    }
    sb_put(b, run, (size_t)(s - run));
}

/* Go's strconv.ParseFloat accepts every spelling produced here. */
static size_t fmt_num(char *buf, double v)
{
    if (isnan(v))
        return (size_t)snprintf(buf, NUM_MAX, "NaN");
    if (isinf(v))
        return (size_t)snprintf(buf, NUM_MAX, v > 0 ? "+Inf" : "-Inf");
    if (v == trunc(v) && fabs(v) < 9007199254740992.0) /* 2^53: exact integers */
        return (size_t)snprintf(buf, NUM_MAX, "%" PRId64, (int64_t)v);
    int n = 0;
    for (int prec = 15; prec <= 17; prec++) { /* shortest that reads back exactly */
        n = snprintf(buf, NUM_MAX, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    return (size_t)n;
}

/* A sample's value and the end of its line. */
static void sb_num_ln(sbuf *b, double v)
{
    char buf[NUM_MAX + 1];
    size_t n = fmt_num(buf, v);
    buf[n] = '\n';
    sb_put(b, buf, n + 1);
}

static void sb_u64_ln(sbuf *b, uint64_t v)
{
    char buf[NUM_MAX];
    sb_put(b, buf, (size_t)snprintf(buf, sizeof buf, "%" PRIu64 "\n", v));
}

typedef union { uint64_t u; double d; } bits;
static double u2d(uint64_t u) { return (bits){.u = u}.d; }
static uint64_t d2u(double d) { return (bits){.d = d}.u; }

#define ACQUIRE(x) atomic_load_explicit(&(x), memory_order_acquire)
#define RELAXED(x) atomic_load_explicit(&(x), memory_order_relaxed)

/* Append `node` to a singly linked list whose readers load `next` with acquire. */
#define PUBLISH(first, last, node)                                                            \
    (atomic_store_explicit((last) ? &(last)->next : &(first), (node), memory_order_release),  \
     (last) = (node))

static void atomic_add_double(_Atomic uint64_t *a, double v)
{
    uint64_t old = atomic_load_explicit(a, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(a, &old, d2u(u2d(old) + v),
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

static int valid_name(const char *s, int colon)
{
    if (!s || !*s)
        return 0;
    for (const char *p = s; *p; p++) {
        char c = *p;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                 (colon && c == ':') || (p > s && c >= '0' && c <= '9');
        if (!ok)
            return 0;
    }
    return 1;
}

/* Well-formed UTF-8: no overlong forms, surrogates or code points > U+10FFFF. */
static int valid_utf8(const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    while (*s) {
        unsigned c = *s++;
        int more;
        unsigned min;
        if (c < 0x80)
            continue;
        else if (c >= 0xC2 && c <= 0xDF)
            more = 1, min = 0x80;
        else if (c >= 0xE0 && c <= 0xEF)
            more = 2, min = 0x800;
        else if (c >= 0xF0 && c <= 0xF4)
            more = 3, min = 0x10000;
        else
            return 0;
        unsigned cp = c & (0x3Fu >> more);
        for (int i = 0; i < more; i++, s++) {
            if ((*s & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (*s & 0x3Fu);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
    }
    return 1;
}

/* x == base + "_bucket" | "_sum" | "_count" */
static int is_hist_suffix(const char *x, const char *base)
{
    size_t n = strlen(base);
    if (strncmp(x, base, n) != 0)
        return 0;
    x += n;
    return !strcmp(x, "_bucket") || !strcmp(x, "_sum") || !strcmp(x, "_count");
}

/* Do the two families share a sample name?  A histogram "h" owns h, h_bucket,
 * h_sum and h_count; two suffixed names can only coincide when the bases do,
 * since no suffix ends another. */
static int names_clash(const char *a, int ahist, const char *b, int bhist)
{
    return !strcmp(a, b) || (bhist && is_hist_suffix(a, b)) || (ahist && is_hist_suffix(b, a));
}

static uint64_t hash_values(const char *const *values, int n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a over values and their NULs */
    for (int i = 0; i < n; i++) {
        const unsigned char *p = (const unsigned char *)values[i];
        do
            h = (h ^ *p) * 1099511628211ull;
        while (*p++);
    }
    return h;
}

/* ---- registry ---------------------------------------------------------- */

srv_registry *srv_metrics_create(void)
{
    srv_registry *reg = calloc(1, sizeof *reg);
    if (reg && pthread_mutex_init(&reg->mu, NULL) != 0) {
        free(reg);
        reg = NULL;
    }
    return reg;
}

/* Teardown runs on one thread: plain (seq_cst) loads of the list links. */
static void series_free(srv_series *s)
{
    if (s) {
        free(s->key);
        free(s->labels);
        free(s);
    }
}

static void metric_free(srv_metric *m)
{
    if (!m)
        return;
    for (srv_series *s = m->first, *next; s; s = next) {
        next = s->next;
        series_free(s);
    }
    for (int i = 0; i < m->nlabels; i++)
        free(m->label_names[i]);
    free(m->name);
    free(m->header);
    free(m->bounds);
    free(m->le);
    free(m->table);
    free(m);
}

void srv_metrics_destroy(srv_registry *reg)
{
    if (!reg)
        return;
    for (srv_metric *m = reg->first, *next; m; m = next) {
        next = m->next;
        metric_free(m);
    }
    for (collector *c = reg->collectors, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    pthread_mutex_destroy(&reg->mu);
    free(reg);
}

/* ---- families ---------------------------------------------------------- */

static const char *const type_names[] = {"counter", "gauge", "histogram"};

static srv_metric *metric_create(srv_registry *reg, srv_metric_type type, const char *name,
                                 const char *help, int nlabels, const char *const *labels,
                                 const double *bounds, int nbounds)
{
    int hist = type == SRV_METRIC_HISTOGRAM;
    if (!reg || !valid_name(name, 1) || !help || !*help || !valid_utf8(help))
        return NULL;
    if (nlabels < 0 || nlabels > SRV_METRICS_MAX_LABELS || (nlabels > 0 && !labels))
        return NULL;
    for (int i = 0; i < nlabels; i++) {
        if (!valid_name(labels[i], 0) || !strncmp(labels[i], "__", 2) ||
            (hist && !strcmp(labels[i], "le")))
            return NULL;
        for (int j = 0; j < i; j++)
            if (!strcmp(labels[i], labels[j]))
                return NULL;
    }
    if (nbounds < 0 || nbounds > SRV_METRICS_MAX_BUCKETS || (nbounds > 0 && !bounds))
        return NULL;
    for (int i = 0; i < nbounds; i++)
        if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1])))
            return NULL;

    srv_metric *m = calloc(1, sizeof *m);
    sbuf hb = {0};
    if (!m)
        return NULL;
    m->reg = reg;
    m->type = type;
    m->name_len = strlen(name);
    m->name = strdup(name);
    m->nlabels = nlabels;
    for (int i = 0; i < nlabels; i++)
        if (!(m->label_names[i] = strdup(labels[i])))
            goto fail;
    m->tcap = 8;
    m->table = calloc(m->tcap, sizeof *m->table);
    if (!m->name || !m->table)
        goto fail;
    if (hist && nbounds > 0) {
        m->nbounds = nbounds;
        m->bounds = malloc((size_t)nbounds * sizeof *m->bounds);
        m->le = malloc((size_t)nbounds * sizeof *m->le);
        if (!m->bounds || !m->le)
            goto fail;
        for (int i = 0; i < nbounds; i++) {
            m->bounds[i] = bounds[i];
            fmt_num(m->le[i], bounds[i]);
        }
    }
    const char *parts[] = {"# HELP ", name, " ", NULL /* help */, "\n# TYPE ", name, " ",
                           type_names[type], "\n"};
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++)
        parts[i] ? sb_str(&hb, parts[i]) : sb_escaped(&hb, help, 0);
    if (hb.oom)
        goto fail;
    m->header = hb.p;
    m->header_len = hb.len;
    hb.p = NULL;

    pthread_mutex_lock(&reg->mu);
    srv_metric *o = RELAXED(reg->first);
    while (o && !names_clash(name, hist, o->name, o->type == SRV_METRIC_HISTOGRAM))
        o = RELAXED(o->next);
    if (!o)
        PUBLISH(reg->first, reg->last, m);
    pthread_mutex_unlock(&reg->mu);
    if (!o)
        return m;

fail:
    free(hb.p);
    metric_free(m);
    return NULL;
}

srv_metric *srv_metrics_counter(srv_registry *reg, const char *name, const char *help,
                                int nlabels, const char *const *labels)
{
    return metric_create(reg, SRV_METRIC_COUNTER, name, help, nlabels, labels, NULL, 0);
}

srv_metric *srv_metrics_gauge(srv_registry *reg, const char *name, const char *help,
                              int nlabels, const char *const *labels)
{
    return metric_create(reg, SRV_METRIC_GAUGE, name, help, nlabels, labels, NULL, 0);
}

srv_metric *srv_metrics_histogram(srv_registry *reg, const char *name, const char *help,
                                  int nlabels, const char *const *labels,
                                  const double *bounds, int nbounds)
{
    return metric_create(reg, SRV_METRIC_HISTOGRAM, name, help, nlabels, labels, bounds,
                         nbounds);
}

int srv_buckets_exponential(double start, double factor, int count, double *out)
{
    if (!out || !(start > 0) || !(factor > 1) || count < 1 || count > SRV_METRICS_MAX_BUCKETS ||
        !isfinite(start * pow(factor, count - 1)))
        return -1;
    double v = start;
    for (int i = 0; i < count; i++, v *= factor)
        out[i] = v;
    return 0;
}

/* ---- series ------------------------------------------------------------ */

static int series_matches(const srv_series *s, uint64_t h, const char *const *values, int n)
{
    if (s->hash != h)
        return 0;
    const char *p = s->key;
    for (int i = 0; i < n; i++) {
        if (strcmp(p, values[i]) != 0)
            return 0;
        p += strlen(p) + 1;
    }
    return 1;
}

/* A zeroed series, not yet linked. */
static srv_series *series_new(srv_metric *m, uint64_t h, const char *const *values)
{
    size_t ncounts = m->type == SRV_METRIC_HISTOGRAM ? (size_t)m->nbounds + 1 : 0;
    srv_series *s = calloc(1, sizeof *s + ncounts * sizeof s->counts[0]);
    sbuf key = {0}, lab = {0};
    if (!s)
        return NULL;
    s->m = m;
    s->type = m->type;
    s->hash = h;
    sb_reserve(&key, 0);
    sb_reserve(&lab, 0);
    for (int i = 0; i < m->nlabels; i++) {
        sb_put(&key, values[i], strlen(values[i]) + 1);
        if (i > 0)
            sb_put(&lab, ",", 1);
        sb_str(&lab, m->label_names[i]);
        sb_put(&lab, "=\"", 2);
        sb_escaped(&lab, values[i], 1);
        sb_put(&lab, "\"", 1);
    }
    s->key = key.p;
    s->labels = lab.p;
    if (key.oom || lab.oom) {
        series_free(s);
        return NULL;
    }
    /* shrink to fit: 10k series should not keep 10k half-empty buffers */
    char *k = realloc(key.p, key.len + 1), *l = realloc(lab.p, lab.len + 1);
    s->key = k ? k : s->key;
    s->labels = l ? l : s->labels;
    s->labels_len = lab.len;
    atomic_init(&s->value, d2u(0.0));
    for (size_t i = 0; i < ncounts; i++)
        atomic_init(&s->counts[i], 0);
    return s;
}

static srv_series *find_locked(srv_metric *m, uint64_t h, const char *const *values)
{
    for (srv_series *s = m->table[h & (m->tcap - 1)]; s; s = s->hnext)
        if (series_matches(s, h, values, m->nlabels))
            return s;
    return NULL;
}

static void table_grow_locked(srv_metric *m)
{
    size_t cap = m->tcap * 2;
    srv_series **t = calloc(cap, sizeof *t);
    if (!t)
        return; /* keep the old table: longer chains, still correct */
    for (srv_series *s = RELAXED(m->first); s; s = RELAXED(s->next)) {
        s->hnext = t[s->hash & (cap - 1)];
        t[s->hash & (cap - 1)] = s;
    }
    free(m->table);
    m->table = t;
    m->tcap = cap;
}

srv_series *srv_metric_series(srv_metric *m, const char *const *values)
{
    if (!m || (m->nlabels > 0 && !values))
        return NULL;
    for (int i = 0; i < m->nlabels; i++)
        if (!values[i] || !valid_utf8(values[i]))
            return NULL;
    uint64_t h = hash_values(values, m->nlabels);
    /* Creation allocates under the lock: it happens once per series. */
    pthread_mutex_lock(&m->reg->mu);
    srv_series *s = find_locked(m, h, values);
    if (!s && (s = series_new(m, h, values)) != NULL) {
        if (m->nseries >= m->tcap)
            table_grow_locked(m);
        s->hnext = m->table[h & (m->tcap - 1)];
        m->table[h & (m->tcap - 1)] = s;
        m->nseries++;
        PUBLISH(m->first, m->last, s);
    }
    pthread_mutex_unlock(&m->reg->mu);
    return s;
}

/* ---- updates ----------------------------------------------------------- */

void srv_counter_add(srv_series *s, double v)
{
    if (s && s->type == SRV_METRIC_COUNTER && v >= 0) /* false for NaN */
        atomic_add_double(&s->value, v);
}

void srv_gauge_set(srv_series *s, double v)
{
    if (s && s->type == SRV_METRIC_GAUGE)
        atomic_store_explicit(&s->value, d2u(v), memory_order_relaxed);
}

void srv_gauge_add(srv_series *s, double v)
{
    if (s && s->type == SRV_METRIC_GAUGE)
        atomic_add_double(&s->value, v);
}

void srv_histogram_observe(srv_series *s, double v)
{
    if (!s || s->type != SRV_METRIC_HISTOGRAM)
        return;
    /* First bound >= v; NaN compares false and lands in +Inf.  Linear: a
     * dozen bounds in practice, and the scan stays in one or two cache lines. */
    int i = 0;
    while (i < s->m->nbounds && !(v <= s->m->bounds[i]))
        i++;
    atomic_fetch_add_explicit(&s->counts[i], 1, memory_order_relaxed);
    atomic_add_double(&s->value, v);
}

void srv_metric_add(srv_metric *m, const char *const *values, double v)
{
    srv_series *s = srv_metric_series(m, values);
    srv_counter_add(s, v); /* each ignores NULL and the other types */
    srv_gauge_add(s, v);
    srv_histogram_observe(s, v);
}

void srv_series_set_hidden(srv_series *s, int hidden)
{
    if (s)
        atomic_store_explicit(&s->hidden, hidden != 0, memory_order_relaxed);
}

double srv_series_value(const srv_series *s)
{
    return s ? u2d(RELAXED(s->value)) : 0.0;
}

uint64_t srv_histogram_count(const srv_series *s)
{
    uint64_t n = 0;
    if (s && s->type == SRV_METRIC_HISTOGRAM)
        for (int i = 0; i <= s->m->nbounds; i++)
            n += RELAXED(s->counts[i]);
    return n;
}

/* ---- exposition -------------------------------------------------------- */

int srv_metrics_on_render(srv_registry *reg, srv_metrics_collect_fn *fn, void *ctx)
{
    if (!reg || !fn)
        return -1;
    collector *c = calloc(1, sizeof *c);
    if (!c)
        return -1;
    c->fn = fn;
    c->ctx = ctx;
    pthread_mutex_lock(&reg->mu);
    PUBLISH(reg->collectors, reg->clast, c);
    pthread_mutex_unlock(&reg->mu);
    return 0;
}

/* name + suffix + {labels[,le="le"]} + ' ' : the part of a line before the value */
static void sb_sample(sbuf *b, const srv_metric *m, const char *suffix, const srv_series *s,
                      const char *le)
{
    sb_put(b, m->name, m->name_len);
    sb_str(b, suffix);
    if (s->labels_len || le) {
        sb_put(b, "{", 1);
        sb_put(b, s->labels, s->labels_len);
        if (le) {
            sb_str(b, s->labels_len ? ",le=\"" : "le=\"");
            sb_str(b, le);
            sb_put(b, "\"", 1);
        }
        sb_put(b, "}", 1);
    }
    sb_put(b, " ", 1);
}

static void render_histogram(sbuf *b, const srv_metric *m, const srv_series *s)
{
    uint64_t cum = 0;
    for (int i = 0; i <= m->nbounds; i++) {
        cum += RELAXED(s->counts[i]);
        sb_sample(b, m, "_bucket", s, i < m->nbounds ? m->le[i] : "+Inf");
        sb_u64_ln(b, cum);
    }
    sb_sample(b, m, "_sum", s, NULL);
    sb_num_ln(b, u2d(RELAXED(s->value)));
    sb_sample(b, m, "_count", s, NULL);
    sb_u64_ln(b, cum);
}

char *srv_metrics_render(srv_registry *reg, size_t *len)
{
    if (!reg)
        return NULL;
    for (collector *c = ACQUIRE(reg->collectors); c; c = ACQUIRE(c->next))
        c->fn(reg, c->ctx);

    sbuf b = {0};
    sb_reserve(&b, RELAXED(reg->last_len) + 1024);
    for (srv_metric *m = ACQUIRE(reg->first); m; m = ACQUIRE(m->next)) {
        sb_put(&b, m->header, m->header_len);
        for (srv_series *s = ACQUIRE(m->first); s; s = ACQUIRE(s->next)) {
            if (RELAXED(s->hidden))
                continue;
            if (m->type == SRV_METRIC_HISTOGRAM) {
                render_histogram(&b, m, s);
            } else {
                sb_sample(&b, m, "", s, NULL);
                sb_num_ln(&b, u2d(RELAXED(s->value)));
            }
        }
    }
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    atomic_store_explicit(&reg->last_len, b.len, memory_order_relaxed);
    if (len)
        *len = b.len;
    return b.p;
}
