/*
 * kernel_driver.c -- runs every kernel of every tier this CPU supports, without Python, and prints
 * one line per (tier, kernel, precision): a hash of the result's bits. Built natively and with
 * mingw-w64 (run under wine) by .ci/windows.sh, which checks that the two builds print the same
 * lines for the fast tiers (their exp is our own polynomial, so the bits depend only on the
 * compiler and the code). The reference tier calls the C library's exp(), whose last bit differs
 * between glibc and Microsoft's runtime: its lines carry a checksum to a tolerance instead.
 *
 * Inside one build it also checks what the Python tests check on Linux: every thread count gives
 * the same bits (1, 2 and 3 threads; the sizes split into many tasks), and the fast tiers agree
 * with the reference tier to a tolerance. Exit status 0 when all of that holds.
 */
#include "attn.h"
#include "platform.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { B = 2, N_Q = 193, N_K = 260, D_K = 48, D_V = 40 };

static void *plain_alloc(size_t nbytes) { return malloc(nbytes ? nbytes : 1); }

/* Inputs from a fixed LCG, so every build sees the same numbers. */
static void fill(double *x, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = (double)(seed >> 11) / 4503599627370496.0 - 1.0;     /* in [-1, 1) */
    }
}

/* The kernels' band (attn.h's sa_band) of a call without lengths: causal top-left, or every key. */
static sa_band band_of(int causal, sa_int n_q, sa_int n_k)
{
    sa_band band = {.lo = -(n_q + n_k), .hi = causal ? 0 : n_q + n_k, .from_end = 0,
                    .n_rows = n_q, .n_keys = n_k, .row_lengths = NULL, .key_lengths = NULL};
    return band;
}

