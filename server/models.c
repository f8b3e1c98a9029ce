/*
 * models.c — the registry: publishing, finding and unpublishing models,
 * and their reference counts (models.h).  Loading and rescanning the
 * files is models_scan.c's.
 *
 * Read sections.  A reader enters by adding 1 to readers[epoch & 1] and
 * checking that the epoch has not moved meanwhile (else it backs out and
 * tries again); it leaves by taking the 1 back.  A writer that has
 * unpublished an entry advances the epoch, so readers entering from then
 * on count on the other counter and can no longer see the entry, and waits
 * until the old counter is 0: every reader that might have seen it has
 * left, each with its reference taken if it wanted one.  Writers are
 * serialised by mu, so two waits never overlap.  Every atomic here is
 * sequentially consistent: the argument needs the unpublishing store, the
 * epoch's increment and the readers' loads in one total order.  A read
 * section is a scan of at most SRV_MODELS_MAX names, so the wait is short;
 * no reader ever waits on a writer.
 *
 * The last reference frees the entry: the model, the tokenizer, and its
 * index (under mu, for a later entry), on whatever thread drops it.
 */
#include "models.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models_internal.h"

static srv_models *mut(const srv_models *reg) { return (srv_models *)reg; }

static int read_enter(const srv_models *creg)
{
    srv_models *reg = mut(creg);
    for (;;) {
        unsigned e = atomic_load(&reg->epoch);
        atomic_fetch_add(&reg->readers[e & 1], 1);
        if (atomic_load(&reg->epoch) == e)
            return (int)(e & 1);
        atomic_fetch_sub(&reg->readers[e & 1], 1);
    }
}

static void read_leave(const srv_models *reg, int k) { atomic_fetch_sub(&mut(reg)->readers[k], 1); }

/* With mu held: returns once no reader that may have seen an entry
 * unpublished before the call is still in its read section. */
static void wait_readers(srv_models *reg)
{
    unsigned e = atomic_fetch_add(&reg->epoch, 1);
    while (atomic_load(&reg->readers[e & 1]) != 0)
        sched_yield();
}

void srv_model_entry_destroy(srv_model *e)
{
    if (!e)
        return;
    tfm_tokenizer_destroy(e->tok);
    tfm_model_destroy(e->model);
    free(e);
}

const srv_model *srv_model_hold(const srv_model *m)
{
    if (m)
        atomic_fetch_add(&((srv_model *)m)->refs, 1);
    return m;
}

void srv_model_put(const srv_model *cm)
{
    srv_model *m = (srv_model *)cm;
    if (!m || atomic_fetch_sub(&m->refs, 1) != 1)
        return;
    srv_models *reg = m->reg;
    if (reg) {
        pthread_mutex_lock(&reg->mu);
        reg->index_used[m->index] = 0;
        pthread_mutex_unlock(&reg->mu);
        fprintf(stderr, "attnd: unloaded model %s (%s)\n", m->name, m->source);
    }
    srv_model_entry_destroy(m);
}

void srv_models_init(srv_models *reg, const srv_config *cfg)
{
    memset(reg, 0, sizeof *reg);
    pthread_mutex_init(&reg->mu, NULL);
    pthread_mutex_init(&reg->reload_mu, NULL);
    reg->cfg = cfg;
    for (int i = 0; i < SRV_MODELS_MAX; i++)
        atomic_init(&reg->items[i], NULL);
    atomic_init(&reg->n, 0);
    atomic_init(&reg->live, 0);
    atomic_init(&reg->epoch, 0);
    atomic_init(&reg->readers[0], 0);
    atomic_init(&reg->readers[1], 0);
    atomic_init(&reg->removals, 0);
    reg->next_uid = 1;
}

void srv_models_deinit(srv_models *reg)
{
    int n = atomic_load(&reg->n);
    for (int i = 0; i < n; i++) {
        srv_model *m = atomic_exchange(&reg->items[i], NULL);
        if (m) {
            m->reg = NULL; /* no index to give back, no log line at exit */
            srv_model_put(m);
        }
    }
    atomic_store(&reg->n, 0);
    atomic_store(&reg->live, 0);
    srv_reload_memo_free(reg);
    pthread_mutex_destroy(&reg->reload_mu);
    pthread_mutex_destroy(&reg->mu);
}

/* With mu held: the slot holding name, or -1. */
static int slot_of(srv_models *reg, const char *name)
{
    int n = atomic_load(&reg->n);
    for (int i = 0; i < n; i++) {
        srv_model *m = atomic_load(&reg->items[i]);
        if (m && !strcmp(m->name, name))
            return i;
    }
    return -1;
}

