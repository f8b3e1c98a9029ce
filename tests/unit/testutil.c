/* testutil.c — see testutil.h. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

const char *tu_tmpdir(void)
{
    static char dir[512];
    if (!dir[0]) {
        const char *base = getenv("ATTND_TEST_TMP");
        if (!base || !*base)
            base = "/tmp";
        mkdir(base, 0755);
        snprintf(dir, sizeof dir, "%s/tfm-test-%d", base, (int)getpid());
        mkdir(dir, 0755);
    }
    return dir;
}

const char *tu_path(const char *name)
{
    static char bufs[4][640];
    static int slot;
    char *b = bufs[slot++ & 3];
    snprintf(b, sizeof bufs[0], "%s/%s", tu_tmpdir(), name);
    return b;
}

tfm_model *tu_random_model(int dim, int hidden, int layers, int heads, int kv_heads, int vocab,
                           int seq_len, int shared, uint64_t seed)
{
    tfm_config c = {0};
    c.dim = dim;
    c.hidden_dim = hidden;
    c.n_layers = layers;
    c.n_heads = heads;
    c.n_kv_heads = kv_heads;
    c.vocab_size = vocab;
    c.seq_len = seq_len;
    c.shared_classifier = shared;
    tfm_config_defaults(&c);
    tfm_model *m = NULL;
    char err[256] = "";
    tfm_status s = tfm_model_create(&c, &m, err, sizeof err);
    if (s != TFM_OK)
        fail_msg("tfm_model_create: %s: %s", tfm_strerror(s), err);
    tfm_model_init_random(m, seed);
    return m;
}

float tu_max_rel_diff(const float *a, const float *b, size_t n)
{
    float worst = 0;
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]) / fmaxf(1.0f, fabsf(b[i]));
        if (!(d <= worst)) /* NaN counts as worst */
            worst = isnan(d) ? INFINITY : d;
    }
    return worst;
}

unsigned char *tu_slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    assert_true(len >= 0);
    rewind(f);
    unsigned char *buf = malloc((size_t)len + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    buf[len] = 0;
    *n = (size_t)len;
    return buf;
}

void tu_spit(const char *path, const void *buf, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

double tu_rel_inf(const float *got, const double *ref, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (isnan(d))
            return INFINITY;
        num = fmax(num, d);
        den = fmax(den, fabs(ref[i]));
    }
    return den > 0.0 ? num / den : num;
}

double tu_rel_inf_f(const float *got, const float *ref, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (isnan(d))
            return INFINITY;
        num = fmax(num, d);
        den = fmax(den, fabs((double)ref[i]));
    }
    return den > 0.0 ? num / den : num;
}

void tu_check_tensor(const char *label, const float *got, const float *ref, size_t n, float tol)
{
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(got[i] - ref[i]) / fmaxf(1.0f, fabsf(ref[i]));
        if (!(d <= tol))
            fail_msg("%s[%zu]: got %.9g, want %.9g (rel %.3g > %.3g)", label, i, got[i], ref[i],
                     d, tol);
    }
}

uint64_t tu_rng(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

float tu_uniform(uint64_t *s)
{
    return (float)((tu_rng(s) >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

const char *tu_fixture(const char *name)
{
    static char path[640];
    const char *dir = getenv("ATTND_SHARED_DIR");
    if (!dir || !*dir)
        dir = "../shared";
    snprintf(path, sizeof path, "%s/fixtures/%s", dir, name);
    return access(path, R_OK) == 0 ? path : NULL;
}
