/*
 * read_memory.c -- reads an array once, as fast as a core can: the bench's read-bandwidth probe.
 *
 * The bench compares each memory-bound case (decoding: K and V read once) with the rate at which
 * the machine reads memory, measured in the same run by its threads each calling this on its own
 * share of one array larger than any cache. The probe must read at least as fast as the kernels
 * can, or the roofline column flatters them (above 100%): on a Xeon with 2 threads, NumPy's
 * OR-reduction read 26 GB/s and one front-to-back loop left to the hardware prefetcher 16 GB/s,
 * where the decode kernel, two streams (K and V) asked for ahead, read 32 GB/s. One core keeps
 * only so many misses in flight, and the hardware prefetcher follows few streams far enough ahead;
 * four streams, each asked for STREAM_AHEAD bytes ahead, read 31 GB/s there.
 *
 *   out:     [1], the OR of every word (a result, so that no compiler drops the reads)
 *   words:   [n_words] 64-bit words, contiguous
 * Plain C, no SIMD types: the loads are not what limits it. Returns SA_OK.
 */
#include "attn.h"

enum {
    N_STREAMS = 4,
    LINE_WORDS = 8,                  /* one 64-byte cache line */
    STREAM_AHEAD = 8192 / 8,         /* how far ahead each stream asks, in words */
};

static inline void ask_ahead(const uint64_t *at)
{
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(at, 0, 3);
#else
    (void)at;                        /* MSVC: the hardware prefetcher alone */
#endif
}

int sa_read_memory(uint64_t *out, const uint64_t *words, sa_int n_words)
{
    uint64_t acc[LINE_WORDS] = {0};
    /* 1. Four equal streams, a cache line of each per step; near its end a stream asks for
          nothing more (its last lines are already on their way). */
    sa_int stream_lines = n_words / (N_STREAMS * LINE_WORDS);
    sa_int stream_words = stream_lines * LINE_WORDS;
    for (sa_int i = 0; i < stream_words; i += LINE_WORDS) {
        for (int s = 0; s < N_STREAMS; s++) {
            const uint64_t *line = words + s * stream_words + i;
            if (i + STREAM_AHEAD < stream_words)
                ask_ahead(line + STREAM_AHEAD);
            for (int j = 0; j < LINE_WORDS; j++)
                acc[j] |= line[j];
        }
    }
    /* 2. The words left over. */
    for (sa_int i = N_STREAMS * stream_words; i < n_words; i++)
        acc[0] |= words[i];
    uint64_t all = 0;
    for (int j = 0; j < LINE_WORDS; j++)
        all |= acc[j];
    *out = all;
    return SA_OK;
}
