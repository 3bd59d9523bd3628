/*
 * platform.c -- threads, locks, clock, CPU count and CPU features for each OS and compiler
 * (platform.h says what each function promises). The only file in csrc/ with OS headers.
 */
#if defined(__linux__)
#define _GNU_SOURCE                 /* sched_getaffinity, CPU_COUNT */
#endif
#include "platform.h"

#include <fenv.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(_WIN32)
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
#else
#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>
#endif
#if defined(__APPLE__) || defined(__FreeBSD__) || defined(__NetBSD__) || defined(__OpenBSD__)
#include <sys/sysctl.h>
#include <sys/types.h>
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif
/* x86 under MSVC, which has no __builtin_cpu_supports (and no __x86_64__) */
#if !defined(__x86_64__) && !defined(__i386__) && defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
#define SA_X86_MSVC 1
#include <immintrin.h>              /* _xgetbv */
#include <intrin.h>                 /* __cpuidex */
#endif

/* ---- locks and condition variables ---------------------------------------------------------- */

#if defined(_WIN32)
_Static_assert(sizeof(SRWLOCK) <= sizeof(sa_mutex), "sa_mutex too small for SRWLOCK");
_Static_assert(sizeof(CONDITION_VARIABLE) <= sizeof(sa_cond), "sa_cond too small");
#define OS_MUTEX(m) ((SRWLOCK *)(m)->opaque)
#define OS_COND(c) ((CONDITION_VARIABLE *)(c)->opaque)

void sa_mutex_init(sa_mutex *m) { InitializeSRWLock(OS_MUTEX(m)); }
void sa_mutex_lock(sa_mutex *m) { AcquireSRWLockExclusive(OS_MUTEX(m)); }
int sa_mutex_trylock(sa_mutex *m) { return TryAcquireSRWLockExclusive(OS_MUTEX(m)) != 0; }
void sa_mutex_unlock(sa_mutex *m) { ReleaseSRWLockExclusive(OS_MUTEX(m)); }

void sa_cond_init(sa_cond *c) { InitializeConditionVariable(OS_COND(c)); }
void sa_cond_wait(sa_cond *c, sa_mutex *m) { SleepConditionVariableSRW(OS_COND(c), OS_MUTEX(m), INFINITE, 0); }
void sa_cond_wait_for(sa_cond *c, sa_mutex *m, long long ns)
{
    DWORD ms = (DWORD)((ns + 999999) / 1000000);
    SleepConditionVariableSRW(OS_COND(c), OS_MUTEX(m), ms, 0);
}
void sa_cond_signal(sa_cond *c) { WakeConditionVariable(OS_COND(c)); }
void sa_cond_broadcast(sa_cond *c) { WakeAllConditionVariable(OS_COND(c)); }
#else
_Static_assert(sizeof(pthread_mutex_t) <= sizeof(sa_mutex), "sa_mutex too small for pthread_mutex_t");
_Static_assert(sizeof(pthread_cond_t) <= sizeof(sa_cond), "sa_cond too small for pthread_cond_t");
#define OS_MUTEX(m) ((pthread_mutex_t *)(m)->opaque)
#define OS_COND(c) ((pthread_cond_t *)(c)->opaque)

void sa_mutex_init(sa_mutex *m) { pthread_mutex_init(OS_MUTEX(m), NULL); }
void sa_mutex_lock(sa_mutex *m) { pthread_mutex_lock(OS_MUTEX(m)); }
int sa_mutex_trylock(sa_mutex *m) { return pthread_mutex_trylock(OS_MUTEX(m)) == 0; }
void sa_mutex_unlock(sa_mutex *m) { pthread_mutex_unlock(OS_MUTEX(m)); }

/* The timed waits measure on CLOCK_MONOTONIC where the OS lets a condition variable use it
   (not macOS): a step of the wall clock then never stretches one. */
