/*
 * philox.h -- Philox4x32-10, the counter-based generator of Salmon et al., "Parallel random
 * numbers: as easy as 1, 2, 3" (SC 2011): four 32-bit words of output from a 128-bit counter and a
 * 64-bit key, with no state, so any (seed, batch item, row, key) gets its random bits directly and
 * the same ones on every thread, tier and call. Plain C11. tests/attn_reference.py has its NumPy
 * twin, checked (tests/test_dropout.py) against the paper's known-answer vectors, and the kernels'
 * dropout patterns are compared with it bit for bit.
 */
#ifndef SELFATTN_PHILOX_H
#define SELFATTN_PHILOX_H

#include <stdint.h>

typedef struct {
    uint32_t v[4];
} sa_philox_words;

/* One round: two 32x32 -> 64-bit products, their halves mixed with the other words and the key. */
static inline sa_philox_words sa_philox_round(sa_philox_words c, uint32_t k0, uint32_t k1)
{
    uint64_t p0 = (uint64_t)0xD2511F53u * c.v[0];
    uint64_t p1 = (uint64_t)0xCD9E8D57u * c.v[2];
    sa_philox_words r = {{(uint32_t)(p1 >> 32) ^ c.v[1] ^ k0, (uint32_t)p1,
                          (uint32_t)(p0 >> 32) ^ c.v[3] ^ k1, (uint32_t)p0}};
    return r;
}

/* Philox4x32-10 of counter c under key (k0, k1): ten rounds, the key bumped by the Weyl
   constants (golden ratio, sqrt(3) - 1) between them. */
static inline sa_philox_words sa_philox4x32_10(sa_philox_words c, uint32_t k0, uint32_t k1)
{
    for (int round = 0; round < 10; round++) {
        c = sa_philox_round(c, k0, k1);
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    return c;
}

#endif
