/*
 * test_metrics.c — the Prometheus registry and its text exposition.
 *
 * Besides exact-text checks for a small registry, the tests run every render
 * through a strict parser written here, stricter than `promtool check
 * metrics` (which lints names and conventions but not, e.g., escaping or
 * cumulative buckets): every line is "# HELP", "# TYPE" (in that order, once
 * per family, before its samples) or `name{labels} value`; names are valid;
 * label values use only the three escapes and read back to what was set;
 * values are spelled the way Go's ParseFloat reads them (NaN, +Inf, -Inf,
 * never nan/inf/-nan); every sample belongs to the family declared above it;
 * histogram buckets have increasing le ending in +Inf, non-decreasing counts,
 * and +Inf equal to _count.  A test feeds the parser broken text to show it
 * rejects what it claims to.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metrics.h"

/* ---- a strict exposition parser ---------------------------------------- */

#define P_MAX_LABELS 8
#define P_MAX_FAMILIES 64

typedef struct psample {
    char name[128];
    int nlabels;
    char lname[P_MAX_LABELS][64];
    char *lval[P_MAX_LABELS]; /* unescaped, malloc'd */
    double value;
    char *key;                /* name + every label, for duplicate detection */
} psample;

typedef struct pfamily {
    char name[128];
    char type[16];
    char *help;               /* unescaped */
} pfamily;

typedef struct parsed {
    psample *s;
    size_t n, cap;
    pfamily fam[P_MAX_FAMILIES];
    int nfam;
    char err[512];
} parsed;

/* histogram series in progress */
typedef struct hstate {
    int active, stage; /* stage 0: buckets, 1: after _sum, 2: after _count */
    char labels[1024]; /* non-le labels, canonical */
    double last_le, last_count, inf_count;
    int nbuckets, seen_inf;
} hstate;

static void parsed_free(parsed *p)
{
    for (size_t i = 0; i < p->n; i++) {
        for (int j = 0; j < p->s[i].nlabels; j++)
            free(p->s[i].lval[j]);
        free(p->s[i].key);
    }
    for (int i = 0; i < p->nfam; i++)
        free(p->fam[i].help);
    free(p->s);
    memset(p, 0, sizeof *p);
}

