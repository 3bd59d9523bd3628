/*
 * transpose.c -- out[b] = in[b]^T: the transposed copies the gradients' products read (X^T for
 * X^T dP, W^T for dP W^T), the matmul kernel taking row-contiguous operands only. Per batch item
 *     in[b]  (rows, cols), row stride in->ld elements, elements contiguous within a row,
 *     out[b] (cols, rows), row stride out->ld elements,
 * batch strides in elements (0 where in is broadcast); itemsize 4 (float32) or 8 (float64): a
 * copy, so the bits never depend on the type, the tier or the thread count.
 *
 * Why blocked: a plain copy of in^T reads one cache line per element of a column; a tile of
 * SA_TRANSPOSE_TILE x SA_TRANSPOSE_TILE elements keeps its input and output lines in L1 while
 * it is copied (at n = 1024, d = 512 NumPy's strided copy is ~10x slower than the tiles).
 * Threads: one task per (batch item, band of SA_TRANSPOSE_BAND output rows), each writing only
 * its own rows.
 */
#include <string.h>

#include "transpose.h"

#define SA_TRANSPOSE_TILE 16
#define SA_TRANSPOSE_BAND 64
/* the work of one element in the threads' units (flops of the products): a strided copy of an
   element takes about as long as 16 flops of the matmul kernel */
#define SA_TRANSPOSE_ELEMENT_FLOPS 16.0

typedef struct {
    const sa_batch *batch;
    const sa_mat *out, *in;
    sa_int rows, cols, bands;
    size_t itemsize;
} transpose_args;

/* out rows c0 .. c1-1 (in's columns) of one item, tile by tile; `size` is a constant at each
   call, so each memcpy is one load and one store */
static inline void transpose_rows(char *out, sa_int ld_out, const char *in, sa_int ld_in,
                                  sa_int rows, sa_int c0, sa_int c1, size_t size)
{
    for (sa_int r0 = 0; r0 < rows; r0 += SA_TRANSPOSE_TILE) {
        sa_int r1 = r0 + SA_TRANSPOSE_TILE < rows ? r0 + SA_TRANSPOSE_TILE : rows;
        for (sa_int t0 = c0; t0 < c1; t0 += SA_TRANSPOSE_TILE) {
            sa_int t1 = t0 + SA_TRANSPOSE_TILE < c1 ? t0 + SA_TRANSPOSE_TILE : c1;
            for (sa_int c = t0; c < t1; c++)
                for (sa_int r = r0; r < r1; r++)
                    memcpy(out + (size_t)(c * ld_out + r) * size,
                           in + (size_t)(r * ld_in + c) * size, size);
        }
    }
}

static int transpose_task(void *arg, sa_int task, int worker)
{
    (void)worker;
    const transpose_args *a = arg;
    sa_int item = task / a->bands, band = task % a->bands;
    sa_int c0 = band * SA_TRANSPOSE_BAND;
    sa_int c1 = c0 + SA_TRANSPOSE_BAND < a->cols ? c0 + SA_TRANSPOSE_BAND : a->cols;
    sa_int out_at = sa_batch_offset(a->batch, a->out->bstride, item);
    sa_int in_at = sa_batch_offset(a->batch, a->in->bstride, item);
    char *out = (char *)a->out->data + (size_t)out_at * a->itemsize;
    const char *in = (const char *)a->in->data + (size_t)in_at * a->itemsize;
    if (a->itemsize == 4)
        transpose_rows(out, a->out->ld, in, a->in->ld, a->rows, c0, c1, 4);
    else
        transpose_rows(out, a->out->ld, in, a->in->ld, a->rows, c0, c1, 8);
    return SA_OK;
}

int sa_transpose(const sa_exec *ex, const sa_batch *batch, const sa_mat *out, const sa_mat *in,
                 sa_int rows, sa_int cols, size_t itemsize)
{
    if (batch->count == 0 || rows == 0 || cols == 0)
        return SA_OK;
    transpose_args a = {.batch = batch, .out = out, .in = in, .rows = rows, .cols = cols,
                        .bands = (cols + SA_TRANSPOSE_BAND - 1) / SA_TRANSPOSE_BAND,
                        .itemsize = itemsize};
    sa_int n_tasks = batch->count * a.bands;
    double work = SA_TRANSPOSE_ELEMENT_FLOPS * (double)batch->count * (double)rows * (double)cols;
    return sa_parallel_for(ex, sa_plan_threads(ex, n_tasks, work), n_tasks, transpose_task, &a);
}
