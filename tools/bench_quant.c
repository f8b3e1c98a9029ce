/*
 * bench_quant.c — `attn bench-quant`: one thread's matrix-vector product
 * (decode's product) for each weight format against attnd's own float32
 * kernel, on the 110M and 15M shapes' matrices, as JSON lines.
 *
 * Decode streams weights from memory, so each shape is held in enough
 * copies to be 256 MB in float32 (far past the caches), and a call goes to
 * the next copy: every call reads its weights from DRAM, as a model's
 * layers do.  Formats alternate round by round; the figures are medians
 * over the rounds of the time per product, with the bytes read per second
 * and the speed-up over f32 (same weights, fewer bytes).  B rows of
 * activations (--batch) share each row of weights.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "internal.h"
#include "tfm/profile.h"
#include "tfm/quant.h"

#define N_FORMATS 4

typedef struct shape {
    const char *name;
    int n, d;
} shape;

static const shape shapes[] = {
    {"110M wq 768x768", 768, 768},   {"110M w1 2048x768", 2048, 768},
    {"110M w2 768x2048", 768, 2048}, {"110M cls 32000x768", 32000, 768},
    {"15M cls 32000x288", 32000, 288},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: attn bench-quant [--rounds 9] [--batch 1]\n"
               "  one thread's product with weights in f32, bf16, q8 and q4, each matrix in\n"
               "  copies past the caches; medians of alternated rounds, as JSON lines.\n");
}

int attn_bench_quant_main(int argc, char **argv)
{
    long rounds = 9, batch = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (v && !strcmp(a, "--rounds") && attn_parse_long(v, -1, 1, 1001, &rounds) == 0) {
            i++;
        } else if (v && !strcmp(a, "--batch") && attn_parse_long(v, -1, 1, 16, &batch) == 0) {
            i++;
        } else {
            fprintf(stderr, "attn bench-quant: bad argument %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    tfm__pool *pool = tfm__pool_create(1);
    uint64_t s = 42;
    int B = (int)batch;
    printf("{\"isa\":\"%s\",\"threads\":1,\"batch\":%d,\"rounds\":%ld}\n", tfm_quant_isa(), B,
           rounds);
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        const shape *sh = &shapes[si];
        size_t count = (size_t)sh->n * sh->d;
        int copies = (int)((256u << 20) / (count * 4)) + 1;
        float *w = malloc(count * 4), *x = malloc((size_t)B * sh->d * 4);
        float *y = malloc((size_t)B * sh->n * 4);
        if (!w || !x || !y)
            return 1;
        for (size_t i = 0; i < count; i++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            w[i] = (float)((double)(s >> 40) / (double)(1 << 24) - 0.5);
        }
        for (int i = 0; i < B * sh->d; i++)
            x[i] = (float)(i % 17) / 17.0f - 0.5f;
        tfm_qmat *mats[N_FORMATS];
        size_t bytes[N_FORMATS];
        void *xq[N_FORMATS];
        for (int f = 0; f < N_FORMATS; f++) {
            size_t db, sb;
            tfm_qmat_bytes((tfm_wformat)f, sh->n, sh->d, &db, &sb);
            bytes[f] = db + sb;
            mats[f] = calloc((size_t)copies, sizeof **mats);
            for (int c = 0; c < copies; c++) {
                void *data = malloc(db);
                uint16_t *sc = sb ? malloc(sb) : NULL;
                tfm_quantize((tfm_wformat)f, w, sh->n, sh->d, data, sc);
                mats[f][c] = (tfm_qmat){(tfm_wformat)f, sh->n, sh->d, data, sc};
            }
            xq[f] = malloc(tfm_qx_bytes((tfm_wformat)f, B, sh->d) + 1);
        }
        double *t = calloc((size_t)rounds * N_FORMATS, sizeof *t);
        for (long r = 0; r < rounds; r++)
            for (int k = 0; k < N_FORMATS; k++) {
                int f = (int)((r & 1) ? N_FORMATS - 1 - k : k); /* ABBA */
                double t0 = tfm_now();
                for (int c = 0; c < copies; c++) {
                    if (f == TFM_WF_F32) {
                        tfm__matmul_kernel(pool, y, x, mats[f][c].data, B, sh->d, sh->n);
                    } else { /* the activations are prepared once per product */
                        tfm_qx_prepare((tfm_wformat)f, x, B, sh->d, xq[f]);
                        tfm_qmatmul_rows(&mats[f][c], y, sh->n, x, xq[f], B, 0, sh->n);
                    }
                }
                t[(size_t)f * rounds + r] = (tfm_now() - t0) / copies;
            }
        double f32 = attn_median(t, (int)rounds);
        for (int f = 0; f < N_FORMATS; f++) {
            double med = attn_median(t + (size_t)f * rounds, (int)rounds);
            printf("{\"shape\":\"%s\",\"format\":\"%s\",\"ms\":%.4f,\"GB_per_s\":%.2f,"
                   "\"bytes_per_weight\":%.4f,\"speedup_vs_f32\":%.2f}\n",
                   sh->name, tfm_wformat_name((tfm_wformat)f), med * 1e3, bytes[f] / med / 1e9,
                   (double)bytes[f] / (double)count, f32 / med);
            for (int c = 0; c < copies; c++) {
                free((void *)mats[f][c].data);
                free((void *)mats[f][c].scale);
            }
            free(mats[f]);
            free(xq[f]);
        }
        fflush(stdout);
        free(t), free(w), free(x), free(y);
    }
    tfm__pool_destroy(pool);
    return 0;
}
