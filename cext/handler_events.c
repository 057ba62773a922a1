/* Non-pagefault events (fork, remap, remove, unmap) kept in the range tables, and
 * release: unregister and wake everything served. */
#define _GNU_SOURCE
#include "uffd_handler.h"
#include "internal/handler.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

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
    child->adopted = 1;
    /* child_fd is the number the event log shows: read a duplicate and watch that number,
     * as for the caller's uffd. Without a spare fd it is served through child_fd itself. */
    int rc = own_served(child, getpid(), 1);
    if (rc < 0)
        count_error(c, -rc);
    for (int i = 0; i < parent->nranges; i++) {
        struct uh_range *r = &parent->ranges[i];
        add_range(child, r->start, r->len, r->page_size, r->src_offset, r->policy,
                  bits_slice(r->present, 0, r->len / r->page_size));
    }
    bump(&c->stats->uffds_adopted, 1);
    return ci;
}

int event(struct uh_core *c, int ui, const struct uh_uffd_msg *m)
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
    case UH_UFFD_EVENT_REMOVE: {
        uint64_t start = m->arg.remove.start, end = m->arg.remove.end;
        if (c->remove_unregisters) {
            /* The syscall that raised the event dropped mmap_lock before waiting for it
             * to be read (userfaultfd_remove), so UNREGISTER can take it; a range split
             * meanwhile makes madvise raise REMOVE again for the rest, which is harmless. */
            struct uh_uffdio_range range = {start, end - start};
            if (ioctl(s->fd, UH_UFFDIO_UNREGISTER, &range) < 0)
                count_error(c, errno);
            carve(s, start, end, 0, 0);
        } else {
            mark_present(s, start, end - start, 0);
        }
        bump(&st->events[2], 1);
        log_event(c, m->event, ui, start, end, 0);
        break;
    }
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
        if (!s->adopted) {
            for (int j = 0; j < s->nranges; j++) {
                struct uh_range *r = &s->ranges[j];
                struct uh_uffdio_range range = {r->start, r->len};
                /* UNREGISTER wakes waiters only for MISSING mode; WAKE covers WP, MINOR. */
                if (ioctl(s->fd, UH_UFFDIO_UNREGISTER, &range) < 0)
                    count_error(c, errno);
                wake_page(c, s->fd, r->start, r->len);
                released++;
            }
            s->backlog_count = 0;
        }
        if (s->adopted || s->orphaned) {
            /* The core's reference is the last one it knows of (an adopted child's, or
             * the duplicate of a uffd its owner closed): closing it runs
             * userfaultfd_release, which unregisters every range of that uffd, served or
             * not, and wakes all its faults. */
            close_served(s);
            bump(&st->closed_uffds, 1);
        }
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
