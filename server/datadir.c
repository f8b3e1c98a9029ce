/*
 * datadir.c — safe opens, names and the quarantine of the data dir (see
 * datadir.h).
 *
 * Why a rename and not a delete: what attnd cannot read may still be
 * someone's work (a record an older or newer attnd wrote, a model copied
 * in by hand and cut short).  A rename into <data-dir>/quarantine costs
 * nothing, frees the name the scan stumbled on, and leaves the bytes for
 * an operator.  The only files attnd deletes on its own are the
 * temporaries of its atomic writes (never authoritative: the rename that
 * would have made them so did not happen) and the directories of jobs that
 * retention or a DELETE removed.
 */
#define _GNU_SOURCE /* O_NOFOLLOW, nftw's FTW_PHYS */
#include "datadir.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static srv_series *quarantined;

void srv_data_init(srv_series *counter) { quarantined = counter; }

int srv_data_open_regular(const char *path, int follow, size_t max, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | (follow ? 0 : O_NOFOLLOW));
    if (fd < 0) {
        int e = errno;
        if (e == ELOOP && !follow)
            snprintf(err, errlen, "a symbolic link");
        else
            snprintf(err, errlen, "cannot open: %s", strerror(e));
        errno = e;
        return -1;
    }
    struct stat sb;
    if (fstat(fd, &sb)) {
        snprintf(err, errlen, "cannot stat: %s", strerror(errno));
    } else if (S_ISDIR(sb.st_mode)) {
        snprintf(err, errlen, "a directory, not a file");
    } else if (S_ISFIFO(sb.st_mode)) {
        snprintf(err, errlen, "a FIFO, not a file");
    } else if (!S_ISREG(sb.st_mode)) {
        snprintf(err, errlen, "not a regular file");
    } else if (max > 0 && (size_t)sb.st_size > max) {
        snprintf(err, errlen, "%lld bytes; at most %zu", (long long)sb.st_size, max);
    } else {
        /* regular files ignore O_NONBLOCK; cleared all the same */
        int fl = fcntl(fd, F_GETFL);
        if (fl >= 0)
            fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
        return fd;
    }
    close(fd);
    errno = EINVAL;
    return -1;
}

int srv_data_name_ok(const char *name)
{
    if (!name[0] || !strcmp(name, ".") || !strcmp(name, ".."))
        return 0;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        if (*p == '/' || *p < 0x20 || *p == 0x7f)
            return 0;
    return 1;
}

void srv_data_printable(const char *name, char *out, size_t cap)
{
    size_t k = 0;
    for (const unsigned char *p = (const unsigned char *)name; *p && k + 5 < cap; p++) {
        if (*p >= 0x20 && *p < 0x7f && *p != '\\')
            out[k++] = (char)*p;
        else
            k += (size_t)snprintf(out + k, cap - k, "\\x%02x", *p);
    }
    if (cap)
        out[k < cap ? k : cap - 1] = 0;
}

int srv_data_is_temp(const char *name)
{
    const char *t = strstr(name, ".tmp");
    while (t) {
        const char *rest = t + 4;
        if (!*rest)
            return t != name;
        if (*rest == '.' && rest[1]) {
            const char *q = rest + 1;
            while (isdigit((unsigned char)*q))
                q++;
            if (!*q)
                return t != name;
        }
        t = strstr(t + 1, ".tmp");
    }
    return 0;
}

void srv_data_sync_parent(const char *path)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    int fd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

int srv_data_quarantine(const char *data_dir, const char *path, const char *reason)
{
    char shown[1200], qdir[1100], dest[2400], base[300];
    srv_data_printable(path, shown, sizeof shown);
    const char *slash = strrchr(path, '/');
    srv_data_printable(slash ? slash + 1 : path, base, sizeof base);
    for (char *p = base; *p; p++) /* the escaped name, without its backslashes */
        if (*p == '\\')
            *p = '_';
    snprintf(qdir, sizeof qdir, "%s/quarantine", data_dir);
    if (mkdir(qdir, 0755) && errno != EEXIST) {
        fprintf(stderr, "attnd: data: %s: %s; skipped (cannot create %s: %s)\n", shown, reason,
                qdir, strerror(errno));
        return -1;
    }
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char stamp[32];
    strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
    int rc = -1, e = 0;
    for (int n = 0; n < 1000; n++) { /* never over another quarantined entry */
        if (n == 0)
            snprintf(dest, sizeof dest, "%s/%s-%s", qdir, stamp, base);
        else
            snprintf(dest, sizeof dest, "%s/%s-%d-%s", qdir, stamp, n, base);
        struct stat sb;
        if (lstat(dest, &sb) == 0)
            continue;
        rc = rename(path, dest);
        e = errno;
        break;
    }
    if (rc) {
        fprintf(stderr, "attnd: data: %s: %s; skipped (cannot quarantine: %s)\n", shown, reason,
                e ? strerror(e) : "no free name");
        return -1;
    }
    srv_data_sync_parent(path);
    srv_data_sync_parent(dest);
    fprintf(stderr, "attnd: data: %s: %s; quarantined as %s\n", shown, reason, dest);
    if (quarantined)
        srv_counter_add(quarantined, 1);
    return 0;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)ftw;
    int rc = flag == FTW_DP ? rmdir(path) : unlink(path);
    return rc && errno != ENOENT ? -1 : 0;
}

int srv_data_rmtree(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb))
        return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(sb.st_mode))
        return unlink(path);
    int rc = nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    srv_data_sync_parent(path);
    return rc ? -1 : 0;
}

int srv_data_is_full(int err)
{
#ifdef EDQUOT
    if (err == EDQUOT)
        return 1;
#endif
    return err == ENOSPC;
}
