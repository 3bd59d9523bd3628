/*
 * dispatch.c -- which instruction-set tiers this CPU can run, their kernel tables, and the
 * non-finite policy that sends a call to the reference tier when a value operand needs it.
 * Tiers are chosen at run time (never -march=native at build time) so one wheel runs everywhere.
 */
#include "attn.h"
#include "platform.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

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

/* Whether every element of row[0..cols) is finite. Adds one to each exponent field (masked out
   of the bits): only an exponent of all ones (inf, NaN) carries into the sign bit. ORing the sums
   without an early exit lets the compiler vectorise the loop with plain integer adds; this check
   reads every value operand of a call once. A scalar isfinite() loop cost as much as a fifth of a
   batched attention call, and comparing each exponent with all ones (SSE2 has no 64-bit compare)
   3.7 times what this does (512 x 64 doubles: 27.6 against 7.4 us). */
static int row_finite(const void *row, sa_int cols, int precision)
{
    if (precision == SA_F32) {
        uint32_t carries = 0;
        for (sa_int c = 0; c < cols; c++) {
            uint32_t bits;              /* memcpy: the bits without breaking aliasing rules */
            memcpy(&bits, (const float *)row + c, sizeof bits);
            carries |= (bits & 0x7f800000u) + 0x00800000u;
        }
        return !(carries >> 31);
    }
    uint64_t carries = 0;
    for (sa_int c = 0; c < cols; c++) {
        uint64_t bits;
        memcpy(&bits, (const double *)row + c, sizeof bits);
        carries |= (bits & 0x7ff0000000000000u) + 0x0010000000000000u;
    }
    return !(carries >> 63);
}

/* Whether every element of the rows x cols matrix of one batch item is finite. */
static int item_finite(const sa_mat *mat, sa_int item_offset, sa_int rows, sa_int cols,
                       int precision)
{
    size_t size = precision == SA_F32 ? sizeof(float) : sizeof(double);
    for (sa_int r = 0; r < rows; r++)
        if (!row_finite((const char *)mat->data + (size_t)(item_offset + r * mat->ld) * size,
                        cols, precision))
            return 0;
    return 1;
}

/* Whether every element of one value operand, over the whole batch, is finite: the items split
   across the pool (sa_parallel_items), as a batch of many heads is read from memory. The scan
   does not poll: an interrupt seen here would be lost before the kernel that follows. */
typedef struct {
    const sa_batch *batch;
    int precision;
    const sa_values *v;
    int finite[SA_ITEM_TASKS];
} finite_scan;

static int finite_items(void *arg, sa_int task, sa_int first, sa_int end)
{
    finite_scan *s = arg;
    const sa_values *v = s->v;
    int finite = 1;
    for (sa_int item = first; item < end && finite; item++)
        finite = item_finite(v->mat, sa_batch_offset(s->batch, v->mat->bstride, item), v->rows,
                             v->cols, s->precision);
    s->finite[task] = finite;
    return SA_OK;
}

static int values_finite(const sa_exec *ex, const sa_batch *batch, int precision,
                         const sa_values *v)
{
    finite_scan s = {.batch = batch, .precision = precision, .v = v};
    sa_exec no_poll = *ex;
    no_poll.poll = NULL;
    sa_int n_tasks;
    /* reading an element costs about what a few flops do; no task fails (nothing polls) */
    sa_parallel_items(&no_poll, batch->count, 4.0 * batch->count * v->rows * v->cols,
                      finite_items, &s, &n_tasks);
    for (sa_int t = 0; t < n_tasks; t++)
        if (!s.finite[t])
            return 0;
    return 1;
}

const sa_kernels *sa_kernels_for_values(sa_exec *ex, const sa_batch *batch, int precision,
                                        const sa_values *values, int n)
{
    if (ex->isa != SA_ISA_REFERENCE)
        for (int i = 0; i < n; i++)
            if (!values_finite(ex, batch, precision, &values[i])) {
                ex->isa = SA_ISA_REFERENCE;
                break;
            }
    return sa_kernels_for(ex->isa);
}

/* Whether the band hides some key from some row of some batch item. */
static int band_hides_keys(sa_band band, const sa_batch *batch, sa_int n_q, sa_int n_k)
{
    sa_int items = band.row_lengths || band.key_lengths ? batch->count : 1;
    for (sa_int item = 0; item < items; item++)
        for (sa_int i = 0; i < n_q; i++) {
            sa_int first, end;
            sa_band_keys(band, item, i, i + 1, n_k, &first, &end);
            if (first > 0 || end < n_k)
                return 1;
        }
    return 0;
}

/* Whether one batch item's rows x cols matrix holds a NaN (x != x: every compiler vectorises it). */
static int item_has_nan(const sa_mat *mat, sa_int item_offset, sa_int rows, sa_int cols,
                        int precision)
{
    int nan = 0;
    for (sa_int r = 0; r < rows && !nan; r++) {
        sa_int at = item_offset + r * mat->ld;
        if (precision == SA_F32) {
            const float *row = (const float *)mat->data + at;
            for (sa_int c = 0; c < cols; c++)
                nan |= row[c] != row[c];
        } else {
            const double *row = (const double *)mat->data + at;
            for (sa_int c = 0; c < cols; c++)
                nan |= row[c] != row[c];
        }
    }
    return nan;
}

int sa_backward_needs_reference(sa_exec *ex, const sa_batch *batch, int precision,
                                const sa_mat *dQ, const sa_mat *dV, sa_int n_q, sa_int n_k,
                                sa_int d_k, sa_int d_v, sa_band band)
{
    if (ex->isa == SA_ISA_REFERENCE || n_k == 0 || !band_hides_keys(band, batch, n_q, n_k))
        return 0;
    /* such a row's dQ is NaN (dV's rows of its keys, where d_k is 0); NaN only: gradients that
       overflow to inf from finite inputs keep the tier (the reference gives the same infs) */
    int nan = 0;
    for (sa_int item = 0; item < batch->count && !nan; item++)
        nan = d_k > 0 ? item_has_nan(dQ, sa_batch_offset(batch, dQ->bstride, item), n_q, d_k,
                                     precision)
                      : item_has_nan(dV, sa_batch_offset(batch, dV->bstride, item), n_k, d_v,
                                     precision);
    if (nan)
        ex->isa = SA_ISA_REFERENCE;
    return nan;
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
        if (item_finite(V, v0, k, n, precision))
            continue;                   /* the usual case, checked along V's rows */
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
