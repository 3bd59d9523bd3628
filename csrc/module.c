/*
 * module.c -- selfattn._core, the only C file that knows about Python and NumPy.
 *
 * The Python layer (selfattn/_validate.py and the modules that use it) owns policy: it
 * validates, promotes dtypes, broadcasts every operand to one batch shape and allocates the
 * outputs. This file parses what it was handed and checks that it honours the kernel contract in
 * attn.h (so a misuse of the private API raises instead of crashing); then one helper per
 * operation (*_impl, shared by the general and the plain entry points) makes the exec context,
 * lets dispatch.c's non-finite policy choose the tier, runs the kernel with the GIL released when
 * that pays, and turns its status into an exception.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_23_API_VERSION
#include <numpy/arrayobject.h>

#include "attn.h"
#include "attention_decode.h"
#include "platform.h"

#include <math.h>
#include <string.h>

_Static_assert(sizeof(npy_intp) == sizeof(sa_int), "sa_int must be as wide as npy_intp");

/* Process-wide settings, read and written with the GIL held. */
static int setting_threads = 1;
static sa_isa setting_isa = SA_ISA_REFERENCE;

/* Below this much work the GIL is kept: releasing it lets a busy Python thread take it for a
   whole switch interval (5 ms) before we get it back. */
#define SA_GIL_MIN_FLOPS 2.0e5

/* ---- the poll callback: lets Ctrl-C stop a long kernel -------------------------------------- */

static int poll_signals(void *unused)
{
    (void)unused;
    PyGILState_STATE gil = PyGILState_Ensure();
    int stop = PyErr_CheckSignals() != 0;
    PyGILState_Release(gil);
    return stop;
}

/* ---- scratch kept between calls -----------------------------------------------------------
 * A kernel takes its scratch through ex->alloc once a call. glibc hands a block of more than its
 * mmap threshold (32 MiB at most) back to the system when it is freed, and smaller ones often
 * with the top of its heap, so the next call took every page again with a fault: 11,800 faults a
 * call of the float32 backward at n = 4096, d = 128 (46 MB of partial sums, panels and packed
 * K, V), and 430 of the multi-head backward of float32 n = 512, d_model = 256, at a few
 * microseconds each on a virtual machine. So a freed block of at least SCRATCH_KEEP_MIN bytes is
 * kept, at most SCRATCH_KEEP_BLOCKS of them and SCRATCH_KEEP_BYTES in all (the least recently
 * freed dropped first), and an allocation takes the smallest kept block that holds it with at
 * most a quarter to spare. tracemalloc sees a kept block as freed and a reused one as allocated
 * again, so what it measures is still what a call holds. Each block starts with a header that
 * holds its size. */
#define SCRATCH_KEEP_MIN ((size_t)256 << 10)
#define SCRATCH_KEEP_BYTES ((size_t)96 << 20)
#define SCRATCH_KEEP_BLOCKS 8
#define SCRATCH_HEADER 64           /* keeps the caller's bytes as aligned as the block */

static struct {
    sa_mutex lock;
    char *blocks[SCRATCH_KEEP_BLOCKS];      /* the oldest first */
    int count;
    size_t bytes;
} kept;
static sa_once_flag kept_once;

/* Also in a child after fork(): a thread of the parent may have held the lock; the child
   forgets the parent's blocks (its copies of them are never freed). */
static void kept_init(void)
{
    sa_mutex_init(&kept.lock);
    kept.count = 0;
    kept.bytes = 0;
}

static void kept_setup(void)
{
    kept_init();
    sa_at_fork(NULL, NULL, kept_init);
}

static size_t block_size(const char *block) { return *(const size_t *)block; }

static void *raw_alloc(size_t nbytes)
{
    if (nbytes > SIZE_MAX - SCRATCH_HEADER)
        return NULL;
    char *block = NULL;
    if (nbytes + SCRATCH_HEADER >= SCRATCH_KEEP_MIN) {
        sa_once(&kept_once, kept_setup);
        sa_mutex_lock(&kept.lock);
        int best = -1;
        for (int i = 0; i < kept.count; i++) {
            size_t size = block_size(kept.blocks[i]);
            if (size >= nbytes && size - nbytes <= nbytes / 4
                && (best < 0 || size < block_size(kept.blocks[best])))
                best = i;
        }
        if (best >= 0) {
            block = kept.blocks[best];
            kept.bytes -= block_size(block) + SCRATCH_HEADER;
            memmove(kept.blocks + best, kept.blocks + best + 1,
                    (size_t)(kept.count - best - 1) * sizeof(char *));
            kept.count--;
        }
        sa_mutex_unlock(&kept.lock);
        if (block) {
            PyTraceMalloc_Track(0, (uintptr_t)block, block_size(block) + SCRATCH_HEADER);
            return block + SCRATCH_HEADER;
        }
    }
    block = PyMem_RawMalloc(nbytes + SCRATCH_HEADER);
    if (block == NULL)
        return NULL;
    *(size_t *)block = nbytes;
    return block + SCRATCH_HEADER;
}

static void raw_free(void *ptr)
{
    if (ptr == NULL)
        return;
    char *block = (char *)ptr - SCRATCH_HEADER;
    size_t total = block_size(block) + SCRATCH_HEADER;
    if (total < SCRATCH_KEEP_MIN || total > SCRATCH_KEEP_BYTES) {
        PyMem_RawFree(block);
        return;
    }
    char *dropped[SCRATCH_KEEP_BLOCKS];
    int n_dropped = 0;
    PyTraceMalloc_Untrack(0, (uintptr_t)block);
    sa_mutex_lock(&kept.lock);
    while (kept.count == SCRATCH_KEEP_BLOCKS || kept.bytes + total > SCRATCH_KEEP_BYTES) {
        dropped[n_dropped++] = kept.blocks[0];
        kept.bytes -= block_size(kept.blocks[0]) + SCRATCH_HEADER;
        memmove(kept.blocks, kept.blocks + 1, (size_t)(kept.count - 1) * sizeof(char *));
        kept.count--;
    }
    kept.blocks[kept.count++] = block;
    kept.bytes += total;
    sa_mutex_unlock(&kept.lock);
    for (int i = 0; i < n_dropped; i++)
        PyMem_RawFree(dropped[i]);
}

static int make_exec(sa_exec *ex, int isa)
{
    if (isa < 0)
        isa = setting_isa;
    if (isa >= SA_ISA_COUNT || sa_kernels_for((sa_isa)isa) == NULL) {
        PyErr_Format(PyExc_ValueError, "instruction set %s is not supported on this CPU",
                     sa_isa_name((sa_isa)isa));
        return -1;
    }
    *ex = (sa_exec){.n_threads = setting_threads, .isa = (sa_isa)isa, .poll = poll_signals,
                    .alloc = raw_alloc, .dealloc = raw_free};
    return 0;
}

/* Maps a kernel's status to a Python exception; returns 0 for SA_OK, -1 otherwise. */
static int raise_status(int status)
{
    switch (status) {
    case SA_OK:
        return 0;
    case SA_ERR_NOMEM:
        PyErr_NoMemory();
        return -1;
    case SA_ERR_INTERRUPTED:
        if (!PyErr_Occurred())
            PyErr_SetNone(PyExc_KeyboardInterrupt);
        return -1;
    case SA_ERR_TOO_BIG:
        PyErr_SetString(PyExc_ValueError, "selfattn: the scratch space this call needs is too "
                                          "large to address");
        return -1;
    default:
        PyErr_Format(PyExc_RuntimeError, "selfattn: kernel failed with status %d", status);
        return -1;
    }
}

/* ---- operand checks ------------------------------------------------------------------------- */

/* Converts a byte stride to elements; size-1 axes get stride 0 (their stride is meaningless). */
static int element_stride(npy_intp extent, npy_intp bytes, npy_intp itemsize, sa_int *out,
                          const char *name)
{
    if (extent <= 1) {
        *out = 0;
        return 0;
    }
    if (bytes % itemsize != 0) {
        PyErr_Format(PyExc_ValueError, "_core: %s has a stride that is not a multiple of its "
                                       "item size", name);
        return -1;
    }
    *out = bytes / itemsize;
    return 0;
}

