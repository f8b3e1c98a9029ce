/*
 * text.c — buffers, JSON strings and UTF-8 (see text.h).
 *
 * Models emit bytes, not characters: a byte-level model can produce any
 * byte sequence and a llama2.c model emits <0xNN> byte tokens that split
 * multi-byte characters across tokens.  JSON needs valid UTF-8, so output
 * is repaired (U+FFFD per invalid byte, as WHATWG's decoder does for
 * maximal subparts, simplified to one replacement per bad byte), and a
 * stream holds back a trailing incomplete character until its last byte
 * arrives.
 */
#include "text.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int srv_buf_reserve(srv_buf *b, size_t more)
{
    if (b->len + more + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

int srv_buf_append(srv_buf *b, const void *data, size_t n)
{
    if (srv_buf_reserve(b, n))
        return -1;
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

int srv_buf_printf(srv_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || srv_buf_reserve(b, (size_t)n))
        return -1;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void srv_buf_free(srv_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* Length of the valid UTF-8 sequence at s (n bytes available), 0 if the
 * bytes there are not one (overlongs, surrogates and > U+10FFFF refused),
 * or -1 if they are a valid start cut short by the end of the buffer. */
static int utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    int len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;
        if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n)
            return -1;
        unsigned d = s[i];
        if (d < (i == 1 ? lo : 0x80) || d > (i == 1 ? hi : 0xBF))
            return 0;
    }
    return len;
}

size_t srv_utf8_complete(const char *s, size_t n)
{
    /* only the last three bytes can start an incomplete sequence */
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        const unsigned char *p = (const unsigned char *)s + n - back;
        if (*p < 0x80)
            return n; /* ASCII: nothing pending after it */
        if (*p >= 0xC0) /* a lead byte: pending if cut short */
            return utf8_seq(p, back) == -1 ? n - back : n;
    }
    return n;
}

int srv_json_string(srv_buf *b, const char *s, size_t n)
{
    if (srv_buf_reserve(b, n + 2))
        return -1;
    b->p[b->len++] = '"';
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = u[i];
        if (c >= 0x80) {
            int len = utf8_seq(u + i, n - i);
            if (len > 0) {
                if (srv_buf_append(b, u + i, (size_t)len))
                    return -1;
                i += (size_t)len;
            } else {
                if (srv_buf_append(b, "\xEF\xBF\xBD", 3))
                    return -1;
                i++;
            }
            continue;
        }
        char esc[8];
        const char *out = esc;
        size_t olen = 2;
        switch (c) {
        case '"': out = "\\\""; break;
        case '\\': out = "\\\\"; break;
        case '\n': out = "\\n"; break;
        case '\r': out = "\\r"; break;
        case '\t': out = "\\t"; break;
        case '\b': out = "\\b"; break;
        case '\f': out = "\\f"; break;
        default:
            if (c < 0x20 || c == 0x7F) {
                snprintf(esc, sizeof esc, "\\u%04x", c);
                olen = 6;
            } else {
                esc[0] = (char)c;
                olen = 1;
            }
        }
        if (srv_buf_append(b, out, olen))
            return -1;
        i++;
    }
    return srv_buf_append(b, "\"", 1);
}

char *srv_utf8_repair(const char *s, size_t n, size_t *out_len)
{
    srv_buf b = {0};
    if (srv_buf_reserve(&b, n))
        return NULL;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        int len = u[i] < 0x80 ? 1 : utf8_seq(u + i, n - i);
        if (len > 0) {
            if (srv_buf_append(&b, u + i, (size_t)len))
                goto fail;
            i += (size_t)len;
        } else {
            if (srv_buf_append(&b, "\xEF\xBF\xBD", 3))
                goto fail;
            i++;
        }
    }
    if (out_len)
        *out_len = b.len;
    b.p[b.len] = 0;
    return b.p;
fail:
    srv_buf_free(&b);
    return NULL;
}