#if defined(__linux__)
#define SA_COND_CLOCK CLOCK_MONOTONIC
void sa_cond_init(sa_cond *c)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(OS_COND(c), &attr);
    pthread_condattr_destroy(&attr);
}
#else
#define SA_COND_CLOCK CLOCK_REALTIME
void sa_cond_init(sa_cond *c) { pthread_cond_init(OS_COND(c), NULL); }
#endif
void sa_cond_wait(sa_cond *c, sa_mutex *m) { pthread_cond_wait(OS_COND(c), OS_MUTEX(m)); }
void sa_cond_wait_for(sa_cond *c, sa_mutex *m, long long ns)
{
    struct timespec deadline;
    clock_gettime(SA_COND_CLOCK, &deadline);
    long long nsec = deadline.tv_nsec + ns;
    deadline.tv_sec += (time_t)(nsec / 1000000000LL);
    deadline.tv_nsec = (long)(nsec % 1000000000LL);
    pthread_cond_timedwait(OS_COND(c), OS_MUTEX(m), &deadline);
}
void sa_cond_signal(sa_cond *c) { pthread_cond_signal(OS_COND(c)); }
void sa_cond_broadcast(sa_cond *c) { pthread_cond_broadcast(OS_COND(c)); }
#endif

static void yield_cpu(void)
{
#if defined(_WIN32)
    SwitchToThread();
#else
    sched_yield();
#endif
}

void sa_once(sa_once_flag *flag, void (*init)(void))
{
    enum { NOT_STARTED = 0, RUNNING = 1, DONE = 2 };
    if (atomic_load_explicit(&flag->state, memory_order_acquire) == DONE)
        return;
    int expected = NOT_STARTED;
    if (atomic_compare_exchange_strong(&flag->state, &expected, RUNNING)) {
        init();
        atomic_store_explicit(&flag->state, DONE, memory_order_release);
        return;
    }
    /* another thread is running init(): it only sets up a few locks, so a short spin */
    while (atomic_load_explicit(&flag->state, memory_order_acquire) != DONE)
        yield_cpu();
}

/* ---- threads, fork, clock ------------------------------------------------------------------- */

typedef struct {
    void (*fn)(void *arg);
    void *arg;
    /* The starting thread's floating-point environment. A new thread does not always inherit it:
       under mingw-w64 the main thread's x87 unit runs at 64-bit precision while a CreateThread
       thread gets Windows' 53-bit default, and the C library's exp() (x87 code there) then gave
       the reference tier other bits with 2 threads than with 1 (seen under wine). */
    fenv_t env;
} thread_start;

#if defined(_WIN32)
static DWORD WINAPI thread_main(LPVOID raw)
#else
static void *thread_main(void *raw)
#endif
{
    thread_start start = *(thread_start *)raw;
    free(raw);
    fesetenv(&start.env);
    start.fn(start.arg);
    return 0;
}

void sa_cpu_relax(void)
{
#if defined(_MSC_VER) && !defined(__clang__)
    YieldProcessor();
#elif defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield");
#endif
}

int sa_thread_start(sa_thread *thread, void (*fn)(void *arg), void *arg)
{
    thread_start *start = malloc(sizeof *start);
    if (start == NULL)
        return -1;
    start->fn = fn;
    start->arg = arg;
    fegetenv(&start->env);
#if defined(_WIN32)
    HANDLE handle = CreateThread(NULL, 0, thread_main, start, 0, NULL);
    if (handle == NULL) {
        free(start);
        return -1;
    }
    _Static_assert(sizeof handle <= sizeof thread->opaque, "sa_thread holds a HANDLE");
    memcpy(thread->opaque, &handle, sizeof handle);
    return 0;
#else
    pthread_t handle;
    if (pthread_create(&handle, NULL, thread_main, start) != 0) {
        free(start);
        return -1;
    }
    _Static_assert(sizeof handle <= sizeof thread->opaque, "sa_thread holds a pthread_t");
    memcpy(thread->opaque, &handle, sizeof handle);
    return 0;
#endif
}

void sa_thread_join(sa_thread *thread)
{
#if defined(_WIN32)
    HANDLE handle;
    memcpy(&handle, thread->opaque, sizeof handle);
    WaitForSingleObject(handle, INFINITE);
    CloseHandle(handle);
#else
    pthread_t handle;
    memcpy(&handle, thread->opaque, sizeof handle);
    pthread_join(handle, NULL);
#endif
}