static PyArrayObject *as_operand(PyObject *obj, int typenum, int writeable, const char *name)
{
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "_core: %s must be an ndarray", name);
        return NULL;
    }
    PyArrayObject *arr = (PyArrayObject *)obj;
    if (PyArray_TYPE(arr) != typenum || !PyArray_ISNOTSWAPPED(arr) || !PyArray_ISALIGNED(arr)) {
        PyErr_Format(PyExc_TypeError, "_core: %s must be an aligned native %s array", name,
                     typenum == NPY_FLOAT ? "float32" : typenum == NPY_DOUBLE ? "float64" : "bool");
        return NULL;
    }
    if (writeable && !PyArray_ISWRITEABLE(arr)) {
        PyErr_Format(PyExc_ValueError, "_core: %s must be writeable", name);
        return NULL;
    }
    if (PyArray_NDIM(arr) < 2) {
        PyErr_Format(PyExc_ValueError, "_core: %s must have at least 2 dimensions", name);
        return NULL;
    }
    return arr;
}

/* Reads the batch shape from the first operand (the output). */
static void batch_from(PyArrayObject *arr, sa_batch *batch)
{
    batch->nd = PyArray_NDIM(arr) - 2;
    batch->count = 1;
    for (int axis = 0; axis < batch->nd; axis++) {
        batch->shape[axis] = PyArray_DIM(arr, axis);
        batch->count *= batch->shape[axis];
    }
}

/* Checks one matrix operand against the batch and its expected (rows, cols), then fills mat. */
static int get_mat(PyObject *obj, int typenum, int writeable, const sa_batch *batch,
                   npy_intp rows, npy_intp cols, sa_mat *mat, const char *name)
{
    PyArrayObject *arr = as_operand(obj, typenum, writeable, name);
    if (arr == NULL)
        return -1;
    int nd = PyArray_NDIM(arr);
    if (nd != batch->nd + 2 || PyArray_DIM(arr, nd - 2) != rows || PyArray_DIM(arr, nd - 1) != cols) {
        PyErr_Format(PyExc_ValueError, "_core: %s has the wrong shape", name);
        return -1;
    }
    npy_intp itemsize = PyArray_ITEMSIZE(arr);
    /* NumPy gives empty arrays zero strides; with nothing to read, any stride will do. */
    if (cols > 1 && PyArray_SIZE(arr) > 0 && PyArray_STRIDE(arr, nd - 1) != itemsize) {
        PyErr_Format(PyExc_ValueError, "_core: the rows of %s must be contiguous", name);
        return -1;
    }
    for (int axis = 0; axis < batch->nd; axis++) {
        if (PyArray_DIM(arr, axis) != batch->shape[axis]) {
            PyErr_Format(PyExc_ValueError, "_core: %s does not have the batch shape", name);
            return -1;
        }
        if (element_stride(batch->shape[axis], PyArray_STRIDE(arr, axis), itemsize,
                           &mat->bstride[axis], name) < 0)
            return -1;
    }
    mat->data = PyArray_DATA(arr);
    return element_stride(rows, PyArray_STRIDE(arr, nd - 2), itemsize, &mat->ld, name);
}

/* A mask is None, a bool array or an additive array of the compute type, already broadcast. */
static int get_mask(PyObject *obj, int typenum, const sa_batch *batch, npy_intp n_q, npy_intp n_k,
                    sa_mask *mask)
{
    mask->kind = SA_MASK_NONE;
    mask->data = NULL;
    if (obj == Py_None)
        return 0;
    int mask_type = PyArray_Check(obj) && PyArray_TYPE((PyArrayObject *)obj) == NPY_BOOL
                        ? NPY_BOOL : typenum;
    PyArrayObject *arr = as_operand(obj, mask_type, 0, "mask");
    if (arr == NULL)
        return -1;
    int nd = PyArray_NDIM(arr);
    if (nd != batch->nd + 2 || PyArray_DIM(arr, nd - 2) != n_q || PyArray_DIM(arr, nd - 1) != n_k) {
        PyErr_SetString(PyExc_ValueError, "_core: mask has the wrong shape");
        return -1;
    }
    npy_intp itemsize = PyArray_ITEMSIZE(arr);
    for (int axis = 0; axis < batch->nd; axis++) {
        if (PyArray_DIM(arr, axis) != batch->shape[axis]) {
            PyErr_SetString(PyExc_ValueError, "_core: mask does not have the batch shape");
            return -1;
        }
        if (element_stride(batch->shape[axis], PyArray_STRIDE(arr, axis), itemsize,
                           &mask->bstride[axis], "mask") < 0)
            return -1;
    }
    if (element_stride(n_q, PyArray_STRIDE(arr, nd - 2), itemsize, &mask->row_stride, "mask") < 0
        || element_stride(n_k, PyArray_STRIDE(arr, nd - 1), itemsize, &mask->col_stride, "mask") < 0)
        return -1;
    mask->kind = mask_type == NPY_BOOL ? SA_MASK_BOOL : SA_MASK_ADD;
    mask->data = PyArray_DATA(arr);
    return 0;
}

/* Output operand: sets the batch and precision from it. */
static int get_out(PyObject *obj, sa_batch *batch, int *typenum, int *precision)
{
    if (!PyArray_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "_core: out must be an ndarray");
        return -1;
    }
    *typenum = PyArray_TYPE((PyArrayObject *)obj);
    if (*typenum != NPY_FLOAT && *typenum != NPY_DOUBLE) {
        PyErr_SetString(PyExc_TypeError, "_core: out must be float32 or float64");
        return -1;
    }
    *precision = *typenum == NPY_FLOAT ? SA_F32 : SA_F64;
    if (as_operand(obj, *typenum, 1, "out") == NULL)
        return -1;
    batch_from((PyArrayObject *)obj, batch);
    return 0;
}

static npy_intp dim(PyObject *arr, int from_end)
{
    return PyArray_DIM((PyArrayObject *)arr, PyArray_NDIM((PyArrayObject *)arr) - from_end);
}

/* Runs `call` (a kernel invocation) with the GIL released when the work is worth it. */
#define RUN_KERNEL(status, flops, call)                  \
    do {                                                 \
        if ((flops) >= SA_GIL_MIN_FLOPS) {               \
            Py_BEGIN_ALLOW_THREADS status = (call);      \
            Py_END_ALLOW_THREADS                         \
        } else {                                         \
            status = (call);                             \
        }                                                \
    } while (0)

/* ---- the work of each operation ------------------------------------------------------------- */
/*
 * One helper per operation, shared by the general entry point (any batch, any strides) and the
 * plain one (2-D matrices): make the exec context (isa < 0: the process-wide tier), apply the
 * non-finite policy of csrc/dispatch.c where the operation weighs values (attention and its
 * backward: the tier; the output product: its non-finite columns), run the kernel and map its
 * status. Each returns 0, or -1 with an exception set.
 */

/* The exec context and the kernel table for one call, given its value operands (none for scores
   and softmax); NULL with an exception set. */
static const sa_kernels *prepare(sa_exec *ex, int isa, const sa_batch *batch, int precision,
                                 const sa_values *values, int n_values)
{
    if (make_exec(ex, isa) < 0)
        return NULL;
    return sa_kernels_for_values(ex, batch, precision, values, n_values);
}

/* The band as the kernels take it (attn.h's sa_band): lo and hi clamped to [-(n_q + n_k),
   n_q + n_k], where a side hides nothing more even shifted by from_end's K - R, so that no
   row + lo + shift overflows; the call's sizes. */
static sa_band clamped_band(sa_band band, sa_int n_q, sa_int n_k)
{
    sa_band c = band;
    sa_int far = n_q + n_k;
    c.lo = band.lo < -far ? -far : band.lo > far ? far : band.lo;
    c.hi = band.hi < -far ? -far : band.hi > far ? far : band.hi;
    c.n_rows = n_q;
    c.n_keys = n_k;
    return c;
}

/* A band argument as parsed: the band, and how many lengths each side's array holds (-1: none). */
typedef struct {
    sa_band band;
    sa_int counts[2];              /* query_lengths, key_lengths */
} band_arg;

/* One side's lengths: None (NULL), or a 1-D C-contiguous aligned intp array (kept alive by the
   argument tuple); its size and values are checked with the batch (check_lengths). */
