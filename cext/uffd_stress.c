/* uffd-stress's threads (see uffd_stress.h): lockers, background copiers, VMA churn. */
#define _GNU_SOURCE
#include "uffd_stress.h"
#include "uffd_abi.h"
#include "internal/uh_sched.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

/* A page: the mutex, then the counter on its own cache line. */
#define COUNT_OFFSET 64

struct worker {
    struct uh_stress_bounce *b;
    struct stress_threads *all;
    int index;
    uint64_t rng;
    /* what this thread saw, summed into the bounce after the join */
    uint64_t increments, copies, copy_eexist, copy_eagain, wakes, wp_ranges;
    uint64_t churn_ops, churn_errors;
    uint64_t corruptions, corrupt_found, corrupt_expected;
    int64_t corrupt_page;
    int err, err_op;
    uint64_t err_addr;
};

struct stress_threads {
    pthread_t copier[UH_STRESS_MAX_THREADS], locker[UH_STRESS_MAX_THREADS], churn;
    struct worker copiers[UH_STRESS_MAX_THREADS], lockers[UH_STRESS_MAX_THREADS], churner;
    int copiers_started, lockers_started;
    int copiers_left, lockers_left, churn_left; /* not yet joined */
    int copier_joined[UH_STRESS_MAX_THREADS], locker_joined[UH_STRESS_MAX_THREADS];
    int finished; /* lockers and the churn thread stop */
    int aborted;  /* copiers stop too */
    int src_released;
    uint64_t churn_lost;
    uint32_t churn_lost_mask;
};

uint64_t uh_monotonic_ns(void)
{
    return now_ns();
}

static pthread_mutex_t *page_mutex(char *area, size_t page_size, size_t nr)
{
    return (pthread_mutex_t *)(area + nr * page_size);
}

static volatile uint64_t *page_count(char *area, size_t page_size, size_t nr)
{
    return (volatile uint64_t *)(area + nr * page_size + COUNT_OFFSET);
}

void uh_stress_init(char *area, size_t npages, size_t page_size, uint64_t *count_verify)
{
    for (size_t nr = 0; nr < npages; nr++) {
        pthread_mutex_init(page_mutex(area, page_size, nr), NULL);
        *page_count(area, page_size, nr) = 1;
        count_verify[nr] = 1;
    }
}

int64_t uh_stress_verify(const char *area, size_t npages, size_t page_size,
                         const uint64_t *count_verify, uint64_t *found)
{
    for (size_t nr = 0; nr < npages; nr++) {
        uint64_t count = *page_count((char *)area, page_size, nr);
        if (count != count_verify[nr]) {
            *found = count;
            return (int64_t)nr;
        }
    }
    return -1;
}

static uint64_t next_random(uint64_t *state)
{
    uint64_t x = *state; /* xorshift64 */
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *state = x;
}

static void record_error(struct worker *w, int err, int op, uint64_t addr)
{
    if (!w->err) {
        w->err = err;
        w->err_op = op;
        w->err_addr = addr;
    }
}

static int stopping(struct worker *w, int copier)
{
    return __atomic_load_n(copier ? &w->all->aborted : &w->all->finished, __ATOMIC_ACQUIRE);
}

/* ---- lockers ------------------------------------------------------------------------ */

static void *locker_main(void *arg)
{
    struct worker *w = arg;
    struct uh_stress_bounce *b = w->b;
    size_t per_thread = b->npages / (size_t)b->lockers;
    size_t nr = b->racing ? 0 : (size_t)w->index * per_thread;
    do { /* at least once: copiers may be done before a locker first runs */
        nr = b->random ? (size_t)(next_random(&w->rng) % b->npages) : (nr + 1) % b->npages;
        pthread_mutex_t *mutex = page_mutex(b->dst, b->page_size, nr);
        pthread_mutex_lock(mutex); /* faults the page in: missing, or WP on a protected one */
        uint64_t count = *page_count(b->dst, b->page_size, nr);
        uint64_t expected = __atomic_load_n(&b->count_verify[nr], __ATOMIC_RELAXED);
        if (count != expected) {
            if (!w->corruptions++) {
                w->corrupt_page = (int64_t)nr;
                w->corrupt_found = count;
                w->corrupt_expected = expected;
            }
        }
        count++;
        *page_count(b->dst, b->page_size, nr) = count;
        __atomic_store_n(&b->count_verify[nr], count, __ATOMIC_RELAXED);
        pthread_mutex_unlock(mutex);
        w->increments++;
    } while (!stopping(w, 0));
    return NULL;
}

