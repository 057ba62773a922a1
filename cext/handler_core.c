/* The fault-handling core: shared counters, served uffds/ranges/policies, and reading
 * messages (the backlog set aside while retrying ioctls first, then read(2)). */
#define _GNU_SOURCE
#include "uffd_handler.h"
#include "internal/handler.h"
#include "internal/uh_sched.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

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

void record_latency(struct uh_core *c, uint64_t t_read)
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

void record_tid(struct uh_core *c, uint32_t tid)
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

void log_event(struct uh_core *c, uint32_t event, int ui, uint64_t a, uint64_t b,
               uint64_t d)
{
    struct uh_stats *s = c->stats;
    uint64_t i = s->evlog_count;
    if (i < UH_EVLOG_CAP) {
        s->evlog[i] = (struct uh_event_rec){event, (uint32_t)ui, a, b, d};
        __atomic_store_n(&s->evlog_count, i + 1, __ATOMIC_RELEASE);
    }
}

void fail(struct uh_core *c, int err, int op, uint64_t addr, uint64_t len, uint64_t done)
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
    close_served(s);
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

int add_uffd(struct uh_core *c, int fd, int owned)
{
    if (c->nuffds == UH_MAX_UFFDS)
        return -EMFILE;
    struct uh_served *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->fd = fd;
    s->owned = owned;
    s->seen_fd = -1;
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

int add_range(struct uh_served *s, uint64_t start, uint64_t len, uint64_t page_size,
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

void uh_core_set_remove_unregisters(struct uh_core *c, int unregister)
{
    pthread_mutex_lock(&c->lock);
    c->remove_unregisters = unregister;
    pthread_mutex_unlock(&c->lock);
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

/* Native handlers in UH_WAIT_READ clear O_NONBLOCK on their uffd's file description, which
 * every duplicate shares (handler_native.c read_loop); while one runs, a read here must not
 * trust the file's flags. */
int uh_blocking_readers;
static int poll_reads; /* uh_core_poll_reads */

int uh_core_poll_reads(int on)
{
    return __atomic_exchange_n(&poll_reads, on, __ATOMIC_SEQ_CST);
}

/* read(2) of a uffd that fails EAGAIN instead of sleeping, whatever O_NONBLOCK says: the
 * core reads under its lock, and a core that slept there (drain() while retrying an ioctl)
 * would hold back every fault it had set aside until some other fault arrived. */
static ssize_t read_nowait(int fd, void *buf, size_t len)
{
    if (!__atomic_load_n(&uh_blocking_readers, __ATOMIC_ACQUIRE))
        return read(fd, buf, len);
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    ssize_t got;
    if (!__atomic_load_n(&poll_reads, __ATOMIC_RELAXED)) {
        got = preadv2(fd, &iov, 1, -1, RWF_NOWAIT);
        if (got >= 0 || errno != EOPNOTSUPP)
            return got;
    }
    /* A uffd without FMODE_NOWAIT (before 'userfaultfd: convert to ->read_iter()'; Debian's
     * 6.1 refuses RWF_NOWAIT, its 6.12 takes it): poll, then read with a timer signal
     * bounding the read in case another reader takes the message in between. */
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    if (poll(&pfd, 1, 0) <= 0) {
        errno = EAGAIN;
        return -1;
    }
    struct sigevent sev = {.sigev_notify = SIGEV_THREAD_ID, .sigev_signo = UH_READ_SIGNAL};
    sev._sigev_un._tid = gettid(); /* sigev_notify_thread_id, which older glibc lacks */
    timer_t timer;
    if (timer_create(CLOCK_MONOTONIC, &sev, &timer) < 0)
        return -1;
    sigset_t sig, old;
    sigemptyset(&sig);
    sigaddset(&sig, UH_READ_SIGNAL);
    pthread_sigmask(SIG_UNBLOCK, &sig, &old);
    struct itimerspec when = {.it_value = {.tv_nsec = 2000000}};
    timer_settime(timer, 0, &when, NULL);
    got = read(fd, buf, len);
    int err = errno;
    timer_delete(timer);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = got < 0 && err == EINTR ? EAGAIN : err;
    return got;
}

long core_read(struct uh_core *c, int ui, struct uh_uffd_msg *out, size_t max,
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
    ssize_t got = read_nowait(s->fd, out, max * sizeof(*out));
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
void drain(struct uh_core *c, struct uh_served *s)
{
    struct uh_uffd_msg tmp[64];
    while (s->backlog_count < UH_BACKLOG) {
        size_t room = UH_BACKLOG - s->backlog_count;
        ssize_t got = read_nowait(s->fd, tmp, (room < 64 ? room : 64) * sizeof(tmp[0]));
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
    int watched = 0;
    pthread_mutex_lock(&c->lock);
    int n = c->nuffds;
    pfd[0] = (struct pollfd){.fd = c->wake_fd, .events = POLLIN};
    for (int i = 0; i < n; i++) {
        pfd[i + 1] = (struct pollfd){.fd = c->uffds[i]->fd, .events = POLLIN};
        if (c->uffds[i]->backlog_count)
            backlog |= 1ULL << i;
        watched |= c->uffds[i]->ino != 0;
    }
    pthread_mutex_unlock(&c->lock);
    if (backlog)
        timeout_ms = 0;
    else if (watched && (timeout_ms < 0 || timeout_ms > UH_WATCH_MS))
        timeout_ms = UH_WATCH_MS;
    int rc;
    do {
        rc = poll(pfd, (nfds_t)n + 1, timeout_ms);
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
    int invalid = 0;
    for (int i = 0; i < n; i++) {
        if (pfd[i + 1].revents & (POLLIN | POLLERR | POLLHUP))
            mask |= 1ULL << i;
        invalid |= (pfd[i + 1].revents & POLLNVAL) && pfd[i + 1].fd >= 0;
    }
    /* POLLNVAL: one of our own fds is gone, so look now rather than spin until due. */
    if (watched && watch(c, invalid) < 0)
        return -EBADF;
    *ready = mask;
    return __builtin_popcountll(mask);
}
