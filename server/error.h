/*
 * error.h — an error reply described as data: what a validator returns
 * when it runs without a connection (the request parsers, which the fuzz
 * targets call on raw bytes), and srv_reply_err turns into the one error
 * shape of every route:
 *   {"error": {"code": "...", "message": "...", "field": "..."}}
 */
#ifndef SRV_ERROR_H
#define SRV_ERROR_H

#include <stdio.h>

typedef struct srv_error {
    int status;       /* HTTP status: 400, 413, 422, ... (0: no error) */
    char code[32];    /* "invalid_json", "invalid_argument", ... */
    char field[64];   /* the request field at fault, "" when none */
    char message[512];
} srv_error;

/* Fills e and returns -1, so that a validator can `return srv_error_set(...)`.
 * field may be NULL. */
int srv_error_set(srv_error *e, int status, const char *code, const char *field,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* OpenAI's error type for a status: authentication_error (401),
 * permission_error (403), not_found_error (404), rate_limit_error (429),
 * server_error (5xx), else invalid_request_error. */
const char *srv_openai_error_type(int status);

#endif
