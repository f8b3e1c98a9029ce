/*
 * auth.h — API keys: who may use the service.
 *
 * Keys come from --api-key (repeatable; ATTND_API_KEY, a comma list) and
 * from --api-key-file (one key a line; blank lines and lines starting with
 * '#' are skipped; surrounding spaces trimmed), which SIGHUP re-reads.  As
 * soon as any key is configured, or a key file is named at all (an empty
 * file then locks everything: a mistake must not open the service), every
 * route except GET /healthz and GET /readyz wants
 * "Authorization: Bearer KEY" (and /metrics too, unless --metrics-public).
 *
 * A key is compared with every configured key in time that depends only on
 * the configured keys' lengths, never on where the bytes first differ, so
 * a client cannot guess a key byte by byte.  Keys are never logged, never
 * shown by any route and never written to job records.  A request's client
 * identity (the unit of --max-inflight-per-client) is a 64-bit hash of the
 * key it used, stable across reloads.
 *
 * Thread-safety: srv_auth_check runs on libmicrohttpd's thread and
 * srv_auth_reload on the loop thread; the key set is swapped under a
 * read-write lock.
 */
#ifndef SRV_AUTH_H
#define SRV_AUTH_H

#include <stdint.h>

#include "config.h"

typedef struct srv_auth srv_auth;

/* What srv_auth_check found. */
enum { SRV_AUTH_OK = 0, SRV_AUTH_MISSING, SRV_AUTH_INVALID };

/* Keys from cfg (borrowed: cfg must outlive a) and cfg->api_key_file.
 * NULL when the file cannot be read or memory runs out (message printed):
 * the server must not start. */
srv_auth *srv_auth_create(const srv_config *cfg);
void srv_auth_destroy(srv_auth *a); /* NULL is a no-op */

/* Whether requests need a key. */
int srv_auth_enabled(const srv_auth *a);
/* Re-reads the key file (SIGHUP).  On failure the keys in use stay and -1
 * is returned (message printed); 0 otherwise, also without a file. */
int srv_auth_reload(srv_auth *a);
/* The number of keys in force now. */
int srv_auth_count(srv_auth *a);

/* Checks an Authorization header value (NULL when absent).  Returns
 * SRV_AUTH_OK with *client set to the key's hash, or why not. */
int srv_auth_check(srv_auth *a, const char *authorization, uint64_t *client);

/* A 64-bit FNV-1a hash of n bytes (client identities). */
uint64_t srv_hash64(const void *p, size_t n);

#endif