static int is_alpha_(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* Reads [a-zA-Z_:][a-zA-Z0-9_:]* (or without ':' for labels) into out. */
static int p_name(const char **pp, char *out, size_t cap, int colon)
{
    const char *p = *pp;
    size_t n = 0;
    if (!(is_alpha_(*p) || (colon && *p == ':')))
        return -1;
    while (is_alpha_(*p) || is_digit(*p) || (colon && *p == ':')) {
        if (n + 1 >= cap)
            return -1;
        out[n++] = *p++;
    }
    out[n] = '\0';
    *pp = p;
    return 0;
}

/* The value grammar our renderer promises: NaN, +Inf, -Inf, or
 * -?digits(.digits)?([eE][+-]?digits)?  (all of which ParseFloat accepts). */
static int p_value(const char *s, double *out)
{
    if (!strcmp(s, "NaN"))
        return *out = NAN, 0;
    if (!strcmp(s, "+Inf"))
        return *out = INFINITY, 0;
    if (!strcmp(s, "-Inf"))
        return *out = -INFINITY, 0;
    const char *p = s;
    if (*p == '-')
        p++;
    if (!is_digit(*p))
        return -1;
    while (is_digit(*p))
        p++;
    if (*p == '.') {
        p++;
        if (!is_digit(*p))
            return -1;
        while (is_digit(*p))
            p++;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-')
            p++;
        if (!is_digit(*p))
            return -1;
        while (is_digit(*p))
            p++;
    }
    if (*p)
        return -1;
    *out = strtod(s, NULL);
    return 0;
}

static int utf8_ok(const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    while (*s) {
        int more = *s < 0x80 ? 0 : (*s >> 5) == 6 ? 1 : (*s >> 4) == 14 ? 2
                 : (*s >> 3) == 30 ? 3 : -1;
        if (more < 0)
            return 0;
        s++;
        for (int i = 0; i < more; i++, s++)
            if ((*s & 0xC0) != 0x80)
                return 0;
    }
    return 1;
}

/* Unescape with only \\, \" (when quoted) and \n allowed; stops at the
 * closing quote (quoted) or the end of the string.  Returns malloc'd text. */
static char *p_unescape(const char **pp, int quoted)
{
    const char *p = *pp;
    char *out = malloc(strlen(p) + 1);
    size_t n = 0;
    for (;;) {
        if (*p == '\0') {
            if (quoted)
                goto bad;
            break;
        }
        if (quoted && *p == '"')
            break;
        if (*p == '\\') {
            p++;
            if (*p == '\\')
                out[n++] = '\\';
            else if (*p == 'n')
                out[n++] = '\n';
            else if (quoted && *p == '"')
                out[n++] = '"';
            else
                goto bad;
            p++;
            continue;
        }
        out[n++] = *p++;
    }
    out[n] = '\0';
    *pp = p;
    return out;
bad:
    free(out);
    return NULL;
}

#define PFAIL(...)                                                                            \
    do {                                                                                      \
        int k_ = snprintf(p->err, sizeof p->err, "line %d: ", lineno);                        \
        snprintf(p->err + k_, sizeof p->err - (size_t)k_, __VA_ARGS__);                       \
        goto fail;                                                                            \
    } while (0)

static int hist_done(const hstate *h) { return !h->active || h->stage == 2; }

static int cmp_key(const void *a, const void *b)
{
    return strcmp(((const psample *)a)->key, ((const psample *)b)->key);
}

/* Parses `len` bytes of `text`; 0 when valid, else -1 with p->err set. */
static int strict_parse(const char *text, size_t len, parsed *p)
{
    memset(p, 0, sizeof *p);
    int lineno = 0, phase = 0; /* phase 0: HELP seen, TYPE due; 1: samples allowed */
    pfamily *fam = NULL;
    hstate h = {0};
    char *copy = NULL;
    if (strlen(text) != len)
        PFAIL("NUL inside the text or wrong length");
    if (len > 0 && text[len - 1] != '\n')
        PFAIL("text does not end with a newline");
    copy = strdup(text);
    for (char *line = copy, *nl; *line; line = nl + 1) {
        nl = strchr(line, '\n');
        *nl = '\0';
        lineno++;
        if (*line == '\0')
            PFAIL("empty line");
        if (*line == '#') {
            const char *q = line;
            char name[128];
            int help = !strncmp(line, "# HELP ", 7), type = !strncmp(line, "# TYPE ", 7);
            if (!help && !type)
                PFAIL("comment that is neither HELP nor TYPE: %s", line);
            q += 7;
            if (p_name(&q, name, sizeof name, 1) != 0 || *q != ' ')
                PFAIL("bad metric name in %s", line);
            q++;
            if (help) {
                if (fam && !hist_done(&h))
                    PFAIL("histogram series of %s incomplete", fam->name);
                if (fam && phase == 0)
                    PFAIL("family %s has no TYPE", fam->name);
                for (int i = 0; i < p->nfam; i++)
                    if (!strcmp(p->fam[i].name, name))
                        PFAIL("family %s declared twice", name);
                if (p->nfam == P_MAX_FAMILIES)
                    PFAIL("too many families");
                fam = &p->fam[p->nfam++];
                snprintf(fam->name, sizeof fam->name, "%s", name);
                if (!(fam->help = p_unescape(&q, 0)))
                    PFAIL("bad escape in HELP");
                if (!utf8_ok(fam->help))
                    PFAIL("HELP not UTF-8");
                phase = 0;
                memset(&h, 0, sizeof h);
            } else {
                if (!fam || strcmp(fam->name, name) != 0 || phase != 0)
                    PFAIL("TYPE without HELP just before it: %s", line);
                if (strcmp(q, "counter") && strcmp(q, "gauge") && strcmp(q, "histogram"))
                    PFAIL("unknown type %s", q);
                snprintf(fam->type, sizeof fam->type, "%s", q);
                phase = 1;
            }
            continue;
        }

        /* a sample */
        if (!fam || phase != 1)
            PFAIL("sample before HELP and TYPE: %s", line);
        if (p->n == p->cap) {
            p->cap = p->cap ? 2 * p->cap : 64;
            p->s = realloc(p->s, p->cap * sizeof *p->s);
        }
        psample *s = &p->s[p->n++];
        memset(s, 0, sizeof *s);
        const char *q = line;
        if (p_name(&q, s->name, sizeof s->name, 1) != 0)
            PFAIL("bad sample name: %s", line);
        if (*q == '{') {
            q++;
            for (;;) {
                if (s->nlabels == P_MAX_LABELS)
                    PFAIL("too many labels");
                int k = s->nlabels;
                if (p_name(&q, s->lname[k], sizeof s->lname[k], 0) != 0)
                    PFAIL("bad label name: %s", line);
                for (int j = 0; j < k; j++)
                    if (!strcmp(s->lname[j], s->lname[k]))
                        PFAIL("duplicate label %s", s->lname[k]);
                if (q[0] != '=' || q[1] != '"')
                    PFAIL("expected =\" after label name: %s", line);
                q += 2;
                if (!(s->lval[k] = p_unescape(&q, 1)))
                    PFAIL("bad escape or unterminated label value: %s", line);
                s->nlabels++;
                if (!utf8_ok(s->lval[k]))
                    PFAIL("label value not UTF-8");
                q++; /* closing quote */
                if (*q == ',') {
                    q++;
                    continue;
                }
                if (*q != '}')
                    PFAIL("expected , or } after label value: %s", line);
                q++;
                break;
            }
        }
        if (*q != ' ' || strchr(q + 1, ' '))
            PFAIL("expected exactly one space then the value (no timestamp): %s", line);
        if (p_value(q + 1, &s->value) != 0)
            PFAIL("value not in Go ParseFloat spelling: %s", line);

        /* canonical forms: all labels (duplicates), non-le labels (histograms) */
        char all[2048] = "", nonle[1024] = "";
        const char *le = NULL;
        for (int j = 0; j < s->nlabels; j++) {
            size_t a = strlen(all), b = strlen(nonle);
            snprintf(all + a, sizeof all - a, "%s\x1f%s\x1e", s->lname[j], s->lval[j]);
            if (!strcmp(s->lname[j], "le"))
                le = s->lval[j];
            else
                snprintf(nonle + b, sizeof nonle - b, "%s\x1f%s\x1e", s->lname[j], s->lval[j]);
        }
        s->key = malloc(strlen(s->name) + strlen(all) + 2);
        sprintf(s->key, "%s\x1d%s", s->name, all);

        size_t fl = strlen(fam->name);
        int is_hist = !strcmp(fam->type, "histogram");
        const char *suffix = !strncmp(s->name, fam->name, fl) ? s->name + fl : NULL;
        if (!is_hist) {
            if (strcmp(s->name, fam->name) != 0)
                PFAIL("sample %s outside family %s", s->name, fam->name);
            if (le)
                PFAIL("le label outside a histogram bucket");
            if (!strcmp(fam->type, "counter") && !(s->value >= 0))
                PFAIL("counter value %g", s->value);
            continue;
        }
        if (!suffix ||
            (strcmp(suffix, "_bucket") && strcmp(suffix, "_sum") && strcmp(suffix, "_count")))
            PFAIL("sample %s outside histogram %s", s->name, fam->name);
        if (!strcmp(suffix, "_bucket")) {
            double le_v, c = s->value;
            if (!le || p_value(le, &le_v) != 0 || isnan(le_v))
                PFAIL("bucket without a valid le: %s", line);
            if (!(c >= 0) || c != floor(c) || isinf(c))
                PFAIL("bucket count not a count: %s", line);
            if (hist_done(&h)) {
                memset(&h, 0, sizeof h);
                h.active = 1;
                snprintf(h.labels, sizeof h.labels, "%s", nonle);
            } else if (strcmp(h.labels, nonle) != 0 || h.stage != 0) {
                PFAIL("bucket of another series before _sum/_count: %s", line);
            }
            if (h.nbuckets > 0 && !(le_v > h.last_le))
                PFAIL("le not increasing: %s", line);
            if (h.nbuckets > 0 && c < h.last_count)
                PFAIL("buckets not cumulative: %s", line);
            h.nbuckets++;
            h.last_le = le_v;
            h.last_count = c;
            if (isinf(le_v)) {
                h.seen_inf = 1;
                h.inf_count = c;
            }
        } else {
            int sum = !strcmp(suffix, "_sum");
            if (le)
                PFAIL("le label on %s", s->name);
            if (!h.active || strcmp(h.labels, nonle) != 0 || h.stage != (sum ? 0 : 1))
                PFAIL("%s out of order (buckets, _sum, _count per series): %s", suffix, line);
            if (sum && !h.seen_inf)
                PFAIL("histogram series without a +Inf bucket: %s", line);
            if (!sum && s->value != h.inf_count)
                PFAIL("_count %g != +Inf bucket %g", s->value, h.inf_count);
            h.stage = sum ? 1 : 2;
        }
    }
    if (fam && phase == 0)
        PFAIL("family %s has no TYPE", fam->name);
    if (!hist_done(&h))
        PFAIL("histogram series of %s incomplete at the end", fam->name);
    if (p->n > 1) {
        psample *sorted = malloc(p->n * sizeof *sorted);
        memcpy(sorted, p->s, p->n * sizeof *sorted);
        qsort(sorted, p->n, sizeof *sorted, cmp_key);
        size_t dup = 0;
        for (size_t i = 1; i < p->n && !dup; i++)
            if (!strcmp(sorted[i - 1].key, sorted[i].key))
                dup = i;
        char name[128];
        snprintf(name, sizeof name, "%s", sorted[dup].name);
        free(sorted);
        if (dup)
            PFAIL("duplicate sample %s", name);
    }
    free(copy);
    return 0;
fail:
    free(copy);
    return -1;
}

/* The sample `name` with label `lname`=`lval` (any labels when lname is NULL). */
static const psample *find_sample(const parsed *p, const char *name, const char *lname,
                                  const char *lval)
{
    for (size_t i = 0; i < p->n; i++) {
        if (strcmp(p->s[i].name, name) != 0)
            continue;
        if (!lname)
            return &p->s[i];
        for (int j = 0; j < p->s[i].nlabels; j++)
            if (!strcmp(p->s[i].lname[j], lname) && !strcmp(p->s[i].lval[j], lval))
                return &p->s[i];
    }
    return NULL;
}

/* Render, check with the strict parser (failing the test with the text on a
 * violation), return the text; the parse result goes to *out when non-NULL. */
static char *render_checked(srv_registry *reg, parsed *out)
{
    size_t len = 0;
    char *text = srv_metrics_render(reg, &len);
    assert_non_null(text);
    assert_int_equal(len, strlen(text));
    parsed p;
    if (strict_parse(text, len, &p) != 0) {
        fprintf(stderr, "strict parse failed: %s\n---\n%s---\n", p.err, text);
        fail();
    }
    if (out)
        *out = p;
    else
        parsed_free(&p);
    return text;
}

static const char *const L_ROUTE[] = {"route"};

/* ---- tests ------------------------------------------------------------- */

static void test_metrics_exposition_exact(void **state)
{
    (void)state;
    srv_registry *reg = srv_metrics_create();
    srv_metric *req = srv_metrics_counter(reg, "attnd_requests_total",
                                          "Requests by route and status code.", 2,
                                          (const char *[]){"route", "code"});
    srv_metric *depth = srv_metrics_gauge(reg, "attnd_queue_depth", "Requests waiting.", 0, NULL);
    double b[] = {0.005, 0.01, 0.1, 1};
    srv_metric *ttft = srv_metrics_histogram(reg, "attnd_ttft_seconds", "Time to first token.",
                                             1, L_ROUTE, b, 4);
    srv_metric *wait = srv_metrics_histogram(reg, "attnd_wait_seconds", "Queue wait.", 0, NULL,
                                             (const double[]){1}, 1);
    assert_non_null(srv_metrics_gauge(reg, "attnd_unused", "Never set.", 0, NULL));
    assert_non_null(req);
    assert_non_null(depth);
    assert_non_null(ttft);
    assert_non_null(wait);

    srv_series *ok = srv_metric_series(req, (const char *[]){"/generate", "200"});
    srv_counter_add(ok, 2);
    srv_metric_add(req, (const char *[]){"/recall", "422"}, 1);
    srv_counter_add(srv_metric_series(req, (const char *[]){"/generate", "200"}), 1);
    srv_gauge_set(srv_metric_series(depth, NULL), 4);
    srv_gauge_add(srv_metric_series(depth, NULL), -1.5);
    srv_series *t = srv_metric_series(ttft, (const char *[]){"/generate"});
    /* binary fractions, so the sum is exact */
    srv_histogram_observe(t, 0.00390625);
    srv_histogram_observe(t, 0.0625);
    srv_histogram_observe(t, 0.0625);
    srv_histogram_observe(t, 2);
    srv_histogram_observe(srv_metric_series(wait, NULL), 1); /* le is inclusive */

    const char *want =
        "# HELP attnd_requests_total Requests by route and status code.\n"
        "# TYPE attnd_requests_total counter\n"
        "attnd_requests_total{route=\"/generate\",code=\"200\"} 3\n"
        "attnd_requests_total{route=\"/recall\",code=\"422\"} 1\n"
        "# HELP attnd_queue_depth Requests waiting.\n"
        "# TYPE attnd_queue_depth gauge\n"
        "attnd_queue_depth 2.5\n"
        "# HELP attnd_ttft_seconds Time to first token.\n"
        "# TYPE attnd_ttft_seconds histogram\n"
        "attnd_ttft_seconds_bucket{route=\"/generate\",le=\"0.005\"} 1\n"
        "attnd_ttft_seconds_bucket{route=\"/generate\",le=\"0.01\"} 1\n"
        "attnd_ttft_seconds_bucket{route=\"/generate\",le=\"0.1\"} 3\n"
        "attnd_ttft_seconds_bucket{route=\"/generate\",le=\"1\"} 3\n"
        "attnd_ttft_seconds_bucket{route=\"/generate\",le=\"+Inf\"} 4\n"
        "attnd_ttft_seconds_sum{route=\"/generate\"} 2.12890625\n"
        "attnd_ttft_seconds_count{route=\"/generate\"} 4\n"
        "# HELP attnd_wait_seconds Queue wait.\n"
        "# TYPE attnd_wait_seconds histogram\n"
        "attnd_wait_seconds_bucket{le=\"1\"} 1\n"
        "attnd_wait_seconds_bucket{le=\"+Inf\"} 1\n"
        "attnd_wait_seconds_sum 1\n"
        "attnd_wait_seconds_count 1\n"
        "# HELP attnd_unused Never set.\n"
        "# TYPE attnd_unused gauge\n";
    char *text = render_checked(reg, NULL);
    assert_string_equal(text, want);
    free(text);

    assert_true(srv_series_value(ok) == 3);
    assert_int_equal(srv_histogram_count(t), 4);
    assert_true(srv_series_value(t) == 2.12890625);
    srv_metrics_destroy(reg);
}

static void test_metrics_series_identity(void **state)
{
    (void)state;
    srv_registry *reg = srv_metrics_create();
    srv_metric *c = srv_metrics_counter(reg, "c_total", "c", 2, (const char *[]){"a", "b"});
    srv_series *s1 = srv_metric_series(c, (const char *[]){"x", "y"});
    assert_non_null(s1);
    assert_ptr_equal(srv_metric_series(c, (const char *[]){"x", "y"}), s1);
    /* the key keeps values apart: ("xy","") is not ("x","y") */
    srv_series *s2 = srv_metric_series(c, (const char *[]){"xy", ""});
    assert_non_null(s2);
    assert_ptr_not_equal(s1, s2);
    srv_metric *g = srv_metrics_gauge(reg, "g", "g", 0, NULL);
    assert_ptr_equal(srv_metric_series(g, NULL), srv_metric_series(g, NULL));
    /* updates of the wrong type and negative counter adds are ignored */
    srv_counter_add(s1, 5);
    srv_counter_add(s1, -1);
    srv_counter_add(s1, NAN);
    srv_gauge_set(s1, 100);
    srv_gauge_add(s1, 100);
    srv_histogram_observe(s1, 100);
    assert_true(srv_series_value(s1) == 5);
    assert_int_equal(srv_histogram_count(s1), 0);
    /* NULL series: every update is a no-op */
    srv_counter_add(NULL, 1);
    srv_gauge_set(NULL, 1);
    srv_gauge_add(NULL, 1);
    srv_histogram_observe(NULL, 1);
    srv_metric_add(NULL, NULL, 1);
    assert_true(srv_series_value(NULL) == 0);
    assert_int_equal(srv_histogram_count(NULL), 0);
    srv_metrics_destroy(reg);
}

static void test_metrics_hidden_series(void **state)
{
    (void)state;
    srv_registry *reg = srv_metrics_create();
    srv_metric *g = srv_metrics_gauge(reg, "loss", "Loss per job.", 1, (const char *[]){"job_id"});
    srv_series *a = srv_metric_series(g, (const char *[]){"a"});
    srv_series *b = srv_metric_series(g, (const char *[]){"b"});
    srv_gauge_set(a, 1.5);
    srv_gauge_set(b, 2);
    srv_series_set_hidden(a, 1);
    srv_series_set_hidden(NULL, 1); /* a no-op */
    char *text = render_checked(reg, NULL);
    assert_string_equal(text, "# HELP loss Loss per job.\n# TYPE loss gauge\nloss{job_id=\"b\"} 2\n");
    free(text);
    /* hidden, the value is kept and still updated */
    srv_gauge_set(a, 0.5);
    assert_true(srv_series_value(a) == 0.5);
    srv_series_set_hidden(b, 1);
    text = render_checked(reg, NULL);
    assert_string_equal(text, "# HELP loss Loss per job.\n# TYPE loss gauge\n");
    free(text);
    srv_series_set_hidden(a, 0);
    assert_ptr_equal(srv_metric_series(g, (const char *[]){"a"}), a);
    text = render_checked(reg, NULL);
    assert_string_equal(text, "# HELP loss Loss per job.\n# TYPE loss gauge\nloss{job_id=\"a\"} 0.5\n");
    free(text);
    srv_metrics_destroy(reg);
}

static void test_metrics_escaping(void **state)
{
    (void)state;
    srv_registry *reg = srv_metrics_create();
    const char *help = "A \"quoted\" back\\slash and\nnewline.";
    const char *val = "a\"b\\c\nd";
    srv_metric *c = srv_metrics_counter(reg, "esc_total", help, 1, (const char *[]){"v"});
    srv_counter_add(srv_metric_series(c, (const char *[]){val}), 1);
    srv_metric *h = srv_metrics_histogram(reg, "esc_seconds", "h", 1, (const char *[]){"v"},
                                          (const double[]){0.5}, 1);
    srv_histogram_observe(srv_metric_series(h, (const char *[]){"\\\"\n"}), 0.25);

    parsed p;
    char *text = render_checked(reg, &p);
    const char *want =
        "# HELP esc_total A \"quoted\" back\\\\slash and\\nnewline.\n"
        "# TYPE esc_total counter\n"
        "esc_total{v=\"a\\\"b\\\\c\\nd\"} 1\n"
        "# HELP esc_seconds h\n"
        "# TYPE esc_seconds histogram\n"
        "esc_seconds_bucket{v=\"\\\\\\\"\\n\",le=\"0.5\"} 1\n"
        "esc_seconds_bucket{v=\"\\\\\\\"\\n\",le=\"+Inf\"} 1\n"
        "esc_seconds_sum{v=\"\\\\\\\"\\n\"} 0.25\n"
        "esc_seconds_count{v=\"\\\\\\\"\\n\"} 1\n";
    assert_string_equal(text, want);
    /* and they read back to what was set */
    assert_string_equal(p.fam[0].help, help);
    assert_non_null(find_sample(&p, "esc_total", "v", val));
    assert_non_null(find_sample(&p, "esc_seconds_count", "v", "\\\"\n"));
    parsed_free(&p);
    free(text);
    srv_metrics_destroy(reg);
}

static void test_metrics_strict_parse_kitchen_sink(void **state)
{
    (void)state;
    srv_registry *reg = srv_metrics_create();
    const char *const odd[] = {"", "h\xc3\xa9llo \xe2\x9c\x93", "a,b=\"c\"}", "{x} y", "\\n",
                               "tab\there", "# not a comment"};
    size_t nodd = sizeof odd / sizeof *odd;
    srv_metric *c = srv_metrics_counter(reg, "k_total", "k", 2, (const char *[]){"a", "b"});
    srv_metric *g = srv_metrics_gauge(reg, "k_gauge", "with } and {braces}", 1,
                                      (const char *[]){"a"});
    srv_metric *h0 = srv_metrics_histogram(reg, "k_nobounds", "only +Inf", 0, NULL, NULL, 0);
    double eb[8];
    assert_int_equal(srv_buckets_exponential(1e-4, 10, 8, eb), 0);
    srv_metric *h = srv_metrics_histogram(reg, "k_seconds", "h", 1, (const char *[]){"a"}, eb, 8);
    assert_non_null(srv_metrics_counter(reg, "k_empty_total", "no series", 1,
                                        (const char *[]){"a"}));
    for (size_t i = 0; i < nodd; i++) {
        srv_series *cs = srv_metric_series(c, (const char *[]){odd[i], odd[nodd - 1 - i]});
        srv_counter_add(cs, (double)i);
        srv_gauge_set(srv_metric_series(g, (const char *[]){odd[i]}), i % 2 ? NAN : -(double)i / 3);
        srv_series *s = srv_metric_series(h, (const char *[]){odd[i]});
        for (int k = 0; k < 50; k++)
            srv_histogram_observe(s, pow(10, -5 + (double)((k + (int)i) % 10)) * 1.5);
        srv_histogram_observe(s, NAN); /* +Inf bucket, and a NaN sum */
    }
    srv_histogram_observe(srv_metric_series(h0, NULL), 3);
    srv_histogram_observe(srv_metric_series(h0, NULL), -INFINITY);

    parsed p;
    char *text = render_checked(reg, &p);
    assert_int_equal(p.nfam, 5);
    assert_string_equal(p.fam[1].help, "with } and {braces}");
    assert_string_equal(p.fam[4].name, "k_empty_total");
    for (size_t i = 0; i < nodd; i++) {
        const psample *s = find_sample(&p, "k_total", "a", odd[i]);
        assert_non_null(s);
        assert_string_equal(s->lval[1], odd[nodd - 1 - i]);
        assert_true(s->value == (double)i);
        s = find_sample(&p, "k_seconds_count", "a", odd[i]);
        assert_non_null(s);
        assert_true(s->value == 51);
        assert_true(isnan(find_sample(&p, "k_seconds_sum", "a", odd[i])->value));
    }
    assert_true(find_sample(&p, "k_nobounds_count", NULL, NULL)->value == 2);
    assert_true(find_sample(&p, "k_nobounds_sum", NULL, NULL)->value == -INFINITY);
    parsed_free(&p);
    free(text);
    srv_metrics_destroy(reg);
}

static void test_metrics_nan_inf_and_numbers(void **state)
{
    (void)state;
    srv_registry *reg = srv_metrics_create();
    srv_metric *g = srv_metrics_gauge(reg, "g", "numbers", 1, (const char *[]){"k"});
    struct { const char *k; double v; const char *want; } cases[] = {
        {"nan", NAN, "NaN"},
        {"negnan", -NAN, "NaN"},
        {"inf", INFINITY, "+Inf"},
        {"neginf", -INFINITY, "-Inf"},
        {"negzero", -0.0, "0"},
        {"int", 123456789, "123456789"},
        {"negint", -42, "-42"},
        {"big_int", 9007199254740991.0, "9007199254740991"},
        {"tenth", 0.1, "0.1"},
        {"third", 1.0 / 3, "0.3333333333333333"},      /* 16 digits suffice */
        {"sum", 0.1 + 0.2, "0.30000000000000004"},     /* 17 needed */
        {"neg", -2.5, "-2.5"},
        {"huge", 1e300, "1e+300"},
        {"tiny", 1.5e-7, "1.5e-07"},
        {"denorm", 5e-324, "4.94065645841247e-324"},  /* 15 digits at least */
        {"max", 1.7976931348623157e308, "1.7976931348623157e+308"},
    };
    size_t n = sizeof cases / sizeof *cases;
    for (size_t i = 0; i < n; i++)
        srv_gauge_set(srv_metric_series(g, (const char *[]){cases[i].k}), cases[i].v);
    srv_gauge_set(srv_metric_series(g, (const char *[]){"two53"}), 9007199254740992.0);
    parsed p;
    char *text = render_checked(reg, &p);
    for (size_t i = 0; i < n; i++) {
        char line[128];
        snprintf(line, sizeof line, "g{k=\"%s\"} %s\n", cases[i].k, cases[i].want);
        if (!strstr(text, line)) {
            fprintf(stderr, "missing %s in\n%s", line, text);
            fail();
        }
    }
    /* 2^53 is past the integer range: whatever the spelling, it reads back */
    assert_true(find_sample(&p, "g", "k", "two53")->value == 9007199254740992.0);
    const char *bad[] = {" nan", " -nan", " inf", " -inf", "+inf", "NAN", "INF"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_null(strstr(text, bad[i]));
    parsed_free(&p);
    free(text);
    srv_metrics_destroy(reg);
}

static void test_metrics_invalid_rejected(void **state)
{
    (void)state;
    srv_registry *reg = srv_metrics_create();
    const double ok_b[] = {1, 2};
    const char *const five[] = {"a", "b", "c", "d", "e"};
    assert_null(srv_metrics_counter(NULL, "x", "h", 0, NULL));
    assert_null(srv_metrics_counter(reg, NULL, "h", 0, NULL));
    assert_null(srv_metrics_counter(reg, "", "h", 0, NULL));
    assert_null(srv_metrics_counter(reg, "1abc", "h", 0, NULL));
    assert_null(srv_metrics_counter(reg, "a-b", "h", 0, NULL));
    assert_null(srv_metrics_counter(reg, "a b", "h", 0, NULL));
    assert_null(srv_metrics_counter(reg, "caf\xc3\xa9", "h", 0, NULL));
    assert_null(srv_metrics_counter(reg, "x", NULL, 0, NULL));
    assert_null(srv_metrics_counter(reg, "x", "", 0, NULL));
    assert_null(srv_metrics_counter(reg, "x", "bad \xff utf-8", 0, NULL));
    assert_null(srv_metrics_counter(reg, "x", "h", -1, NULL));
    assert_null(srv_metrics_counter(reg, "x", "h", 1, NULL));
    assert_null(srv_metrics_counter(reg, "x", "h", 5, five));
    assert_null(srv_metrics_counter(reg, "x", "h", 1, (const char *[]){"a:b"}));
    assert_null(srv_metrics_counter(reg, "x", "h", 1, (const char *[]){"9a"}));
    assert_null(srv_metrics_counter(reg, "x", "h", 1, (const char *[]){""}));
    assert_null(srv_metrics_counter(reg, "x", "h", 1, (const char *[]){NULL}));
    assert_null(srv_metrics_counter(reg, "x", "h", 1, (const char *[]){"__name__"}));
    assert_null(srv_metrics_counter(reg, "x", "h", 2, (const char *[]){"a", "a"}));
    assert_null(srv_metrics_histogram(reg, "x", "h", 1, (const char *[]){"le"}, ok_b, 2));
    /* buckets */
    assert_null(srv_metrics_histogram(reg, "x", "h", 0, NULL, (const double[]){2, 1}, 2));
    assert_null(srv_metrics_histogram(reg, "x", "h", 0, NULL, (const double[]){1, 1}, 2));
    assert_null(srv_metrics_histogram(reg, "x", "h", 0, NULL, (const double[]){1, NAN}, 2));
    assert_null(srv_metrics_histogram(reg, "x", "h", 0, NULL, (const double[]){NAN}, 1));
    assert_null(srv_metrics_histogram(reg, "x", "h", 0, NULL, (const double[]){1, INFINITY}, 2));
    assert_null(srv_metrics_histogram(reg, "x", "h", 0, NULL, (const double[]){-INFINITY, 1}, 2));
    assert_null(srv_metrics_histogram(reg, "x", "h", 0, NULL, NULL, 2));
    assert_null(srv_metrics_histogram(reg, "x", "h", 0, NULL, ok_b, -1));
    assert_null(srv_metrics_histogram(reg, "x", "h", 0, NULL, ok_b, SRV_METRICS_MAX_BUCKETS + 1));
    double eb[SRV_METRICS_MAX_BUCKETS + 1];
    assert_int_equal(srv_buckets_exponential(0, 2, 4, eb), -1);
    assert_int_equal(srv_buckets_exponential(-1, 2, 4, eb), -1);
    assert_int_equal(srv_buckets_exponential(1, 1, 4, eb), -1);
    assert_int_equal(srv_buckets_exponential(1, NAN, 4, eb), -1);
    assert_int_equal(srv_buckets_exponential(1, 2, 0, eb), -1);
    assert_int_equal(srv_buckets_exponential(1, 2, SRV_METRICS_MAX_BUCKETS + 1, eb), -1);
    assert_int_equal(srv_buckets_exponential(1e300, 1e10, 4, eb), -1); /* overflows to inf */
    assert_int_equal(srv_buckets_exponential(1, 2, 4, NULL), -1);
    assert_int_equal(srv_buckets_exponential(0.001, 2, 4, eb), 0);
    assert_true(eb[0] == 0.001 && eb[1] == 0.002 && eb[3] == 0.008);
    /* names clash with an existing family or a histogram's sample names */
    assert_non_null(srv_metrics_histogram(reg, "lat_seconds", "h", 0, NULL, ok_b, 2));
    assert_non_null(srv_metrics_counter(reg, "a:b_total", "colons are legal", 0, NULL));
    assert_null(srv_metrics_gauge(reg, "lat_seconds", "h", 0, NULL));
    assert_null(srv_metrics_counter(reg, "lat_seconds_count", "h", 0, NULL));
    assert_null(srv_metrics_gauge(reg, "lat_seconds_sum", "h", 0, NULL));
    assert_null(srv_metrics_gauge(reg, "lat_seconds_bucket", "h", 0, NULL));
    assert_non_null(srv_metrics_counter(reg, "req_count", "h", 0, NULL));
    assert_null(srv_metrics_histogram(reg, "req", "h", 0, NULL, ok_b, 2));
    assert_non_null(srv_metrics_gauge(reg, "lat_seconds_total", "not a histogram sample", 0, NULL));
    /* series */
    srv_metric *c = srv_metrics_counter(reg, "c_total", "h", 1, (const char *[]){"a"});
    assert_non_null(c);
    assert_null(srv_metric_series(NULL, NULL));
    assert_null(srv_metric_series(c, NULL));
    assert_null(srv_metric_series(c, (const char *[]){NULL}));
    assert_null(srv_metric_series(c, (const char *[]){"bad \xff"}));
    assert_null(srv_metric_series(c, (const char *[]){"overlong \xc0\xaf"}));
    assert_null(srv_metric_series(c, (const char *[]){"surrogate \xed\xa0\x80"}));
    assert_null(srv_metric_series(c, (const char *[]){"truncated \xe2\x9c"}));
    assert_non_null(srv_metric_series(c, (const char *[]){"fine \xe2\x9c\x93 \xf0\x9f\x98\x80"}));
    assert_int_equal(srv_metrics_on_render(NULL, NULL, NULL), -1);
    assert_int_equal(srv_metrics_on_render(reg, NULL, NULL), -1);
    assert_null(srv_metrics_render(NULL, NULL));
    char *text = render_checked(reg, NULL); /* what was accepted still renders valid */
    free(text);
    srv_metrics_destroy(reg);
    srv_metrics_destroy(NULL);
}

typedef struct coll_ctx {
    srv_metric *g;
    int calls;
} coll_ctx;

static void collect(srv_registry *reg, void *ctx)
{
    (void)reg;
    coll_ctx *c = ctx;
    c->calls++;
    /* creating series from a collector must not deadlock */
    srv_gauge_set(srv_metric_series(c->g, (const char *[]){"calls"}), c->calls);
}

static void collect_second(srv_registry *reg, void *ctx)
{
    (void)reg;
    coll_ctx *c = ctx;
    /* runs after the first collector, in registration order */
    srv_gauge_set(srv_metric_series(c->g, (const char *[]){"seen"}), c->calls);
}

static void test_metrics_collector(void **state)
{
    (void)state;
    srv_registry *reg = srv_metrics_create();
    coll_ctx ctx = {srv_metrics_gauge(reg, "depth", "refreshed", 1, (const char *[]){"k"}), 0};
    assert_int_equal(srv_metrics_on_render(reg, collect, &ctx), 0);
    assert_int_equal(srv_metrics_on_render(reg, collect_second, &ctx), 0);
    char *text = render_checked(reg, NULL);
    assert_string_equal(text, "# HELP depth refreshed\n# TYPE depth gauge\n"
                              "depth{k=\"calls\"} 1\ndepth{k=\"seen\"} 1\n");
    free(text);
    text = render_checked(reg, NULL);
    assert_non_null(strstr(text, "depth{k=\"calls\"} 2\n"));
    assert_int_equal(ctx.calls, 2);
    free(text);
    srv_metrics_destroy(reg);
}

/* ---- concurrency -------------------------------------------------------- */

#define N_THREADS 4
#define N_ITERS 100000

typedef struct shared {
    srv_registry *reg;
    srv_metric *cm, *hm;
    srv_series *c, *g, *h;
    atomic_int done;
    int renders;
    int render_failed;
} shared;

static void *worker(void *arg)
{
    shared *sh = arg;
    for (int i = 0; i < N_ITERS; i++) {
        srv_counter_add(sh->c, 1);
        srv_gauge_add(sh->g, 1);
        srv_histogram_observe(sh->h, (double)(i % 3)); /* 0, 1, 2 */
        if (i % 5000 == 0) {
            /* lookups and creations race with each other and with render */
            char v[32];
            snprintf(v, sizeof v, "v%d", i / 5000);
            srv_counter_add(srv_metric_series(sh->cm, (const char *[]){v}), 1);
            srv_histogram_observe(srv_metric_series(sh->hm, (const char *[]){v}), 0.5);
        }
    }
    return NULL;
}

static void *renderer(void *arg)
{
    shared *sh = arg;
    while (!atomic_load(&sh->done)) {
        size_t len;
        char *text = srv_metrics_render(sh->reg, &len);
        parsed p;
        if (!text || strict_parse(text, len, &p) != 0) {
            if (text) {
                fprintf(stderr, "render during updates: %s\n", p.err);
                parsed_free(&p);
            }
            sh->render_failed = 1;
        } else {
            parsed_free(&p);
        }
        free(text);
        sh->renders++;
    }
    return NULL;
}

static void test_metrics_concurrent_updates_exact(void **state)
{
    (void)state;
    shared sh = {0};
    sh.reg = srv_metrics_create();
    srv_metric *c = srv_metrics_counter(sh.reg, "c_total", "c", 0, NULL);
    srv_metric *g = srv_metrics_gauge(sh.reg, "g", "g", 0, NULL);
    srv_metric *h = srv_metrics_histogram(sh.reg, "h", "h", 0, NULL, (const double[]){0.5, 1.5}, 2);
    sh.cm = srv_metrics_counter(sh.reg, "per_total", "p", 1, (const char *[]){"v"});
    sh.hm = srv_metrics_histogram(sh.reg, "per_seconds", "p", 1, (const char *[]){"v"},
                                  (const double[]){1}, 1);
    sh.c = srv_metric_series(c, NULL);
    sh.g = srv_metric_series(g, NULL);
    sh.h = srv_metric_series(h, NULL);
    atomic_init(&sh.done, 0);

    pthread_t th[N_THREADS], rt;
    assert_int_equal(pthread_create(&rt, NULL, renderer, &sh), 0);
    for (int i = 0; i < N_THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, worker, &sh), 0);
    for (int i = 0; i < N_THREADS; i++)
        pthread_join(th[i], NULL);
    atomic_store(&sh.done, 1);
    pthread_join(rt, NULL);
    assert_false(sh.render_failed);
    assert_true(sh.renders > 0);

    const double total = (double)N_THREADS * N_ITERS;
    assert_true(srv_series_value(sh.c) == total);
    assert_true(srv_series_value(sh.g) == total);
    assert_int_equal(srv_histogram_count(sh.h), N_THREADS * N_ITERS);
    /* i % 3 over 100000: 33334 zeros, 33333 ones, 33333 twos per thread */
    assert_true(srv_series_value(sh.h) == N_THREADS * (33333.0 * 1 + 33333.0 * 2));

    parsed p;
    char *text = render_checked(sh.reg, &p);
    assert_true(find_sample(&p, "h_bucket", "le", "0.5")->value == N_THREADS * 33334.0);
    assert_true(find_sample(&p, "h_bucket", "le", "1.5")->value == N_THREADS * 66667.0);
    assert_true(find_sample(&p, "h_bucket", "le", "+Inf")->value == total);
    assert_true(find_sample(&p, "h_count", NULL, NULL)->value == total);
    for (int k = 0; k < N_ITERS / 5000; k++) {
        char v[32];
        snprintf(v, sizeof v, "v%d", k);
        assert_true(find_sample(&p, "per_total", "v", v)->value == N_THREADS);
        assert_true(find_sample(&p, "per_seconds_count", "v", v)->value == N_THREADS);
    }
    parsed_free(&p);
    free(text);
    srv_metrics_destroy(sh.reg);
}

/* ---- scale -------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void test_metrics_many_series_render_linear(void **state)
{
    (void)state;
    srv_registry *reg = srv_metrics_create();
    srv_metric *c = srv_metrics_counter(reg, "many_total", "many", 1, (const char *[]){"id"});
    srv_metric *h = srv_metrics_histogram(reg, "many_seconds", "many", 1, (const char *[]){"id"},
                                          (const double[]){0.1, 1, 10}, 3);
    enum { N = 10000 };
    double t0 = now_s();
    for (int i = 0; i < N; i++) {
        char id[16];
        snprintf(id, sizeof id, "%d", i);
        srv_counter_add(srv_metric_series(c, (const char *[]){id}), i);
        if (i < N / 10)
            srv_histogram_observe(srv_metric_series(h, (const char *[]){id}), i * 0.01);
    }
    double t1 = now_s();
    size_t len;
    char *text = srv_metrics_render(reg, &len);
    double t2 = now_s();
    assert_non_null(text);
    size_t lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += text[i] == '\n';
    assert_int_equal(lines, 2 + N + 2 + (N / 10) * 6);
    free(text);
    /* generous bounds (sanitizer builds are slow): quadratic would take seconds */
    assert_true(t1 - t0 < 2.0);
    assert_true(t2 - t1 < 0.5);
    text = render_checked(reg, NULL);
    free(text);
    srv_metrics_destroy(reg);
}

