/*
 * tuning_defaults.h -- the fast tiers' tuning constants: cache blocking, task sizes, the fused
 * backward's panels. Each value was measured on the machines of docs/performance.md and is the same
 * on every tier so far; a tier file that measures a better value for its CPU defines the constant
 * before including this header (beside its tile sizes), and that value wins.
 */
#ifndef SELFATTN_TUNING_DEFAULTS_H
#define SELFATTN_TUNING_DEFAULTS_H

/* GEMM k step: an A sliver and a B panel of this depth stay in L2 */
#ifndef MM_KC
#define MM_KC 256
#endif
/* GEMM tile columns: a packed B panel, MM_KC x MM_NC, is 256 KiB (float) or 256 KiB (double) */
#ifndef MM_NC_F32
#define MM_NC_F32 256
#endif
#ifndef MM_NC_F64
#define MM_NC_F64 128
#endif
/* the fused attention's blocks of FA_QT_FEW micro-tiles of queries rather than FA_QT: where a call
   has fewer than FA_FEW_BLOCKS blocks of FA_QT in all (items x blocks), one key block, or a band
   (attention_fused.inc's FAST(fa_plan)); a tier that sets FA_QT above FA_QT_FEW: isa_avx512.c */
#ifndef FA_QT_FEW_F32
#define FA_QT_FEW_F32 FA_QT_F32
#endif
#ifndef FA_QT_FEW_F64
#define FA_QT_FEW_F64 FA_QT_F64
#endif
#ifndef FA_FEW_BLOCKS
#define FA_FEW_BLOCKS 8
#endif
/* the fused attention's step 4 (Ot += V^T P) in runs of this many keys of a key block; 0: the
   whole block at once (a tier sets it where runs measured faster: isa_avx512.c) */
#ifndef FA_PV_KEYS_F32
#define FA_PV_KEYS_F32 0
#endif
#ifndef FA_PV_KEYS_F64
#define FA_PV_KEYS_F64 0
#endif
/* a GEMM task's work: amortises packing its B panel where a task packs its own (a call of one
   row tile; a broadcast B deeper than the result: matmul_fast.inc's gemm_shares_b_pack), yet
   about a millisecond so that Ctrl-C is polled; at most 512 slivers of MR rows, so that a huge m
   still makes many tasks. A matmul's pack copies B's rows; the scores' pack transposes K (a few cycles an element: with 2e7 it was 4% of
   the scores at n = 4096, d = 64, where 1.6e8 makes one task per column panel, 16 of them) */
#ifndef GEMM_TASK_FLOPS
#define GEMM_TASK_FLOPS 5.0e6
#endif
#ifndef GEMM_SCORES_TASK_FLOPS
#define GEMM_SCORES_TASK_FLOPS 1.6e8
#endif
/* the scores widen their tiles (a small k: see gemm_run) while the call keeps this many column
   tiles: f64 n = 4096, d = 64 ran 57 ms with 128-column tiles, 44 ms with 512 (1 thread) */
#ifndef GEMM_SCORES_MIN_COL_TILES
#define GEMM_SCORES_MIN_COL_TILES 4
#endif
/* a GEMM result of at least this many bytes an item is cut into a row tile per thread at least
   (matmul_fast.inc's gemm_run): the scores' f64 n = 2048, d = 64 (32 MiB) took 0.82-0.92x the
   time, f32 n = 1024 0.94x (Xeon, 2 threads, in one process alternated); below it (n = 512,
   a column panel a thread) the second row tile measured 1.03-1.13x, in a noisy hour */
#ifndef GEMM_ROWS_APART_BYTES
#define GEMM_ROWS_APART_BYTES (4.0 * 1024 * 1024)
#endif
#ifndef GEMM_MAX_SLIVERS
#define GEMM_MAX_SLIVERS 512
#endif
/* a GEMM call is cut into at least this many tasks where it has rows enough for tasks of at least
   GEMM_MIN_SLIVERS slivers (below that the B panel's pack outweighs the product): with 8, 2 or 4
   threads take equal shares of a small product */
#ifndef GEMM_MIN_TASKS
#define GEMM_MIN_TASKS 8
#endif
/* ... and the scores likewise, with this many: they share one K^T pack per call once they have
   several row tiles (gemm_run), so more tiles transpose nothing again; 1 keeps the tiles of
   GEMM_SCORES_TASK_FLOPS */
#ifndef GEMM_SCORES_MIN_TASKS
#define GEMM_SCORES_MIN_TASKS 1
#endif
/* a matmul of at most this many rows reads a narrow B in place instead of packing it
   (matmul_fast.inc's gemm_reads_b_in_place) */
#ifndef GEMM_B_IN_PLACE_MAX_ROWS
#define GEMM_B_IN_PLACE_MAX_ROWS 1024
#endif
/* ... and whose B holds at most this many bytes (k x row stride): one that stays in L2 */
#ifndef GEMM_B_IN_PLACE_MAX_BYTES
#define GEMM_B_IN_PLACE_MAX_BYTES (512.0 * 1024)
#endif
#ifndef GEMM_MIN_SLIVERS
#define GEMM_MIN_SLIVERS 4
#endif
/* the GEMM's micro-kernel asks for B's rows this many k steps ahead (3 KiB at 128 bytes a step):
   the packed B panel comes from L2, and on an Intel Xeon (AVX-512, 2 MiB L2) the loads of B were
   where the micro-kernel waited; 24 steps ahead took 0.92-0.97 of the time of a 1024^3 to
   2048^3 float32 matmul on one thread, 20: 0.89-0.95 but 1.13 once at 1024 x 512 x 512, 16:
   0.96-1.03, 32: 1.01-1.02 (docs/performance.md). The fused kernels gained
   nothing from it (their forward 0.98-1.02, the backward 1.02-1.05) and do not ask. 0: none */
