/*
 * dispatch.c -- which instruction-set tiers this CPU can run, and their kernel tables.
 * Tiers are chosen at run time (never -march=native at build time) so one wheel runs everywhere.
 */
#include "attn.h"

static const char *const isa_names[SA_ISA_COUNT] = {"reference", "generic", "avx2", "avx512"};

const char *sa_isa_name(sa_isa isa)
{
    return (unsigned)isa < SA_ISA_COUNT ? isa_names[isa] : "unknown";
}

int sa_isa_supported(sa_isa isa)
{
    switch (isa) {
    case SA_ISA_REFERENCE:
    case SA_ISA_GENERIC:
        return 1;
#if defined(__x86_64__) || defined(__i386__)
    case SA_ISA_AVX2:
        /* libgcc reports AVX/AVX2/FMA only when the OS saves the YMM state (XCR0) */
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case SA_ISA_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")
               && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")
               && sa_isa_supported(SA_ISA_AVX2);
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
    default:
        /* Until the fast tiers land, every tier runs the reference kernels (with the blocked
           backward). */
        return &sa_kernels_interim;
    }
}