/* ---- background copiers ------------------------------------------------------------- */

static int copy_page(struct worker *w, size_t nr)
{
    struct uh_stress_bounce *b = w->b;
    uint64_t offset = (uint64_t)nr * b->page_size;
    for (;;) {
        struct uh_uffdio_copy copy = {
            .dst = (uint64_t)(uintptr_t)(b->dst + offset),
            .src = (uint64_t)(uintptr_t)(b->src + offset),
            .len = b->page_size,
            .mode = b->copy_mode_wp ? UH_UFFDIO_COPY_MODE_WP : 0,
        };
        if (ioctl(b->uffd, UH_UFFDIO_COPY, &copy) == 0) {
            w->copies++;
            return 0;
        }
        int err = errno;
        if (err == EAGAIN) { /* mmap_changing: a non-cooperative event is pending */
            w->copy_eagain++;
            if (stopping(w, 1))
                return 0;
            continue;
        }
        if (err != EEXIST) {
            record_error(w, err, UH_STRESS_OP_COPY, copy.dst);
            return -err;
        }
        /* A locker faulted it first and a handler resolved it: wake whoever may still
         * sleep on the page (uffd-stress does the same). */
        w->copy_eexist++;
        struct uh_uffdio_range range = {.start = copy.dst, .len = b->page_size};
        if (ioctl(b->uffd, UH_UFFDIO_WAKE, &range) < 0) {
            record_error(w, errno, UH_STRESS_OP_WAKE, copy.dst);
            return -errno;
        }
        w->wakes++;
        return 0;
    }
}

static void *copier_main(void *arg)
{
    struct worker *w = arg;
    struct uh_stress_bounce *b = w->b;
    size_t per_thread = b->npages / (size_t)b->copiers;
    size_t start = (size_t)w->index * per_thread;
    size_t end = w->index == b->copiers - 1 ? b->npages : start + per_thread;
    size_t middle = start + (end - start) / 2;
    for (size_t nr = start; nr < middle && !stopping(w, 1); nr++)
        if (copy_page(w, nr) < 0)
            return NULL;
    if (b->copy_mode_wp && end > start) {
        /* Half the slice is mapped: protect all of it, so the lockers' writes raise WP
         * faults on pages COPY installed and on those the second half brings. */
        struct uh_uffdio_writeprotect wp = {
            .range = {.start = (uint64_t)(uintptr_t)(b->dst + start * b->page_size),
                      .len = (end - start) * b->page_size},
            .mode = UH_UFFDIO_WRITEPROTECT_MODE_WP,
        };
        if (ioctl(b->uffd, UH_UFFDIO_WRITEPROTECT, &wp) < 0) {
            record_error(w, errno, UH_STRESS_OP_WRITEPROTECT, wp.range.start);
            return NULL;
        }
        w->wp_ranges++;
    }
    for (size_t nr = middle; nr < end && !stopping(w, 1); nr++)
        if (copy_page(w, nr) < 0)
            return NULL;
    return NULL;
}

/* ---- VMA churn next door ------------------------------------------------------------ */

static void *map_fixed(void *addr, size_t len, int prot, int replace)
{
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | (replace ? MAP_FIXED : MAP_FIXED_NOREPLACE);
    return mmap(addr, len, prot, flags, -1, 0);
}

/* One churn step on slot i. Returns 0, -1 for an errno counted as a churn error, or -2
 * when the slot can no longer be used (a foreign mapping may have taken a hole). */
