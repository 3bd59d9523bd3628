/*
 * dispatch.c -- which instruction-set tiers this CPU can run, their kernel tables, and the
 * non-finite policy that sends a call to the reference tier when a value operand needs it.
 * Tiers are chosen at run time (never -march=native at build time) so one wheel runs everywhere.
 */
#include "attn.h"
#include "platform.h"

#include <math.h>

static const char *const isa_names[SA_ISA_COUNT] = {"reference", "generic", "avx2", "avx512",
                                                     "neon"};

const char *sa_isa_name(sa_isa isa)
{
    return (unsigned)isa < SA_ISA_COUNT ? isa_names[isa] : "unknown";
}

int sa_isa_supported(sa_isa isa)
{
    switch (isa) {
    case SA_ISA_REFERENCE:
        return 1;
    case SA_ISA_GENERIC:
        return SA_VECTOR_TIERS;
#if SA_VECTOR_TIERS && (defined(__x86_64__) || defined(__i386__))
    case SA_ISA_AVX2:
        return sa_cpu_has(SA_CPU_AVX2_FMA);
    case SA_ISA_AVX512:
        return sa_cpu_has(SA_CPU_AVX512);
#endif
#if SA_VECTOR_TIERS && defined(__aarch64__)
    case SA_ISA_NEON:
        return sa_cpu_has(SA_CPU_NEON);
#endif
    default:
        return 0;
    }
}

sa_isa sa_isa_best(void)
{
    for (int isa = SA_ISA_COUNT - 1; isa > SA_ISA_REFERENCE; isa--)
        if (sa_isa_supported((sa_isa)isa) && sa_kernels_for((sa_isa)isa) != NULL)
            return (sa_isa)isa;
    return SA_ISA_REFERENCE;
}

const sa_kernels *sa_kernels_for(sa_isa isa)
{
    if (!sa_isa_supported(isa))
        return NULL;
    switch (isa) {
    case SA_ISA_REFERENCE:
        return &sa_kernels_reference;
#if SA_VECTOR_TIERS
    case SA_ISA_GENERIC:
        return &sa_kernels_generic;
#endif
#if SA_VECTOR_TIERS && (defined(__x86_64__) || defined(__i386__))
    case SA_ISA_AVX2:
        return &sa_kernels_avx2;
    case SA_ISA_AVX512:
        return &sa_kernels_avx512;
#endif
#if SA_VECTOR_TIERS && defined(__aarch64__)
    case SA_ISA_NEON:
        return &sa_kernels_neon;
#endif
    default:
        return NULL;
    }
}

/* Whether every element of one value operand, over the whole batch, is finite. */
static int values_finite(const sa_batch *batch, int precision, const sa_values *v)
{
    for (sa_int item = 0; item < batch->count; item++) {
        sa_int base = sa_batch_offset(batch, v->mat->bstride, item);
        for (sa_int r = 0; r < v->rows; r++) {
            sa_int at = base + r * v->mat->ld;
            if (precision == SA_F32) {
                const float *row = (const float *)v->mat->data + at;
                for (sa_int c = 0; c < v->cols; c++)
                    if (!isfinite(row[c]))
                        return 0;
            } else {
                const double *row = (const double *)v->mat->data + at;
                for (sa_int c = 0; c < v->cols; c++)
                    if (!isfinite(row[c]))
                        return 0;
            }
        }
    }
    return 1;
}

const sa_kernels *sa_kernels_for_values(sa_exec *ex, const sa_batch *batch, int precision,
                                        const sa_values *values, int n)
{
    if (ex->isa != SA_ISA_REFERENCE)
        for (int i = 0; i < n; i++)
            if (!values_finite(batch, precision, &values[i])) {
                ex->isa = SA_ISA_REFERENCE;
                break;
            }
    return sa_kernels_for(ex->isa);
}

static double element(const sa_mat *mat, sa_int at, int precision)
{
    return precision == SA_F32 ? ((const float *)mat->data)[at] : ((const double *)mat->data)[at];
}

void sa_output_zero_weights(const sa_batch *batch, int precision, const sa_mat *C,
                            const sa_mat *weights, const sa_mat *V, sa_int m, sa_int n, sa_int k)
{
    for (sa_int item = 0; item < batch->count; item++) {
        sa_int c0 = sa_batch_offset(batch, C->bstride, item);
        sa_int w0 = sa_batch_offset(batch, weights->bstride, item);
        sa_int v0 = sa_batch_offset(batch, V->bstride, item);
        for (sa_int col = 0; col < n; col++) {
            sa_int p = 0;
            while (p < k && isfinite(element(V, v0 + p * V->ld + col, precision)))
                p++;
            if (p == k)
                continue;               /* a finite column: the tier's product stands */
            for (sa_int i = 0; i < m; i++) {
                double sum = 0;         /* float32 terms too: rounded to float once, below */
                for (p = 0; p < k; p++) {
                    double w = element(weights, w0 + i * weights->ld + p, precision);
                    if (w != 0)
                        sum += w * element(V, v0 + p * V->ld + col, precision);
                }
                if (precision == SA_F32)
                    ((float *)C->data)[c0 + i * C->ld + col] = (float)sum;
                else
                    ((double *)C->data)[c0 + i * C->ld + col] = sum;
            }
        }
    }
}