#ifndef GEMM_B_AHEAD
#define GEMM_B_AHEAD 24
#endif
/* a GEMM reads its A operand's rows in place, MR of them at a time; where more than this many of
   them start on one set of a 64-set L1 (a row stride of 4 KiB: 512 doubles, 1024 floats), a task
   copies its sliver's rows to a padded stride first, if A comes from cache (at most
   GEMM_A_COPY_BYTES) or the sliver serves a whole tile of columns (matmul_fast.inc's
   gemm_copies_a). Copied at 6 a set (2 KiB: float32 at n = 512), the output took 1.09x the time */
#ifndef GEMM_A_ROWS_PER_SET
#define GEMM_A_ROWS_PER_SET 6
#endif
#ifndef GEMM_A_COPY_BYTES
#define GEMM_A_COPY_BYTES (4.0 * 1024 * 1024)
#endif
/* a softmax task's elements: amortises the hand-out, short enough to poll */
#ifndef SOFTMAX_TASK_ELEMENTS
#define SOFTMAX_TASK_ELEMENTS 65536
#endif
/* the fused kernel cuts a banded (causal) call of fewer queries than this many blocks into
   one-micro-tile tasks, which compute fewer hidden pairs along the band's edges */
#ifndef FA_SMALL_BAND_BLOCKS
#define FA_SMALL_BAND_BLOCKS 8
#endif
/* the fused kernel runs a whole small problem (at most this many flops: tens of microseconds) as
   one task when the batch has at least FA_ITEM_TASK_MIN_ITEMS of them */
#ifndef FA_ITEM_TASK_FLOPS
#define FA_ITEM_TASK_FLOPS 1.6e7
#endif
#ifndef FA_ITEM_TASK_MIN_ITEMS
#define FA_ITEM_TASK_MIN_ITEMS 8
#endif
/* ... and several such problems as one task when each is tiny, so that a task is at least this
   many flops (a task's hand-out and poll check cost ~50 ns: a twentieth of a 16 x 16 head) */
#ifndef FA_TASK_MIN_FLOPS
#define FA_TASK_MIN_FLOPS 1.0e5
#endif
/* the fused kernel's mask step works on this much of its scores at once (in L1) */
#ifndef FA_MASK_CHUNK_BYTES
#define FA_MASK_CHUNK_BYTES 16384
#endif
/* fused backward query rows per block: each block reads and writes the dK, dV accumulator once,
   so more rows mean less of that traffic (on an Intel Xeon, float: 128 rows took 0.96-0.98 of
   the time of 64 at n = 4096 and 8192, the same at 2048; double: 64 rows took 0.91-0.96 of the
   time of 32 at n = 1024 to 8192, 96 the same as 64). Where a thread's
   panels of scores, 2 x rows x n_k reals, would pass SA_BACKWARD_PANEL_BYTES, the rows are halved
   down to BWF_MIN_ROWS: 16 keep the fused backward up to 65536 keys in float, 32768 in double,
   where at d = 64 its partial sums reach their budget too (with 32, float n = 40000 took the
   blocked backward, 4.2x the time of the fused one with 16 rows; double n = 20000 2.7x) */
#ifndef BWF_ROWS_F32
#define BWF_ROWS_F32 128
#endif
#ifndef BWF_ROWS_F64
#define BWF_ROWS_F64 64
#endif
#ifndef BWF_MIN_ROWS_F32
#define BWF_MIN_ROWS_F32 16
#endif
#ifndef BWF_MIN_ROWS_F64
#define BWF_MIN_ROWS_F64 16
#endif
/* fused backward: keys per step of P, dS and the dQ, dK, dV products, so that their K tile
   (BWF_DQ_KEYS x one micro-tile of columns: 16 KiB in float on AVX-512) stays in L1 while every
   sliver of query rows uses it; any multiple of the micro-tile's columns works (64 and 256
   measured the same as 128). The dQ sum restarts from 0 at each step (FAST(bwf_ukernel_dq)), so
   its bits depend on this value, never on the thread count */
#ifndef BWF_DQ_KEYS
#define BWF_DQ_KEYS 128
#endif
/* fused backward chunks per call: at n = 2048, 4 and 8 cost the same, 16 about 10% more */
#ifndef BWF_TASKS
#define BWF_TASKS 8
#endif
/* fused backward: the chunks are halved (down to 2) while their partial sums of dK, dV pass this
   many bytes; by default SA_BACKWARD_PARTIAL_BYTES, the memory budget, which the chunks meet
   anyway (backward_fused.inc's plan) */
#ifndef BWF_PARTIALS_BYTES
#define BWF_PARTIALS_BYTES SA_BACKWARD_PARTIAL_BYTES
#endif
/* keys per packing task, and per reduction task (whose row buffer stays in L1), of the backward */
#ifndef BWF_PACK_KEYS
#define BWF_PACK_KEYS 256
#endif
#ifndef BWF_RED_KEYS
#define BWF_RED_KEYS 256
#endif

/* decode: vectors of V sums held in registers at once (queries x vectors of d_v), beside the
   vectors of V they are made from: 8 leave room in 16 vector registers (4 queries at a time);
   the AVX-512 tier, with 32, takes 16 (8 queries at a time) */
#ifndef DECODE_SUMS
#define DECODE_SUMS 8
#endif

/* decode: keys per task (a chunk of the KV cache); its scores stay in L1 for up to 16 queries,
   and a task reads 256 KiB of K and V at d = 128 (f32): tens of microseconds, so Ctrl-C is polled */
#ifndef DECODE_CHUNK_KEYS
#define DECODE_CHUNK_KEYS 256
#endif

#endif
