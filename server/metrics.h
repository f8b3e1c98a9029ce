/*
 * metrics.h — a small Prometheus registry: counters, gauges, histograms,
 * rendered in the text exposition format 0.0.4 (GET /metrics).
 *
 * Tutorial
 *
 *     srv_registry *reg = srv_metrics_create();
 *
 *     // A family: name, help, label names.  Usually created once at startup.
 *     srv_metric *req = srv_metrics_counter(reg, "attnd_requests_total",
 *         "Requests by route and status code.", 2, (const char *[]){"route", "code"});
 *
 *     // A series: the family at fixed label values.  Look it up once (a
 *     // mutex and a hash lookup) and keep the pointer; updates are lock-free.
 *     srv_series *ok = srv_metric_series(req, (const char *[]){"/generate", "200"});
 *     srv_counter_add(ok, 1);
 *
 *     double b[12];
 *     srv_buckets_exponential(0.001, 2, 12, b);             // 1 ms .. 2.048 s
 *     srv_metric *ttft = srv_metrics_histogram(reg, "attnd_ttft_seconds",
 *         "Time to first token.", 0, NULL, b, 12);
 *     srv_histogram_observe(srv_metric_series(ttft, NULL), 0.0123);
 *
 *     size_t len;
 *     char *text = srv_metrics_render(reg, &len);           // free() it
 *     srv_metrics_destroy(reg);
 *
 * Design notes
 * - Families and series are never removed before srv_metrics_destroy, so a
 *   srv_series pointer stays valid for the registry's lifetime and the hot
 *   path needs no reference counting.
 * - Hot-path updates (add/set/observe) are C11 atomics: a double lives in an
 *   _Atomic uint64_t as its bit pattern and is added with a CAS loop;
 *   histogram buckets are atomic counts.  No locks, no allocation.
 * - Creation and lookup take the registry mutex.  Families and series are
 *   appended to lists published with release stores, so rendering walks them
 *   with acquire loads and takes no lock: a scrape never stalls a lookup.
 * - A histogram's _count is rendered as the sum of the bucket counts read in
 *   that render, so le="+Inf" always equals _count even while observations
 *   race with the scrape (_sum may be one observation ahead or behind).
 * - Label values must be bounded in number (normalise routes, bucket status
 *   codes): every distinct value set is a series kept until destroy.
 * - Every update function accepts a NULL series and does nothing, so a failed
 *   lookup (out of memory, invalid label value) never crashes the caller.
 */
#ifndef SRV_METRICS_H
#define SRV_METRICS_H

#include <stddef.h>
#include <stdint.h>

#define SRV_METRICS_MAX_LABELS 4   /* label names per family */
#define SRV_METRICS_MAX_BUCKETS 64 /* finite bucket bounds per histogram */

typedef struct srv_registry srv_registry;
typedef struct srv_metric srv_metric; /* a family: name, help, type, label names */
typedef struct srv_series srv_series; /* one family at fixed label values */

typedef enum srv_metric_type {
    SRV_METRIC_COUNTER = 0,
    SRV_METRIC_GAUGE,
    SRV_METRIC_HISTOGRAM
} srv_metric_type;

/* Called at the start of every render, under no lock of the registry, so it
 * may create series and set gauges (queue depth, the core's op profile, a
 * fitted exponent).  If several threads render at once, collectors run
 * concurrently too. */
typedef void srv_metrics_collect_fn(srv_registry *reg, void *ctx);

/* ---- registry ---------------------------------------------------------- */

/* A new empty registry, or NULL when out of memory.  Owned by the caller. */
srv_registry *srv_metrics_create(void);

/* Frees the registry, its families and series; every srv_metric and
 * srv_series pointer from it becomes invalid.  No other thread may use the
 * registry during or after the call.  NULL is a no-op. */
void srv_metrics_destroy(srv_registry *reg);

/* ---- families ---------------------------------------------------------- */

/* Register a family.  `name` must match [a-zA-Z_:][a-zA-Z0-9_:]* and not
 * clash with another family's sample names (a histogram "h" also owns
 * h_bucket, h_sum, h_count); `help` is non-empty UTF-8 text (escaped on
 * output; promtool flags empty help);
 * `labels` holds `nlabels` (0..SRV_METRICS_MAX_LABELS) distinct names
 * matching [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__", and not "le" for a
 * histogram.  Strings are copied; `labels` may be NULL when nlabels is 0.
 *
 * Histogram `bounds` are the `nbounds` (0..SRV_METRICS_MAX_BUCKETS) finite,
 * strictly increasing bucket upper bounds; the +Inf bucket is implicit.
 *
 * Returns the family (owned by the registry) or NULL on invalid arguments
 * or out of memory.  Thread-safe. */
