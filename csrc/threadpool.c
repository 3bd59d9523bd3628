/*
 * threadpool.c -- selfattn's own thread pool (no OpenMP: libgomp and libomp clash when torch or
 * another OpenMP user lives in the same process).
 *
 * One job runs at a time. A caller that finds the pool busy (another Python thread is inside a
 * kernel) runs its whole loop on its own thread instead of waiting: every kernel computes the same
 * bits for any thread count, so this changes speed, never results.
 *
 * Tasks are handed out from an atomic counter. Only the calling thread polls for interrupts,
 * because the poll callback takes the GIL and checks signals, which only the main thread can see;
 * it goes on polling while it waits for its helpers' last tasks.
 *
 * Workers live between jobs. Those a job does not need (ids above its helpers, after a call with
 * more threads than now) sleep on their own condition variable, so that the next jobs neither
 * wake them nor wait while they spin. They are stopped only before a fork() while the pool is
 * idle (stop_for_fork): a process that forks with other threads running may deadlock in the
 * child, and Python 3.12+ warns of it (a DeprecationWarning, an error under -W error) when it
 * counts them; the next job starts them again. A child starts over with no workers.
 */
#include "attn.h"
#include "platform.h"

#include <stdint.h>

/* How often the calling thread asks the poll callback whether to stop. */
#define SA_POLL_INTERVAL_NS 2000000L

/* A worker that finished a job, and a caller waiting for its helpers, spin this long before they
   sleep: waking a sleeping thread took longer than a whole 100 us GEMM on a 2-vCPU VM, so the
   helper of a short call, or of the next call in a loop, came too late to take a task. */
#define SA_SPIN_NS 200000L

/* set_num_threads allows 1024 threads: the caller and 1023 workers. */
#define SA_MAX_WORKERS 1023

/* Below this many flops a loop stays on one thread: waking workers costs ~10-50 us. */
#define SA_PARALLEL_MIN_FLOPS 2.0e6

typedef struct {
    sa_task_fn fn;
    void *arg;
    sa_int n_tasks;
    int n_helpers;              /* workers 1..n_helpers may take part */
    atomic_long next_task;
    atomic_int status;          /* first error wins */
    int helpers_in;             /* helpers that joined; guarded by pool.lock */
    int helpers_done;           /* guarded by pool.lock */
    atomic_ulong helpers_busy;  /* joined and not done: what the caller spins on */
} sa_job;

static struct {
    sa_mutex lock;              /* guards everything below */
    sa_cond wake;               /* workers wait here for a new generation */
    sa_cond parked;             /* ... and workers with ids above n_wanted here */
    sa_cond done;               /* the caller waits here for its helpers */
    sa_mutex in_use;            /* held by the thread whose job the pool runs */
    int n_workers;              /* threads started, ids 1..n_workers */
    int stopping;               /* workers return (stop_for_fork) */
    sa_thread threads[SA_MAX_WORKERS];  /* worker id's thread at [id - 1] */
    int n_wanted;               /* the last job's helpers: ids above it are parked */
    unsigned long generation;
    atomic_ulong published;     /* generation, for workers that spin without the lock */
    sa_job *job;
} pool;

/* The pool's locks, set up on first use (and again in a child after fork()). */
static void init_pool(void)
{
    sa_mutex_init(&pool.lock);
    sa_mutex_init(&pool.in_use);
    sa_cond_init(&pool.wake);
    sa_cond_init(&pool.parked);
    sa_cond_init(&pool.done);
    pool.n_workers = 0;
    pool.n_wanted = 0;
    pool.stopping = 0;
    pool.job = NULL;
}

/* What the thread running tasks is working for, so that a long task can ask sa_interrupted(). */
typedef struct {
    sa_job *job;
    const sa_exec *poller;      /* set on the calling thread only: it may run ex->poll */
    long long next_poll;        /* sa_now_ns() */
} sa_task_context;

static SA_THREAD_LOCAL sa_task_context current;

/* Asks the poll callback whether to stop, and records a stop in the job. */
static int ask_poller(sa_job *job, const sa_exec *poller)
{
    if (!poller->poll(poller->poll_arg))
        return 0;
    int expected = SA_OK;
    atomic_compare_exchange_strong(&job->status, &expected, SA_ERR_INTERRUPTED);
    return 1;
}

/* Polls (on the calling thread, at most every SA_POLL_INTERVAL_NS) and records a stop in the job;
   returns nonzero once the job should stop. */
static int check_stop(void)
{
    sa_job *job = current.job;
    if (atomic_load_explicit(&job->status, memory_order_relaxed) != SA_OK)
        return 1;
    if (current.poller == NULL || sa_now_ns() < current.next_poll)
        return 0;
    current.next_poll = sa_now_ns() + SA_POLL_INTERVAL_NS;
    return ask_poller(job, current.poller);
}

