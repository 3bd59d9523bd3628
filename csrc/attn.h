/*
 * attn.h -- the contract between selfattn's C kernels and the extension glue.
 *
 * Nothing here includes Python.h or NumPy: kernels are plain C11 and report failure through
 * status codes, which csrc/module.c (the only file that knows about Python) turns into exceptions.
 *
 * Units. Every size, index and stride is an sa_int (ptrdiff_t, the same width as npy_intp) and is
 * counted in ELEMENTS of the matrix's own type, never in bytes. Strides may be negative or zero.
 *
 * Matrices. A "batch of matrices" is described by an sa_batch (the broadcast batch shape, shared
 * by every operand of one call) and one sa_mat per operand:
 *     element (b, r, c) of matrix M lives at  (T *)M.data + sa_batch_offset(batch, M.bstride, b)
 *                                                          + r * M.ld + c
 * i.e. rows may be strided (ld) but the elements of a row are always contiguous. The glue
 * guarantees that, and that data is aligned and in native byte order.
 */
#ifndef SELFATTN_ATTN_H
#define SELFATTN_ATTN_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "philox.h"

/* The fast tiers are written with GCC vector extensions, which gcc and clang compile; a build by
   another compiler (MSVC) has the scalar reference tier only. -DSA_NO_VECTOR_TIERS makes a gcc or
   clang build of that shape, so that it can be tested (.ci/windows.sh). */
#if (defined(__GNUC__) || defined(__clang__)) && !defined(SA_NO_VECTOR_TIERS)
#define SA_VECTOR_TIERS 1
#else
#define SA_VECTOR_TIERS 0
#endif

typedef ptrdiff_t sa_int;

/* Status codes returned by every kernel. */
enum {
    SA_OK = 0,
    SA_ERR_NOMEM = 1,        /* a scratch allocation failed */
    SA_ERR_INTERRUPTED = 2,  /* the poll callback asked us to stop (Ctrl-C); the exception is set */
    SA_ERR_TOO_BIG = 3,      /* a byte count would overflow */
    SA_ERR_THREAD = 4,       /* a worker thread could not be started (we fall back to fewer) */
};

/* Enough for NumPy's NPY_MAXDIMS (64 in NumPy 2, 32 in 1.x) minus the two matrix axes. */
#define SA_MAX_BATCH 64

typedef struct {
    int nd;                        /* number of batch dimensions, 0 for plain matrices */
    sa_int count;                  /* product of shape[], i.e. the number of matrices; 1 if nd == 0 */
    sa_int shape[SA_MAX_BATCH];
} sa_batch;

typedef struct {
    void *data;                    /* element (0, 0) of batch item 0 */
    sa_int ld;                     /* row stride, elements */
    sa_int bstride[SA_MAX_BATCH];  /* batch strides, elements (0 where the operand is broadcast) */
} sa_mat;

typedef enum {
    SA_MASK_NONE = 0,
    SA_MASK_BOOL = 1,              /* uint8/bool, nonzero = the query may attend to the key */
    SA_MASK_ADD = 2,               /* same float type as the kernel, added to the scaled scores */
} sa_mask_kind;

/* A mask broadcast to (batch..., n_q, n_k); any strides, including zero, in every axis. */
typedef struct {
    sa_mask_kind kind;
    const void *data;
    sa_int row_stride, col_stride;
    sa_int bstride[SA_MAX_BATCH];
} sa_mask;

/* The visibility rule: which keys a query row may see. Query i of batch item b sees key j when
       i + lo + shift <= j <= i + hi + shift,   i < R,   j < K,
   where R and K are the item's query and key lengths (row_lengths[b] and key_lengths[b]; n_rows
   and n_keys, the call's n_q and n_k, where those are NULL): rows at or past R see no key (output
   and gradients 0) and keys at or past K are seen by no row. shift is 0 (top-left aligned), or
   K - R with from_end (bottom-right aligned: each sequence's last query and last key line up, as
   flash-attn's varlen kernels do; with no lengths, n_k - n_q).
   No rule: lo = -(n_q + n_k), hi = n_q + n_k (a side that far out hides nothing, shifted or
   not); causal, top-left aligned:
   hi = 0; causal, bottom-right aligned: hi = 0 with from_end (or hi = n_k - n_q without lengths);
   a sliding window of `left` keys before and `right` after the diagonal: lo = -left, hi = right.
   The glue clamps lo and hi to [-(n_q + n_k), n_q + n_k] and checks the lengths are in [0, n_q]
   and [0, n_k], so no sum below overflows. Every kernel that masks or skips keys asks sa_band_keys for its batch item,
   and never computes a block of keys that no row of its block sees: a band of width w costs
   O(n w d), and the keys past an item's length cost nothing. */
