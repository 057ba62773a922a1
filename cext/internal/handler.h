/*
 * What the handler_*.c units share and nothing outside them sees (build_cffi.py puts only
 * the headers directly in cext/ into the cffi source): the core's own structures, the
 * small inline helpers, and the functions one unit calls in another. Those never take the
 * core's lock; the uh_core_* entry points in uffd_handler.h do.
 *
 *   handler_core.c     stats, setup of uffds/ranges/policies, reading messages
 *   handler_resolve.c  resolving ioctls with EEXIST/EAGAIN handling, built-in policies
 *   handler_events.c   non-pagefault events (fork, remap, remove, unmap) and release
 *   handler_native.c   the native engine thread and the fork bridge
 *   handler_watch.c    the private duplicate of each uffd, and noticing its owner's close
 */
#ifndef UFFDHARNESS_INTERNAL_HANDLER_H
#define UFFDHARNESS_INTERNAL_HANDLER_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "../uffd_abi.h"
#include "../uffd_handler.h"

#define RELAXED __ATOMIC_RELAXED

/* Shared between the units but not exported from the extension module. */
#define UH_HIDDEN __attribute__((visibility("hidden")))

/* How often a waiting engine checks that the owners' uffd numbers are still open. */
#define UH_WATCH_MS 50

struct uh_range {
    uint64_t start, len, page_size, src_offset;
    int32_t policy;
    uint64_t *present; /* one bit per page known populated; a hint, never trusted alone */
};

struct uh_served {
    int fd;         /* what the core reads: its private duplicate once owned */
    int owned;      /* the core closes fd (its duplicate, or an adopted child's) */
    int adopted;    /* a fork child's uffd: released by closing it */
    int seen_fd;    /* the number the uffd's owner sees, watched for a close; -1: none */
    int seen_pid;   /* the process whose fd table holds seen_fd */
    int seen_owned; /* seen_fd is the core's too (an adopted child's number) */
    int orphaned;   /* seen_fd was closed: release closes fd so the kernel releases it */
    uint64_t dev, ino; /* identity of fd when the core took it (0: never owned) */
    int nranges;
    struct uh_range ranges[UH_MAX_RANGES];
    size_t backlog_head, backlog_count;
    struct uh_uffd_msg backlog[UH_BACKLOG];
    uint64_t backlog_t[UH_BACKLOG];
};

struct uh_core {
    pthread_mutex_t lock;
    struct uh_stats *stats;
    int wake_fd;
    int stopping;
    int remove_unregisters; /* UFFD_EVENT_REMOVE: unregister the range, stop serving it */
    int nuffds;
    struct uh_served *uffds[UH_MAX_UFFDS];
    struct uh_policy policies[UH_MAX_POLICIES];
    char *scratch;
    size_t scratch_len;
    uint64_t outstanding; /* faults read and deliberately left unresolved */
    struct uh_failure last;
    uint64_t verify_at; /* now_ns() of the next watch() check */
};

/* ---- small helpers ----------------------------------------------------------------- */

static inline void bump(uint64_t *counter, uint64_t n)
{
    __atomic_fetch_add(counter, n, RELAXED);
}

static inline void store(uint64_t *field, uint64_t value)
{
    __atomic_store_n(field, value, RELAXED);
}

static inline void count_error(struct uh_core *c, int err)
{
    if (err > 0 && err < UH_ERRNO_MAX)
        bump(&c->stats->errors[err], 1);
    else
        bump(&c->stats->errors[0], 1);
}

static inline uint64_t *bits_new(uint64_t pages)
{
    return calloc((pages + 63) / 64 ? (pages + 63) / 64 : 1, sizeof(uint64_t));
}

static inline int bit_get(const uint64_t *bits, uint64_t i)
{
    return bits && (bits[i / 64] >> (i % 64)) & 1;
}

static inline void bit_put(uint64_t *bits, uint64_t i, int value)
{
    if (!bits)
        return;
    if (value)
        bits[i / 64] |= 1ULL << (i % 64);
    else
        bits[i / 64] &= ~(1ULL << (i % 64));
}

static inline uint64_t *bits_slice(const uint64_t *bits, uint64_t first, uint64_t count)
{
    uint64_t *out = bits_new(count);
    if (out && bits)
        for (uint64_t i = 0; i < count; i++)
            bit_put(out, i, bit_get(bits, first + i));
    return out;
}

static inline struct uh_range *find_range(struct uh_served *s, uint64_t addr)
{
    for (int i = 0; i < s->nranges; i++) {
        struct uh_range *r = &s->ranges[i];
        if (addr - r->start < r->len)
            return r;
    }
    return NULL;
}

/* ---- handler_core.c ---------------------------------------------------------------- */

UH_HIDDEN void record_latency(struct uh_core *c, uint64_t t_read);
UH_HIDDEN void record_tid(struct uh_core *c, uint32_t tid);
UH_HIDDEN void log_event(struct uh_core *c, uint32_t event, int ui, uint64_t a, uint64_t b,
                         uint64_t d);
/* Record an engine failure in the shared stats; the first one wins. */
UH_HIDDEN void fail(struct uh_core *c, int err, int op, uint64_t addr, uint64_t len,
                    uint64_t done);
UH_HIDDEN int add_uffd(struct uh_core *c, int fd, int owned);
/* Takes ownership of present (NULL: a new, empty bitmap). */
UH_HIDDEN int add_range(struct uh_served *s, uint64_t start, uint64_t len, uint64_t page_size,
                        uint64_t src_offset, int policy, uint64_t *present);
UH_HIDDEN long core_read(struct uh_core *c, int ui, struct uh_uffd_msg *out, size_t max,
                         uint64_t *t_read);
UH_HIDDEN void drain(struct uh_core *c, struct uh_served *s);
/* UH_WAIT_READ stops a blocking read() with this signal (its handler has no SA_RESTART, so
 * userfaultfd_ctx_read returns EINTR); read_nowait bounds a read with it. */
#define UH_READ_SIGNAL (SIGRTMIN + 3)
/* Native handlers in UH_WAIT_READ now running (their uffd's file may be blocking). */
UH_HIDDEN extern int uh_blocking_readers;

/* ---- handler_resolve.c ------------------------------------------------------------- */

UH_HIDDEN void wake_page(struct uh_core *c, int fd, uint64_t page, uint64_t page_size);
UH_HIDDEN void mark_present(struct uh_served *s, uint64_t addr, uint64_t len, int value);
UH_HIDDEN int fault_info(struct uh_core *c, int ui, const struct uh_uffd_msg *m,
                         uint64_t t_read, struct uh_fault_info *f);
UH_HIDDEN int apply(struct uh_core *c, const struct uh_fault_info *f, int policy);

/* ---- handler_events.c -------------------------------------------------------------- */

UH_HIDDEN int event(struct uh_core *c, int ui, const struct uh_uffd_msg *m);

/* ---- handler_watch.c --------------------------------------------------------------- */

/* Read s through a private F_DUPFD_CLOEXEC duplicate from now on and watch the number it
 * had, in process pid (seen_owned: that number is the core's to close too). 0 or -errno. */
UH_HIDDEN int own_served(struct uh_served *s, int pid, int seen_owned);
/* Close what the core owns of s (its seen number only while it still holds the uffd). */
UH_HIDDEN void close_served(struct uh_served *s);
/* Check the watched uffds when due (every UH_WATCH_MS) or when forced; takes the lock.
 * 0, or -EBADF with the close recorded as the engine's failure. */
UH_HIDDEN int watch(struct uh_core *c, int force);

#endif
