/*
 * auth.c — API keys (see auth.h).
 *
 * The key set is an immutable array built whole and swapped in under the
 * write lock, so a check never sees half a reload.  Reading the file
 * refuses anything but a regular file (a FIFO named there must not hang
 * the loop thread) and files over 1 MiB.
 */
#include "auth.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEY_FILE_MAX (1 << 20)

typedef struct keyset {
    int n;
    char **key;   /* owned, NUL-terminated */
    size_t *len;
} keyset;

struct srv_auth {
    const srv_config *cfg;
    pthread_rwlock_t lock;
    keyset *keys; /* under lock */
    int enabled;  /* fixed at creation */
};

uint64_t srv_hash64(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static void keyset_free(keyset *k)
{
    if (!k)
        return;
    for (int i = 0; i < k->n; i++)
        free(k->key[i]);
    free(k->key);
    free(k->len);
    free(k);
}

static int keyset_add(keyset *k, const char *s, size_t n)
{
    char **key = realloc(k->key, (size_t)(k->n + 1) * sizeof *key);
    if (!key)
        return -1;
    k->key = key;
    size_t *len = realloc(k->len, (size_t)(k->n + 1) * sizeof *len);
    if (!len)
        return -1;
    k->len = len;
    if (!(k->key[k->n] = malloc(n + 1)))
        return -1;
    memcpy(k->key[k->n], s, n);
    k->key[k->n][n] = 0;
    k->len[k->n++] = n;
    return 0;
}

/* The whole key file, or NULL with a message (no key in it). */
static char *read_key_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    struct stat st;
    char *buf = NULL;
    if (fd < 0) {
        fprintf(stderr, "attnd: --api-key-file %s: %s\n", path, strerror(errno));
        return NULL;
    }
    if (fstat(fd, &st) || !S_ISREG(st.st_mode) || st.st_size > KEY_FILE_MAX) {
        fprintf(stderr, "attnd: --api-key-file %s: not a regular file of at most %d bytes\n",
                path, KEY_FILE_MAX);
        goto out;
    }
    if (!(buf = malloc((size_t)st.st_size + 1)))
        goto out;
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    buf[got] = 0;
    *len = got;
out:
    close(fd);
    return buf;
}

/* Every key of the flags and the file; NULL on failure (printed). */
static keyset *load(const srv_config *cfg)
{
    keyset *k = calloc(1, sizeof *k);
    if (!k)
        goto oom;
    for (int i = 0; i < cfg->n_api_keys; i++)
        if (keyset_add(k, cfg->api_keys[i], strlen(cfg->api_keys[i])))
            goto oom;
    if (!cfg->api_key_file[0])
        return k;
    size_t n = 0;
    char *text = read_key_file(cfg->api_key_file, &n);
    if (!text) {
        keyset_free(k);
        return NULL;
    }
    for (char *line = text, *next; line < text + n; line = next) {
        char *nl = memchr(line, '\n', (size_t)(text + n - line));
        next = nl ? nl + 1 : text + n;
        char *end = nl ? nl : text + n;
        while (line < end && isspace((unsigned char)*line))
            line++;
        while (end > line && isspace((unsigned char)end[-1]))
            end--;
        if (line == end || *line == '#')
            continue;
        if (keyset_add(k, line, (size_t)(end - line))) {
            free(text);
            goto oom;
        }
    }
    free(text);
    return k;
oom:
    fprintf(stderr, "attnd: out of memory reading the API keys\n");
    keyset_free(k);
    return NULL;
}

srv_auth *srv_auth_create(const srv_config *cfg)
{
    srv_auth *a = calloc(1, sizeof *a);
    if (!a) {
        fprintf(stderr, "attnd: out of memory\n");
        return NULL;
    }
    a->cfg = cfg;
    pthread_rwlock_init(&a->lock, NULL);
    if (!(a->keys = load(cfg))) {
        srv_auth_destroy(a);
        return NULL;
    }
    a->enabled = a->keys->n > 0 || cfg->api_key_file[0];
    if (cfg->api_key_file[0] && a->keys->n == 0)
        fprintf(stderr, "attnd: --api-key-file %s holds no key: every request but /healthz and "
                        "/readyz gets 401 until it does (SIGHUP re-reads it)\n",
                cfg->api_key_file);
    return a;
}

void srv_auth_destroy(srv_auth *a)
{
    if (!a)
        return;
    keyset_free(a->keys);
    pthread_rwlock_destroy(&a->lock);
    free(a);
}

int srv_auth_enabled(const srv_auth *a) { return a && a->enabled; }

int srv_auth_reload(srv_auth *a)
{
    if (!a || !a->cfg->api_key_file[0])
        return 0;
    keyset *k = load(a->cfg);
    if (!k) {
        fprintf(stderr, "attnd: SIGHUP: the API keys in use stay\n");
        return -1;
    }
    pthread_rwlock_wrlock(&a->lock);
    keyset *old = a->keys;
    a->keys = k;
    pthread_rwlock_unlock(&a->lock);
    keyset_free(old);
    fprintf(stderr, "attnd: SIGHUP: %d API key(s) in force\n", k->n);
    return 0;
}

int srv_auth_count(srv_auth *a)
{
    if (!a)
        return 0;
    pthread_rwlock_rdlock(&a->lock);
    int n = a->keys->n;
    pthread_rwlock_unlock(&a->lock);
    return n;
}

/* 1 when tok (n bytes) equals key, in time that depends on klen only. */
static int same(const char *key, size_t klen, const char *tok, size_t n)
{
    volatile unsigned char d = (unsigned char)(n != klen);
    for (size_t i = 0; i < klen; i++)
        d |= (unsigned char)(key[i] ^ (i < n ? tok[i] : 0));
    return d == 0;
}

int srv_auth_check(srv_auth *a, const char *authorization, uint64_t *client)
{
    if (!authorization)
        return SRV_AUTH_MISSING;
    const char *p = authorization;
    while (*p == ' ' || *p == '\t')
        p++;
    if (strncasecmp(p, "Bearer", 6) || (p[6] != ' ' && p[6] != '\t'))
        return SRV_AUTH_MISSING; /* another scheme (Basic, ...) is no key */
    p += 6;
    while (*p == ' ' || *p == '\t')
        p++;
    size_t n = strlen(p);
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
        n--;
    if (n == 0)
        return SRV_AUTH_MISSING;
    int found = 0;
    pthread_rwlock_rdlock(&a->lock);
    for (int i = 0; i < a->keys->n; i++) /* no early exit: every key costs the same */
        found |= same(a->keys->key[i], a->keys->len[i], p, n);
    pthread_rwlock_unlock(&a->lock);
    if (!found)
        return SRV_AUTH_INVALID;
    *client = srv_hash64(p, n);
    return SRV_AUTH_OK;
}