static int get_lengths(PyObject *obj, const sa_int **lengths, sa_int *count, const char *name)
{
    *lengths = NULL;
    *count = -1;
    if (obj == Py_None)
        return 0;
    if (!PyArray_Check(obj) || PyArray_TYPE((PyArrayObject *)obj) != NPY_INTP
        || PyArray_NDIM((PyArrayObject *)obj) != 1
        || !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)obj)
        || !PyArray_ISALIGNED((PyArrayObject *)obj)) {
        PyErr_Format(PyExc_TypeError, "_core: %s must be None or a 1-D contiguous intp array",
                     name);
        return -1;
    }
    *lengths = (const sa_int *)PyArray_DATA((PyArrayObject *)obj);
    *count = PyArray_DIM((PyArrayObject *)obj, 0);
    return 0;
}

/* PyArg "O&" converter for a band_arg: the tuple (lo, hi), or (lo, hi, from_end, query_lengths,
   key_lengths) with the lengths None or one per batch item (attn.h's sa_band). */
static int band_converter(PyObject *obj, void *out)
{
    band_arg *arg = out;
    PyObject *rows_obj = Py_None, *keys_obj = Py_None;
    int from_end = 0;
    memset(arg, 0, sizeof *arg);
    if (!PyTuple_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "_core: band must be a tuple");
        return 0;
    }
    if (!PyArg_ParseTuple(obj, "nn|pOO", &arg->band.lo, &arg->band.hi, &from_end, &rows_obj,
                          &keys_obj)
        || get_lengths(rows_obj, &arg->band.row_lengths, &arg->counts[0], "query_lengths") < 0
        || get_lengths(keys_obj, &arg->band.key_lengths, &arg->counts[1], "key_lengths") < 0)
        return 0;
    arg->band.from_end = from_end;
    return 1;
}

/* The band's lengths against the call: batch->count of them, each in [0, n_q] or [0, n_k]. */
static int check_band(const band_arg *arg, const sa_batch *batch, sa_int n_q, sa_int n_k)
{
    const sa_int *lengths[2] = {arg->band.row_lengths, arg->band.key_lengths};
    const sa_int limits[2] = {n_q, n_k};
    const char *names[2] = {"query_lengths", "key_lengths"};
    for (int side = 0; side < 2; side++) {
        if (lengths[side] == NULL)
            continue;
        if (arg->counts[side] != batch->count) {
            PyErr_Format(PyExc_ValueError, "_core: %s has %zd entries for %zd batch items",
                         names[side], arg->counts[side], batch->count);
            return -1;
        }
        for (sa_int item = 0; item < batch->count; item++)
            if (lengths[side][item] < 0 || lengths[side][item] > limits[side]) {
                PyErr_Format(PyExc_ValueError, "_core: %s[%zd] = %zd is outside [0, %zd]",
                             names[side], item, lengths[side][item], limits[side]);
                return -1;
            }
    }
    return 0;
}

static int scores_impl(int isa, int precision, const sa_batch *batch, const sa_mat *out,
                       const sa_mat *Q, const sa_mat *K, const sa_mask *mask, sa_int n_q,
                       sa_int n_k, sa_int d_k, double scale, sa_band band,
                       const sa_score_mods *mods)
{
    sa_exec ex;
    if (sa_softcap_needs_reference(mods, precision))
        isa = SA_ISA_REFERENCE;
    const sa_kernels *tier = prepare(&ex, isa, batch, precision, NULL, 0);
    if (tier == NULL)
        return -1;
    int status;
    RUN_KERNEL(status, 2.0 * batch->count * n_q * n_k * (d_k + 1),
               tier->scores[precision](&ex, batch, out, Q, K, mask, n_q, n_k, d_k, scale,
                                       clamped_band(band, n_q, n_k), mods));
    return raise_status(status);
}

static int softmax_impl(int isa, int precision, const sa_batch *batch, const sa_mat *out,
                        const sa_mat *in, sa_int rows, sa_int n)
{
    sa_exec ex;
    const sa_kernels *tier = prepare(&ex, isa, batch, precision, NULL, 0);
    if (tier == NULL)
        return -1;
    int status;
    RUN_KERNEL(status, 20.0 * batch->count * rows * n,
               tier->softmax[precision](&ex, batch, out, in, rows, n));
    return raise_status(status);
}

/* C = A . B (layout: attn.h's SA_MATMUL_*) with IEEE products: projections and gradients. */
static int matmul_impl(int isa, int precision, const sa_batch *batch, const sa_mat *C,
                       const sa_mat *A, const sa_mat *B, sa_int m, sa_int n, sa_int k, int layout)
{
    sa_exec ex;
    const sa_kernels *tier = prepare(&ex, isa, batch, precision, NULL, 0);
    if (tier == NULL)
        return -1;
    int status;
    RUN_KERNEL(status, 2.0 * batch->count * m * n * k,
               tier->matmul[precision](&ex, batch, C, A, B, m, n, k, layout));
    return raise_status(status);
}

/* out = weights . V, the attention output of given weights: a weight of exactly 0 takes
   nothing from V's row, even inf or NaN (the non-finite policy's sa_output_zero_weights). */
static int output_impl(int isa, int precision, const sa_batch *batch, const sa_mat *out,
                       const sa_mat *weights, const sa_mat *V, sa_int n_q, sa_int n_k, sa_int d_v)
{
    if (matmul_impl(isa, precision, batch, out, weights, V, n_q, d_v, n_k, 0) < 0)
        return -1;
    sa_output_zero_weights(batch, precision, out, weights, V, n_q, d_v, n_k);
    return 0;
}

static int attention_impl(int isa, int precision, const sa_batch *batch, const sa_mat *out,
                          const sa_mat *weights, const sa_mat *Q, const sa_mat *K,
                          const sa_mat *V, const sa_mask *mask, sa_int n_q, sa_int n_k,
                          sa_int d_k, sa_int d_v, double scale, sa_band band, void *lse,
                          const sa_score_mods *mods)
{
    sa_exec ex;
    if (sa_softcap_needs_reference(mods, precision))
        isa = SA_ISA_REFERENCE;
    const sa_values values[] = {{V, n_k, d_v}};
    /* the fused and decode kernels check the sums of the V rows they weigh (a scan of V only
       where the weights are wanted) */
    int scan = weights != NULL;
    const sa_kernels *tier = prepare(&ex, isa, batch, precision, values, scan);
    if (tier == NULL)
        return -1;
    int status;
    RUN_KERNEL(status, 2.0 * batch->count * n_q * n_k * (d_k + d_v),
               tier->attention[precision](&ex, batch, out, weights, Q, K, V, mask, n_q, n_k, d_k,
                                          d_v, scale, clamped_band(band, n_q, n_k), lse, mods));
    return raise_status(status);
}

static int attention_backward_impl(int isa, int precision, const sa_batch *batch,
                                   const sa_mat *dQ, const sa_mat *dK, const sa_mat *dV,
                                   const sa_mat *out, const sa_mat *dO, const sa_mat *Q, const sa_mat *K,
                                   const sa_mat *V, const sa_mask *mask, sa_int n_q, sa_int n_k,
                                   sa_int d_k, sa_int d_v, double scale, sa_band band,
                                   const sa_score_mods *mods)
{
    sa_exec ex;
    if (sa_softcap_needs_reference(mods, precision))
        isa = SA_ISA_REFERENCE;
    /* every operand a weight or a dS of 0 multiplies: V and dO (dV = P^T dO, dP = dO V^T),
       K (dQ = dS K: a hidden key's dS is 0) and Q (dK = dS^T Q: a fully masked row's is) */
    const sa_values values[] = {{V, n_k, d_v}, {dO, n_q, d_v}, {K, n_k, d_k}, {Q, n_q, d_k}};
    const sa_kernels *tier = prepare(&ex, isa, batch, precision, values, 4);
    if (tier == NULL)
        return -1;
    int status;
    sa_band clamped = clamped_band(band, n_q, n_k);
    RUN_KERNEL(status, 2.0 * batch->count * n_q * n_k * (3 * d_k + 4 * d_v),
               tier->attention_backward[precision](&ex, batch, dQ, dK, dV, out, dO, Q, K, V, mask,
                                                   n_q, n_k, d_k, d_v, scale, clamped, mods));
    /* a row of NaN weights under a band that hides keys (dispatch.c): again, on the reference
       tier */
    if (status == SA_OK
        && sa_backward_needs_reference(&ex, batch, precision, dQ, dV, n_q, n_k, d_k, d_v,
                                       clamped))
        RUN_KERNEL(status, 2.0 * batch->count * n_q * n_k * (3 * d_k + 4 * d_v),
                   sa_kernels_for(ex.isa)->attention_backward[precision](
                       &ex, batch, dQ, dK, dV, out, dO, Q, K, V, mask, n_q, n_k, d_k, d_v, scale,
                       clamped, mods));
    return raise_status(status);
}