typedef struct {
    sa_int lo, hi;
    int from_end;                  /* lo, hi counted from the item's bottom-right corner */
    sa_int n_rows, n_keys;         /* the call's n_q and n_k */
    const sa_int *row_lengths;     /* batch->count query lengths, or NULL: n_rows for every item */
    const sa_int *key_lengths;     /* batch->count key lengths, or NULL: n_keys for every item */
} sa_band;

/* The keys seen by at least one of the rows [r0, r1) (r0 < r1) of batch item `item`, as
   [*first, *end) within [0, n_k); empty (*first == *end) when none is. For one row,
   r1 = r0 + 1. The same helper gives the rows that see a block of keys, with sa_band_transposed. */
static inline void sa_band_keys(sa_band band, sa_int item, sa_int r0, sa_int r1, sa_int n_k,
                                sa_int *first, sa_int *end)
{
    sa_int rows = band.row_lengths ? band.row_lengths[item] : band.n_rows;
    sa_int keys = band.key_lengths ? band.key_lengths[item] : band.n_keys;
    sa_int shift = band.from_end ? keys - rows : 0;
    if (keys > n_k)
        keys = n_k;
    if (r1 > rows)                                  /* rows past the item's length see nothing */
        r1 = rows;
    if (r0 >= r1) {
        *first = *end = 0;
        return;
    }
    sa_int a = r0 + band.lo + shift, b = r1 + band.hi + shift;  /* b: past the last row's last key */
    a = a < 0 ? 0 : a > keys ? keys : a;
    b = b < a ? a : b > keys ? keys : b;
    *first = a;
    *end = b;
}

/* How many of the rows r0 .. r0 + count - 1 of batch item `item` come before its query length
   (the rows after it see no key). A kernel that multiplies a block of rows by their weights or
   gradients, 0 past the length, must leave those rows out: their Q and dO rows are padding and
   may hold anything, and 0 * NaN is NaN. */
static inline sa_int sa_band_live_rows(sa_band band, sa_int item, sa_int r0, sa_int count)
{
    sa_int live = (band.row_lengths ? band.row_lengths[item] : band.n_rows) - r0;
    return live < 0 ? 0 : live > count ? count : live;
}

/* The same band seen from the keys: key j is seen by the rows j - hi .. j - lo (shifted by
   R - K when from_end: the transposed shift is the opposite one). */
static inline sa_band sa_band_transposed(sa_band band)
{
    sa_band t = band;
    t.lo = -band.hi;
    t.hi = -band.lo;
    t.n_rows = band.n_keys;
    t.n_keys = band.n_rows;
    t.row_lengths = band.key_lengths;
    t.key_lengths = band.row_lengths;
    return t;
}

/* The number of (query, key) pairs the band lets through, for planning threads: an upper bound
   where there are lengths (those of item 0 are not everyone's). */
static inline double sa_band_pairs(sa_band band, sa_int n_q, sa_int n_k)
{
    double pairs = 0;
    band.row_lengths = band.key_lengths = NULL;
    for (sa_int i = 0; i < n_q; i++) {
        sa_int first, end;
        sa_band_keys(band, 0, i, i + 1, n_k, &first, &end);
        pairs += (double)(end - first);
    }
    return pairs;
}

/* The log-sum-exp of a row of n scores, log(sum_j e^row[j]), in double whatever the row's type
   (float or double, is_f32): -inf when every score is -inf (a fully masked row), NaN when one is
   NaN or +inf (the row whose weights are NaN; the fused kernels' m + log l gives the same). For the kernels that hold the scores (the reference tier, and the weights' path), so that
   attention can return it (the fused kernels have each row's max and sum already). */
static inline double sa_row_lse(const void *row, sa_int n, int is_f32)
{
    double max = -INFINITY, sum = 0;
    for (sa_int j = 0; j < n; j++) {
        double s = is_f32 ? ((const float *)row)[j] : ((const double *)row)[j];
        if (s != s)
            return NAN;
        max = s > max ? s : max;
    }
    if (max == -INFINITY || max == INFINITY)
        return max == INFINITY ? NAN : max;
    for (sa_int j = 0; j < n; j++)
        sum += exp((is_f32 ? ((const float *)row)[j] : ((const double *)row)[j]) - max);
    return max + log(sum);
}

