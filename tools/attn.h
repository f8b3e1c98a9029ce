/* attn.h — subcommands of the attn CLI implemented outside attn.c. */
#ifndef ATTN_H
#define ATTN_H

#include <stddef.h>
#include <stdio.h>

/* `attn bench ...`: argv[0] is "bench".  Returns the process exit code
 * (0 ok, 1 failure, 2 bad arguments). */
int attn_bench_main(int argc, char **argv);

/* The config of a bench shape: "15M", "110M" (llama2.c's stories shapes,
 * shared classifier) or "DxHxLxNHxKVxVxS"; validated.  0, or -1 with err. */
struct tfm_config;
int attn_bench_shape(const char *s, struct tfm_config *out, char *err, size_t errlen);

/* `attn bench-weights ...` (tools/bench_weights.c): decode, batched decode
 * and prefill of a whole random model in each weight format, alternated
 * rounds, medians and ratios to f32.  Exit codes as below. */
int attn_bench_weights_main(int argc, char **argv);

/* `attn bench-kv ...` (tools/bench_kv.c): the KV cache in f32, bf16 and q8,
 * bytes per token, long-context decode and agreement. */
int attn_bench_kv_main(int argc, char **argv);

/* `attn bench-recall ...` (tools/bench_recall.c): tfm_recall_exact's latency
 * against the number of pairs, beside a hash map.  argv[0] is
 * "bench-recall".  Returns the process exit code (0 ok, 1 failure, 2 bad
 * arguments). */
int attn_bench_recall_main(int argc, char **argv);

/* `attn bench-sampler ...` (tools/bench_sampler.c): greedy sampling today
 * against the sampler before issue 12's options (tools/sampler_base.c),
 * alternated rounds, and the options path per token.  argv[0] is
 * "bench-sampler".  Exit codes as above. */
int attn_bench_sampler_main(int argc, char **argv);
/* `attn bench-quant ...` (tools/bench_quant.c): decode's product in each
 * weight format against the float32 kernel. */
int attn_bench_quant_main(int argc, char **argv);

/* `attn cost ...` (tools/cost.c): prefill attention time and peak memory
 * against the context length for the naive and tiled kernels; writes
 * cost.csv and cost.md.  argv[0] is "cost".  Returns the process exit code
 * (0 ok, 1 failure, 2 bad arguments). */
int attn_cost_main(int argc, char **argv);

/* `attn train ...` and `attn bench-train ...` (tools/train.c): the training
 * loop attnd's jobs run, from the command line; and the step-time
 * benchmark of issue #5's two configurations.  Exit codes as above. */
int attn_train_main(int argc, char **argv);
int attn_bench_train_main(int argc, char **argv);

/* `attn quantize ...` (tools/quantize.c) and `attn eval ...` (tools/eval.c):
 * a model saved in bf16/q8/q4; bits per byte, MQAR accuracy and greedy
 * agreement of a model in each weight format.  Exit codes as above. */
int attn_quantize_main(int argc, char **argv);
int attn_eval_main(int argc, char **argv);
/* Converts m to the weight format named (f32, bf16, q8, q4): nothing when
 * it is in that format already, tfm_model_quantize from float32, else an
 * error (a quantised model does not convert).  0, or -1 with err. */
struct tfm_model;
int attn_model_weights(struct tfm_model *m, const char *weights, char *err, size_t errlen);

/* A whole-string decimal integer in [lo, hi]; len < 0 means up to the NUL.
 * 0 and *out set, or -1.  Shared by every subcommand's flag parsing. */
int attn_parse_long(const char *s, int len, long lo, long hi, long *out);

/* After a subcommand's parse_args (1: help asked, < 0: bad arguments with
 * err): prints usage where it belongs and returns the exit code, or -1 to
 * go on. */
int attn_parse_outcome(int pr, const char *cmd, const char *err, void (*usage)(FILE *f));

/* Median of v[0..n), n >= 1 (sorts v). */
double attn_median(double *v, int n);
/* Least-squares slope of log y against log x over the points with x, y > 0;
 * NaN with fewer than two. */
double attn_loglog_slope(const double *x, const double *y, int n);

#endif
