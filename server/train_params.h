/*
 * train_params.h — a POST /train body, validated and normalised into the
 * core's tfm_train_spec (include/tfm/train.h).
 *
 * One parser serves two callers: the HTTP thread (a request body) and the
 * start-up scan (a job record's "request", the normalised form written
 * back), so a resumed job gets exactly the spec it was accepted with.  The
 * service's own limits come first (types, unknown fields, sizes a shared
 * machine can afford), then tfm_train_spec_prepare fills the defaults and
 * checks the rest; every error names the request field at fault.
 */
#ifndef SRV_TRAIN_PARAMS_H
#define SRV_TRAIN_PARAMS_H

#include <jansson.h>
#include <stddef.h>

#include "tfm/train.h"

/* The service's limits on one job. */
#define SRV_TRAIN_MAX_STEPS 1000000
#define SRV_TRAIN_MAX_TOKENS 65536             /* batch_size x seq_len */
#define SRV_TRAIN_MAX_PARAMS 50000000          /* model parameters */
#define SRV_TRAIN_MAX_BYTES ((size_t)2 << 30)  /* trainer memory, estimated */
#define SRV_TRAIN_MAX_CORPUS ((size_t)256 << 20)

typedef struct srv_train_params {
    tfm_train_spec spec;  /* prepared; spec.text is NULL (the job reads it) */
    char name[72];        /* the model to produce */
    char corpus[256];     /* text task: a file of <data-dir>/corpora; "" for inline text */
    const char *text;     /* inline text: borrowed from the parsed body; NULL from a record */
    size_t text_len;      /* inline text's size in bytes */
    size_t est_bytes;     /* the trainer's memory, estimated */
} srv_train_params;

/* Parses body into p.  from_record: body is a record's normalised request,
 * whose inline text is only its size ("text": {"text_bytes": n}).
 * n_threads: the job's compute threads (spec.n_threads).  Returns 0, or -1
 * with the field at fault in field ("" when none: the body is not an
 * object) and a message for the client in msg. */
int srv_train_params_parse(json_t *body, int from_record, int n_threads, srv_train_params *p,
                           char *field, size_t fieldlen, char *msg, size_t msglen);

/* The normalised request: every field with its value, defaults filled in;
 * inline text as its size.  A new reference (NULL when out of memory). */
json_t *srv_train_params_json(const srv_train_params *p);

/* A float as the shortest decimal that reads back to it (0.001f is 0.001,
 * not 0.0010000000474974513), so records round-trip exactly.  New ref. */
json_t *srv_json_float(float f);

#endif