int srv_models_publish(srv_models *reg, srv_model *e, const srv_model *replaces)
{
    pthread_mutex_lock(&reg->mu);
    int at = slot_of(reg, e->name), rc = 0;
    srv_model *old = at >= 0 ? atomic_load(&reg->items[at]) : NULL;
    int index = -1;
    for (int i = 0; i < SRV_MODELS_MAX && index < 0; i++)
        if (!reg->index_used[i])
            index = i;
    int n = atomic_load(&reg->n);
    if (old && old != replaces) {
        rc = -2;
    } else if (replaces && old != replaces) {
        rc = -3; /* the entry to replace is gone meanwhile */
    } else if (index < 0) {
        rc = -1;
    } else if (!old) {
        for (at = 0; at < n && atomic_load(&reg->items[at]); at++)
            ;
        if (at == SRV_MODELS_MAX)
            rc = -1;
    }
    if (rc == 0) {
        reg->index_used[index] = 1;
        e->index = index;
        e->uid = reg->next_uid++;
        e->reg = reg;
        atomic_init(&e->refs, 1); /* the registry's */
        atomic_init(&e->removed, 0);
        atomic_store(&reg->items[at], e); /* readers see it complete from here */
        if (at == n)
            atomic_store(&reg->n, n + 1);
        if (old) {
            atomic_store(&old->removed, 1);
            atomic_fetch_add(&reg->removals, 1);
            wait_readers(reg);
        } else {
            atomic_fetch_add(&reg->live, 1);
        }
    }
    pthread_mutex_unlock(&reg->mu);
    if (old && rc == 0)
        srv_model_put(old); /* the registry's: freed now, or by its last user */
    return rc;
}

int srv_models_unpublish(srv_models *reg, const srv_model *m)
{
    pthread_mutex_lock(&reg->mu);
    int n = atomic_load(&reg->n), found = 0;
    for (int i = 0; i < n && !found; i++)
        if (atomic_load(&reg->items[i]) == m) {
            atomic_store(&reg->items[i], NULL);
            found = 1;
        }
    if (found) {
        atomic_store(&((srv_model *)m)->removed, 1);
        atomic_fetch_sub(&reg->live, 1);
        atomic_fetch_add(&reg->removals, 1);
        wait_readers(reg);
    }
    pthread_mutex_unlock(&reg->mu);
    if (found)
        srv_model_put(m);
    return found ? 0 : -1;
}

int srv_models_snapshot(srv_models *reg, const srv_model **out, int cap)
{
    int k = read_enter(reg), got = 0;
    int n = atomic_load(&reg->n);
    for (int i = 0; i < n && got < cap; i++) {
        srv_model *m = atomic_load(&reg->items[i]);
        if (m)
            out[got++] = srv_model_hold(m);
    }
    read_leave(reg, k);
    return got;
}

const srv_model *srv_models_get(const srv_models *reg, const char *name)
{
    const srv_model *found = NULL;
    int k = read_enter(reg);
    int n = atomic_load(&mut(reg)->n);
    for (int i = 0; i < n && !found; i++) {
        srv_model *m = atomic_load(&mut(reg)->items[i]);
        if (m && !strcmp(m->name, name))
            found = srv_model_hold(m);
    }
    read_leave(reg, k);
    return found;
}

int srv_models_has(const srv_models *reg, const char *name)
{
    const srv_model *m = srv_models_get(reg, name);
    srv_model_put(m);
    return m != NULL;
}

const srv_model *srv_models_get_default(const srv_models *reg)
{
    const srv_model *best = NULL;
    int k = read_enter(reg);
    int n = atomic_load(&mut(reg)->n);
    for (int i = 0; i < n; i++) {
        const srv_model *m = atomic_load(&mut(reg)->items[i]);
        if (!m || strcmp(m->kind, "text"))
            continue;
        if (!best || (!m->trained && best->trained) ||
            (m->trained == best->trained && strcmp(m->name, best->name) < 0))
            best = m;
    }
    srv_model_hold(best);
    read_leave(reg, k);
    return best;
}

static int by_name(const void *a, const void *b)
{
    return strcmp((*(const srv_model *const *)a)->name, (*(const srv_model *const *)b)->name);
}

int srv_models_get_all(const srv_models *reg, const srv_model **out, int cap)
{
    int n = srv_models_snapshot(mut(reg), out, cap);
    if (n > 1)
        qsort(out, (size_t)n, sizeof *out, by_name);
    return n;
}

void srv_models_put_all(const srv_model **ms, int n)
{
    for (int i = 0; i < n; i++)
        srv_model_put(ms[i]);
}

int srv_models_count(const srv_models *reg) { return atomic_load(&mut(reg)->live); }

unsigned srv_models_removals(const srv_models *reg) { return atomic_load(&mut(reg)->removals); }