int sa_interrupted(void)
{
    return current.job != NULL && check_stop();
}

static void run_tasks(sa_job *job, int worker, const sa_exec *ex_for_polling)
{
    /* a task may run a loop of its own on this thread (the backward's one-thread products) */
    sa_task_context outer = current;
    current.job = job;
    current.poller = ex_for_polling && ex_for_polling->poll ? ex_for_polling : NULL;
    current.next_poll = sa_now_ns() + SA_POLL_INTERVAL_NS;
    for (;;) {
        if (check_stop())
            break;
        sa_int task = atomic_fetch_add(&job->next_task, 1);
        if (task >= job->n_tasks)
            break;
        int rc = job->fn(job->arg, task, worker);
        if (rc != SA_OK) {
            int expected = SA_OK;
            atomic_compare_exchange_strong(&job->status, &expected, rc);
            break;
        }
    }
    current = outer;
}

/* Spins (at most SA_SPIN_NS) while (*word == value) == while_equal. */
static void spin_while(atomic_ulong *word, unsigned long value, int while_equal)
{
    long long give_up = sa_now_ns() + SA_SPIN_NS;
    for (unsigned spins = 1;; spins++) {
        if ((atomic_load_explicit(word, memory_order_acquire) == value) != while_equal)
            return;
        sa_cpu_relax();
        if (spins % 64 == 0 && sa_now_ns() > give_up)
            return;
    }
}

static void worker_main(void *arg)
{
    int id = (int)(intptr_t)arg;
    /* Starting from 0 rather than the current generation: a worker created for a job may only get
       to run after that job's generation was published, and must still take part in it. Between
       jobs pool.job is NULL, so an old generation is never mistaken for work. */
    unsigned long seen = 0;
    sa_mutex_lock(&pool.lock);
    for (;;) {
        if (pool.generation == seen && id <= pool.n_wanted && !pool.stopping) {
            sa_mutex_unlock(&pool.lock);
            spin_while(&pool.published, seen, 1);
            sa_mutex_lock(&pool.lock);
        }
        while (!pool.stopping && (pool.generation == seen || id > pool.n_wanted))
            sa_cond_wait(id > pool.n_wanted ? &pool.parked : &pool.wake, &pool.lock);
        if (pool.stopping)
            break;
        seen = pool.generation;
        sa_job *job = pool.job;
        /* NULL also when the caller already finished every task: a helper that was slow to be
           scheduled (the CPU busy elsewhere) then stays out instead of being waited for */
        if (job == NULL || id > job->n_helpers)
            continue;
        job->helpers_in++;
        atomic_fetch_add(&job->helpers_busy, 1);
        sa_mutex_unlock(&pool.lock);
        run_tasks(job, id, NULL);
        sa_mutex_lock(&pool.lock);
        atomic_fetch_sub(&job->helpers_busy, 1);
        if (++job->helpers_done == job->helpers_in)
            sa_cond_signal(&pool.done);
    }
    sa_mutex_unlock(&pool.lock);
}

/* Starts workers until there are `wanted`; returns how many exist (fewer if creation failed). */
static int ensure_workers(int wanted)
{
    sa_mutex_lock(&pool.lock);
    while (pool.n_workers < wanted && pool.n_workers < SA_MAX_WORKERS) {
        int id = pool.n_workers + 1;
        if (sa_thread_start(&pool.threads[id - 1], worker_main, (void *)(intptr_t)id) != 0)
            break;
        pool.n_workers = id;
    }
    int have = pool.n_workers;
    sa_mutex_unlock(&pool.lock);
    return have;
}

/* Before fork(), in the forking thread: with no job running, the workers return and are joined,
   and in_use stays held through the fork, so that no job starts meanwhile. A job running (in
   another thread, or in this one: a signal handler that forks, run by a long call's poll) keeps
   its workers. */
static int stopped_for_fork;

static void stop_for_fork(void)
{
    stopped_for_fork = sa_mutex_trylock(&pool.in_use);
    if (!stopped_for_fork)
        return;
    sa_mutex_lock(&pool.lock);
    int n_workers = pool.n_workers;
    pool.stopping = 1;
    /* a worker spinning on `published` after the last job leaves its spin now, not after
       SA_SPIN_NS (forks took 1.2-1.7 ms with 4-8 threads on 2 CPUs, 0.5 ms before); it is only
       a hint, which the next job sets again */
    atomic_store_explicit(&pool.published, pool.generation + 1, memory_order_release);
    sa_cond_broadcast(&pool.wake);
    sa_cond_broadcast(&pool.parked);
    sa_mutex_unlock(&pool.lock);
    for (int i = 0; i < n_workers; i++)
        sa_thread_join(&pool.threads[i]);
    sa_mutex_lock(&pool.lock);
    pool.n_workers = 0;
    pool.n_wanted = 0;
    pool.stopping = 0;
    sa_mutex_unlock(&pool.lock);
}

