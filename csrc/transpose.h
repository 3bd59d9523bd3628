/* transpose.h -- the transposed copy of csrc/transpose.c (its comment gives shapes and strides). */
#ifndef SA_TRANSPOSE_H
#define SA_TRANSPOSE_H

#include <stddef.h>

#include "attn.h"

/* out[b] (cols, rows) = in[b] (rows, cols)^T for every item of batch; itemsize 4 or 8 bytes.
   Returns SA_OK or a thread pool status. */
int sa_transpose(const sa_exec *ex, const sa_batch *batch, const sa_mat *out, const sa_mat *in,
                 sa_int rows, sa_int cols, size_t itemsize);

#endif