/*
 * The projections of a layer, P = X . [W_1 | ... | W_count] + bias (count <= 3: W_q | W_k | W_v
 * for self-attention, W_q alone or W_k | W_v for cross-attention). 1. One product per
 * projection, each writing its own columns of P (P's row stride): the W's are read where they
 * are, with no concatenated copy of them (at d_model = 512 float32, 3 MiB written and faulted in
 * on every call, 2-3% of a multi-head forward). An output column depends only on its own column
 * of W, summed in the same order wherever it sits in the product, so the bits are those of one
 * product with [W_1 | ... ]; X is read once per projection (from cache: it is the A operand,
 * read in place). 2. The bias row (None: no bias), one addition per element after the product,
 * so a bias of 0 changes nothing. The W's and the bias have batch strides of 0 on the axes
 * where they are shared, so they broadcast against `batch` as they are. The single-head,
 * multi-head and plain layers all project here.
 */
static int project_impl(int isa, int precision, const sa_batch *batch, const sa_mat *QKV,
                        const sa_mat *X, const sa_mat *W, int count, const sa_mat *bias, sa_int n,
                        sa_int d_model, const sa_int *width)
{
    size_t itemsize = precision == SA_F32 ? sizeof(float) : sizeof(double);
    if (batch->count == 0 || n == 0)
        return 0;
    /* 1. the products, side by side */
    sa_int d_all = 0;
    for (int i = 0; i < count; i++) {
        sa_mat columns = *QKV;
        columns.data = (char *)QKV->data + (size_t)d_all * itemsize;
        if (width[i] > 0
            && matmul_impl(isa, precision, batch, &columns, X, &W[i], n, width[i], d_model, 0) < 0)
            return -1;
        d_all += width[i];
    }
    /* 2. the bias, whose batch strides are 0 where it is shared */
    if (bias == NULL)
        return 0;
    for (sa_int item = 0; item < batch->count; item++) {
        sa_int out_at = sa_batch_offset(batch, QKV->bstride, item);
        sa_int bias_at = sa_batch_offset(batch, bias->bstride, item);
        for (sa_int r = 0; r < n; r++) {
            if (precision == SA_F32) {
                float *row = (float *)QKV->data + out_at + r * QKV->ld;
                const float *b = (const float *)bias->data + bias_at;
                for (sa_int c = 0; c < d_all; c++)
                    row[c] += b[c];
            } else {
                double *row = (double *)QKV->data + out_at + r * QKV->ld;
                const double *b = (const double *)bias->data + bias_at;
                for (sa_int c = 0; c < d_all; c++)
                    row[c] += b[c];
            }
        }
    }
    return 0;
}

/* ---- the general entry points: parse, check the kernel contract, then the operation's helper */

PyDoc_STRVAR(scores_doc, "scores(out, Q, K, mask, scale, band, isa)\n--\n\n"
                         "out[...] = scale * Q @ K^T with the mask and the band (lo, hi) applied "
                         "(private).");

