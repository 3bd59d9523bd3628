/*
 * platform.h -- the operating system and the compiler, behind one small interface.
 *
 * Everything in csrc/ that needs threads, locks, a clock, the CPU count or the CPU's instruction
 * sets asks here; platform.c is the only file that includes an OS header (pthreads and
 * sysconf/sysctl on POSIX systems, Win32 on Windows) or uses a compiler's CPU-query builtins.
 *
 * Locks and condition variables are opaque storage sized for the largest OS type they wrap, so
 * that this header includes no OS header; each must be set up with its *_init function before
 * use. Call sa_once() to do that exactly once for a static object.
 */
#ifndef SELFATTN_PLATFORM_H
#define SELFATTN_PLATFORM_H

#include <stdatomic.h>
#include <stddef.h>

#if defined(_MSC_VER) && !defined(__clang__)
#define SA_THREAD_LOCAL __declspec(thread)
#else
#define SA_THREAD_LOCAL _Thread_local
#endif

/* pthread_mutex_t is 40 bytes on Linux x86-64 and 64 on macOS; SRWLOCK is one pointer. */
typedef struct { _Alignas(16) unsigned char opaque[64]; } sa_mutex;
/* pthread_cond_t is 48 bytes on Linux and macOS; CONDITION_VARIABLE is one pointer. */
typedef struct { _Alignas(16) unsigned char opaque[64]; } sa_cond;

void sa_mutex_init(sa_mutex *m);
void sa_mutex_lock(sa_mutex *m);
int sa_mutex_trylock(sa_mutex *m);        /* 1 if it took the lock, 0 if another thread holds it */
void sa_mutex_unlock(sa_mutex *m);

void sa_cond_init(sa_cond *c);
void sa_cond_wait(sa_cond *c, sa_mutex *m);
/* Waits at most about `ns` nanoseconds (or until signalled, or spuriously): the caller re-checks. */
void sa_cond_wait_for(sa_cond *c, sa_mutex *m, long long ns);
void sa_cond_signal(sa_cond *c);
void sa_cond_broadcast(sa_cond *c);

/* Runs init() once, whichever threads call this at the same time; the others wait until it has
   returned. A zero-initialised sa_once_flag (static storage) is ready to use. */
typedef struct { atomic_int state; } sa_once_flag;
void sa_once(sa_once_flag *flag, void (*init)(void));

/* A thread to join: pthread_t (8 bytes on Linux and macOS) or a HANDLE. */
typedef struct { _Alignas(8) unsigned char opaque[16]; } sa_thread;

/* Starts a thread running fn(arg) and fills *thread, for sa_thread_join; 0 on success. */
int sa_thread_start(sa_thread *thread, void (*fn)(void *arg), void *arg);
/* Waits until the thread has returned from fn, and releases it. */
void sa_thread_join(sa_thread *thread);

/* Registers what runs around fork(): prepare in the forking thread before it, parent in it
   after, child in the child (where no other thread exists). A no-op where the OS has no fork
   (Windows). */
void sa_at_fork(void (*prepare)(void), void (*parent)(void), void (*child)(void));

/* Tells the CPU that this thread is spinning on a flag (x86 PAUSE, ARM YIELD; a no-op elsewhere). */
void sa_cpu_relax(void);

/* A monotonic clock, nanoseconds from an arbitrary origin. */
long long sa_now_ns(void);

/* The CPUs this process may run on: its affinity mask where the OS has one (Linux, Windows),
   else the online CPUs (macOS, BSDs); at least 1. */
int sa_available_cpus(void);

/* Instruction-set features that dispatch.c asks for. Each is reported only when the OS also saves
   the registers it needs (the AVX states in XCR0 on x86). */
typedef enum {
    SA_CPU_AVX2_FMA,        /* x86: AVX2 and FMA3 */
    SA_CPU_AVX512,          /* x86: AVX-512 F, DQ, BW and VL */
    SA_CPU_NEON,            /* ARM: Advanced SIMD (always present on aarch64) */
} sa_cpu_feature;
int sa_cpu_has(sa_cpu_feature feature);

#endif