void sa_at_fork(void (*prepare)(void), void (*parent)(void), void (*child)(void))
{
#if defined(_WIN32)
    (void)prepare;
    (void)parent;
    (void)child;
#else
    pthread_atfork(prepare, parent, child);
#endif
}

long long sa_now_ns(void)
{
#if defined(_WIN32)
    static LARGE_INTEGER frequency;     /* fixed at boot; a racing first call writes the same value */
    LARGE_INTEGER counter;
    if (frequency.QuadPart == 0)
        QueryPerformanceFrequency(&frequency);
    QueryPerformanceCounter(&counter);
    return (long long)((double)counter.QuadPart * (1e9 / (double)frequency.QuadPart));
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
#endif
}

/* ---- CPU count ------------------------------------------------------------------------------ */

int sa_available_cpus(void)
{
    int n = 0;
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        n = CPU_COUNT(&set);
#elif defined(_WIN32)
    DWORD_PTR process_mask, system_mask;
    if (GetProcessAffinityMask(GetCurrentProcess(), &process_mask, &system_mask) && process_mask) {
        for (; process_mask; process_mask &= process_mask - 1)
            n++;
    } else {
        n = (int)GetActiveProcessorCount(ALL_PROCESSOR_GROUPS);
    }
#elif defined(__APPLE__) || defined(__FreeBSD__) || defined(__NetBSD__) || defined(__OpenBSD__)
    int count = 0;
    size_t size = sizeof(count);
    int mib[2] = {CTL_HW, HW_NCPU};
    if (sysctl(mib, 2, &count, &size, NULL, 0) == 0)
        n = count;
#endif
#if !defined(_WIN32)
    if (n <= 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        n = online > 0 && online < 1 << 20 ? (int)online : 1;
    }
#endif
    return n > 0 ? n : 1;
}

/* ---- CPU features --------------------------------------------------------------------------- */

#if defined(SA_X86_MSVC)
/* Read CPUID and XCR0 ourselves. */
static int msvc_x86_has(sa_cpu_feature feature)
{
    int regs[4];
    __cpuidex(regs, 0, 0);
    if (regs[0] < 7)
        return 0;
    __cpuidex(regs, 1, 0);
    int fma = (regs[2] >> 12) & 1, osxsave = (regs[2] >> 27) & 1, avx = (regs[2] >> 28) & 1;
    if (!(osxsave && avx))
        return 0;
    unsigned long long xcr0 = _xgetbv(0);
    if ((xcr0 & 0x6) != 0x6)            /* the OS saves XMM and YMM */
        return 0;
    __cpuidex(regs, 7, 0);
    int avx2 = (regs[1] >> 5) & 1;
    if (feature == SA_CPU_AVX2_FMA)
        return avx2 && fma;
    int f = (regs[1] >> 16) & 1, dq = (regs[1] >> 17) & 1, bw = (regs[1] >> 30) & 1;
    int vl = (regs[1] >> 31) & 1;
    return feature == SA_CPU_AVX512 && avx2 && fma && f && dq && bw && vl
           && (xcr0 & 0xe6) == 0xe6;    /* and opmask, ZMM upper halves, ZMM16-31 */
}
#endif

int sa_cpu_has(sa_cpu_feature feature)
{
#if defined(__x86_64__) || defined(__i386__)
    /* gcc's and clang's libgcc/compiler-rt report AVX features only when XCR0 says the OS saves
       their registers */
    switch (feature) {
    case SA_CPU_AVX2_FMA:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case SA_CPU_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")
               && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")
               && sa_cpu_has(SA_CPU_AVX2_FMA);
    default:
        return 0;
    }
#elif defined(SA_X86_MSVC)
    return msvc_x86_has(feature);
#elif defined(__aarch64__) || defined(_M_ARM64)
    return feature == SA_CPU_NEON;      /* Advanced SIMD is part of the AArch64 base */
#else
    (void)feature;
    return 0;
#endif
}