/* What a call does to each score between the product and the mask, and to each weight after the
   softmax (issue 10); NULL means nothing. Later modifications join as fields, so the kernels'
   signatures stay put.
   softcap:   0 (none) or c > 0: each score s = scale * q . k becomes c * tanh(s / c) (Gemma 2's
              logit soft-capping), BEFORE the mask, bias and band, so -inf masks stay -inf; the
              backward multiplies dS by 1 - tanh^2(s / c).
   dropout_p: 0 (none: no generator is ever called) to 1: after the softmax, the weight of key j
              for query i of batch item b is dropped (0) with probability dropout_p and the others
              scaled by 1 / (1 - dropout_p) (0 when dropout_p is 1), torch's convention; the
              softmax's sum is of the weights before dropout. Which are dropped depends on
              (seed, b, i, j) alone (sa_dropout_keep), so every thread count and tier drops the
              same ones, and the backward (given the same seed) drops them again. */
typedef struct {
    double softcap;
    double dropout_p;
    uint64_t seed;
} sa_score_mods;

static inline double sa_softcap_of(const sa_score_mods *mods)
{
    return mods ? mods->softcap : 0;
}

/* A call's dropout, ready to draw: key j of row i of batch item b is dropped when word j % 4 of
   Philox4x32-10(counter {j / 4, i, b low, b high}, key {seed low, seed high}) is below
   threshold = dropout_p * 2^32 (so a probability within 2^-32 of dropout_p, and dropout_p = 1
   drops every weight); a kept weight is multiplied by keep_scale. */
typedef struct {
    int on;
    uint64_t threshold;
    uint32_t k0, k1;
    double keep_scale;
} sa_dropout;

static inline sa_dropout sa_dropout_of(const sa_score_mods *mods)
{
    sa_dropout d = {0, 0, 0, 0, 1};
    if (mods && mods->dropout_p > 0) {
        d.on = 1;
        d.threshold = (uint64_t)(mods->dropout_p * 4294967296.0);
        d.k0 = (uint32_t)mods->seed;
        d.k1 = (uint32_t)(mods->seed >> 32);
        d.keep_scale = mods->dropout_p < 1 ? 1 / (1 - mods->dropout_p) : 0;
    }
    return d;
}

/* The four keys 4q .. 4q + 3 of row i of batch item b: bit k of the result is set where key
   4q + k is kept. */
static inline unsigned sa_dropout_keep4(const sa_dropout *d, sa_int item, sa_int i, sa_int q)
{
    sa_philox_words c = {{(uint32_t)q, (uint32_t)i, (uint32_t)item,
                          (uint32_t)((uint64_t)item >> 32)}};
    sa_philox_words r = sa_philox4x32_10(c, d->k0, d->k1);
    unsigned keep = 0;
    for (int k = 0; k < 4; k++)
        keep |= (unsigned)(r.v[k] >= d->threshold) << k;
    return keep;
}

/* Dropout on n weights of row i of batch item b, keys j0 .. j0 + n - 1, stored `stride` elements
   apart from w (float when is_f32, else double): each is multiplied by keep_scale or set to 0.
   One generator call per four keys. */
static inline void sa_dropout_apply(const sa_dropout *d, void *w, int is_f32, sa_int stride,
                                    sa_int item, sa_int i, sa_int j0, sa_int n)
{
    float scale_f = (float)d->keep_scale;
    unsigned keep = 0;
    for (sa_int t = 0; t < n; t++) {
        sa_int j = j0 + t;
        if (t == 0 || j % 4 == 0)
            keep = sa_dropout_keep4(d, item, i, j / 4);
        int kept = (keep >> (j % 4)) & 1;
        if (is_f32) {
            float *x = (float *)w + t * stride;
            *x = kept ? *x * scale_f : 0;
        } else {
            double *x = (double *)w + t * stride;
            *x = kept ? *x * d->keep_scale : 0;
        }
    }
}

/* The dropout factor of one weight (0 or keep_scale), for the backward kernels. */
static inline double sa_dropout_factor(const sa_dropout *d, sa_int item, sa_int i, sa_int j)
{
    return (sa_dropout_keep4(d, item, i, j / 4) >> (j % 4)) & 1 ? d->keep_scale : 0;
}

/* The scalar soft-cap of one score (reference tier, blocked backward): c tanh(s / c) in double. */
static inline double sa_softcap_score(double s, double cap)
{
    return cap * tanh(s / cap);
}

