/*
 * format.h — how a generation's output is written on the wire.
 *
 * The engine decides what happens (tokens, stop strings, the end, errors);
 * a format decides how it looks: attnd's own /generate shape
 * (format_attnd.c), OpenAI's completions and chat completions (openai.c),
 * TGI's /generate and /generate_stream (tgi.c).  A job names its format in
 * srv_job.fmt (NULL: attnd's).
 *
 * Every hook runs on the engine thread with the output job's mutex held
 * (the output job is the job's group, srv_job.parent, when it has one,
 * else the job) and appends to `out`, that job's output buffer.  A hook
 * may read the job's engine-private fields (tokens, lps, text, released,
 * prompt_ids, timings) and, in group_end, every child's; it must not block
 * or take another lock.
 *
 * Streams: begin once, when the prompt has been tokenised and accepted
 * (for a group: once, when its first child is); token for each generated
 * token with the bytes released now (stop strings and incomplete UTF-8
 * are held back, so text may be empty); end when the sequence ends, with
 * whatever text was held back (j->text from j->released to j->text.len;
 * the hook advances j->released); group_end once every child has ended.
 * A sequence whose first token is its end of sequence gets no token call.
 * Cancelled sequences (the client left, or shutdown) get no end call, and
 * a group with one gets no group_end.
 * Without a stream: end for an ungrouped job writes the whole body; for a
 * group, end may write nothing and group_end writes the body.
 *
 * error: the request failed (status 4xx/5xx).  Before a stream has begun,
 * out has been emptied and the hook writes the whole error body; after,
 * it writes an error event that ends the stream.  For a group, the first
 * child's error is the group's and its siblings are cancelled.
 */
#ifndef SRV_FORMAT_H
#define SRV_FORMAT_H

#include <stddef.h>

#include "tfm/sampler.h"

struct srv_job;
struct srv_buf;
enum srv_finish;

typedef struct srv_format {
    void (*begin)(struct srv_job *j, struct srv_buf *out);
    /* lp: the token's entries (lp[0] chosen, then j->logprobs alternatives)
     * when j->logprobs >= 0, else NULL */
    void (*token)(struct srv_job *j, struct srv_buf *out, int tok, const char *text, size_t n,
                  const tfm_token_logprob *lp);
    void (*end)(struct srv_job *j, struct srv_buf *out, enum srv_finish why);
    void (*group_end)(struct srv_job *group, struct srv_buf *out);
    void (*error)(struct srv_job *j, struct srv_buf *out, int status, const char *code,
                  const char *msg, const char *field);
} srv_format;

/* attnd's own /generate (format_attnd.c). */
extern const srv_format srv_format_attnd;

/* The finish reason's attnd name: "length", "eos", "stop", "cancelled",
 * "timeout", "error". */
const char *srv_finish_name(enum srv_finish f);

#endif