srv_metric *srv_metrics_counter(srv_registry *reg, const char *name, const char *help,
                                int nlabels, const char *const *labels);
srv_metric *srv_metrics_gauge(srv_registry *reg, const char *name, const char *help,
                              int nlabels, const char *const *labels);
srv_metric *srv_metrics_histogram(srv_registry *reg, const char *name, const char *help,
                                  int nlabels, const char *const *labels,
                                  const double *bounds, int nbounds);

/* Fill out[0..count) with start, start*factor, start*factor^2, ...
 * Returns 0, or -1 (out untouched) unless start > 0, factor > 1,
 * 1 <= count <= SRV_METRICS_MAX_BUCKETS and every bound is finite. */
int srv_buckets_exponential(double start, double factor, int count, double *out);

/* ---- series ------------------------------------------------------------ */

/* The series of family `m` at label values `values` (one per label name, in
 * the family's order; NULL when the family has no labels): found, or created
 * at zero.  Values are copied, must be valid UTF-8 (Prometheus rejects a
 * scrape otherwise) and may hold any character, escaped on output.  Returns
 * the series (owned by the registry, valid until destroy) or NULL when m is
 * NULL, a value is NULL or not UTF-8, or out of memory.  Thread-safe (takes
 * the registry mutex): look up once, keep the pointer for the hot path. */
srv_series *srv_metric_series(srv_metric *m, const char *const *values);

/* ---- updates: lock-free, thread-safe, no allocation; NULL s is a no-op -- */

/* Each does nothing on a series of another type (a programming error).
 * Counter += v.  A negative or NaN v is ignored (counters only go up). */
void srv_counter_add(srv_series *s, double v);
/* Gauge = v / gauge += v.  Any value, NaN and infinities included. */
void srv_gauge_set(srv_series *s, double v);
void srv_gauge_add(srv_series *s, double v);
/* Count v in the first bucket with v <= bound (NaN and values above every
 * bound land in +Inf only) and add it to the sum. */
void srv_histogram_observe(srv_series *s, double v);

/* Lookup (mutex) plus update, for label values only known per request:
 * counter_add, gauge_add or histogram_observe by the family's type.  Does
 * nothing when the lookup fails.  Prefer a kept series on hot paths. */
void srv_metric_add(srv_metric *m, const char *const *values, double v);

/* A hidden series is left out of renders (its value is kept); series are
 * never freed, so this is how one that stops meaning anything (the loss of
 * a training job that ended) leaves the exposition.  New series are shown. */
void srv_series_set_hidden(srv_series *s, int hidden);

/* ---- reading ----------------------------------------------------------- */

/* Current value of a counter or gauge; a histogram's sum.  0 for NULL. */
double srv_series_value(const srv_series *s);
/* Number of observations in a histogram (the sum of its buckets); 0 for
 * NULL or another type. */
uint64_t srv_histogram_count(const srv_series *s);

/* ---- exposition -------------------------------------------------------- */

/* Register fn(reg, ctx) to run at the start of each render, in registration
 * order.  `ctx` is borrowed: it must outlive the registry or its use.
 * Returns 0, or -1 when reg or fn is NULL or out of memory.  Thread-safe. */
int srv_metrics_on_render(srv_registry *reg, srv_metrics_collect_fn *fn, void *ctx);

/* Run the collectors, then render every family (registration order) and its
 * series (creation order) as text format 0.0.4: "# HELP", "# TYPE", then the
 * samples.  Numbers: integers without exponent when integral and below 2^53,
 * otherwise the shortest %.15g..%.17g that reads back exactly; NaN, +Inf,
 * -Inf spelled so.  Returns a NUL-terminated malloc'd string the caller
 * frees, its length in *len (len may be NULL), or NULL when out of memory.
 * Linear in the output size; takes no lock besides collectors'. Thread-safe. */
char *srv_metrics_render(srv_registry *reg, size_t *len);

#endif /* SRV_METRICS_H */
