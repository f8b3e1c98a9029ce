/*
 * datadir.h — reading what lies under --data-dir (and the models dir)
 * without trusting it, and the quarantine.
 *
 * The data dir is attnd's own, but anything can end up there: a file cut
 * short by a full disk or a crash, garbage, a directory or a FIFO where a
 * file should be, a symlink to somewhere else, a name with control
 * characters.  None of it may stop attnd from starting or block it:
 *
 *   - files are opened with O_NONBLOCK (a FIFO never blocks the open) and
 *     checked with fstat to be regular files before anything reads them;
 *     under the data dir, symlinks are refused (O_NOFOLLOW, lstat), so a
 *     link never makes attnd read or move something outside the dir;
 *   - what cannot be used is logged once, with its path and the reason,
 *     and moved out of the way to <data-dir>/quarantine/<time>-<name>
 *     (a rename: same file system, nothing copied, nothing deleted, so an
 *     operator can look at it).  Files of the models dir, which attnd
 *     only reads, are skipped and never moved.
 *
 * All functions may be called from any thread; none allocates more than
 * a path.
 */
#ifndef SRV_DATADIR_H
#define SRV_DATADIR_H

#include <stddef.h>

#include "metrics.h"

/* Once, before the scans: counts quarantined entries in counter (may be
 * NULL; borrowed for the life of the process). */
void srv_data_init(srv_series *counter);

/* Opens path read-only as a regular file: O_NONBLOCK, and O_NOFOLLOW
 * unless follow.  The fd (the caller closes it), or -1 with the reason in
 * err ("a directory", "a FIFO", "a symbolic link", "cannot open: ...",
 * "<n> bytes; at most <max>" when max > 0 and the file is larger). */
int srv_data_open_regular(const char *path, int follow, size_t max, char *err, size_t errlen);

/* Whether name may be used as a file name of ours: not empty, not "."
 * or "..", no '/', no control character or byte 0x7f. */
int srv_data_name_ok(const char *name);

/* name for a log line: control and non-ASCII bytes as \xNN, at most cap
 * bytes with the terminator. */
void srv_data_printable(const char *name, char *out, size_t cap);

/* Whether a leftover temporary file of an atomic write is named so:
 * "<x>.tmp" (records) or "<x>.tmp.<pid>" (checkpoints, models). */
int srv_data_is_temp(const char *name);

/* Logs "attnd: data: <path>: <reason>; quarantined as <dest>" and moves
 * path (a symlink itself, never its target) to
 * <data_dir>/quarantine/<UTC time>-<name>.  When the move fails (a
 * read-only data dir) it logs that it is skipped instead and returns -1;
 * 0 when moved. */
int srv_data_quarantine(const char *data_dir, const char *path, const char *reason);

/* Removes path and, when it is a directory, everything under it, without
 * following symlinks.  0, or -1 (errno of the first failure). */
int srv_data_rmtree(const char *path);

/* fsync of the directory that holds path (after a rename or unlink). */
void srv_data_sync_parent(const char *path);

/* Whether err is a "no space" errno (ENOSPC, EDQUOT): POST /train's 507. */
int srv_data_is_full(int err);

#endif