/* d/ds of c tanh(s / c) = 1 - tanh^2(s / c) = g (2 - g) with g = 1 - |tanh| = 2 / (e^(2|x|) + 1),
   x = s / c: no cancellation where tanh nears 1 (large scores), unlike 1 - tanh^2. */
static inline double sa_softcap_slope(double s, double cap)
{
    double g = 2 / (exp(2 * fabs(s / cap)) + 1);
    return g * (2 - g);
}

/* Offset, in elements, of batch item `item` (0 <= item < batch->count, C order) for one operand. */
static inline sa_int sa_batch_offset(const sa_batch *batch, const sa_int *bstride, sa_int item)
{
    sa_int offset = 0;
    for (int axis = batch->nd - 1; axis >= 0; axis--) {
        sa_int extent = batch->shape[axis];
        offset += (item % extent) * bstride[axis];
        item /= extent;
    }
    return offset;
}

/* ---- execution context: threads, instruction set, interrupts, allocation ------------------ */

typedef enum {
    SA_ISA_REFERENCE = 0,          /* the plain scalar kernels: the yardstick for the others */
    SA_ISA_GENERIC = 1,            /* blocked portable C, baseline x86-64 / any CPU */
    SA_ISA_AVX2 = 2,               /* AVX2 + FMA */
    SA_ISA_AVX512 = 3,             /* AVX-512 F, DQ, BW, VL */
    SA_ISA_NEON = 4,               /* AArch64 Advanced SIMD with FMA */
    SA_ISA_COUNT
} sa_isa;

typedef struct {
    int n_threads;                 /* >= 1: the most threads a kernel may use */
    sa_isa isa;
    /* Called from the calling thread only, a few times a millisecond at most; nonzero = stop.
       May be NULL. */
    int (*poll)(void *poll_arg);
    void *poll_arg;
    /* Scratch allocation; must be callable without the GIL (the glue passes PyMem_RawMalloc so
       tracemalloc sees our buffers). */
    void *(*alloc)(size_t nbytes);
    void (*dealloc)(void *ptr);
} sa_exec;

/* A value operand of a kernel call (V; in the backward also dO, K and Q): a (rows, cols) matrix
   per batch item, for the non-finite policy (sa_kernels_for_values). */
typedef struct {
    const sa_mat *mat;
    sa_int rows, cols;
} sa_values;

/* ---- the thread pool (csrc/threadpool.c) ---------------------------------------------------- */

/* One task of a parallel loop. `worker` is in [0, n_threads) and unique among the threads running
   at the same time, so it can index per-thread scratch. Returns SA_OK or an error status. */
typedef int (*sa_task_fn)(void *arg, sa_int task, int worker);

/* How many threads a loop of n_tasks tasks worth `flops` floating point operations should use:
   1 for small problems (so they pay no wake-up cost), never more than ex->n_threads or n_tasks. */
int sa_plan_threads(const sa_exec *ex, sa_int n_tasks, double flops);

/* Runs fn(arg, t, worker) for every t in [0, n_tasks) on up to n_threads threads (the caller is
   one of them). Which thread runs which task varies, so a task must compute the same bits
   whichever thread runs it. Returns the first error status, SA_ERR_INTERRUPTED if ex->poll
   asked to stop, else SA_OK. */
int sa_parallel_for(const sa_exec *ex, int n_threads, sa_int n_tasks, sa_task_fn fn, void *arg);

/* A pass over whole batched operands (a scan): fn(arg, task, first, end) for the batch items
   [first, end) of each of at most SA_ITEM_TASKS tasks, cut by the count alone, or of one task
   holding every item where the pass stays on one thread; a task stores its result in slot `task`
   of the caller's array, and the caller combines slots [0, *n_tasks) (so the combination must not
   depend on the cut: a maximum, an "and"). `flops`: the pass's work, for sa_plan_threads.
   Returns as sa_parallel_for (a pass on one thread does not poll). */
#define SA_ITEM_TASKS 64
typedef int (*sa_items_fn)(void *arg, sa_int task, sa_int first, sa_int end);
int sa_parallel_items(const sa_exec *ex, sa_int count, double flops, sa_items_fn fn, void *arg,
                      sa_int *n_tasks);

/* For a long task: nonzero once the loop it belongs to should stop (Ctrl-C on the calling thread,
   or another task failed); the task should then return SA_ERR_INTERRUPTED at once. Cheap enough
   to ask every few hundred microseconds of work; 0 outside a parallel loop. */
int sa_interrupted(void);