/* ---- the parser itself rejects what it should ---------------------------- */

static void test_metrics_parser_rejects_bad_text(void **state)
{
    (void)state;
    static const char *const good =
        "# HELP a x\n# TYPE a counter\na{l=\"v\"} 1\n"
        "# HELP h y\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n"
        "h_sum 3.5\nh_count 2\n";
    static const char *const bad[] = {
        "# TYPE a counter\na 1\n",                              /* no HELP */
        "# HELP a x\na 1\n",                                    /* no TYPE */
        "# HELP a x\n# TYPE a counter\na 1",                    /* no final newline */
        "# HELP a x\n# TYPE a counter\n\na 1\n",                /* empty line */
        "# HELP a x\n# TYPE a counter\n# HELP a x\n# TYPE a counter\n", /* twice */
        "# HELP a x\n# TYPE a counter\n# other\n",              /* other comment */
        "# HELP a x\n# TYPE a summary\n",                       /* unknown type */
        "# HELP a x\n# TYPE a gauge\na -nan\n",
        "# HELP a x\n# TYPE a gauge\na nan\n",
        "# HELP a x\n# TYPE a gauge\na inf\n",
        "# HELP a x\n# TYPE a gauge\na -inf\n",
        "# HELP a x\n# TYPE a gauge\na 1.\n",
        "# HELP a x\n# TYPE a counter\na -1\n",                  /* negative counter */
        "# HELP a x\n# TYPE a counter\nb 1\n",                  /* undeclared family */
        "# HELP a x\n# TYPE a counter\na 1 1700000000\n",       /* timestamp */
        "# HELP a x\n# TYPE a counter\na  1\n",
        "# HELP a x\n# TYPE a counter\na{l=\"x\"y\"} 1\n",      /* unescaped quote */
        "# HELP a x\n# TYPE a counter\na{l=\"x\\ty\"} 1\n",     /* unknown escape */
        "# HELP a x\n# TYPE a counter\na{l=\"x} 1\n",           /* unterminated */
        "# HELP a x\n# TYPE a counter\na{l=\"x\",} 1\n",        /* trailing comma */
        "# HELP a x\n# TYPE a counter\na{l=\"x\",l=\"y\"} 1\n", /* duplicate label */
        "# HELP a x\n# TYPE a counter\na{1l=\"x\"} 1\n",        /* label name */
        "# HELP a x\n# TYPE a counter\na{l=\"\xff\"} 1\n",      /* not UTF-8 */
        "# HELP a x\n# TYPE a counter\na 1\na 2\n",             /* duplicate series */
        "# HELP a b\\q\n# TYPE a counter\n",                    /* bad HELP escape */
        "# HELP 1a x\n# TYPE 1a counter\n",                     /* bad name */
        "# HELP h y\n# TYPE h histogram\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\n"
        "h_sum 1\nh_count 2\n",                                 /* not cumulative */
        "# HELP h y\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n"
        "h_sum 1\nh_count 3\n",                                 /* +Inf != count */
        "# HELP h y\n# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\n"
        "h_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n",        /* le decreasing */
        "# HELP h y\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", /* no +Inf */
        "# HELP h y\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",      /* no _sum */
        "# HELP h y\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\n",        /* no _count */
        "# HELP h y\n# TYPE h histogram\nh_bucket{le=\"inf\"} 1\nh_sum 1\nh_count 1\n",
        "# HELP h y\n# TYPE h histogram\nh 1\n",                /* bare histogram name */
        "# HELP h y\n# TYPE h histogram\nh_total 1\n",
        "# HELP h y\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1.5\nh_sum 1\nh_count 1.5\n",
        "# HELP a x\n# TYPE a gauge\na{le=\"1\"} 1\n",           /* le outside buckets */
    };
    parsed p;
    assert_int_equal(strict_parse(good, strlen(good), &p), 0);
    assert_int_equal(p.n, 5);
    parsed_free(&p);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        if (strict_parse(bad[i], strlen(bad[i]), &p) == 0) {
            fprintf(stderr, "accepted bad text #%zu:\n%s", i, bad[i]);
            fail();
        }
        parsed_free(&p);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics_exposition_exact),
        cmocka_unit_test(test_metrics_series_identity),
        cmocka_unit_test(test_metrics_hidden_series),
        cmocka_unit_test(test_metrics_escaping),
        cmocka_unit_test(test_metrics_strict_parse_kitchen_sink),
        cmocka_unit_test(test_metrics_nan_inf_and_numbers),
        cmocka_unit_test(test_metrics_invalid_rejected),
        cmocka_unit_test(test_metrics_collector),
        cmocka_unit_test(test_metrics_concurrent_updates_exact),
        cmocka_unit_test(test_metrics_many_series_render_linear),
        cmocka_unit_test(test_metrics_parser_rejects_bad_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
