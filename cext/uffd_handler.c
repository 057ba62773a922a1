#define _GNU_SOURCE
#include "uffd_handler.h"
#include "uffd_abi.h"
#include "uffd_core.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define RELAXED __ATOMIC_RELAXED
#define EAGAIN_GIVE_UP_NS (5ULL * 1000 * 1000 * 1000)
#define SCRATCH_MAX (64UL << 20)

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

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = {.tv_sec = ns / 1000000000ULL, .tv_nsec = ns % 1000000000ULL};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static void count_error(struct uh_core *c, int err)
{
    if (err > 0 && err < UH_ERRNO_MAX)
        bump(&c->stats->errors[err], 1);
    else
        bump(&c->stats->errors[0], 1);
}

static uint64_t *bits_new(uint64_t pages)
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

static uint64_t *bits_slice(const uint64_t *bits, uint64_t first, uint64_t count)
{
    uint64_t *out = bits_new(count);
    if (out && bits)
        for (uint64_t i = 0; i < count; i++)
            bit_put(out, i, bit_get(bits, first + i));
    return out;
}

/* ---- stats ------------------------------------------------------------------------- */

struct uh_stats *uh_stats_new(void)
{
    void *mem = mmap(NULL, sizeof(struct uh_stats), PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return NULL;
    struct uh_stats *s = mem;
    s->lat_min_ns = UINT64_MAX;
    return s;
}

void uh_stats_free(struct uh_stats *stats)
{
    if (stats)
        munmap(stats, sizeof(*stats));
}

static void record_latency(struct uh_core *c, uint64_t t_read)
{
    struct uh_stats *s = c->stats;
    uint64_t ns = now_ns() - t_read;
    uint64_t i = __atomic_fetch_add(&s->lat_count, 1, RELAXED);
    store(&s->lat_ring[i % UH_LAT_CAP], ns);
    if (ns < s->lat_min_ns)
        store(&s->lat_min_ns, ns);
    if (ns > s->lat_max_ns)
        store(&s->lat_max_ns, ns);
    bump(&s->lat_sum_ns, ns);
}

static void record_tid(struct uh_core *c, uint32_t tid)
{
    struct uh_stats *s = c->stats;
    uint64_t n = s->ntids;
    for (uint64_t i = 0; i < n; i++) {
        if (s->tids[i].tid == tid) {
            bump(&s->tids[i].faults, 1);
            return;
        }
    }
    if (n == UH_MAX_TIDS) {
        bump(&s->tids_overflow, 1);
        return;
    }
    s->tids[n].tid = tid;
    store(&s->tids[n].faults, 1);
    __atomic_store_n(&s->ntids, n + 1, __ATOMIC_RELEASE);
}

static void log_event(struct uh_core *c, uint32_t event, int ui, uint64_t a, uint64_t b,
                      uint64_t d)
{
    struct uh_stats *s = c->stats;
    uint64_t i = s->evlog_count;
    if (i < UH_EVLOG_CAP) {
        s->evlog[i] = (struct uh_event_rec){event, (uint32_t)ui, a, b, d};
        __atomic_store_n(&s->evlog_count, i + 1, __ATOMIC_RELEASE);
    }
}

static void fail(struct uh_core *c, int err, int op, uint64_t addr, uint64_t len, uint64_t done)
{
    struct uh_stats *s = c->stats;
    bump(&s->policy_failures, 1);
    if (s->failed_errno)
        return;
    store(&s->failed_op, (uint64_t)op);
    store(&s->failed_addr, addr);
    store(&s->failed_len, len);
    store(&s->failed_done, done);
    __atomic_store_n(&s->failed_errno, (int64_t)err, __ATOMIC_RELEASE);
}

void uh_core_last_failure(struct uh_core *c, struct uh_failure *out)
{
    pthread_mutex_lock(&c->lock);
    *out = c->last;
    pthread_mutex_unlock(&c->lock);
}

void uh_core_fail(struct uh_core *c, int err, int op, uint64_t addr, uint64_t len,
                  uint64_t done)
{
    pthread_mutex_lock(&c->lock);
    fail(c, err, op, addr, len, done);
    pthread_mutex_unlock(&c->lock);
}

/* ---- core setup -------------------------------------------------------------------- */

struct uh_core *uh_core_new(struct uh_stats *stats, int wake_fd)
{
    struct uh_core *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    pthread_mutex_init(&c->lock, NULL);
    c->stats = stats;
    c->wake_fd = wake_fd;
    return c;
}

static void served_free(struct uh_served *s)
{
    for (int i = 0; i < s->nranges; i++)
        free(s->ranges[i].present);
    if (s->owned && s->fd >= 0)
        close(s->fd);
    free(s);
}

void uh_core_free(struct uh_core *c)
{
    if (!c)
        return;
    for (int i = 0; i < c->nuffds; i++)
        if (c->uffds[i])
            served_free(c->uffds[i]);
    if (c->scratch)
        munmap(c->scratch, c->scratch_len);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

int uh_core_set_policy(struct uh_core *c, int index, const struct uh_policy *p)
{
    if (index < 0 || index >= UH_MAX_POLICIES)
        return -EINVAL;
    pthread_mutex_lock(&c->lock);
    c->policies[index] = *p;
    if (c->policies[index].readahead == 0)
        c->policies[index].readahead = 1;
    pthread_mutex_unlock(&c->lock);
    return 0;
}

static int add_uffd(struct uh_core *c, int fd, int owned)
{
    if (c->nuffds == UH_MAX_UFFDS)
        return -EMFILE;
    struct uh_served *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->fd = fd;
    s->owned = owned;
    c->uffds[c->nuffds] = s;
    return c->nuffds++;
}

int uh_core_add_uffd(struct uh_core *c, int fd, int owned)
{
    /* poll() on a blocking uffd reports EPOLLERR (fs/userfaultfd.c): the loop needs it
     * non-blocking. O_NONBLOCK is a file status flag, shared with the caller's fd. */
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0)
        return -errno;
    if (!(flags & O_NONBLOCK) && fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return -errno;
    pthread_mutex_lock(&c->lock);
    int rc = add_uffd(c, fd, owned);
    pthread_mutex_unlock(&c->lock);
    return rc;
}

static int add_range(struct uh_served *s, uint64_t start, uint64_t len, uint64_t page_size,
                     uint64_t src_offset, int policy, uint64_t *present)
{
    if (s->nranges == UH_MAX_RANGES) {
        free(present);
        return -ENOSPC;
    }
    if (!present)
        present = bits_new(len / page_size);
    s->ranges[s->nranges] = (struct uh_range){start, len, page_size, src_offset, policy,
                                              present};
    return s->nranges++;
}

int uh_core_add_range(struct uh_core *c, int ui, uint64_t start, uint64_t len,
                      uint64_t page_size, uint64_t src_offset, int policy)
{
    if (page_size == 0 || len == 0 || len % page_size || start % page_size || policy < 0 ||
        policy >= UH_MAX_POLICIES)
        return -EINVAL;
    pthread_mutex_lock(&c->lock);
    int rc = ui < 0 || ui >= c->nuffds
                 ? -EINVAL
                 : add_range(c->uffds[ui], start, len, page_size, src_offset, policy, NULL);
    pthread_mutex_unlock(&c->lock);
    if (rc >= 0 && c->wake_fd >= 0) {
        uint64_t one = 1; /* let a sleeping loop see the new range set */
        (void)!write(c->wake_fd, &one, sizeof(one));
    }
    return rc;
}

int uh_core_nuffds(struct uh_core *c)
{
    return __atomic_load_n(&c->nuffds, RELAXED);
}

int uh_core_fd(struct uh_core *c, int ui)
{
    return ui >= 0 && ui < c->nuffds ? c->uffds[ui]->fd : -EINVAL;
}

int uh_core_nranges(struct uh_core *c, int ui)
{
    pthread_mutex_lock(&c->lock);
    int n = ui >= 0 && ui < c->nuffds ? c->uffds[ui]->nranges : -EINVAL;
    pthread_mutex_unlock(&c->lock);
    return n;
}

int uh_core_range(struct uh_core *c, int ui, int index, uint64_t *start, uint64_t *len,
                  uint64_t *src_offset)
{
    int rc = -EINVAL;
    pthread_mutex_lock(&c->lock);
    if (ui >= 0 && ui < c->nuffds && index >= 0 && index < c->uffds[ui]->nranges) {
        struct uh_range *r = &c->uffds[ui]->ranges[index];
        *start = r->start;
        *len = r->len;
        *src_offset = r->src_offset;
        rc = 0;
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

void uh_core_set_wake_fd(struct uh_core *c, int wake_fd)
{
    pthread_mutex_lock(&c->lock);
    c->wake_fd = wake_fd;
    pthread_mutex_unlock(&c->lock);
}

void uh_core_set_stopping(struct uh_core *c, int stopping)
{
    __atomic_store_n(&c->stopping, stopping, __ATOMIC_RELEASE);
}

static struct uh_range *find_range(struct uh_served *s, uint64_t addr)
{
    for (int i = 0; i < s->nranges; i++) {
        struct uh_range *r = &s->ranges[i];
        if (addr - r->start < r->len)
            return r;
    }
    return NULL;
}

/* ---- reading ----------------------------------------------------------------------- */

static void push_backlog(struct uh_served *s, const struct uh_uffd_msg *m, size_t n,
                         uint64_t t)
{
    for (size_t i = 0; i < n && s->backlog_count < UH_BACKLOG; i++) {
        size_t at = (s->backlog_head + s->backlog_count) % UH_BACKLOG;
        s->backlog[at] = m[i];
        s->backlog_t[at] = t;
        s->backlog_count++;
    }
}

int uh_core_push_backlog(struct uh_core *c, int ui, const struct uh_uffd_msg *msgs,
                         size_t count)
{
    pthread_mutex_lock(&c->lock);
    int rc = -EINVAL;
    if (ui >= 0 && ui < c->nuffds) {
        push_backlog(c->uffds[ui], msgs, count, now_ns());
        rc = 0;
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

static long core_read(struct uh_core *c, int ui, struct uh_uffd_msg *out, size_t max,
                      uint64_t *t_read)
{
    struct uh_served *s = c->uffds[ui];
    if (s->backlog_count) {
        size_t n = 0;
        *t_read = s->backlog_t[s->backlog_head];
        while (n < max && s->backlog_count) {
            out[n++] = s->backlog[s->backlog_head];
            s->backlog_head = (s->backlog_head + 1) % UH_BACKLOG;
            s->backlog_count--;
        }
        return (long)n;
    }
    if (s->fd < 0)
        return -EAGAIN;
    ssize_t got = read(s->fd, out, max * sizeof(*out));
    if (got < 0)
        return -errno;
    *t_read = now_ns();
    long n = got / (long)sizeof(*out);
    bump(&c->stats->batches, 1);
    bump(&c->stats->messages, (uint64_t)n);
    return n;
}

long uh_core_read(struct uh_core *c, int ui, struct uh_uffd_msg *out, size_t max,
                  uint64_t *t_read)
{
    pthread_mutex_lock(&c->lock);
    long n = ui >= 0 && ui < c->nuffds ? core_read(c, ui, out, max, t_read) : -EINVAL;
    pthread_mutex_unlock(&c->lock);
    return n;
}

/* Read whatever is queued into the backlog, without blocking. Reading a pending
 * non-cooperative event is what lets the syscall that raised it finish (it sleeps until
 * the message is read), after which mmap_changing drops and ioctls stop failing EAGAIN. */
static void drain(struct uh_core *c, struct uh_served *s)
{
    struct uh_uffd_msg tmp[64];
    while (s->backlog_count < UH_BACKLOG) {
        size_t room = UH_BACKLOG - s->backlog_count;
        ssize_t got = read(s->fd, tmp, (room < 64 ? room : 64) * sizeof(tmp[0]));
        if (got <= 0)
            return;
        size_t n = (size_t)got / sizeof(tmp[0]);
        bump(&c->stats->batches, 1);
        bump(&c->stats->messages, n);
        push_backlog(s, tmp, n, now_ns());
    }
}

int uh_core_wait(struct uh_core *c, int timeout_ms, uint64_t *ready, int *woken)
{
    struct pollfd pfd[UH_MAX_UFFDS + 1];
    uint64_t backlog = 0;
    pthread_mutex_lock(&c->lock);
    int n = c->nuffds;
    pfd[0] = (struct pollfd){.fd = c->wake_fd, .events = POLLIN};
    for (int i = 0; i < n; i++) {
        pfd[i + 1] = (struct pollfd){.fd = c->uffds[i]->fd, .events = POLLIN};
        if (c->uffds[i]->backlog_count)
            backlog |= 1ULL << i;
    }
    pthread_mutex_unlock(&c->lock);
    int rc;
    do {
        rc = poll(pfd, (nfds_t)n + 1, backlog ? 0 : timeout_ms);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0)
        return -errno;
    *woken = 0;
    if (pfd[0].revents) {
        char buf[64];
        *woken = 1;
        if (pfd[0].revents & POLLIN)
            (void)!read(c->wake_fd, buf, sizeof(buf));
    }
    uint64_t mask = backlog;
    for (int i = 0; i < n; i++)
        if (pfd[i + 1].revents & (POLLIN | POLLERR | POLLHUP))
            mask |= 1ULL << i;
    *ready = mask;
    return __builtin_popcountll(mask);
}

/* ---- resolving --------------------------------------------------------------------- */

/* One ioctl; returns bytes done (>= 0) and sets *err to 0 or errno. The s64 result field
 * carries bytes done, or -errno when nothing was done (UAPI). */
static int64_t one_ioctl(int fd, int op, uint64_t dst, uint64_t src, uint64_t len,
                         uint64_t mode, int *err)
{
    int rc;
    int64_t result = 0;
    switch (op) {
    case UH_OP_COPY: {
        struct uh_uffdio_copy a = {.dst = dst, .src = src, .len = len, .mode = mode};
        rc = ioctl(fd, UH_UFFDIO_COPY, &a);
        result = a.copy;
        break;
    }
    case UH_OP_ZEROPAGE: {
        struct uh_uffdio_zeropage a = {.range = {dst, len}, .mode = mode};
        rc = ioctl(fd, UH_UFFDIO_ZEROPAGE, &a);
        result = a.zeropage;
        break;
    }
    case UH_OP_MOVE: {
        struct uh_uffdio_move a = {.dst = dst, .src = src, .len = len, .mode = mode};
        rc = ioctl(fd, UH_UFFDIO_MOVE, &a);
        result = a.move;
        break;
    }
    case UH_OP_CONTINUE: {
        struct uh_uffdio_continue a = {.range = {dst, len}, .mode = mode};
        rc = ioctl(fd, UH_UFFDIO_CONTINUE, &a);
        result = a.mapped;
        break;
    }
    case UH_OP_UNPROTECT:
    case UH_OP_WRITEPROTECT: {
        struct uh_uffdio_writeprotect a = {
            .range = {dst, len},
            .mode = op == UH_OP_WRITEPROTECT ? (mode | UH_UFFDIO_WRITEPROTECT_MODE_WP) : mode};
        rc = ioctl(fd, UH_UFFDIO_WRITEPROTECT, &a);
        result = rc == 0 ? (int64_t)len : 0;
        break;
    }
    case UH_OP_WAKE: {
        struct uh_uffdio_range a = {dst, len};
        rc = ioctl(fd, UH_UFFDIO_WAKE, &a);
        result = rc == 0 ? (int64_t)len : 0;
        break;
    }
    default:
        *err = EINVAL;
        return 0;
    }
    *err = rc < 0 ? errno : 0;
    return result > 0 ? result : 0;
}

static void wake_page(struct uh_core *c, int fd, uint64_t page, uint64_t page_size)
{
    int err;
    one_ioctl(fd, UH_OP_WAKE, page, 0, page_size, 0, &err);
    if (err)
        count_error(c, err);
    else
        bump(&c->stats->wakes, 1);
}

static void mark_present(struct uh_served *s, uint64_t addr, uint64_t len, int value)
{
    while (len) {
        struct uh_range *r = find_range(s, addr);
        if (!r)
            return;
        uint64_t end = r->start + r->len < addr + len ? r->start + r->len : addr + len;
        for (uint64_t a = addr; a < end; a += r->page_size)
            bit_put(r->present, (a - r->start) / r->page_size, value);
        len -= end - addr;
        addr = end;
    }
}

/* Is addr inside a REMAP or UNMAP event set aside while retrying? Then the fault it belongs
 * to was overtaken: its page no longer exists at that address. */
static int overtaken(struct uh_served *s, uint64_t addr)
{
    for (size_t i = 0; i < s->backlog_count; i++) {
        const struct uh_uffd_msg *m = &s->backlog[(s->backlog_head + i) % UH_BACKLOG];
        if (m->event == UH_UFFD_EVENT_REMAP && addr - m->arg.remap.from < m->arg.remap.len)
            return 1;
        if (m->event == UH_UFFD_EVENT_UNMAP && addr >= m->arg.remove.start &&
            addr < m->arg.remove.end)
            return 1;
    }
    return 0;
}

static int op_uses_src(int op)
{
    return op == UH_OP_COPY || op == UH_OP_MOVE;
}

/* Remember why the last operation failed; the engine decides whether that is fatal. */
static int64_t failed(struct uh_core *c, int err, int op, uint64_t addr, uint64_t len,
                      uint64_t done)
{
    c->last = (struct uh_failure){err, (uint64_t)op, addr, len, done};
    return -err;
}

static int64_t resolve(struct uh_core *c, const struct uh_fault_info *f, int op, uint64_t dst,
                       uint64_t src, uint64_t len, uint64_t mode)
{
    struct uh_served *s = c->uffds[f->uffd];
    struct uh_stats *st = c->stats;
    uint64_t ps = f->page_size ? f->page_size : 4096;
    uint64_t pos = 0, resolved = 0, eagain_since = 0, backoff = 10000;
    int covers = f->page >= dst && f->page < dst + len;
    int fault_done = !covers;
    int counts_pages = op != UH_OP_WAKE && op != UH_OP_WRITEPROTECT;

    if (s->fd < 0)
        return failed(c, EBADF, op, dst, len, 0);
    while (pos < len) {
        int err;
        int64_t done = one_ioctl(s->fd, op, dst + pos, op_uses_src(op) ? src + pos : 0,
                                 len - pos, mode, &err);
        if (done > 0) {
            if (counts_pages) {
                bump(&st->pages_resolved, (uint64_t)done / ps);
                bump(&st->bytes_resolved, (uint64_t)done);
                if (op != UH_OP_UNPROTECT)
                    mark_present(s, dst + pos, (uint64_t)done, 1);
            }
            if (!fault_done && f->page < dst + pos + (uint64_t)done) {
                fault_done = 1;
                record_latency(c, f->t_read_ns);
            }
            pos += (uint64_t)done;
            resolved += (uint64_t)done;
            eagain_since = 0;
        }
        if (!err)
            break;
        uint64_t at = dst + pos;
        if (err == EAGAIN && done > 0) {
            bump(&st->partial_ops, 1);
            continue;
        }
        if (err == EAGAIN) {
            /* mmap_changing: a non-cooperative event is pending (fork, mremap, munmap,
             * MADV_DONTNEED). Read it, then retry; the event is handled in order later. */
            bump(&st->eagain_retries, 1);
            drain(c, s);
            if (!fault_done && overtaken(s, f->page)) {
                bump(&st->overtaken, 1);
                wake_page(c, s->fd, f->page, ps);
                record_latency(c, f->t_read_ns);
                return (int64_t)resolved;
            }
            uint64_t t = now_ns();
            if (!eagain_since) {
                eagain_since = t;
            } else if (t - eagain_since > EAGAIN_GIVE_UP_NS) {
                count_error(c, err);
                return failed(c, err, op, at, len - pos, resolved);
            }
            sleep_ns(backoff);
            backoff = backoff < 1000000 ? backoff * 2 : backoff;
            continue;
        }
        if (err == EEXIST) {
            /* Already populated: for the faulting page another fault or a readahead got
             * there first (the kernel does not wake on EEXIST, so wake it); for the rest
             * of a window it is simply skipped. */
            mark_present(s, at, ps, 1);
            if (!fault_done && at == f->page) {
                bump(&st->eexist_races, 1);
                wake_page(c, s->fd, f->page, ps);
                fault_done = 1;
                record_latency(c, f->t_read_ns);
            } else {
                bump(&st->readahead_skipped, 1);
            }
            pos += ps;
            continue;
        }
        count_error(c, err);
        if (covers && fault_done)
            break; /* rest of a readahead window: give up the window, not the fault */
        if (!fault_done) {
            drain(c, s);
            if (overtaken(s, f->page)) {
                bump(&st->overtaken, 1);
                wake_page(c, s->fd, f->page, ps);
                record_latency(c, f->t_read_ns);
                return (int64_t)resolved;
            }
        }
        return failed(c, err, op, at, len - pos, resolved);
    }
    if (!fault_done)
        record_latency(c, f->t_read_ns);
    return (int64_t)resolved;
}

int64_t uh_core_resolve(struct uh_core *c, const struct uh_fault_info *f, int op, uint64_t dst,
                        uint64_t src, uint64_t len, uint64_t mode)
{
    pthread_mutex_lock(&c->lock);
    int64_t rc = f->uffd >= 0 && f->uffd < c->nuffds ? resolve(c, f, op, dst, src, len, mode)
                                                     : -EINVAL;
    pthread_mutex_unlock(&c->lock);
    return rc;
}

void uh_core_leave(struct uh_core *c, const struct uh_fault_info *f)
{
    (void)f;
    bump(&c->stats->unresolved, 1);
    __atomic_fetch_add(&c->outstanding, 1, RELAXED);
}

static int fault_info(struct uh_core *c, int ui, const struct uh_uffd_msg *m, uint64_t t_read,
                      struct uh_fault_info *f)
{
    struct uh_served *s = c->uffds[ui];
    struct uh_stats *st = c->stats;
    uint64_t flags = m->arg.pagefault.flags;
    int kind = flags & UH_UFFD_PAGEFAULT_FLAG_WP      ? UH_KIND_WP
               : flags & UH_UFFD_PAGEFAULT_FLAG_MINOR ? UH_KIND_MINOR
                                                      : UH_KIND_MISSING;
    int write = (flags & UH_UFFD_PAGEFAULT_FLAG_WRITE) != 0;
    bump(&st->faults[kind][write], 1);
    if (m->arg.pagefault.feat.ptid)
        record_tid(c, m->arg.pagefault.feat.ptid);

    memset(f, 0, sizeof(*f));
    f->address = m->arg.pagefault.address;
    f->flags = flags;
    f->t_read_ns = t_read;
    f->tid = m->arg.pagefault.feat.ptid;
    f->kind = kind;
    f->write = write;
    f->uffd = ui;
    struct uh_range *r = find_range(s, f->address);
    if (!r) {
        /* Nobody serves this address: unregister the page so the thread's retry is an
         * ordinary fault instead of a sleep nobody ends. Hugetlb needs 2 MiB alignment. */
        static const uint64_t sizes[] = {4096, 2UL << 20, 1UL << 30};
        bump(&st->unserved, 1);
        for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
            struct uh_uffdio_range range = {f->address & ~(sizes[i] - 1), sizes[i]};
            if (ioctl(s->fd, UH_UFFDIO_UNREGISTER, &range) == 0) {
                wake_page(c, s->fd, range.start, range.len);
                break;
            }
        }
        f->range = -1;
        f->policy = -1;
        return -1;
    }
    f->page_size = r->page_size;
    f->page = f->address & ~(r->page_size - 1);
    f->range_start = r->start;
    f->range_len = r->len;
    f->offset = r->src_offset + (f->page - r->start);
    f->range = (int32_t)(r - s->ranges);
    f->policy = r->policy;
    return f->range;
}

int uh_core_fault(struct uh_core *c, int ui, const struct uh_uffd_msg *m, uint64_t t_read,
                  struct uh_fault_info *f)
{
    pthread_mutex_lock(&c->lock);
    int rc = ui >= 0 && ui < c->nuffds ? fault_info(c, ui, m, t_read, f) : -1;
    pthread_mutex_unlock(&c->lock);
    return rc;
}

static char *scratch(struct uh_core *c, size_t len)
{
    if (c->scratch_len >= len)
        return c->scratch;
    if (c->scratch)
        munmap(c->scratch, c->scratch_len);
    c->scratch = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (c->scratch == MAP_FAILED) {
        c->scratch = NULL;
        c->scratch_len = 0;
        return NULL;
    }
    c->scratch_len = len;
    return c->scratch;
}

/* pattern repeated from source offset 0, starting at byte `offset` of that stream */
static void fill_pattern_at(char *dst, size_t len, const char *pattern, size_t plen,
                            uint64_t offset)
{
    size_t phase = (size_t)(offset % plen), done = 0;
    while (done < len) {
        size_t n = plen - phase < len - done ? plen - phase : len - done;
        memcpy(dst + done, pattern + phase, n);
        done += n;
        phase = 0;
    }
}

/* Copy-like actions over [page, page+len): source bytes built or addressed, one op. */
static int64_t resolve_run(struct uh_core *c, const struct uh_fault_info *f,
                           const struct uh_policy *p, int act, uint64_t page, uint64_t len)
{
    uint64_t offset = f->offset + (page - f->page);
    switch (act) {
    case UH_ACT_ZEROPAGE:
        return resolve(c, f, UH_OP_ZEROPAGE, page, 0, len, 0);
    case UH_ACT_CONTINUE:
        return resolve(c, f, UH_OP_CONTINUE, page, 0, len, 0);
    case UH_ACT_UNPROTECT:
        return resolve(c, f, UH_OP_UNPROTECT, page, 0, len, 0);
    case UH_ACT_MOVE:
        return resolve(c, f, UH_OP_MOVE, page, p->src + offset, len, 0);
    case UH_ACT_COPY:
        if (offset + len <= p->src_len)
            return resolve(c, f, UH_OP_COPY, page, p->src + offset, len, 0);
        break;
    default:
        break;
    }
    /* Content built in a scratch buffer, in chunks of at most SCRATCH_MAX. */
    int64_t total = 0;
    for (uint64_t done = 0; done < len;) {
        uint64_t chunk = len - done;
        if (chunk > SCRATCH_MAX)
            chunk = SCRATCH_MAX - SCRATCH_MAX % f->page_size;
        char *buf = scratch(c, chunk);
        if (!buf) {
            return failed(c, ENOMEM, UH_OP_COPY, page + done, chunk, 0);
        }
        uint64_t at = offset + done;
        if (act == UH_ACT_FILL) {
            fill_pattern_at(buf, chunk, p->pattern, p->pattern_len, at);
        } else if (act == UH_ACT_INDEXED) {
            uh_fill_indexed(buf, chunk, f->page_size, p->seed, at / f->page_size);
        } else { /* COPY past the end of the source: what remains, then zeros */
            uint64_t have = at < p->src_len ? p->src_len - at : 0;
            if (have > chunk)
                have = chunk;
            memcpy(buf, (const char *)(uintptr_t)(p->src + at), have);
            memset(buf + have, 0, chunk - have);
        }
        int64_t rc = resolve(c, f, UH_OP_COPY, page + done, (uint64_t)(uintptr_t)buf, chunk, 0);
        if (rc < 0)
            return rc;
        total += rc;
        done += chunk;
    }
    return total;
}

/* Sleep delay_us, cut short by the wake fd (stop): the fault is then resolved at once. */
static void delay(struct uh_core *c, uint32_t us)
{
    struct pollfd pfd = {.fd = c->wake_fd, .events = POLLIN};
    struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (long)(us % 1000000) * 1000};
    if (__atomic_load_n(&c->stopping, __ATOMIC_ACQUIRE))
        return;
    if (c->wake_fd < 0) {
        sleep_ns((uint64_t)us * 1000);
        return;
    }
    while (ppoll(&pfd, 1, &ts, NULL) < 0 && errno == EINTR)
        ;
}

static int apply(struct uh_core *c, const struct uh_fault_info *f, int policy)
{
    if (policy < 0 || policy >= UH_MAX_POLICIES)
        return -EINVAL;
    const struct uh_policy *p = &c->policies[policy];
    int act = f->kind == UH_KIND_WP ? p->wp : f->kind == UH_KIND_MINOR ? p->minor : p->missing;
    struct uh_served *s = c->uffds[f->uffd];
    if (act == UH_ACT_NONE) {
        return (int)failed(c, EINVAL, UH_OP_NO_ACTION, f->address, (uint64_t)f->kind, 0);
    }
    if (act == UH_ACT_NEVER) {
        uh_core_leave(c, f);
        return 0;
    }
    if (p->delay_us)
        delay(c, p->delay_us);
    if (act == UH_ACT_UNPROTECT && p->record_wp) {
        uint64_t i = __atomic_fetch_add(&c->stats->wplog_count, 1, RELAXED);
        if (i < UH_WPLOG_CAP)
            store(&c->stats->wplog[i], f->address);
    }
    struct uh_range *r = &s->ranges[f->range];
    uint64_t ps = f->page_size;
    uint64_t first = (f->page - r->start) / ps;
    uint64_t last = first + p->readahead; /* exclusive */
    if (last > r->len / ps)
        last = r->len / ps;
    int skip_known = act != UH_ACT_UNPROTECT;

    /* Runs of pages not known present; the faulting page always starts the first run. */
    uint64_t i = first;
    while (i < last) {
        uint64_t run = i + 1;
        while (run < last && !(skip_known && bit_get(r->present, run)))
            run++;
        int64_t rc = resolve_run(c, f, p, act, r->start + i * ps, (run - i) * ps);
        if (rc < 0)
            return (int)rc;
        /* resolve() may have moved ranges around only through events it did not apply,
         * so r is still valid here. */
        i = run;
        while (i < last && skip_known && bit_get(r->present, i)) {
            bump(&c->stats->readahead_skipped, 1);
            i++;
        }
    }
    return 0;
}

int uh_core_apply(struct uh_core *c, const struct uh_fault_info *f, int policy)
{
    pthread_mutex_lock(&c->lock);
    int rc = f->uffd >= 0 && f->uffd < c->nuffds && f->range >= 0 ? apply(c, f, policy)
                                                                   : -EINVAL;
    pthread_mutex_unlock(&c->lock);
    return rc;
}

/* ---- events ------------------------------------------------------------------------ */

/* Rebuild a range table cutting [start, end) out of every range: the cut piece is
 * dropped (unmap) or moved by delta (remap); source offsets and known pages follow. */
static void carve(struct uh_served *s, uint64_t start, uint64_t end, int move, uint64_t delta)
{
    struct uh_range old[UH_MAX_RANGES];
    int n = s->nranges;
    memcpy(old, s->ranges, sizeof(old[0]) * (size_t)n);
    s->nranges = 0;
    for (int i = 0; i < n; i++) {
        struct uh_range *r = &old[i];
        uint64_t rend = r->start + r->len;
        if (end <= r->start || start >= rend) {
            add_range(s, r->start, r->len, r->page_size, r->src_offset, r->policy, r->present);
            continue;
        }
        uint64_t cs = start > r->start ? start : r->start;
        uint64_t ce = end < rend ? end : rend;
        uint64_t ps = r->page_size;
        if (cs > r->start)
            add_range(s, r->start, cs - r->start, ps, r->src_offset, r->policy,
                      bits_slice(r->present, 0, (cs - r->start) / ps));
        if (move)
            add_range(s, cs + delta, ce - cs, ps, r->src_offset + (cs - r->start), r->policy,
                      bits_slice(r->present, (cs - r->start) / ps, (ce - cs) / ps));
        if (ce < rend)
            add_range(s, ce, rend - ce, ps, r->src_offset + (ce - r->start), r->policy,
                      bits_slice(r->present, (ce - r->start) / ps, (rend - ce) / ps));
        free(r->present);
    }
}

static int adopt_fork(struct uh_core *c, int ui, int child_fd)
{
    int flags = fcntl(child_fd, F_GETFL);
    if (flags >= 0)
        fcntl(child_fd, F_SETFL, flags | O_NONBLOCK);
    fcntl(child_fd, F_SETFD, FD_CLOEXEC);
    int ci = add_uffd(c, child_fd, 1);
    if (ci < 0) {
        /* Cannot serve it: closing releases the child's registrations instead. */
        close(child_fd);
        count_error(c, -ci);
        return ci;
    }
    struct uh_served *parent = c->uffds[ui], *child = c->uffds[ci];
    for (int i = 0; i < parent->nranges; i++) {
        struct uh_range *r = &parent->ranges[i];
        add_range(child, r->start, r->len, r->page_size, r->src_offset, r->policy,
                  bits_slice(r->present, 0, r->len / r->page_size));
    }
    bump(&c->stats->uffds_adopted, 1);
    return ci;
}

static int event(struct uh_core *c, int ui, const struct uh_uffd_msg *m)
{
    struct uh_served *s = c->uffds[ui];
    struct uh_stats *st = c->stats;
    int rc = 0;
    switch (m->event) {
    case UH_UFFD_EVENT_FORK: {
        bump(&st->events[0], 1);
        int child_fd = (int)m->arg.fork.ufd;
        rc = adopt_fork(c, ui, child_fd);
        log_event(c, m->event, ui, (uint64_t)child_fd, (uint64_t)(int64_t)rc, 0);
        break;
    }
    case UH_UFFD_EVENT_REMAP: {
        bump(&st->events[1], 1);
        uint64_t from = m->arg.remap.from, to = m->arg.remap.to, len = m->arg.remap.len;
        carve(s, from, from + len, 1, to - from);
        log_event(c, m->event, ui, from, to, len);
        break;
    }
    case UH_UFFD_EVENT_REMOVE:
        bump(&st->events[2], 1);
        mark_present(s, m->arg.remove.start, m->arg.remove.end - m->arg.remove.start, 0);
        log_event(c, m->event, ui, m->arg.remove.start, m->arg.remove.end, 0);
        break;
    case UH_UFFD_EVENT_UNMAP:
        bump(&st->events[3], 1);
        carve(s, m->arg.remove.start, m->arg.remove.end, 0, 0);
        log_event(c, m->event, ui, m->arg.remove.start, m->arg.remove.end, 0);
        break;
    default:
        bump(&st->events[4], 1);
        log_event(c, m->event, ui, m->arg.reserved.reserved1, m->arg.reserved.reserved2,
                  m->arg.reserved.reserved3);
        break;
    }
    return rc;
}

/* Apply the events set aside while retrying ioctls, keeping only the faults: a stopping
 * engine must not drop a fork event (its child uffd fd would leak) or lose its count. */
static void flush_events(struct uh_core *c)
{
    int n = c->nuffds;
    for (int i = 0; i < n; i++) {
        struct uh_served *s = c->uffds[i];
        size_t count = s->backlog_count, kept = 0;
        for (size_t j = 0; j < count; j++) {
            size_t at = (s->backlog_head + j) % UH_BACKLOG;
            struct uh_uffd_msg m = s->backlog[at];
            if (m.event != UH_UFFD_EVENT_PAGEFAULT) {
                event(c, i, &m);
                continue;
            }
            size_t to = (s->backlog_head + kept++) % UH_BACKLOG;
            s->backlog[to] = m;
            s->backlog_t[to] = s->backlog_t[at];
        }
        s->backlog_count = kept;
    }
}

void uh_core_flush_events(struct uh_core *c)
{
    pthread_mutex_lock(&c->lock);
    flush_events(c);
    pthread_mutex_unlock(&c->lock);
}

int uh_core_event(struct uh_core *c, int ui, const struct uh_uffd_msg *m)
{
    pthread_mutex_lock(&c->lock);
    int rc = ui >= 0 && ui < c->nuffds ? event(c, ui, m) : -EINVAL;
    pthread_mutex_unlock(&c->lock);
    return rc;
}

/* ---- release ----------------------------------------------------------------------- */

int uh_core_left_behind(struct uh_core *c)
{
    int left = __atomic_load_n(&c->outstanding, RELAXED) > 0;
    pthread_mutex_lock(&c->lock);
    for (int i = 0; i < c->nuffds && !left; i++) {
        struct uh_served *s = c->uffds[i];
        struct pollfd pfd = {.fd = s->fd, .events = POLLIN};
        if (s->backlog_count)
            left = 1;
        else if (s->fd >= 0 && poll(&pfd, 1, 0) > 0 && (pfd.revents & POLLIN))
            left = 1;
    }
    pthread_mutex_unlock(&c->lock);
    return left;
}

static int release(struct uh_core *c, int reason)
{
    struct uh_stats *st = c->stats;
    int released = 0;
    flush_events(c);
    for (int i = 0; i < c->nuffds; i++) {
        struct uh_served *s = c->uffds[i];
        if (s->fd < 0)
            continue;
        if (s->owned) {
            /* Closing an adopted child uffd wakes its faults and unregisters its ranges
             * (userfaultfd_release). */
            close(s->fd);
            s->fd = -1;
            bump(&st->closed_uffds, 1);
            continue;
        }
        for (int j = 0; j < s->nranges; j++) {
            struct uh_range *r = &s->ranges[j];
            struct uh_uffdio_range range = {r->start, r->len};
            /* UNREGISTER wakes waiters only for MISSING mode; WAKE covers WP and MINOR. */
            if (ioctl(s->fd, UH_UFFDIO_UNREGISTER, &range) < 0)
                count_error(c, errno);
            wake_page(c, s->fd, r->start, r->len);
            released++;
        }
        s->backlog_count = 0;
    }
    bump(&st->released_ranges, (uint64_t)released);
    if (!st->released)
        store(&st->released, (uint64_t)reason);
    __atomic_store_n(&c->outstanding, 0, RELAXED);
    return released;
}

int uh_core_release(struct uh_core *c, int reason)
{
    pthread_mutex_lock(&c->lock);
    int rc = release(c, reason);
    pthread_mutex_unlock(&c->lock);
    return rc;
}

/* ---- the native engine ------------------------------------------------------------- */

struct uh_native {
    pthread_t thread;
    struct uh_core *core;
    int efd;
    int cpu, busy_poll, batch;
    int stop;
    int result;
    int done;
    int tid;
};

int uh_set_thread_cpu(int cpu)
{
    if (cpu < 0)
        return 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return -pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

/* One batch from uffd ui; caller holds the lock. Returns messages handled or -errno. */
static long native_batch(struct uh_core *c, int ui, struct uh_uffd_msg *msgs, size_t batch)
{
    uint64_t t_read;
    long n = core_read(c, ui, msgs, batch, &t_read);
    if (n == -EAGAIN)
        return 0;
    if (n < 0) {
        fail(c, (int)-n, UH_OP_READ, (uint64_t)ui, 0, 0);
        return n;
    }
    for (long i = 0; i < n; i++) {
        if (msgs[i].event == UH_UFFD_EVENT_PAGEFAULT) {
            struct uh_fault_info f;
            if (fault_info(c, ui, &msgs[i], t_read, &f) < 0)
                continue;
            int rc = apply(c, &f, f.policy);
            if (rc < 0) {
                fail(c, (int)c->last.err, (int)c->last.op, c->last.addr, c->last.len,
                     c->last.done);
                return rc;
            }
        } else {
            event(c, ui, &msgs[i]);
        }
    }
    return n;
}

static void *native_main(void *arg)
{
    struct uh_native *nt = arg;
    struct uh_core *c = nt->core;
    struct uh_uffd_msg *msgs = calloc((size_t)nt->batch, sizeof(*msgs));
    struct pollfd pfd[UH_MAX_UFFDS + 1];
    int rc = msgs ? uh_set_thread_cpu(nt->cpu) : -ENOMEM;
    pthread_setname_np(pthread_self(), "uffd-native");
    __atomic_store_n(&nt->tid, (int)gettid(), __ATOMIC_RELEASE);

    while (rc == 0 && !__atomic_load_n(&nt->stop, __ATOMIC_ACQUIRE)) {
        if (nt->busy_poll) {
            long handled = 0;
            pthread_mutex_lock(&c->lock);
            for (int i = 0; i < c->nuffds && rc == 0; i++) {
                long n = native_batch(c, i, msgs, (size_t)nt->batch);
                if (n < 0)
                    rc = (int)n;
                else
                    handled += n;
            }
            pthread_mutex_unlock(&c->lock);
            if (!handled) {
                uint64_t value; /* keep the (non-blocking) eventfd from filling up */
                (void)!read(nt->efd, &value, sizeof(value));
                sched_yield();
            }
            continue;
        }
        pthread_mutex_lock(&c->lock);
        int n = c->nuffds;
        pfd[0] = (struct pollfd){.fd = nt->efd, .events = POLLIN};
        int backlog = 0;
        for (int i = 0; i < n; i++) {
            pfd[i + 1] = (struct pollfd){.fd = c->uffds[i]->fd, .events = POLLIN};
            backlog |= c->uffds[i]->backlog_count != 0;
        }
        pthread_mutex_unlock(&c->lock);
        int ready = poll(pfd, (nfds_t)n + 1, backlog ? 0 : -1);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            fail(c, errno, UH_OP_POLL, 0, 0, 0);
            break;
        }
        if (pfd[0].revents) {
            uint64_t value;
            (void)!read(nt->efd, &value, sizeof(value));
            continue; /* stop, or a range/uffd was added: rebuild the poll set */
        }
        pthread_mutex_lock(&c->lock);
        for (int i = 0; i < n && rc == 0; i++) {
            if (!(pfd[i + 1].revents & (POLLIN | POLLERR | POLLHUP)) &&
                !c->uffds[i]->backlog_count)
                continue;
            long got = native_batch(c, i, msgs, (size_t)nt->batch);
            if (got < 0)
                rc = (int)got;
        }
        pthread_mutex_unlock(&c->lock);
    }
    if (rc < 0 && rc != -ENOMEM)
        uh_core_release(c, UH_RELEASE_FAILURE);
    else
        uh_core_flush_events(c);
    free(msgs);
    nt->result = rc;
    __atomic_store_n(&nt->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

struct uh_native *uh_native_start(struct uh_core *c, int cpu, int busy_poll, int batch)
{
    struct uh_native *nt = calloc(1, sizeof(*nt));
    if (!nt)
        return NULL;
    nt->core = c;
    nt->cpu = cpu;
    nt->busy_poll = busy_poll;
    nt->batch = batch > 0 ? batch : 64;
    nt->efd = c->wake_fd;
    int flags = nt->efd >= 0 ? fcntl(nt->efd, F_GETFL) : -1;
    if (flags >= 0)
        fcntl(nt->efd, F_SETFL, flags | O_NONBLOCK);
    if (nt->efd < 0 || pthread_create(&nt->thread, NULL, native_main, nt) != 0) {
        free(nt);
        return NULL;
    }
    return nt;
}

int uh_native_stop(struct uh_native *nt)
{
    uint64_t one = 1;
    __atomic_store_n(&nt->stop, 1, __ATOMIC_RELEASE);
    uh_core_set_stopping(nt->core, 1);
    (void)!write(nt->efd, &one, sizeof(one));
    pthread_join(nt->thread, NULL);
    int rc = nt->result;
    free(nt);
    return rc;
}

int uh_native_tid(struct uh_native *nt)
{
    return __atomic_load_n(&nt->tid, __ATOMIC_ACQUIRE);
}

int uh_native_done(struct uh_native *nt)
{
    return __atomic_load_n(&nt->done, __ATOMIC_ACQUIRE);
}

/* ---- fork bridge ------------------------------------------------------------------- */

/* The forking thread holds glibc's malloc and stdio locks until fork() returns, and fork()
 * waits for this thread to read the event: so this thread must not allocate. The stash is
 * allocated up front. */
#define UH_BRIDGE_STASH 4096

struct uh_bridge {
    pthread_t thread;
    int uffd, efd;
    struct uh_uffd_msg *stash;
    size_t count, cap, lost;
    int forks;
    int close_first_fork;
};

static void *bridge_main(void *arg)
{
    struct uh_bridge *b = arg;
    struct uh_uffd_msg buf[64];
    for (;;) {
        struct pollfd pfd[2] = {{.fd = b->efd, .events = POLLIN},
                                {.fd = b->uffd, .events = POLLIN}};
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pfd[0].revents)
            break;
        ssize_t got = read(b->uffd, buf, sizeof(buf));
        if (got <= 0) {
            if (got < 0 && errno != EAGAIN)
                break;
            continue;
        }
        for (size_t i = 0; i < (size_t)got / sizeof(buf[0]); i++) {
            if (buf[i].event == UH_UFFD_EVENT_FORK && b->close_first_fork && !b->forks) {
                /* The helper's own copy of the registered ranges: closing the child uffd
                 * unregisters them in the helper, which never touches them. */
                close((int)buf[i].arg.fork.ufd);
                b->forks++;
                continue;
            }
            if (buf[i].event == UH_UFFD_EVENT_FORK)
                b->forks++;
            if (b->count == b->cap) {
                b->lost++;
                continue;
            }
            b->stash[b->count++] = buf[i];
        }
    }
    return NULL;
}

struct uh_bridge *uh_bridge_start(int uffd, int close_first_fork)
{
    struct uh_bridge *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->uffd = uffd;
    b->close_first_fork = close_first_fork;
    b->cap = UH_BRIDGE_STASH;
    b->stash = calloc(b->cap, sizeof(*b->stash));
    b->efd = eventfd(0, EFD_CLOEXEC);
    if (!b->stash || b->efd < 0 || pthread_create(&b->thread, NULL, bridge_main, b) != 0) {
        if (b->efd >= 0)
            close(b->efd);
        free(b->stash);
        free(b);
        return NULL;
    }
    return b;
}

long uh_bridge_stop(struct uh_bridge *b, struct uh_uffd_msg *out, size_t max, int *forks_seen)
{
    uint64_t one = 1;
    (void)!write(b->efd, &one, sizeof(one));
    pthread_join(b->thread, NULL);
    close(b->efd);
    size_t n = b->count < max ? b->count : max;
    if (n)
        memcpy(out, b->stash, n * sizeof(*out));
    *forks_seen = b->forks;
    long lost = (long)(b->count - n + b->lost);
    free(b->stash);
    free(b);
    return lost ? -ENOSPC : (long)n;
}