/* ---- kernels -------------------------------------------------------------------------------- */
/*
 * All kernels take (ex, batch, outputs..., inputs..., sizes..., options) and return a status.
 * T is float for *_f32 and double for *_f64; float32 kernels compute in float32.
 *
 * scores:    S[b] (n_q, n_k) = scale * Q[b] (n_q, d_k) . K[b] (n_k, d_k)^T (NaN where that
 *            overflowed: sa_overflowed_score below), soft-capped (mods: sa_score_mods), then
 *            the mask:
 *            SA_MASK_ADD adds mask(i, j); SA_MASK_BOOL sets S = -inf where mask(i, j) == 0;
 *            then S = -inf where the band hides key j from query i (sa_band above).
 * softmax:   out[b] (n_rows, n) = softmax of each row of in[b]. A row whose max is -inf (every
 *            entry -inf) becomes all zeros; a row holding NaN becomes all NaN. out may alias in.
 * matmul:    C[b] (m, n) = A[b] (m, k) . B[b] (k, n), IEEE products (0 * inf is NaN), on every
 *            tier. (Projections and gradients; the output product adds sa_output_zero_weights.)
 *            `layout` (SA_MATMUL_* below, ORed; 0: none) says how the operands are stored:
 *            A given as its transpose (k, m), B as its transpose (n, k), C added to rather than
 *            overwritten. A gradient's X^T . dP and dP . W^T then read X and W where they are,
 *            with the bits of the same product of transposed copies.
 * attention: out[b] (n_q, d_v) = softmax(scores(Q, K, mask, scale, band)) . V[b] (n_k, d_v).
 *            With weights == NULL it is fused: it never materialises the (n_q, n_k) scores and
 *            needs O((n_q + n_k) d) memory. Otherwise it also stores the softmax weights in
 *            weights[b] (n_q, n_k). Fully masked rows give weights 0 and output 0. A key whose
 *            weight is 0 contributes nothing, even where its V row holds inf or NaN: the reference
 *            tier guarantees this; with weights the fast tiers may assume V is finite
 *            (sa_kernels_for_values routes other inputs to the reference tier), and fused they
 *            rerun the call on the reference tier when a sum of V rows is not finite.
 *            lse, unless NULL, receives each row's log-sum-exp of its scores (those above, after
 *            the mask and the band), natural log: lse[b * n_q + i] (T, batch->count x n_q,
 *            contiguous); -inf for a fully masked row, NaN for a row holding NaN or +inf.
 */
typedef int (*sa_scores_fn)(const sa_exec *ex, const sa_batch *batch, const sa_mat *scores,
                            const sa_mat *Q, const sa_mat *K, const sa_mask *mask,
                            sa_int n_q, sa_int n_k, sa_int d_k, double scale, sa_band band,
                            const sa_score_mods *mods);
typedef int (*sa_softmax_fn)(const sa_exec *ex, const sa_batch *batch, const sa_mat *out,
                             const sa_mat *in, sa_int n_rows, sa_int n);
enum {
    SA_MATMUL_A_T = 1,      /* A(i, p) = A->data[p * A->ld + i]: the (k, m) matrix A^T is given */
    SA_MATMUL_B_T = 2,      /* B(p, j) = B->data[j * B->ld + p]: the (n, k) matrix B^T is given */
    SA_MATMUL_ADD = 4,      /* C[b] += A . B: the products' sum is added to what C holds */
};
typedef int (*sa_matmul_fn)(const sa_exec *ex, const sa_batch *batch, const sa_mat *C,
                            const sa_mat *A, const sa_mat *B, sa_int m, sa_int n, sa_int k,
                            int layout);
typedef int (*sa_attention_fn)(const sa_exec *ex, const sa_batch *batch, const sa_mat *out,
                               const sa_mat *weights, const sa_mat *Q, const sa_mat *K, const sa_mat *V,
                               const sa_mask *mask, sa_int n_q, sa_int n_k, sa_int d_k,
                               sa_int d_v, double scale, sa_band band, void *lse,
                               const sa_score_mods *mods);