static uint64_t fnv(const void *data, size_t nbytes)
{
    const unsigned char *p = data;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < nbytes; i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

typedef struct {
    double in[3][B * N_K * 64];     /* Q, K, V (and dO) as doubles; cast per precision */
} inputs;

/* One kernel call on one tier and thread count, all outputs hashed into *hash and the first
   output returned in `result` (as doubles) for the cross-tier comparison. */
typedef struct {
    const char *name;
    size_t out_elems;               /* elements of the compared output */
} kernel_case;

static const kernel_case cases[] = {
    {"scores", B * N_Q * N_K}, {"softmax", B * N_Q * N_K}, {"matmul", B * N_Q * D_V},
    {"attention", B * N_Q * D_V}, {"attention_weights", B * N_Q * D_V},
    {"attention_causal", B * N_Q * D_V}, {"backward", B * N_Q * D_K},
};
enum { N_CASES = sizeof(cases) / sizeof(cases[0]) };

static sa_mat mat(void *data, sa_int ld, sa_int bstride)
{
    sa_mat m;
    memset(&m, 0, sizeof m);
    m.data = data;
    m.ld = ld;
    m.bstride[0] = bstride;
    return m;
}

/* Runs case c; returns a status; writes the outputs' hash and the compared output. */
static int run_case(int c, int precision, const sa_exec *ex, const inputs *in, uint64_t *hash,
                    double *result)
{
    const sa_kernels *k = sa_kernels_for(ex->isa);
    size_t size = precision == SA_F32 ? sizeof(float) : sizeof(double);
    size_t n_in = B * N_K * 64;
    char *Q = malloc(n_in * size), *K = malloc(n_in * size), *V = malloc(n_in * size);
    char *dO = malloc(n_in * size);
    char *S = calloc((size_t)B * N_Q * N_K, size), *O = calloc((size_t)B * N_Q * 64, size);
    char *dK = calloc(n_in, size), *dV = calloc(n_in, size);
    for (size_t i = 0; i < n_in; i++) {
        if (precision == SA_F32) {
            ((float *)Q)[i] = (float)in->in[0][i];
            ((float *)K)[i] = (float)in->in[1][i];
            ((float *)V)[i] = (float)in->in[2][i];
            ((float *)dO)[i] = (float)in->in[2][(i * 7) % n_in];
        } else {
            ((double *)Q)[i] = in->in[0][i];
            ((double *)K)[i] = in->in[1][i];
            ((double *)V)[i] = in->in[2][i];
            ((double *)dO)[i] = in->in[2][(i * 7) % n_in];
        }
    }
    sa_batch batch;
    memset(&batch, 0, sizeof batch);
    batch.nd = 1;
    batch.count = B;
    batch.shape[0] = B;
    sa_mask no_mask;
    memset(&no_mask, 0, sizeof no_mask);
    sa_mat mQ = mat(Q, D_K, N_Q * D_K), mK = mat(K, D_K, N_K * D_K), mV = mat(V, D_V, N_K * D_V);
    sa_mat mS = mat(S, N_K, N_Q * N_K), mO = mat(O, D_V, N_Q * D_V);
    sa_mat mdO = mat(dO, D_V, N_Q * D_V), mdQ = mat(O, D_K, N_Q * D_K);
    sa_mat mdK = mat(dK, D_K, N_K * D_K), mdV = mat(dV, D_V, N_K * D_V);
    double scale = 1.0 / sqrt((double)D_K);
    int rc;
    const char *out = O;
    size_t hashed = (size_t)B * N_Q * D_V;
    switch (c) {
    case 0:
        rc = k->scores[precision](ex, &batch, &mS, &mQ, &mK, &no_mask, N_Q, N_K, D_K, scale,
                                  band_of(1, N_Q, N_K), NULL);
        out = S, hashed = (size_t)B * N_Q * N_K;
        break;
    case 1:
        rc = k->scores[precision](ex, &batch, &mS, &mQ, &mK, &no_mask, N_Q, N_K, D_K, scale,
                                  band_of(0, N_Q, N_K), NULL);
        if (rc == SA_OK)
            rc = k->softmax[precision](ex, &batch, &mS, &mS, N_Q, N_K);
        out = S, hashed = (size_t)B * N_Q * N_K;
        break;
    case 2: {   /* O (n_q, d_v) = Q (n_q, d_k) . K[:d_k] viewed as (d_k, d_v) */
        sa_mat mB = mat(K, D_V, 0);
        rc = k->matmul[precision](ex, &batch, &mO, &mQ, &mB, N_Q, D_V, D_K, 0);
        break;
    }
    case 3:
        rc = k->attention[precision](ex, &batch, &mO, NULL, &mQ, &mK, &mV, &no_mask, N_Q, N_K, D_K,
                                     D_V, scale, band_of(0, N_Q, N_K), NULL, NULL);
        break;
    case 4:
        rc = k->attention[precision](ex, &batch, &mO, &mS, &mQ, &mK, &mV, &no_mask, N_Q, N_K, D_K,
                                     D_V, scale, band_of(0, N_Q, N_K), NULL, NULL);
        break;
    case 5:
        rc = k->attention[precision](ex, &batch, &mO, NULL, &mQ, &mK, &mV, &no_mask, N_Q, N_K, D_K,
                                     D_V, scale, band_of(1, N_Q, N_K), NULL, NULL);
        break;
    default:
        rc = k->attention_backward[precision](ex, &batch, &mdQ, &mdK, &mdV, NULL, &mdO, &mQ, &mK,
                                              &mV, &no_mask, N_Q, N_K, D_K, D_V, scale,
                                              band_of(1, N_Q, N_K), NULL);
        hashed = (size_t)B * N_Q * D_K;
        break;
    }
    uint64_t h = fnv(out, hashed * size);
    if (c == 4)
        h ^= fnv(S, (size_t)B * N_Q * N_K * size);
    if (c == 6)
        h ^= fnv(dK, (size_t)B * N_K * D_K * size) * 3 ^ fnv(dV, (size_t)B * N_K * D_V * size) * 5;
    *hash = h;
    for (size_t i = 0; i < cases[c].out_elems; i++)
        result[i] = precision == SA_F32 ? (double)((float *)out)[i] : ((double *)out)[i];
    free(Q), free(K), free(V), free(dO), free(S), free(O), free(dK), free(dV);
    return rc;
}

int main(void)
{
    static inputs in;
    for (int i = 0; i < 3; i++)
        fill(in.in[i], sizeof in.in[i] / sizeof(double), 1234u + 77u * (unsigned)i);
    size_t most = (size_t)B * N_Q * N_K;
    double *want = malloc(most * sizeof(double)), *got = malloc(most * sizeof(double));
    int failures = 0;
    printf("cpus %d\n", sa_available_cpus());
    for (int isa = SA_ISA_COUNT - 1; isa >= 0; isa--) {
        if (!sa_isa_supported((sa_isa)isa))
            continue;
        for (int precision = SA_F32; precision <= SA_F64; precision++) {
            double tolerance = precision == SA_F32 ? 1e-4 : 1e-11;
            for (int c = 0; c < N_CASES; c++) {
                uint64_t first = 0;
                double sum = 0;
                for (int threads = 1; threads <= 3; threads++) {
                    sa_exec ex = {.n_threads = threads, .isa = (sa_isa)isa, .poll = NULL,
                                  .alloc = plain_alloc, .dealloc = free};
                    uint64_t hash;
                    if (run_case(c, precision, &ex, &in, &hash, got) != SA_OK) {
                        printf("FAIL %s %s: status not OK\n", sa_isa_name((sa_isa)isa), cases[c].name);
                        failures++;
                        continue;
                    }
                    if (threads == 1)
                        first = hash;
                    else if (hash != first) {
                        printf("FAIL %s %s f%d: %d threads gave other bits than 1\n",
                               sa_isa_name((sa_isa)isa), cases[c].name, precision ? 64 : 32, threads);
                        failures++;
                    }
                }
                sa_exec ref = {.n_threads = 1, .isa = SA_ISA_REFERENCE, .alloc = plain_alloc,
                               .dealloc = free};
                uint64_t ignored;
                run_case(c, precision, &ref, &in, &ignored, want);
                double worst = 0;
                for (size_t i = 0; i < cases[c].out_elems; i++) {
                    if (got[i] == want[i])      /* the masked scores' -inf included */
                        continue;
                    double scale = fabs(want[i]) > 1 ? fabs(want[i]) : 1;
                    double err = fabs(got[i] - want[i]) / scale;
                    worst = err > worst || err != err ? err : worst;
                }
                for (size_t i = 0; i < cases[c].out_elems; i++)
                    sum += isfinite(got[i]) ? got[i] : 0;
                if (!(worst <= tolerance)) {
                    printf("FAIL %s %s f%d: differs from the reference tier by %.3g\n",
                           sa_isa_name((sa_isa)isa), cases[c].name, precision ? 64 : 32, worst);
                    failures++;
                }
                if (isa == SA_ISA_REFERENCE)   /* libm's exp: compare a rounded checksum only */
                    printf("%s %s f%d sum=%.6e\n", sa_isa_name((sa_isa)isa), cases[c].name,
                           precision ? 64 : 32, sum);
                else
                    printf("%s %s f%d bits=%016llx\n", sa_isa_name((sa_isa)isa), cases[c].name,
                           precision ? 64 : 32, (unsigned long long)first);
            }
        }
    }
    free(want), free(got);
    printf("%s: %d failures\n", failures ? "FAILED" : "OK", failures);
    return failures != 0;
}
