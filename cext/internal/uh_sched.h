/* Where and when the calling thread runs: CLOCK_MONOTONIC time, sleeping through signals,
 * pinning to one CPU. Private to the C units: build_cffi.py puts only the headers directly
 * in cext/ into the cffi source. */
#ifndef UFFDHARNESS_INTERNAL_SCHED_H
#define UFFDHARNESS_INTERNAL_SCHED_H

#ifndef _GNU_SOURCE
#error "define _GNU_SOURCE before the first #include: cpu_set_t and pthread_setaffinity_np are GNU"
#endif

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <time.h>

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* nanosleep() stores the time left on EINTR: resume with that, not the whole delay. */
static inline void sleep_ns(uint64_t ns)
{
    struct timespec ts = {.tv_sec = ns / 1000000000ULL, .tv_nsec = ns % 1000000000ULL};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* Pin the calling thread to cpu (cpu < 0: leave it as it is). Returns 0 or -errno;
 * pthread_setaffinity_np returns the error number (EINVAL: cpu not online or not allowed
 * by the cpuset) instead of setting errno. */
static inline int pin_self(int cpu)
{
    if (cpu < 0)
        return 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return -pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

#endif
