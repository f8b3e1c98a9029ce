/*
 * tgi.h — Hugging Face TGI's wire format, shared by the routes (tgi.c),
 * the validator (tgi_parse.c: srv_tgi_parse, validate.h) and the output
 * hooks (tgi_format.c).  A TGI request is one job whose fmt is
 * srv_format_tgi and whose fmt_ctx is a tgi_ctx (freed with free): what
 * was asked beyond the job, and a stream's pending event.  tgi.c's
 * comment tells how streams, details and validation follow TGI.
 */
#ifndef SRV_TGI_H
#define SRV_TGI_H

#include <stddef.h>

#include "format.h"

#define TGI_MAX_NEW_TOKENS 4096
#define TGI_DEFAULT_NEW_TOKENS 20 /* TGI's default before 2.x raised it */
#define TGI_MAX_TOP_N 5           /* TGI's --max-top-n-tokens default */

/* Which route: /generate with TGI's body, /generate_stream, POST /. */
enum { TGI_GENERATE, TGI_STREAM, TGI_COMPAT };

typedef struct tgi_ctx {
    int compat;       /* POST /: the plain answer is an array of one */
    int details;      /* details: true */
    int prefill;      /* decoder_input_details: true */
    int full_text;    /* return_full_text: the inputs before the text */
    int sampled;      /* do_sample or a sampling field: the seed is reported */
    int top_n;        /* top_n_tokens: alternatives per token */
    int pend;         /* stream: 1 + the index of the token whose event waits; 0 none */
    size_t pend_from; /* its text: j->text[pend_from, j->released) */
    int index;        /* stream: events written */
} tgi_ctx;

/* The output hooks (format.h) of the three generation routes. */
extern const srv_format srv_format_tgi;

#endif
