/* Resolving faults: one UFFDIO_* ioctl at a time with EEXIST/EAGAIN handling and
 * accounting, and the built-in policies (readahead windows, scratch-built content). */
#define _GNU_SOURCE
#include "uffd_handler.h"
#include "uffd_core.h"
#include "internal/handler.h"
#include "internal/uh_sched.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>

#define EAGAIN_GIVE_UP_NS (5ULL * 1000 * 1000 * 1000)
#define SCRATCH_MAX (64UL << 20)

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
    case UH_OP_RWP_UNPROTECT: {
        struct uh_uffdio_rwprotect a = {.range = {dst, len}, .mode = mode};
        rc = ioctl(fd, UH_UFFDIO_RWPROTECT, &a);
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

void wake_page(struct uh_core *c, int fd, uint64_t page, uint64_t page_size)
{
    int err;
    one_ioctl(fd, UH_OP_WAKE, page, 0, page_size, 0, &err);
    if (err)
        count_error(c, err);
    else
        bump(&c->stats->wakes, 1);
}

void mark_present(struct uh_served *s, uint64_t addr, uint64_t len, int value)
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
                if (op != UH_OP_UNPROTECT && op != UH_OP_RWP_UNPROTECT)
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

int fault_info(struct uh_core *c, int ui, const struct uh_uffd_msg *m, uint64_t t_read,
               struct uh_fault_info *f)
{
    struct uh_served *s = c->uffds[ui];
    struct uh_stats *st = c->stats;
    uint64_t flags = m->arg.pagefault.flags;
    int kind = flags & UH_UFFD_PAGEFAULT_FLAG_RWP     ? UH_KIND_RWP
               : flags & UH_UFFD_PAGEFAULT_FLAG_WP    ? UH_KIND_WP
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
    case UH_ACT_RWP_UNPROTECT:
        return resolve(c, f, UH_OP_RWP_UNPROTECT, page, 0, len, 0);
    case UH_ACT_MOVE:
        return resolve(c, f, UH_OP_MOVE, page, p->src + offset, len, 0);
    case UH_ACT_COPY:
        if (offset + len <= p->src_len)
            return resolve(c, f, UH_OP_COPY, page, p->src + offset, len, p->copy_mode);
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
        int64_t rc =
            resolve(c, f, UH_OP_COPY, page + done, (uint64_t)(uintptr_t)buf, chunk, p->copy_mode);
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

int apply(struct uh_core *c, const struct uh_fault_info *f, int policy)
{
    if (policy < 0 || policy >= UH_MAX_POLICIES)
        return -EINVAL;
    const struct uh_policy *p = &c->policies[policy];
    int act = f->kind == UH_KIND_WP      ? p->wp
              : f->kind == UH_KIND_MINOR ? p->minor
              : f->kind == UH_KIND_RWP   ? p->rwp
                                         : p->missing;
    int unprotects = act == UH_ACT_UNPROTECT || act == UH_ACT_RWP_UNPROTECT;
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
    if (unprotects && p->record_wp) {
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
    int skip_known = !unprotects;

    /* Runs of pages not known present; the faulting page always starts the first run. */
    uint64_t i = first;
    while (i < last) {
        uint64_t run = i + 1;
        while (run < last && !(skip_known && bit_get(r->present, run)))
            run++;
        int64_t rc = resolve_run(c, f, p, act, r->start + i * ps, (run - i) * ps);
        if (rc == -ENOENT && p->gone_ok)
            return 0; /* counted in errors[ENOENT] by resolve(); nobody waits there now */
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
