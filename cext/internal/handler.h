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

struct uh_range {
    uint64_t start, len, page_size, src_offset;
    int32_t policy;
    uint64_t *present; /* one bit per page known populated; a hint, never trusted alone */
};

struct uh_served {
    int fd;
    int owned;
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
    int nuffds;
    struct uh_served *uffds[UH_MAX_UFFDS];
    struct uh_policy policies[UH_MAX_POLICIES];
    char *scratch;
    size_t scratch_len;
    uint64_t outstanding; /* faults read and deliberately left unresolved */
    struct uh_failure last;
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

/* ---- handler_resolve.c ------------------------------------------------------------- */

UH_HIDDEN void wake_page(struct uh_core *c, int fd, uint64_t page, uint64_t page_size);
UH_HIDDEN void mark_present(struct uh_served *s, uint64_t addr, uint64_t len, int value);
UH_HIDDEN int fault_info(struct uh_core *c, int ui, const struct uh_uffd_msg *m,
                         uint64_t t_read, struct uh_fault_info *f);
UH_HIDDEN int apply(struct uh_core *c, const struct uh_fault_info *f, int policy);

/* ---- handler_events.c -------------------------------------------------------------- */

UH_HIDDEN int event(struct uh_core *c, int ui, const struct uh_uffd_msg *m);

#endif