/*
 * attention_backward: the gradients of attention (forward as above, O = softmax(S) . V with
 *            S = scale * Q . K^T + mask) with respect to Q, K and V, given dO[b] (n_q, d_v) = dL/dO:
 *                P = softmax(S),  dV = P^T . dO,  dP = dO . V^T,  D_i = sum_j P_ij dP_ij,
 *                dS = P * (dP - D),  dQ = scale * dS . K,  dK = scale * dS^T . Q.
 *            dQ[b] (n_q, d_k), dK[b] (n_k, d_k), dV[b] (n_k, d_v) are overwritten. Masks and band
 *            as in `scores`; a fully masked query row gets dQ = 0 and gives nothing to dK, dV; a
 *            row of S holding NaN makes its weights NaN, as in the forward. A key whose weight is 0
 *            contributes nothing even where its V or K row or dO holds inf or NaN, nor a fully
 *            masked query row where its Q row does (hidden by a boolean mask, the band or the
 *            lengths: an additive -inf plus an inf score is NaN, a NaN weight, on every tier
 *            alike); nor
 *            does a dS of exactly 0 (a soft-capped score that saturates, as one from inf does:
 *            its slope is 0) take anything from Q or K: the reference tier guarantees this; the
 *            other tiers may assume V, dO, K and Q are finite (sa_kernels_for_values routes other
 *            inputs to the reference tier). The mask gets no gradient.
 *            out: NULL, or out[b] (n_q, d_v) = the forward's O (with dropout, of the dropped
 *            weights), from the weights the backward builds anyway; a multi-head layer's weight
 *            gradient needs it, which saves it a forward pass. Exact as the forward is, not
 *            necessarily its bits (the sums run in another order); the same rules (a fully
 *            masked row 0, a weight of 0 takes nothing from V on the reference tier).
 */
typedef int (*sa_attention_backward_fn)(const sa_exec *ex, const sa_batch *batch,
                                        const sa_mat *dQ, const sa_mat *dK, const sa_mat *dV,
                                        const sa_mat *out, const sa_mat *dO, const sa_mat *Q, const sa_mat *K,
                                        const sa_mat *V, const sa_mask *mask, sa_int n_q,
                                        sa_int n_k, sa_int d_k, sa_int d_v, double scale,
                                        sa_band band, const sa_score_mods *mods);
/* vexp:      out[j] = e^in[j] or 2^in[j], j < n, with the tier's vectorised exp (the one softmax
 *            and attention use); for the accuracy tests. The _NONPOS modes are the variants the
 *            kernels run on arguments known to be <= 0 (or NaN); other arguments are undefined.
 *            SA_VEXP_TANH gives tanh(in[j]) instead, the fast tiers' soft-cap (sa_score_mods). */
enum { SA_VEXP_EXP = 0, SA_VEXP_EXP2 = 1, SA_VEXP_EXP_NONPOS = 2, SA_VEXP_EXP2_NONPOS = 3,
       SA_VEXP_TANH = 4 };
typedef void (*sa_vexp_fn)(void *out, const void *in, sa_int n, int mode);

/* The overflow rule. A score is scale * (q . k) (then the mask), as if computed exactly. Where the
   arithmetic gave +-inf or NaN although q and k are finite, a product, a partial sum or the raw
   dot product overflowed on the way (where each tier's FMAs differ: fused, -2e38 + 2e19 * 2e19 is
   2e38 in float32, unfused inf), so the score is computed again in a way that cannot overflow:
   q and k scaled down by powers of 2 only as far as a sum of d products of their largest elements
   needs to stay finite (none for float32, whose products double holds exactly), each product's
   rounding error kept by fma and the sum compensated (Neumaier), so products that cancel leave
   what the smaller ones add (1 + 9e76 - 9e76 is 1); the powers and the scale's put back by one
   ldexp. That value (within an ulp or two of the exact score) where it is finite in the call's
   precision; else the score itself overflows, and is NaN, never a mask, so its row's weights,
   output and gradients are NaN on every tier. Where q or k holds inf or NaN the score is what
   IEEE arithmetic gave. Every kernel that computes scores calls this on each score that is not
   finite (rare, so the scans of q and k cost nothing), with the scale it multiplied by; q and k
   are float (is_f32) or double rows of d elements. */
