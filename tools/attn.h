/* attn.h — subcommands of the attn CLI implemented outside attn.c. */
#ifndef ATTN_H
#define ATTN_H

/* `attn bench ...`: argv[0] is "bench".  Returns the process exit code
 * (0 ok, 1 failure, 2 bad arguments). */
int attn_bench_main(int argc, char **argv);

#endif
