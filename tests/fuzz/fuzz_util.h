/*
 * fuzz_util.h — what the fuzz targets share: a failed-property check that
 * aborts (libFuzzer and the replay runner both report an abort as a
 * crash), a strict UTF-8 validator used as an oracle, and an anonymous
 * in-memory file for readers that only take a path.
 *
 * The in-memory file is a memfd: it lives in the kernel's tmpfs, has no
 * name in any directory and vanishes with the process, so a target that
 * feeds tfm_checkpoint_load through "/proc/self/fd/N" leaves nothing
 * behind even when it crashes.
 */
#ifndef ATTND_FUZZ_UTIL_H
#define ATTND_FUZZ_UTIL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create */
#endif
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A property the code under test promises; on failure, say which and abort. */
#define FUZZ_CHECK(cond, ...)                                                        \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: property failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                            \
            fputc('\n', stderr);                                                     \
            abort();                                                                 \
        }                                                                            \
    } while (0)

/* Whether s[0..n) is valid UTF-8 (RFC 3629: no overlongs, no surrogates,
 * nothing above U+10FFFF).  Written independently of server/text.c, which
 * it checks. */
static inline int fuzz_utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        uint32_t cp;
        size_t len;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            len = 2, cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4, cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i < len)
            return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += len;
    }
    return 1;
}

/* An anonymous file holding data[0..size), and its path for fopen; the
 * descriptor is created once per process and rewritten for each input. */
typedef struct fuzz_memfile {
    int fd;
    char path[64];
} fuzz_memfile;

static inline const char *fuzz_memfile_set(fuzz_memfile *mf, const uint8_t *data, size_t size)
{
    if (mf->fd <= 0) {
        mf->fd = memfd_create("attnd-fuzz", MFD_CLOEXEC);
        if (mf->fd < 0) {
            perror("memfd_create");
            abort();
        }
        snprintf(mf->path, sizeof mf->path, "/proc/self/fd/%d", mf->fd);
    }
    if (ftruncate(mf->fd, 0) != 0) {
        perror("ftruncate");
        abort();
    }
    for (size_t off = 0; off < size;) {
        ssize_t w = pwrite(mf->fd, data + off, size - off, (off_t)off);
        if (w <= 0) {
            perror("pwrite");
            abort();
        }
        off += (size_t)w;
    }
    return mf->path;
}

#endif