static int churn_step(struct uh_stress_bounce *b, int i, int action)
{
    char *addr = b->churn[i];
    size_t len = b->churn_len, half = len / 2, quarter = len / 4;
    switch (action) {
    case 0: /* populate (a few pages: the VMA operations are the point), then zap */
        for (size_t off = 0; off < len && off < 16 * 4096; off += 4096)
            addr[off] = 1;
        return madvise(addr, len, MADV_DONTNEED) < 0 ? -1 : 0;
    case 1: /* shrink, then grow back in place */
        if (mremap(addr, len, half, 0) == MAP_FAILED)
            return -1;
        if (mremap(addr, half, len, 0) != MAP_FAILED)
            return 0;
        return map_fixed(addr + half, half, PROT_READ | PROT_WRITE, 0) == MAP_FAILED ? -2 : -1;
    case 2: /* move into the parking slot and back */
        if (mremap(addr, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, b->parking[i]) == MAP_FAILED)
            return -1;
        if (map_fixed(addr, len, PROT_NONE, 0) == MAP_FAILED)
            return -2;
        if (mremap(b->parking[i], len, len, MREMAP_MAYMOVE | MREMAP_FIXED, addr) == MAP_FAILED)
            return -2;
        return map_fixed(b->parking[i], len, PROT_NONE, 0) == MAP_FAILED ? -2 : 0;
    case 3: /* punch a hole in the middle and fill it */
        if (munmap(addr + quarter, half) < 0)
            return -1;
        return map_fixed(addr + quarter, half, PROT_READ | PROT_WRITE, 0) == MAP_FAILED ? -2 : 0;
    default: /* split by mprotect, merge back */
        if (mprotect(addr + quarter, half, PROT_READ) < 0)
            return -1;
        return mprotect(addr + quarter, half, PROT_READ | PROT_WRITE) < 0 ? -1 : 0;
    }
}

static void *churn_main(void *arg)
{
    struct worker *w = arg;
    struct uh_stress_bounce *b = w->b;
    int lost[UH_STRESS_MAX_CHURN] = {0};
    int alive = b->nchurn;
    while (alive && !stopping(w, 0)) {
        int i = (int)(next_random(&w->rng) % (uint64_t)b->nchurn);
        if (lost[i])
            continue;
        int rc = churn_step(b, i, (int)(next_random(&w->rng) % 5));
        if (rc == 0) {
            w->churn_ops++;
        } else {
            w->churn_errors++;
            if (rc == -2) {
                lost[i] = 1;
                alive--;
                __atomic_add_fetch(&w->all->churn_lost, 1, __ATOMIC_RELAXED);
                __atomic_or_fetch(&w->all->churn_lost_mask, 1U << i, __ATOMIC_RELAXED);
            }
        }
    }
    return NULL;
}

/* ---- start, wait, abort ------------------------------------------------------------- */

void uh_stress_abort(struct uh_stress_bounce *b)
{
    struct stress_threads *t = b->threads;
    if (!t)
        return;
    __atomic_store_n(&t->aborted, 1, __ATOMIC_RELEASE);
    __atomic_store_n(&t->finished, 1, __ATOMIC_RELEASE);
}

static void setup_worker(struct worker *w, struct uh_stress_bounce *b, struct stress_threads *t,
                         int index, uint64_t salt)
{
    memset(w, 0, sizeof(*w));
    w->b = b;
    w->all = t;
    w->index = index;
    w->rng = (b->seed + 1) * 0x9E3779B97F4A7C15ULL + salt * 0xBF58476D1CE4E5B9ULL + 1;
    w->corrupt_page = -1;
}

