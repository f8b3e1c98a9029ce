/*
 * openai.h — OpenAI's wire format, shared by the routes (openai.c: the
 * request side, validation, the group) and the output hooks
 * (openai_format.c: the engine side, chunks and bodies).
 *
 * A /v1 completion request is a group job (engine.h) whose fmt is
 * srv_format_openai and whose fmt_ctx is an srv_openai_ctx: what the hooks
 * need to know of the request beyond the jobs themselves.  The context
 * belongs to the group (freed by srv_openai_ctx_free with it); the hooks
 * read it, and write its stream offsets, on the engine thread with the
 * group's mutex held.
 */
#ifndef SRV_OPENAI_H
#define SRV_OPENAI_H

#include <stddef.h>

#include "format.h"

typedef struct srv_openai_ctx {
    int chat;           /* /v1/chat/completions, else /v1/completions */
    char id[48];        /* "cmpl-" / "chatcmpl-" and 32 hex digits */
    long long created;  /* unix seconds */
    int n;              /* choices per prompt: child i * n + j is prompt i's choice j */
    int include_usage;  /* stream_options.include_usage (streams only) */
    int echo;           /* completions: the prompt before the text */
    size_t *pos;        /* streams, per child: bytes of its choice's text so far
                         * (text_offset); owned, n_children long */
} srv_openai_ctx;

/* The output hooks (format.h) of both completion routes. */
extern const srv_format srv_format_openai;

/* Frees a context and its pos; NULL is a no-op (srv_job.free_fmt_ctx). */
void srv_openai_ctx_free(void *ctx);

#endif
