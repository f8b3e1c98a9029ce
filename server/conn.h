/*
 * conn.h — the connection guard: every client connection, its limits and
 * its deadlines, beside libmicrohttpd.
 *
 * libmicrohttpd has one inactivity timeout per connection, which a client
 * sending a byte a second never trips, and its connection limits close a
 * socket without a word.  The guard keeps a list of the open connections
 * (added and removed by libmicrohttpd's connection notifications, which it
 * calls before it closes the socket) and gives attnd what it lacks:
 *
 *   - --max-connections and --max-connections-per-ip as soft limits: a
 *     connection past either is still accepted, marked refused, answered
 *     503 with "Connection: close" at its first request, and closed after
 *     a second if it sends none; libmicrohttpd's own limits sit a little
 *     higher as the hard stop (there, a new socket is closed at once);
 *   - --header-timeout-seconds: from the first byte of a request (seen as
 *     the socket's received-byte count growing, TCP_INFO, or libmicrohttpd
 *     parsing the request line) to the end of its body; past it the socket
 *     is shut down, which libmicrohttpd notices and closes;
 *   - --idle-timeout-seconds is libmicrohttpd's inactivity timeout;
 *   - --max-inflight-per-client: requests holding engine or worker time
 *     (POST /generate, POST /recall) per client, where a client is an API
 *     key, else a peer address.
 *
 * Threads: open, close and the request hooks run on libmicrohttpd's
 * thread, srv_conns_sweep on the loop thread (a timer); one mutex guards
 * the list.  Shutting a socket down from the loop thread is safe because an
 * entry leaves the list, under that mutex, before its socket is closed.
 */
#ifndef SRV_CONN_H
#define SRV_CONN_H

#include <stdint.h>
#include <sys/socket.h>

#include "config.h"
#include "stats.h"

typedef struct srv_conns srv_conns;
typedef struct srv_conn srv_conn;

/* libmicrohttpd's hard connection limits sit this far above the soft ones. */
#define SRV_CONN_HEADROOM 64

/* Why a connection was refused (srv_conn_refused). */
enum { SRV_CONN_OK = 0, SRV_CONN_MAX_CONNECTIONS, SRV_CONN_MAX_PER_IP };

/* cfg and stats are borrowed.  NULL when out of memory. */
srv_conns *srv_conns_create(const srv_config *cfg, srv_stats *stats);
void srv_conns_destroy(srv_conns *g); /* NULL is a no-op */

/* libmicrohttpd's thread: a new connection (its socket and peer); NULL
 * when out of memory (the connection then goes unguarded). */
srv_conn *srv_conn_open(srv_conns *g, int fd, const struct sockaddr *peer);
void srv_conn_close(srv_conns *g, srv_conn *c); /* NULL is a no-op */

/* libmicrohttpd's thread, NULL-safe.  A request's request line arrived;
 * its body is complete (the deadline stops); it is over (the connection
 * is idle again and its in-flight slot, if any, is given back). */
void srv_conn_request_begin(srv_conns *g, srv_conn *c);
void srv_conn_request_received(srv_conns *g, srv_conn *c);
void srv_conn_request_done(srv_conns *g, srv_conn *c);
/* SRV_CONN_OK, or the limit the connection was opened past. */
int srv_conn_refused(const srv_conn *c);
/* Whether the guard shut the connection down (its request took too long). */
int srv_conn_timed_out(srv_conns *g, const srv_conn *c);
/* A hash of the peer's address: the client when no API key is used. */
uint64_t srv_conn_peer(const srv_conn *c);
/* Takes one of client's --max-inflight-per-client slots for the request
 * on c: 0, or -1 when the client has them all. */
int srv_conn_inflight_acquire(srv_conns *g, srv_conn *c, uint64_t client);

/* Loop thread: shuts down the connections past their deadlines. */
void srv_conns_sweep(srv_conns *g);
/* Open connections now. */
int srv_conns_open_count(srv_conns *g);

#endif