static inline double sa_overflowed_score(double score, const void *q, const void *k, sa_int d,
                                         int is_f32, double scale)
{
    double q_max = 0, k_max = 0;
    for (sa_int c = 0; c < d; c++) {
        double x = is_f32 ? ((const float *)q)[c] : ((const double *)q)[c];
        double y = is_f32 ? ((const float *)k)[c] : ((const double *)k)[c];
        if (x - x != 0 || y - y != 0)
            return score;
        q_max = fabs(x) > q_max ? fabs(x) : q_max;
        k_max = fabs(y) > k_max ? fabs(y) : k_max;
    }
    /* |sum| < 2^(q_exp + k_exp + d_exp): the shift keeps it below 2^1020, half on each side */
    int q_exp, k_exp, d_exp, scale_exp;
    frexp(q_max, &q_exp);
    frexp(k_max, &k_exp);
    frexp((double)d, &d_exp);
    int shift = q_exp + k_exp + d_exp - 1020;
    shift = shift > 0 ? shift : 0;
    double q_unit = ldexp(1, -(shift / 2)), k_unit = ldexp(1, -(shift - shift / 2));
    double sum = 0, err = 0;
    for (sa_int c = 0; c < d; c++) {
        double x = (is_f32 ? ((const float *)q)[c] : ((const double *)q)[c]) * q_unit;
        double y = (is_f32 ? ((const float *)k)[c] : ((const double *)k)[c]) * k_unit;
        double p = x * y, t = sum + p;
        err += fabs(sum) >= fabs(p) ? (sum - t) + p : (p - t) + sum;
        err += fma(x, y, -p);   /* the product's rounding error */
        sum = t;
    }
    double scale_fraction = frexp(scale, &scale_exp);
    double exact = ldexp((sum + err) * scale_fraction, shift + scale_exp);
    /* past the largest float, or double, once rounded: 0x1.ffffffp127 rounds to float's inf */
    if (is_f32 ? !(fabs(exact) < 0x1.ffffffp127) : !(fabs(exact) <= DBL_MAX))
        return NAN;
    return exact;
}

/* One tier's kernels, indexed by precision: [0] float32, [1] float64. */
typedef struct {
    const char *name;
    sa_scores_fn scores[2];
    sa_softmax_fn softmax[2];
    sa_matmul_fn matmul[2];
    sa_attention_fn attention[2];
    sa_attention_backward_fn attention_backward[2];
    sa_vexp_fn vexp[2];
} sa_kernels;

enum { SA_F32 = 0, SA_F64 = 1 };

/* The soft-cap's tier rule, decided here only: the fast tiers hold the cap in the call's precision
   and in log2 units, c log2 e computed as attention_fused.inc does, which overflows for a cap
   from about the largest finite value over log2 e (2.4e38 in float32, 1.2e308 in float64) and
   gave NaN. In float32 a cap below the smallest normal float (1.2e-38) loses its bits, and one
   below about 7e-46 rounds to 0, which means no cap: the call ran uncapped. Such calls run on
   the reference tier, which soft-caps in double (sa_softcap_score). */
static inline int sa_softcap_needs_reference(const sa_score_mods *mods, int precision)
{
    const double log2e = 1.4426950408889634074;
    if (mods == NULL || !(mods->softcap > 0))
        return 0;
    if (precision == SA_F32)
        return !(mods->softcap * (double)(float)log2e <= 3.4028234663852886e38
                 && mods->softcap >= 1.1754943508222875e-38);
    return !isfinite(mods->softcap * log2e);
}

/* Each row's log-sum-exp (sa_row_lse) of the scores[b] (n_q, n_k) of every batch item, into
   lse[b * n_q + i] (T as is_f32): for the kernels that compute the scores before the softmax
   (csrc/kernels_ref.c). */
void sa_scores_lse(const sa_batch *batch, const sa_mat *scores, void *lse, sa_int n_q, sa_int n_k,
                   int is_f32);

/* The scalar reference tier (csrc/kernels_ref.c). */
extern const sa_kernels sa_kernels_reference;
/* The fast tiers: the kernels of csrc/isa_tier.inc compiled by isa_generic.c, isa_avx2.c,
   isa_avx512.c and isa_neon.c. */
#if SA_VECTOR_TIERS
extern const sa_kernels sa_kernels_generic;
#endif
#if SA_VECTOR_TIERS && (defined(__x86_64__) || defined(__i386__))
extern const sa_kernels sa_kernels_avx2;
extern const sa_kernels sa_kernels_avx512;
#endif
#if SA_VECTOR_TIERS && defined(__aarch64__)
extern const sa_kernels sa_kernels_neon;
#endif

/* The blocked (FlashAttention-2 style) backward, csrc/backward_blocked.c: O(n d) memory, the
   weights recomputed block by block; its block products run on the tier's own matmul
   (sa_kernels_for(ex->isa)->matmul), so every tier can put these in its table. */
