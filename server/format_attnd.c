/*
 * format_attnd.c — attnd's own /generate output (format.h): one JSON body
 * with the text, the token ids, the finish reason, usage and timings; or,
 * streaming, one `data: {"token", "text"}` event per token, a final event
 * with the finish reason, usage and timings, and `data: [DONE]`.
 */
#include <string.h>

#include "engine.h"

const char *srv_finish_name(srv_finish f)
{
    switch (f) {
    case SRV_FINISH_LENGTH: return "length";
    case SRV_FINISH_EOS: return "eos";
    case SRV_FINISH_STOP: return "stop";
    case SRV_FINISH_CANCELLED: return "cancelled";
    case SRV_FINISH_TIMEOUT: return "timeout";
    default: return "error";
    }
}

static void usage_and_timings(srv_buf *b, const srv_job *j)
{
    double prefill = j->t_prefill_done > j->t_admit ? j->t_prefill_done - j->t_admit : 0;
    double decode = j->t_end > j->t_prefill_done && j->t_prefill_done > 0
                        ? j->t_end - j->t_prefill_done
                        : 0;
    int decoded = j->n_tokens > 1 ? j->n_tokens - 1 : 0; /* the first came from prefill */
    srv_buf_printf(b,
                   "\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d},"
                   "\"timings\":{\"queue_ms\":%.3f,\"prefill_ms\":%.3f,\"decode_ms\":%.3f,"
                   "\"prefill_tokens_per_s\":%.1f,\"decode_tokens_per_s\":%.1f}",
                   j->prompt_tokens, j->n_tokens, j->prompt_tokens + j->n_tokens,
                   (j->t_admit - j->t_submit) * 1e3, prefill * 1e3, decode * 1e3,
                   prefill > 0 ? j->prompt_tokens / prefill : 0.0,
                   decode > 0 ? decoded / decode : 0.0);
}

static void token(srv_job *j, srv_buf *b, int tok, const char *text, size_t n,
                  const tfm_token_logprob *lp)
{
    (void)j;
    (void)lp;
    srv_buf_printf(b, "data: {\"token\":%d,\"text\":", tok);
    srv_json_string(b, text, n);
    srv_buf_append(b, "}\n\n", 3);
}

static void end(srv_job *j, srv_buf *b, srv_finish why)
{
    if (j->stream) {
        /* whatever text was held back goes out with the final event */
        srv_buf_append(b, "data: {\"text\":", 14);
        srv_json_string(b, j->text.p + j->released, j->text.len - j->released);
        j->released = j->text.len;
        srv_buf_printf(b, ",\"finish_reason\":\"%s\",\"model\":", srv_finish_name(why));
        srv_json_string(b, j->model->name, strlen(j->model->name));
        srv_buf_append(b, ",", 1);
        usage_and_timings(b, j);
        srv_buf_append(b, "}\n\ndata: [DONE]\n\n", 17);
        return;
    }
    srv_buf_append(b, "{\"model\":", 9);
    srv_json_string(b, j->model->name, strlen(j->model->name));
    srv_buf_append(b, ",\"text\":", 8);
    srv_json_string(b, j->text.p ? j->text.p : "", j->text.len);
    srv_buf_append(b, ",\"tokens\":[", 11);
    for (int i = 0; i < j->n_tokens; i++)
        srv_buf_printf(b, i ? ",%d" : "%d", j->tokens[i]);
    srv_buf_printf(b, "],\"finish_reason\":\"%s\",", srv_finish_name(why));
    usage_and_timings(b, j);
    srv_buf_append(b, "}", 1);
}

static void error(srv_job *j, srv_buf *b, int status, const char *code, const char *msg,
                  const char *field)
{
    (void)status;
    int began = srv_job_began(j);
    if (began)
        srv_buf_append(b, "data: ", 6);
    srv_buf_printf(b, "{\"error\":{\"code\":\"%s\",\"message\":", code);
    srv_json_string(b, msg, strlen(msg));
    if (field)
        srv_buf_printf(b, ",\"field\":\"%s\"", field);
    srv_buf_append(b, "}}", 2);
    if (began)
        srv_buf_append(b, "\n\ndata: [DONE]\n\n", 16);
}

const srv_format srv_format_attnd = {NULL, token, end, NULL, error};