int uh_stress_start(struct uh_stress_bounce *b)
{
    if (b->lockers < 1 || b->copiers < 1 || b->lockers > UH_STRESS_MAX_THREADS ||
        b->copiers > UH_STRESS_MAX_THREADS || b->nchurn < 0 || b->nchurn > UH_STRESS_MAX_CHURN ||
        !b->npages || b->page_size < COUNT_OFFSET + sizeof(uint64_t))
        return -EINVAL;
    struct stress_threads *t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    b->threads = t;
    b->corrupt_page = -1;
    int rc = 0;
    for (int i = 0; i < b->lockers && !rc; i++) {
        setup_worker(&t->lockers[i], b, t, i, 100 + (uint64_t)i);
        rc = pthread_create(&t->locker[i], NULL, locker_main, &t->lockers[i]);
        t->lockers_started = t->lockers_left += !rc;
    }
    for (int i = 0; i < b->copiers && !rc; i++) {
        setup_worker(&t->copiers[i], b, t, i, 200 + (uint64_t)i);
        rc = pthread_create(&t->copier[i], NULL, copier_main, &t->copiers[i]);
        t->copiers_started = t->copiers_left += !rc;
    }
    if (b->nchurn && !rc) {
        setup_worker(&t->churner, b, t, 0, 300);
        rc = pthread_create(&t->churn, NULL, churn_main, &t->churner);
        t->churn_left = !rc;
    }
    if (rc) { /* stop what did start; the caller's handlers serve its faults meanwhile */
        record_error(&t->churner, rc, UH_STRESS_OP_THREAD, 0);
        uh_stress_abort(b);
    }
    return 0;
}

static int join_by(pthread_t thread, uint64_t deadline_ns)
{
    struct timespec ts = {.tv_sec = (time_t)(deadline_ns / 1000000000ULL),
                          .tv_nsec = (long)(deadline_ns % 1000000000ULL)};
    return pthread_clockjoin_np(thread, NULL, CLOCK_MONOTONIC, &ts) == 0;
}

static void sum_into(struct uh_stress_bounce *b, const struct worker *w)
{
    b->increments += w->increments;
    b->copies += w->copies;
    b->copy_eexist += w->copy_eexist;
    b->copy_eagain += w->copy_eagain;
    b->wakes += w->wakes;
    b->wp_ranges += w->wp_ranges;
    b->churn_ops += w->churn_ops;
    b->churn_errors += w->churn_errors;
    if (w->corruptions && !b->corruptions) {
        b->corrupt_page = w->corrupt_page;
        b->corrupt_found = w->corrupt_found;
        b->corrupt_expected = w->corrupt_expected;
    }
    b->corruptions += w->corruptions;
    if (w->err && !b->err) {
        b->err = w->err;
        b->err_op = w->err_op;
        b->err_addr = w->err_addr;
    }
}

int uh_stress_wait(struct uh_stress_bounce *b, uint64_t deadline_ns)
{
    struct stress_threads *t = b->threads;
    if (!t)
        return 0;
    for (int i = 0; i < t->copiers_started && t->copiers_left; i++) {
        if (t->copier_joined[i])
            continue;
        if (!join_by(t->copier[i], deadline_ns))
            return t->copiers_left + t->lockers_left + t->churn_left;
        t->copier_joined[i] = 1;
        t->copiers_left--;
    }
    if (!t->src_released) {
        /* Every page went over: drop the source now, as uffd-stress does, so a handler
         * still resolving a stale fault copies zeros and must get EEXIST. */
        t->src_released = 1;
        size_t len = b->npages * b->page_size;
        if ((b->release_advice >= 0 && madvise(b->src, len, b->release_advice) < 0) ||
            (b->release_fd >= 0 &&
             fallocate(b->release_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
                       (off_t)len) < 0))
            record_error(&t->churner, errno, UH_STRESS_OP_RELEASE, (uintptr_t)b->src);
        __atomic_store_n(&t->finished, 1, __ATOMIC_RELEASE);
    }
    for (int i = 0; i < t->lockers_started && t->lockers_left; i++) {
        if (t->locker_joined[i])
            continue;
        if (!join_by(t->locker[i], deadline_ns))
            return t->lockers_left + t->churn_left;
        t->locker_joined[i] = 1;
        t->lockers_left--;
    }
    if (t->churn_left) {
        if (!join_by(t->churn, deadline_ns))
            return 1;
        t->churn_left = 0;
    }
    for (int i = 0; i < t->copiers_started; i++)
        sum_into(b, &t->copiers[i]);
    for (int i = 0; i < t->lockers_started; i++)
        sum_into(b, &t->lockers[i]);
    sum_into(b, &t->churner);
    b->churn_lost = t->churn_lost;
    b->churn_lost_mask = t->churn_lost_mask;
    free(t);
    b->threads = NULL;
    return 0;
}