int sa_attention_backward_blocked_f32(const sa_exec *ex, const sa_batch *batch, const sa_mat *dQ,
                                      const sa_mat *dK, const sa_mat *dV, const sa_mat *out,
                                      const sa_mat *dO, const sa_mat *Q, const sa_mat *K,
                                      const sa_mat *V, const sa_mask *mask, sa_int n_q,
                                      sa_int n_k, sa_int d_k, sa_int d_v, double scale,
                                      sa_band band, const sa_score_mods *mods);
int sa_attention_backward_blocked_f64(const sa_exec *ex, const sa_batch *batch, const sa_mat *dQ,
                                      const sa_mat *dK, const sa_mat *dV, const sa_mat *out,
                                      const sa_mat *dO, const sa_mat *Q, const sa_mat *K,
                                      const sa_mat *V, const sa_mask *mask, sa_int n_q,
                                      sa_int n_k, sa_int d_k, sa_int d_v, double scale,
                                      sa_band band, const sa_score_mods *mods);

/* The backward's memory budgets. The fast tiers' fused backward keeps its partial sums of dK and
   dV under SA_BACKWARD_PARTIAL_BYTES and each thread's panel of scores (a block of query rows by
   every key) under SA_BACKWARD_PANEL_BYTES, and runs the blocked backward past either (very long
   sequences); the blocked backward's plan A keeps its partials under the same budget, else it
   takes plan B. 64 MiB of partials stays small next to the inputs of calls that large; 8 MiB of
   panel is about an L2 and more per thread, past which recomputing the scores costs less. */
#define SA_BACKWARD_PARTIAL_BYTES (64L << 20)
#define SA_BACKWARD_PANEL_BYTES (8L << 20)

/* csrc/dispatch.c: what this CPU supports, and the table for a tier (NULL if unsupported). */
int sa_isa_supported(sa_isa isa);
sa_isa sa_isa_best(void);
const char *sa_isa_name(sa_isa isa);
const sa_kernels *sa_kernels_for(sa_isa isa);

/* csrc/read_memory.c: *out = the OR of n_words words, read as fast as one core can (the bench's
   read-bandwidth probe; each of its threads calls it on its own share). */
int sa_read_memory(uint64_t *out, const uint64_t *words, sa_int n_words);

/* The non-finite policy, decided here only: a weight of exactly 0 contributes nothing, even
   against an inf or NaN in the values it weighs (V, dO). The reference tier's attention kernels
   guarantee that; the fast tiers assume value operands are finite. Returns the table to run on:
   ex->isa's, or the reference tier's when one of the n value operands holds inf or NaN -- and
   then ex->isa becomes SA_ISA_REFERENCE too, so a kernel that looks up its tier's matmul stays on
   that tier. */
const sa_kernels *sa_kernels_for_values(sa_exec *ex, const sa_batch *batch, int precision,
                                        const sa_values *values, int n);

/* The rule for a row of S holding NaN or +inf (a NaN bias, or scores that overflow from finite Q
   and K) in the backward: its weights are NaN for every key, those its band hides too
   (attention_backward above). The fast tiers compute only the keys a block's band reaches, so
   after their backward, where the band hides keys, a NaN in dQ (such a row's dQ is NaN; with
   d_k = 0, a NaN in dV) means the call must rerun on the reference tier, which follows the rule:
   returns 1 then (and sets ex->isa to SA_ISA_REFERENCE), 0 where the tier's gradients stand.
   dQ[b] (n_q, d_k), dV[b] (n_k, d_v). The band is looked at first (O(n_q), per item with
   lengths), the gradients only under a band that hides keys. */
int sa_backward_needs_reference(sa_exec *ex, const sa_batch *batch, int precision,
                                const sa_mat *dQ, const sa_mat *dV, sa_int n_q, sa_int n_k,
                                sa_int d_k, sa_int d_v, sa_band band);

/* The same rule for the output product C = weights . V, run on any tier's (IEEE) matmul: every
   column of C where V holds inf or NaN is recomputed in key order, skipping weights that are
   exactly 0; the other columns keep the tier's bits. weights (m, k), V (k, n), C (m, n). */
void sa_output_zero_weights(const sa_batch *batch, int precision, const sa_mat *C,
                            const sa_mat *weights, const sa_mat *V, sa_int m, sa_int n, sa_int k);

/* Checked size arithmetic: returns 0 and sets *out = a * b, or returns 1 on overflow. */
static inline int sa_mul_overflow(size_t a, size_t b, size_t *out)
{
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_mul_overflow(a, b, out);
#else
    if (b != 0 && a > SIZE_MAX / b)
        return 1;
    *out = a * b;
    return 0;
#endif
}

#endif