/* After fork(), in the parent: the next job starts the workers it needs. */
static void resume_after_fork(void)
{
    if (stopped_for_fork)
        sa_mutex_unlock(&pool.in_use);
}

/* In a child after fork() the workers are gone (stopped before it, or not copied: only the
   forking thread is) and the locks may be held by threads that no longer exist: start over. */
static void setup_pool(void)
{
    init_pool();
    sa_at_fork(stop_for_fork, resume_after_fork, init_pool);
}

static sa_once_flag pool_once;

int sa_plan_threads(const sa_exec *ex, sa_int n_tasks, double flops)
{
    if (flops < SA_PARALLEL_MIN_FLOPS || n_tasks < 2 || ex->n_threads < 2)
        return 1;
    return n_tasks < ex->n_threads ? (int)n_tasks : ex->n_threads;
}

int sa_parallel_for(const sa_exec *ex, int n_threads, sa_int n_tasks, sa_task_fn fn, void *arg)
{
    sa_job job = {.fn = fn, .arg = arg, .n_tasks = n_tasks, .n_helpers = 0};
    atomic_init(&job.next_task, 0);
    atomic_init(&job.status, SA_OK);
    atomic_init(&job.helpers_busy, 0);
    if (n_tasks <= 0)
        return SA_OK;

    if (n_threads > 1)
        sa_once(&pool_once, setup_pool);
    int use_pool = n_threads > 1 && sa_mutex_trylock(&pool.in_use);
    if (use_pool) {
        int have = ensure_workers(n_threads - 1);
        job.n_helpers = have < n_threads - 1 ? have : n_threads - 1;
        sa_mutex_lock(&pool.lock);
        pool.job = &job;
        pool.generation++;
        atomic_store_explicit(&pool.published, pool.generation, memory_order_release);
        int unpark = job.n_helpers > pool.n_wanted;
        pool.n_wanted = job.n_helpers;
        sa_cond_broadcast(&pool.wake);
        if (unpark)
            sa_cond_broadcast(&pool.parked);
        sa_mutex_unlock(&pool.lock);
    }

    run_tasks(&job, 0, ex);

    if (use_pool) {
        /* Close the job to helpers that have not joined yet, then wait for those that have. */
        sa_mutex_lock(&pool.lock);
        pool.job = NULL;
        if (job.helpers_done < job.helpers_in) {
            sa_mutex_unlock(&pool.lock);
            spin_while(&job.helpers_busy, 0, 0);
            sa_mutex_lock(&pool.lock);
        }
        /* a helper's task may be long: the caller keeps polling, and a stop ends its tasks */
        while (job.helpers_done < job.helpers_in) {
            sa_cond_wait_for(&pool.done, &pool.lock, SA_POLL_INTERVAL_NS);
            if (job.helpers_done < job.helpers_in && ex && ex->poll
                && atomic_load_explicit(&job.status, memory_order_relaxed) == SA_OK) {
                sa_mutex_unlock(&pool.lock);    /* the poll takes the GIL */
                ask_poller(&job, ex);
                sa_mutex_lock(&pool.lock);
            }
        }
        sa_mutex_unlock(&pool.lock);
        sa_mutex_unlock(&pool.in_use);
    }
    return atomic_load(&job.status);
}

typedef struct {
    sa_items_fn fn;
    void *arg;
    sa_int count, per_task;
} sa_items_job;

static int items_task(void *arg, sa_int task, int worker)
{
    const sa_items_job *job = arg;
    (void)worker;
    sa_int first = task * job->per_task;
    sa_int end = first + job->per_task < job->count ? first + job->per_task : job->count;
    return job->fn(job->arg, task, first, end);
}

int sa_parallel_items(const sa_exec *ex, sa_int count, double flops, sa_items_fn fn, void *arg,
                      sa_int *n_tasks)
{
    sa_items_job job = {.fn = fn, .arg = arg, .count = count,
                        .per_task = (count + SA_ITEM_TASKS - 1) / SA_ITEM_TASKS};
    *n_tasks = job.per_task > 0 ? (count + job.per_task - 1) / job.per_task : 0;
    int threads = sa_plan_threads(ex, *n_tasks, flops);
    if (threads == 1) {     /* one task of every item: a small call pays no loop (~0.1 us a scan) */
        *n_tasks = count > 0;
        return count > 0 ? fn(arg, 0, 0, count) : SA_OK;
    }
    return sa_parallel_for(ex, threads, *n_tasks, items_task, &job);
}
