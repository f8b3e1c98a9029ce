/*
 * text.h — growable byte buffers, JSON string escaping that repairs UTF-8,
 * and the UTF-8 boundary test used when streaming text token by token.
 */
#ifndef SRV_TEXT_H
#define SRV_TEXT_H

#include <stddef.h>

typedef struct srv_buf {
    char *p;
    size_t len, cap;
} srv_buf;

/* Ensures room for `more` bytes; 0 ok, -1 out of memory. */
int srv_buf_reserve(srv_buf *b, size_t more);
int srv_buf_append(srv_buf *b, const void *data, size_t n);
int srv_buf_printf(srv_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void srv_buf_free(srv_buf *b);

/* Appends s[0..n) as a JSON string literal, quotes included: control
 * characters escaped, and every byte that is not part of valid UTF-8
 * replaced by U+FFFD, so the result is always valid JSON. */
int srv_json_string(srv_buf *b, const char *s, size_t n);

/* Length of the longest prefix of s[0..n) that does not end inside an
 * incomplete UTF-8 sequence (a lead byte whose continuation bytes have not
 * arrived yet): what can be streamed now without splitting a character. */
size_t srv_utf8_complete(const char *s, size_t n);

/* Copies s[0..n) into a new NUL-terminated string with invalid UTF-8
 * replaced by U+FFFD (for jansson, which requires valid UTF-8).  Caller
 * frees; NULL when out of memory. */
char *srv_utf8_repair(const char *s, size_t n, size_t *out_len);

#endif