static PyObject *core_scores(PyObject *self, PyObject *args)
{
    PyObject *out_obj, *Q_obj, *K_obj, *mask_obj;
    double scale;
    band_arg band;
    int isa, typenum, precision;
    if (!PyArg_ParseTuple(args, "OOOOdO&i", &out_obj, &Q_obj, &K_obj, &mask_obj, &scale,
                          band_converter, &band, &isa))
        return NULL;
    sa_batch batch;
    sa_mat out, Q, K;
    sa_mask mask;
    if (get_out(out_obj, &batch, &typenum, &precision) < 0)
        return NULL;
    npy_intp n_q = dim(out_obj, 2), n_k = dim(out_obj, 1);
    if (!PyArray_Check(Q_obj) || PyArray_NDIM((PyArrayObject *)Q_obj) < 2) {
        PyErr_SetString(PyExc_ValueError, "_core: Q must be a matrix");
        return NULL;
    }
    npy_intp d_k = dim(Q_obj, 1);
    if (get_mat(out_obj, typenum, 1, &batch, n_q, n_k, &out, "out") < 0
        || get_mat(Q_obj, typenum, 0, &batch, n_q, d_k, &Q, "Q") < 0
        || get_mat(K_obj, typenum, 0, &batch, n_k, d_k, &K, "K") < 0
        || get_mask(mask_obj, typenum, &batch, n_q, n_k, &mask) < 0
        || check_band(&band, &batch, n_q, n_k) < 0
        || scores_impl(isa, precision, &batch, &out, &Q, &K, &mask, n_q, n_k, d_k, scale,
                       band.band, NULL) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(softmax_doc, "softmax(out, x, isa)\n--\n\n"
                          "out[...] = softmax over the last axis of x (private); out may be x.");

/* softmax(out, x, isa): one input, one output of its shape */
static PyObject *core_softmax(PyObject *self, PyObject *args)
{
    PyObject *out_obj, *in_obj;
    int isa, typenum, precision;
    if (!PyArg_ParseTuple(args, "OOi", &out_obj, &in_obj, &isa))
        return NULL;
    sa_batch batch;
    sa_mat out, in;
    if (get_out(out_obj, &batch, &typenum, &precision) < 0)
        return NULL;
    npy_intp rows = dim(out_obj, 2), cols = dim(out_obj, 1);
    if (get_mat(out_obj, typenum, 1, &batch, rows, cols, &out, "out") < 0
        || get_mat(in_obj, typenum, 0, &batch, rows, cols, &in, "x") < 0
        || softmax_impl(isa, precision, &batch, &out, &in, rows, cols) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(matmul_doc, "matmul(out, A, B, isa, layout=0)\n--\n\nout[...] = A @ B (private); "
                         "layout ORs 1 (A given as A^T, shape (k, m)), 2 (B given as B^T, shape "
                         "(n, k)), 4 (out[...] += A @ B).");
PyDoc_STRVAR(output_doc, "output(out, weights, V, isa)\n--\n\nout[...] = weights @ V, where a "
                         "weight of exactly 0 takes nothing from V, even inf or NaN (private).");

/* matmul and output: one parser; `weighs_values` picks output's rule. */
static PyObject *parse_product(PyObject *args, int weighs_values)
{
    PyObject *out_obj, *A_obj, *B_obj;
    int isa, typenum, precision, layout = 0;
    if (!PyArg_ParseTuple(args, weighs_values ? "OOOi" : "OOOi|i", &out_obj, &A_obj, &B_obj, &isa,
                          &layout))
        return NULL;
    if (layout & ~(SA_MATMUL_A_T | SA_MATMUL_B_T | SA_MATMUL_ADD)) {
        PyErr_SetString(PyExc_ValueError, "_core: layout must OR 1, 2 and 4");
        return NULL;
    }
    int a_t = (layout & SA_MATMUL_A_T) != 0, b_t = (layout & SA_MATMUL_B_T) != 0;
    sa_batch batch;
    sa_mat C, A, B;
    if (get_out(out_obj, &batch, &typenum, &precision) < 0)
        return NULL;
    npy_intp m = dim(out_obj, 2), n = dim(out_obj, 1);
    if (!PyArray_Check(A_obj) || PyArray_NDIM((PyArrayObject *)A_obj) < 2) {
        PyErr_SetString(PyExc_ValueError, "_core: A must be a matrix");
        return NULL;
    }
    npy_intp k = dim(A_obj, a_t ? 2 : 1);
    if (get_mat(out_obj, typenum, 1, &batch, m, n, &C, "out") < 0
        || get_mat(A_obj, typenum, 0, &batch, a_t ? k : m, a_t ? m : k, &A, "A") < 0
        || get_mat(B_obj, typenum, 0, &batch, b_t ? n : k, b_t ? k : n, &B, "B") < 0
        || (weighs_values ? output_impl(isa, precision, &batch, &C, &A, &B, m, k, n)
                          : matmul_impl(isa, precision, &batch, &C, &A, &B, m, n, k, layout)) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *core_matmul(PyObject *self, PyObject *args) { return parse_product(args, 0); }

static PyObject *core_output(PyObject *self, PyObject *args) { return parse_product(args, 1); }

PyDoc_STRVAR(project_doc,
             "project(QKV, X, Ws, bias, isa)\n--\n\n"
             "QKV[...] = X @ [W_1 | ...] + bias for the 1 to 3 matrices of the tuple Ws, one "
             "product per W into its columns of QKV (private). The W's and bias (None, or "
             "(..., 1, width of QKV)) share one batch shape whose axes are QKV's or 1.");

static PyObject *core_project(PyObject *self, PyObject *args)
{
    PyObject *QKV_obj, *X_obj, *Ws_obj, *bias_obj, *W_obj[3];
    int isa, typenum, precision;
    if (!PyArg_ParseTuple(args, "OOO!Oi", &QKV_obj, &X_obj, &PyTuple_Type, &Ws_obj, &bias_obj,
                          &isa))
        return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(Ws_obj);
    if (count < 1 || count > 3) {
        PyErr_SetString(PyExc_ValueError, "_core: Ws must hold 1 to 3 matrices");
        return NULL;
    }
    sa_batch batch, w_batch;
    sa_mat QKV, X, W[3], bias;
    if (get_out(QKV_obj, &batch, &typenum, &precision) < 0)
        return NULL;
    static const char *names[3] = {"Ws[0]", "Ws[1]", "Ws[2]"};
    sa_int width[3], d_sum = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        W_obj[i] = PyTuple_GET_ITEM(Ws_obj, i);
        if (as_operand(W_obj[i], typenum, 0, names[i]) == NULL)
            return NULL;
        width[i] = dim(W_obj[i], 1);
        d_sum += width[i];
    }
    npy_intp n = dim(QKV_obj, 2), d_all = dim(QKV_obj, 1), d_model = dim(W_obj[0], 2);
    if (d_sum != d_all) {
        PyErr_SetString(PyExc_ValueError, "_core: QKV must be as wide as the W's together");
        return NULL;
    }
    /* the weights' batch shape is Ws[0]'s; every W and the bias must have it (get_mat) */
    batch_from((PyArrayObject *)W_obj[0], &w_batch);
    int broadcasts = w_batch.nd == batch.nd;
    for (int axis = 0; broadcasts && axis < batch.nd; axis++)
        broadcasts = w_batch.shape[axis] == batch.shape[axis] || w_batch.shape[axis] == 1;
    if (!broadcasts) {
        PyErr_SetString(PyExc_ValueError, "_core: the W's must have QKV's batch axes or 1");
        return NULL;
    }
    if (get_mat(QKV_obj, typenum, 1, &batch, n, d_all, &QKV, "QKV") < 0
        || get_mat(X_obj, typenum, 0, &batch, n, d_model, &X, "X") < 0
        || (bias_obj != Py_None
            && get_mat(bias_obj, typenum, 0, &w_batch, 1, d_all, &bias, "bias") < 0))
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++)
        if (get_mat(W_obj[i], typenum, 0, &w_batch, d_model, width[i], &W[i], names[i]) < 0)
            return NULL;
    /* the W's and the bias's batch strides are 0 on their axes of 1, so they broadcast against
       `batch` as they are */
    if (project_impl(isa, precision, &batch, &QKV, &X, W, (int)count,
                     bias_obj != Py_None ? &bias : NULL, n, d_model, width) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(attention_doc,
             "attention(out, weights, Q, K, V, mask, scale, band, isa, lse=None, softcap=0.0, "
             "dropout_p=0.0, seed=0)\n--\n\n"
             "out[...] = softmax(scale * Q @ K^T + mask, keys outside the band (lo, hi) or "
             "(lo, hi, from_end, query_lengths, key_lengths) hidden) @ V (private); weights may "
             "be None (fused, O(n d) memory) or an output for the weights; lse None or an "
             "output (batch..., n_q) for each row's log-sum-exp. softcap > 0: each score s "
             "becomes softcap * tanh(s / softcap) before the mask; dropout_p > 0 drops weights "
             "after the softmax (Philox4x32-10 keyed by seed, csrc/attn.h's sa_score_mods).");

/* The lse output of attention: None (NULL), or a C-contiguous aligned writeable array of the
   call's type holding batch->count x n_q elements. */
static int get_lse(PyObject *obj, int typenum, const sa_batch *batch, sa_int n_q, void **lse)
{
    *lse = NULL;
    if (obj == Py_None)
        return 0;
    PyArrayObject *arr = (PyArrayObject *)obj;
    if (!PyArray_Check(obj) || PyArray_TYPE(arr) != typenum || !PyArray_IS_C_CONTIGUOUS(arr)
        || !PyArray_ISALIGNED(arr) || !PyArray_ISWRITEABLE(arr)
        || PyArray_SIZE(arr) != batch->count * n_q) {
        PyErr_SetString(PyExc_ValueError, "_core: lse must be None or a writeable contiguous "
                        "array of out's type with one element per row of out");
        return -1;
    }
    *lse = PyArray_DATA(arr);
    return 0;
}

/* The private entry points' own check of what the Python layer validates (_softcap, _dropout):
   a dropout_p beyond [0, 1] is an undefined conversion where the keep threshold is made. */
static int mods_ok(const sa_score_mods *mods)
{
    if (isfinite(mods->softcap) && mods->softcap >= 0 && mods->dropout_p >= 0
        && mods->dropout_p <= 1)
        return 1;
    PyErr_SetString(PyExc_ValueError, "_core: softcap must be finite and >= 0 (0: none), "
                                      "dropout_p within [0, 1]");
    return 0;
}

static PyObject *core_attention(PyObject *self, PyObject *args)
{
    PyObject *out_obj, *weights_obj, *Q_obj, *K_obj, *V_obj, *mask_obj, *lse_obj = Py_None;
    double scale;
    band_arg band;
    int isa, typenum, precision;
    sa_score_mods mods = {.softcap = 0, .dropout_p = 0, .seed = 0};
    unsigned long long seed = 0;
    if (!PyArg_ParseTuple(args, "OOOOOOdO&i|OddK", &out_obj, &weights_obj, &Q_obj, &K_obj, &V_obj,
                          &mask_obj, &scale, band_converter, &band, &isa, &lse_obj,
                          &mods.softcap, &mods.dropout_p, &seed))
        return NULL;
    if (!mods_ok(&mods))
        return NULL;
    mods.seed = (uint64_t)seed;
    sa_batch batch;
    sa_mat out, weights, Q, K, V;
    sa_mask mask;
    void *lse;
    if (get_out(out_obj, &batch, &typenum, &precision) < 0)
        return NULL;
    npy_intp n_q = dim(out_obj, 2), d_v = dim(out_obj, 1);
    if (!PyArray_Check(Q_obj) || PyArray_NDIM((PyArrayObject *)Q_obj) < 2 || !PyArray_Check(K_obj)
        || PyArray_NDIM((PyArrayObject *)K_obj) < 2) {
        PyErr_SetString(PyExc_ValueError, "_core: Q and K must be matrices");
        return NULL;
    }
    npy_intp d_k = dim(Q_obj, 1), n_k = dim(K_obj, 2);
    if (get_mat(out_obj, typenum, 1, &batch, n_q, d_v, &out, "out") < 0
        || (weights_obj != Py_None
            && get_mat(weights_obj, typenum, 1, &batch, n_q, n_k, &weights, "weights") < 0)
        || get_mat(Q_obj, typenum, 0, &batch, n_q, d_k, &Q, "Q") < 0
        || get_mat(K_obj, typenum, 0, &batch, n_k, d_k, &K, "K") < 0
        || get_mat(V_obj, typenum, 0, &batch, n_k, d_v, &V, "V") < 0
        || get_mask(mask_obj, typenum, &batch, n_q, n_k, &mask) < 0
        || check_band(&band, &batch, n_q, n_k) < 0
        || get_lse(lse_obj, typenum, &batch, n_q, &lse) < 0
        || attention_impl(isa, precision, &batch, &out, weights_obj != Py_None ? &weights : NULL,
                          &Q, &K, &V, &mask, n_q, n_k, d_k, d_v, scale, band.band, lse, &mods) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(attention_backward_doc,
             "attention_backward(dQ, dK, dV, dO, Q, K, V, mask, scale, band, isa, softcap=0.0, "
             "dropout_p=0.0, seed=0, out=None)"
             "\n--\n\n"
             "dQ, dK, dV[...] = the gradients of attention(..., band, ..., softcap, dropout_p, "
             "seed) given dO, and out[...] = its output when out is an array (private).");

static PyObject *core_attention_backward(PyObject *self, PyObject *args)
{
    PyObject *dQ_obj, *dK_obj, *dV_obj, *dO_obj, *Q_obj, *K_obj, *V_obj, *mask_obj;
    PyObject *out_obj = Py_None;
    double scale;
    band_arg band;
    int isa, typenum, precision;
    sa_score_mods mods = {.softcap = 0, .dropout_p = 0, .seed = 0};
    unsigned long long seed = 0;
    if (!PyArg_ParseTuple(args, "OOOOOOOOdO&i|ddKO", &dQ_obj, &dK_obj, &dV_obj, &dO_obj, &Q_obj,
                          &K_obj, &V_obj, &mask_obj, &scale, band_converter, &band, &isa,
                          &mods.softcap, &mods.dropout_p, &seed, &out_obj))
        return NULL;
    if (!mods_ok(&mods))
        return NULL;
    mods.seed = (uint64_t)seed;
    sa_batch batch;
    sa_mat dQ, dK, dV, out, dO, Q, K, V;
    sa_mask mask;
    if (get_out(dQ_obj, &batch, &typenum, &precision) < 0)
        return NULL;
    if (!PyArray_Check(dK_obj) || PyArray_NDIM((PyArrayObject *)dK_obj) < 2
        || !PyArray_Check(dV_obj) || PyArray_NDIM((PyArrayObject *)dV_obj) < 2) {
        PyErr_SetString(PyExc_ValueError, "_core: dK and dV must be matrices");
        return NULL;
    }
    npy_intp n_q = dim(dQ_obj, 2), d_k = dim(dQ_obj, 1), n_k = dim(dK_obj, 2), d_v = dim(dV_obj, 1);
    if (get_mat(dQ_obj, typenum, 1, &batch, n_q, d_k, &dQ, "dQ") < 0
        || get_mat(dK_obj, typenum, 1, &batch, n_k, d_k, &dK, "dK") < 0
        || get_mat(dV_obj, typenum, 1, &batch, n_k, d_v, &dV, "dV") < 0
        || (out_obj != Py_None && get_mat(out_obj, typenum, 1, &batch, n_q, d_v, &out, "out") < 0)
        || get_mat(dO_obj, typenum, 0, &batch, n_q, d_v, &dO, "dO") < 0
        || get_mat(Q_obj, typenum, 0, &batch, n_q, d_k, &Q, "Q") < 0
        || get_mat(K_obj, typenum, 0, &batch, n_k, d_k, &K, "K") < 0
        || get_mat(V_obj, typenum, 0, &batch, n_k, d_v, &V, "V") < 0
        || get_mask(mask_obj, typenum, &batch, n_q, n_k, &mask) < 0
        || check_band(&band, &batch, n_q, n_k) < 0
        || attention_backward_impl(isa, precision, &batch, &dQ, &dK, &dV,
                                   out_obj == Py_None ? NULL : &out, &dO, &Q, &K, &V, &mask, n_q,
                                   n_k, d_k, d_v, scale, band.band, &mods) < 0)
        return NULL;
    Py_RETURN_NONE;
}


/* ---- the common case without the Python layer ---------------------------------------------- */
/*
 * The notebook's calls are 2-D, same-dtype, C-ordered arrays with no mask. For those the Python
 * layer's general machinery (broadcasting, promotion, copies) is pure overhead, which dominates at
 * the notebook's sizes (n=8, d=4: a few microseconds). These entry points accept exactly that case
 * and return None for anything else -- including every input that would be an error -- so the
 * Python layer stays the one place where policy and messages live. They parse, allocate the
 * result and run the same helpers as the general entry points, on a batch of one.
 */

/* A plain matrix: an exact ndarray, 2-D, non-empty, float32/float64 (matching *typenum if it is
   set), aligned, native, with contiguous rows. */
static int plain_matrix(PyObject *obj, int *typenum, sa_mat *mat, npy_intp *rows, npy_intp *cols)
{
    if (!PyArray_CheckExact(obj))
        return 0;
    PyArrayObject *arr = (PyArrayObject *)obj;
    int type = PyArray_TYPE(arr);
    if (PyArray_NDIM(arr) != 2 || (type != NPY_FLOAT && type != NPY_DOUBLE)
        || (*typenum != NPY_NOTYPE && type != *typenum) || !PyArray_ISNOTSWAPPED(arr)
        || !PyArray_ISALIGNED(arr))
        return 0;
    npy_intp itemsize = PyArray_ITEMSIZE(arr);
    *rows = PyArray_DIM(arr, 0);
    *cols = PyArray_DIM(arr, 1);
    if (*rows == 0 || *cols == 0 || (*cols > 1 && PyArray_STRIDE(arr, 1) != itemsize)
        || PyArray_STRIDE(arr, 0) % itemsize != 0)
        return 0;
    *typenum = type;
    mat->data = PyArray_DATA(arr);
    mat->ld = *rows > 1 ? PyArray_STRIDE(arr, 0) / itemsize : 0;
    return 1;
}

/* None -> 1/sqrt(d_k); a finite Python or NumPy float or a Python int -> itself; else 0 (defer:
   also a scale beyond float32's range in a float32 call, which the Python layer rejects). */
static int plain_scale(PyObject *obj, npy_intp d_k, int typenum, double *scale)
{
    if (obj == Py_None) {
        *scale = 1.0 / sqrt((double)d_k);
        return 1;
    }
    if (PyFloat_Check(obj))
        *scale = PyFloat_AS_DOUBLE(obj);
    else if (PyLong_CheckExact(obj)) {
        *scale = PyLong_AsDouble(obj);
        if (*scale == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
    } else
        return 0;
    return isfinite(*scale) && (typenum != NPY_FLOAT32 || fabs(*scale) <= FLT_MAX);
}

/* Whether a rows x cols result is addressable; if not, the Python layer explains why. */
static int fits(npy_intp rows, npy_intp cols, int typenum)
{
    size_t bytes;
    return !sa_mul_overflow((size_t)rows * (typenum == NPY_FLOAT ? 4 : 8), (size_t)cols, &bytes)
           && bytes <= (size_t)NPY_MAX_INTP && (size_t)rows <= (size_t)NPY_MAX_INTP / 8;
}

static PyObject *new_matrix(npy_intp rows, npy_intp cols, int typenum, sa_mat *mat)
{
    npy_intp dims[2] = {rows, cols};
    PyObject *arr = PyArray_SimpleNew(2, dims, typenum);
    if (arr != NULL) {
        mat->data = PyArray_DATA((PyArrayObject *)arr);
        mat->ld = cols;
    }
    return arr;
}

static const sa_batch single = {.nd = 0, .count = 1};
static const sa_mask no_mask = {.kind = SA_MASK_NONE};

static int precision_of(int typenum) { return typenum == NPY_FLOAT ? SA_F32 : SA_F64; }

/* `result` once its helper returned `rc` (0 or -1 with an exception set). */
static PyObject *result_or_null(PyObject *result, int rc)
{
    if (rc < 0) {
        Py_DECREF(result);
        return NULL;
    }
    return result;
}

/* The fused attention of plain matrices into a new (n_q, d_v) array. */
static PyObject *plain_attention(int typenum, const sa_mat *Q, const sa_mat *K, const sa_mat *V,
                                 npy_intp n_q, npy_intp n_k, npy_intp d_k, npy_intp d_v,
                                 double scale, sa_band band)
{
    sa_mat out;
    PyObject *result = new_matrix(n_q, d_v, typenum, &out);
    if (result == NULL)
        return NULL;
    return result_or_null(result, attention_impl(-1, precision_of(typenum), &single, &out, NULL,
                                                 Q, K, V, &no_mask, n_q, n_k, d_k, d_v, scale,
                                                 band, NULL, NULL));
}

static PyObject *core_plain_sdpa(PyObject *self, PyObject *args)
{
    PyObject *Q_obj, *K_obj, *V_obj, *scale_obj;
    band_arg band;
    int typenum = NPY_NOTYPE;
    if (!PyArg_ParseTuple(args, "OOOOO&", &Q_obj, &K_obj, &V_obj, &scale_obj, band_converter,
                          &band))
        return NULL;
    if (band.counts[0] >= 0 || band.counts[1] >= 0)
        Py_RETURN_NONE;
    sa_mat Q, K, V;
    npy_intp n_q, d_k, n_k, d_k2, n_v, d_v;
    double scale;
    if (!plain_matrix(Q_obj, &typenum, &Q, &n_q, &d_k) || !plain_matrix(K_obj, &typenum, &K, &n_k, &d_k2)
        || !plain_matrix(V_obj, &typenum, &V, &n_v, &d_v) || d_k != d_k2 || n_v != n_k
        || !fits(n_q, d_v, typenum) || !plain_scale(scale_obj, d_k, typenum, &scale))
        Py_RETURN_NONE;
    return plain_attention(typenum, &Q, &K, &V, n_q, n_k, d_k, d_v, scale, band.band);
}

static PyObject *core_plain_layer(PyObject *self, PyObject *args)
{
    PyObject *X_obj, *W_obj[3], *scale_obj;
    band_arg band;
    int typenum = NPY_NOTYPE;
    if (!PyArg_ParseTuple(args, "OOOOOO&", &X_obj, &W_obj[0], &W_obj[1], &W_obj[2], &scale_obj,
                          band_converter, &band))
        return NULL;
    if (band.counts[0] >= 0 || band.counts[1] >= 0)
        Py_RETURN_NONE;
    sa_mat X, W[3];
    npy_intp n, d_model, rows[3];
    sa_int width[3];
    double scale;
    if (!plain_matrix(X_obj, &typenum, &X, &n, &d_model))
        Py_RETURN_NONE;
    for (int i = 0; i < 3; i++)
        if (!plain_matrix(W_obj[i], &typenum, &W[i], &rows[i], &width[i]) || rows[i] != d_model)
            Py_RETURN_NONE;
    npy_intp d_k = width[0], d_v = width[2], d_all = 2 * d_k + d_v;
    if (width[1] != d_k || !fits(n, d_all, typenum) || !fits(d_model, d_all, typenum)
        || !plain_scale(scale_obj, d_k, typenum, &scale))
        Py_RETURN_NONE;

    sa_mat QKV;
    PyObject *QKV_obj = new_matrix(n, d_all, typenum, &QKV);
    PyObject *result = NULL;
    if (QKV_obj != NULL
        && project_impl(-1, precision_of(typenum), &single, &QKV, &X, W, 3, NULL, n, d_model,
                        width) == 0) {
        /* attention on the three column blocks of QKV */
        npy_intp itemsize = PyArray_ITEMSIZE((PyArrayObject *)QKV_obj);
        sa_mat Q = {.data = QKV.data, .ld = d_all};
        sa_mat K = {.data = (char *)QKV.data + d_k * itemsize, .ld = d_all};
        sa_mat V = {.data = (char *)QKV.data + 2 * d_k * itemsize, .ld = d_all};
        result = plain_attention(typenum, &Q, &K, &V, n, n, d_k, d_v, scale, band.band);
    }
    Py_XDECREF(QKV_obj);
    return result;
}

static PyObject *core_plain_scores(PyObject *self, PyObject *args)
{
    PyObject *Q_obj, *K_obj, *scale_obj;
    band_arg band;
    int typenum = NPY_NOTYPE;
    if (!PyArg_ParseTuple(args, "OOOO&", &Q_obj, &K_obj, &scale_obj, band_converter, &band))
        return NULL;
    if (band.counts[0] >= 0 || band.counts[1] >= 0)
        Py_RETURN_NONE;
    sa_mat Q, K, S;
    npy_intp n_q, d_k, n_k, d_k2;
    double scale;
    if (!plain_matrix(Q_obj, &typenum, &Q, &n_q, &d_k) || !plain_matrix(K_obj, &typenum, &K, &n_k, &d_k2)
        || d_k != d_k2 || !fits(n_q, n_k, typenum) || !plain_scale(scale_obj, d_k, typenum, &scale))
        Py_RETURN_NONE;
    PyObject *result = new_matrix(n_q, n_k, typenum, &S);
    if (result == NULL)
        return NULL;
    return result_or_null(result, scores_impl(-1, precision_of(typenum), &single, &S, &Q, &K,
                                              &no_mask, n_q, n_k, d_k, scale, band.band, NULL));
}

static PyObject *core_plain_softmax(PyObject *self, PyObject *x_obj)
{
    int typenum = NPY_NOTYPE;
    sa_mat in, out;
    npy_intp rows, n;
    if (!plain_matrix(x_obj, &typenum, &in, &rows, &n))
        Py_RETURN_NONE;
    PyObject *result = new_matrix(rows, n, typenum, &out);
    if (result == NULL)
        return NULL;
    return result_or_null(result,
                          softmax_impl(-1, precision_of(typenum), &single, &out, &in, rows, n));
}

static PyObject *core_plain_output(PyObject *self, PyObject *args)
{
    PyObject *weights_obj, *V_obj;
    int typenum = NPY_NOTYPE;
    if (!PyArg_ParseTuple(args, "OO", &weights_obj, &V_obj))
        return NULL;
    sa_mat weights, V, out;
    npy_intp n_q, n_k, n_v, d_v;
    if (!plain_matrix(weights_obj, &typenum, &weights, &n_q, &n_k)
        || !plain_matrix(V_obj, &typenum, &V, &n_v, &d_v) || n_k != n_v || !fits(n_q, d_v, typenum))
        Py_RETURN_NONE;
    PyObject *result = new_matrix(n_q, d_v, typenum, &out);
    if (result == NULL)
        return NULL;
    return result_or_null(result, output_impl(-1, precision_of(typenum), &single, &out, &weights,
                                              &V, n_q, n_k, d_v));
}

PyDoc_STRVAR(vexp_doc, "vexp(out, x, isa, mode=0)\n--\n\n"
                       "out[:] = exp(x) (mode 0), 2**x (1), the variants for x <= 0 (2, 3), or "
                       "tanh(x) (4), "
                       "with the tier's vectorised exp (private; for the accuracy tests). out "
                       "and x: 1-d contiguous arrays of one float type.");

static PyObject *core_vexp(PyObject *self, PyObject *args)
{
    PyObject *out_obj, *in_obj;
    int isa, mode = SA_VEXP_EXP;
    if (!PyArg_ParseTuple(args, "OOi|i", &out_obj, &in_obj, &isa, &mode))
        return NULL;
    if (mode < SA_VEXP_EXP || mode > SA_VEXP_TANH) {
        PyErr_SetString(PyExc_ValueError, "_core.vexp: mode must be 0, 1, 2, 3 or 4");
        return NULL;
    }
    if (!PyArray_Check(out_obj) || !PyArray_Check(in_obj)) {
        PyErr_SetString(PyExc_TypeError, "_core.vexp: out and x must be ndarrays");
        return NULL;
    }
    PyArrayObject *out = (PyArrayObject *)out_obj, *in = (PyArrayObject *)in_obj;
    int typenum = PyArray_TYPE(out);
    if ((typenum != NPY_FLOAT && typenum != NPY_DOUBLE) || PyArray_TYPE(in) != typenum
        || PyArray_NDIM(out) != 1 || PyArray_NDIM(in) != 1
        || PyArray_DIM(out, 0) != PyArray_DIM(in, 0)
        || !PyArray_IS_C_CONTIGUOUS(out) || !PyArray_IS_C_CONTIGUOUS(in)
        || !PyArray_ISNOTSWAPPED(out) || !PyArray_ISNOTSWAPPED(in) || !PyArray_ISWRITEABLE(out)
        || !PyArray_ISALIGNED(out) || !PyArray_ISALIGNED(in)) {
        PyErr_SetString(PyExc_ValueError, "_core.vexp: out and x must be 1-d contiguous aligned "
                                          "native arrays of one float type and length; out "
                                          "writeable");
        return NULL;
    }
    sa_exec ex;
    if (make_exec(&ex, isa) < 0)
        return NULL;
    sa_vexp_fn fn = sa_kernels_for(ex.isa)->vexp[typenum == NPY_FLOAT ? SA_F32 : SA_F64];
    fn(PyArray_DATA(out), PyArray_DATA(in), PyArray_DIM(in, 0), mode);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(read_memory_doc, "read_memory(words)\n--\n\n"
                              "The OR of a 1-d contiguous uint64 array, read as fast as one core "
                              "can, without the GIL (private; the bench's read-bandwidth probe, "
                              "whose threads each read their own share).");

static PyObject *core_read_memory(PyObject *self, PyObject *words_obj)
{
    if (!PyArray_Check(words_obj) || PyArray_TYPE((PyArrayObject *)words_obj) != NPY_UINT64
        || PyArray_NDIM((PyArrayObject *)words_obj) != 1
        || !PyArray_ISCARRAY_RO((PyArrayObject *)words_obj)) {
        PyErr_SetString(PyExc_ValueError,
                        "_core.read_memory: words must be a 1-d contiguous aligned native uint64 "
                        "ndarray");
        return NULL;
    }
    PyArrayObject *words = (PyArrayObject *)words_obj;
    uint64_t all = 0;
    Py_BEGIN_ALLOW_THREADS
    sa_read_memory(&all, PyArray_DATA(words), PyArray_DIM(words, 0));
    Py_END_ALLOW_THREADS
    return PyLong_FromUnsignedLongLong(all);
}

/* ---- settings ------------------------------------------------------------------------------- */

static PyObject *core_set_num_threads(PyObject *self, PyObject *arg)
{
    int overflow;
    long n = PyLong_AsLongAndOverflow(arg, &overflow);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (overflow || n < 1 || n > 1024) {
        PyErr_Format(PyExc_ValueError, "set_num_threads: n must be between 1 and 1024, got %R",
                     arg);
        return NULL;
    }
    setting_threads = (int)n;
    Py_RETURN_NONE;
}

static PyObject *core_get_num_threads(PyObject *self, PyObject *unused)
{
    return PyLong_FromLong(setting_threads);
}

static PyObject *core_available_cpus(PyObject *self, PyObject *unused)
{
    return PyLong_FromLong(sa_available_cpus());
}

/* The tier named `name` exactly (an embedded NUL is part of the name, so never a match). */
static int isa_from_name(PyObject *name, const char *func)
{
    Py_ssize_t length;
    const char *text = PyUnicode_AsUTF8AndSize(name, &length);
    if (text == NULL)
        return -1;
    for (int isa = 0; isa < SA_ISA_COUNT; isa++)
        if ((size_t)length == strlen(sa_isa_name((sa_isa)isa))
            && memcmp(text, sa_isa_name((sa_isa)isa), (size_t)length) == 0)
            return isa;
    PyErr_Format(PyExc_ValueError, "%s: unknown instruction set %R; expected one of 'avx512', "
                                   "'avx2', 'neon', 'generic', 'reference'", func, name);
    return -1;
}

static PyObject *core_set_isa(PyObject *self, PyObject *name)
{
    int isa = isa_from_name(name, "set_isa");
    if (isa < 0)
        return NULL;
    if (!sa_isa_supported((sa_isa)isa)) {
        PyErr_Format(PyExc_ValueError, "set_isa: this CPU does not support the %s instruction set",
                     sa_isa_name((sa_isa)isa));
        return NULL;
    }
    setting_isa = (sa_isa)isa;
    Py_RETURN_NONE;
}

static PyObject *core_get_isa(PyObject *self, PyObject *unused)
{
    return PyUnicode_FromString(sa_isa_name(setting_isa));
}

static PyObject *core_isa_code(PyObject *self, PyObject *name)
{
    int isa = isa_from_name(name, "isa_code");
    return isa < 0 ? NULL : PyLong_FromLong(isa);
}

static PyObject *core_supported_isas(PyObject *self, PyObject *unused)
{
    PyObject *names = PyList_New(0);
    if (names == NULL)
        return NULL;
    for (int isa = SA_ISA_COUNT - 1; isa >= 0; isa--) {
        if (!sa_isa_supported((sa_isa)isa))
            continue;
        PyObject *name = PyUnicode_FromString(sa_isa_name((sa_isa)isa));
        if (name == NULL || PyList_Append(names, name) < 0) {
            Py_XDECREF(name);
            Py_DECREF(names);
            return NULL;
        }
        Py_DECREF(name);
    }
    return names;
}

static PyObject *core_best_isa(PyObject *self, PyObject *unused)
{
    return PyUnicode_FromString(sa_isa_name(sa_isa_best()));
}

static PyMethodDef core_methods[] = {
    {"scores", core_scores, METH_VARARGS, scores_doc},
    {"softmax", core_softmax, METH_VARARGS, softmax_doc},
    {"matmul", core_matmul, METH_VARARGS, matmul_doc},
    {"output", core_output, METH_VARARGS, output_doc},
    {"project", core_project, METH_VARARGS, project_doc},
    {"attention", core_attention, METH_VARARGS, attention_doc},
    {"attention_backward", core_attention_backward, METH_VARARGS, attention_backward_doc},
    {"plain_scores", core_plain_scores, METH_VARARGS,
     "plain_scores(Q, K, scale, band)\n--\n\nScores of plain 2-D matrices, or None (private)."},
    {"plain_softmax", core_plain_softmax, METH_O,
     "plain_softmax(x)\n--\n\nRow softmax of a plain 2-D matrix, or None (private)."},
    {"plain_output", core_plain_output, METH_VARARGS,
     "plain_output(weights, V)\n--\n\nweights @ V for plain 2-D matrices (a weight of 0 takes "
     "nothing from V), or None (private)."},
    {"plain_sdpa", core_plain_sdpa, METH_VARARGS,
     "plain_sdpa(Q, K, V, scale, band)\n--\n\nUnmasked attention of plain matrices, or None "
     "(private)."},
    {"plain_layer", core_plain_layer, METH_VARARGS,
     "plain_layer(X, W_q, W_k, W_v, scale, band)\n--\n\nUnmasked layer of plain matrices, or "
     "None (private)."},
    {"vexp", core_vexp, METH_VARARGS, vexp_doc},
    {"read_memory", core_read_memory, METH_O, read_memory_doc},
    {"set_num_threads", core_set_num_threads, METH_O, "set_num_threads(n)\n--\n\n"},
    {"get_num_threads", core_get_num_threads, METH_NOARGS, "get_num_threads()\n--\n\n"},
    {"available_cpus", core_available_cpus, METH_NOARGS, "available_cpus()\n--\n\n"},
    {"set_isa", core_set_isa, METH_O, "set_isa(name)\n--\n\n"},
    {"get_isa", core_get_isa, METH_NOARGS, "get_isa()\n--\n\n"},
    {"isa_code", core_isa_code, METH_O, "isa_code(name)\n--\n\n"},
    {"supported_isas", core_supported_isas, METH_NOARGS, "supported_isas()\n--\n\n"},
    {"best_isa", core_best_isa, METH_NOARGS, "best_isa()\n--\n\n"},
    {NULL, NULL, 0, NULL},
};

/* setup.py passes the hash of csrc/ (selfattn/_find_core.py's source_hash) as a bare token;
   selfattn/_find_core.py compares it with a source tree's before it loads an installed build. */
#ifdef SELFATTN_SOURCE_HASH
#define SA_STRING(token) #token
#define SA_EXPANDED_STRING(token) SA_STRING(token)
#define SA_SOURCE_HASH SA_EXPANDED_STRING(SELFATTN_SOURCE_HASH)
#else
#define SA_SOURCE_HASH ""   /* not built by setup.py */
#endif

static int core_exec(PyObject *module)
{
    import_array1(-1);
    if (PyModule_AddStringConstant(module, "source_hash", SA_SOURCE_HASH) < 0)
        return -1;
    setting_threads = sa_available_cpus();
    setting_isa = sa_isa_best();
    return 0;
}

static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, core_exec},
    {0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "selfattn._core",
    .m_doc = "selfattn's C kernels. Private: use the functions of the selfattn package.",
    .m_size = 0,
    .m_methods = core_methods,
    .m_slots = core_slots,
};

PyMODINIT_FUNC PyInit__core(void) { return PyModuleDef_Init(&core_module); }
