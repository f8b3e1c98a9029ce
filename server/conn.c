/*
 * conn.c — the connection guard (see conn.h).
 *
 * The list is short (--max-connections plus libmicrohttpd's headroom) and
 * every question asked of it is a scan: the connections of one address at
 * open, the in-flight requests of one client at admission, deadlines at a
 * sweep.  A scan of a thousand entries costs about a microsecond, far
 * below the request it guards, and needs no second index to keep right.
 *
 * A connection's phase: IDLE (between requests: only the idle timeout
 * applies), RECEIVING (a request's first byte has arrived: its headers and
 * body must be in within --header-timeout-seconds), PROCESSING (the
 * request is complete; generation and replies are governed by timeout_ms
 * and the idle timeout).  The first byte of a request is seen either when
 * libmicrohttpd hands over the request line, or by the sweep, which reads
 * the socket's received-byte count (TCP_INFO's tcpi_bytes_received,
 * Linux 4.1) and compares it with the count when the connection went idle:
 * a client dribbling the request line a byte at a time is caught this way.
 */
#include "conn.h"

#include <linux/tcp.h> /* struct tcp_info with tcpi_bytes_received */
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"
#include "tfm/profile.h"

#define REFUSED_GRACE 1.0 /* seconds a refused connection may take to send its request */

enum { IDLE = 0, RECEIVING, PROCESSING };

struct srv_conn {
    srv_conn *prev, *next;
    int fd;
    uint64_t peer;       /* hash of the address */
    double opened;
    int refused;         /* SRV_CONN_* */
    int phase;
    double since;        /* RECEIVING: the request's first byte */
    uint64_t idle_bytes; /* bytes received when it last went idle */
    int shut;            /* the guard shut it down */
    int inflight;        /* holds an in-flight slot of client */
    uint64_t client;
};

struct srv_conns {
    const srv_config *cfg;
    srv_stats *stats;
    pthread_mutex_t mu;
    srv_conn *head;
    int n_open;
    int n_admitted; /* open and not refused */
};

static uint64_t bytes_received(int fd)
{
    struct tcp_info ti;
    socklen_t n = sizeof ti;
    memset(&ti, 0, sizeof ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &n) != 0)
        return 0;
    return ti.tcpi_bytes_received;
}

static uint64_t peer_hash(const struct sockaddr *sa)
{
    if (sa && sa->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        return srv_hash64(&a->sin_addr, sizeof a->sin_addr);
    }
    if (sa && sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        return srv_hash64(&a->sin6_addr, sizeof a->sin6_addr);
    }
    return 0;
}

srv_conns *srv_conns_create(const srv_config *cfg, srv_stats *stats)
{
    srv_conns *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->cfg = cfg;
    g->stats = stats;
    pthread_mutex_init(&g->mu, NULL);
    return g;
}

void srv_conns_destroy(srv_conns *g)
{
    if (!g)
        return;
    while (g->head) {
        srv_conn *c = g->head;
        g->head = c->next;
        free(c);
    }
    pthread_mutex_destroy(&g->mu);
    free(g);
}

srv_conn *srv_conn_open(srv_conns *g, int fd, const struct sockaddr *peer)
{
    srv_conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->fd = fd;
    c->peer = peer_hash(peer);
    c->opened = c->since = tfm_now();
    c->idle_bytes = 0; /* a new connection's first byte starts its first request */
    pthread_mutex_lock(&g->mu);
    int same = 0;
    for (const srv_conn *o = g->head; o; o = o->next)
        same += !o->refused && o->peer == c->peer;
    if (g->n_admitted >= g->cfg->max_connections)
        c->refused = SRV_CONN_MAX_CONNECTIONS;
    else if (same >= g->cfg->max_conn_per_ip)
        c->refused = SRV_CONN_MAX_PER_IP;
    else
        g->n_admitted++;
    c->next = g->head;
    if (g->head)
        g->head->prev = c;
    g->head = c;
    g->n_open++;
    pthread_mutex_unlock(&g->mu);
    if (c->refused)
        srv_counter_add(g->stats->conn_refused[c->refused - 1], 1);
    return c;
}

void srv_conn_close(srv_conns *g, srv_conn *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&g->mu);
    if (c->prev)
        c->prev->next = c->next;
    else
        g->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    g->n_open--;
    g->n_admitted -= !c->refused;
    pthread_mutex_unlock(&g->mu);
    free(c);
}

void srv_conn_request_begin(srv_conns *g, srv_conn *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&g->mu);
    if (c->phase == IDLE) {
        c->phase = RECEIVING;
        c->since = tfm_now();
    }
    pthread_mutex_unlock(&g->mu);
}

void srv_conn_request_received(srv_conns *g, srv_conn *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&g->mu);
    c->phase = PROCESSING;
    pthread_mutex_unlock(&g->mu);
}

void srv_conn_request_done(srv_conns *g, srv_conn *c)
{
    if (!c)
        return;
    uint64_t b = bytes_received(c->fd);
    pthread_mutex_lock(&g->mu);
    c->phase = IDLE;
    c->idle_bytes = b;
    c->inflight = 0;
    pthread_mutex_unlock(&g->mu);
}

int srv_conn_refused(const srv_conn *c) { return c ? c->refused : SRV_CONN_OK; }

int srv_conn_timed_out(srv_conns *g, const srv_conn *c)
{
    if (!c)
        return 0;
    pthread_mutex_lock(&g->mu);
    int shut = c->shut;
    pthread_mutex_unlock(&g->mu);
    return shut;
}

uint64_t srv_conn_peer(const srv_conn *c) { return c ? c->peer : 0; }

int srv_conn_inflight_acquire(srv_conns *g, srv_conn *c, uint64_t client)
{
    if (!c)
        return 0;
    pthread_mutex_lock(&g->mu);
    int n = 0;
    for (const srv_conn *o = g->head; o; o = o->next)
        n += o->inflight && o->client == client;
    int ok = n < g->cfg->max_inflight_per_client;
    if (ok) {
        c->inflight = 1;
        c->client = client;
    }
    pthread_mutex_unlock(&g->mu);
    return ok ? 0 : -1;
}

void srv_conns_sweep(srv_conns *g)
{
    double now = tfm_now(), limit = g->cfg->header_timeout_s;
    int timed_out = 0;
    pthread_mutex_lock(&g->mu);
    for (srv_conn *c = g->head; c; c = c->next) {
        if (c->shut)
            continue;
        if (c->phase == IDLE && bytes_received(c->fd) > c->idle_bytes) {
            c->phase = RECEIVING;
            c->since = now;
        }
        int late = c->phase == RECEIVING && now - c->since > limit;
        int refused_late = c->refused && now - c->opened > REFUSED_GRACE;
        if (late || refused_late) {
            /* libmicrohttpd sees the end of the stream and closes it */
            shutdown(c->fd, SHUT_RDWR);
            c->shut = 1;
            timed_out += late && !c->refused;
        }
    }
    int open = g->n_open;
    pthread_mutex_unlock(&g->mu);
    if (timed_out)
        srv_counter_add(g->stats->conn_header_timeouts, timed_out);
    srv_gauge_set(g->stats->conn_open, open);
}

int srv_conns_open_count(srv_conns *g)
{
    pthread_mutex_lock(&g->mu);
    int n = g->n_open;
    pthread_mutex_unlock(&g->mu);
    return n;
}
