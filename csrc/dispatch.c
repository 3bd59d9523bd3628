/*
 * dispatch.c -- which instruction-set tiers this CPU can run, and their kernel tables.
 * Tiers are chosen at run time (never -march=native at build time) so one wheel runs everywhere.
 */
#include "attn.h"
#include "platform.h"

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
        return sa_cpu_has(SA_CPU_AVX2_FMA);
    case SA_ISA_AVX512:
        return sa_cpu_has(SA_CPU_AVX512);
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
    case SA_ISA_GENERIC:
        return &sa_kernels_generic;
#if defined(__x86_64__) || defined(__i386__)
    case SA_ISA_AVX2:
        return &sa_kernels_avx2;
    case SA_ISA_AVX512:
        return &sa_kernels_avx512;
#endif
    default:
        return NULL;
    }
}
