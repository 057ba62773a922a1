/* Threads that read uffds without the GIL: the native engine running the whole fault loop,
 * and the bridge that reads a uffd while this process forks. */
#define _GNU_SOURCE
#include "uffd_handler.h"
#include "internal/handler.h"
#include "internal/uh_sched.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* ---- the native engine ------------------------------------------------------------- */

/* Batches read from one uffd between two waits (see native_main). */
#define UH_DRAIN_BATCHES 64

struct uh_native {
    pthread_t thread;
    struct uh_core *core;
    int efd;
    int cpu, wait, batch; /* wait: UH_WAIT_POLL, _BUSY or _READ */
    int stop;
    int reading; /* in read_loop: stop must interrupt its read() */
    int result;
    int done;
    int tid;
};

/* pin_self for callers outside the C units (it is in handler.cdef). */
int uh_set_thread_cpu(int cpu)
{
    return pin_self(cpu);
}

/* Handle n messages read from uffd ui at t_read; caller holds the lock. Returns n or
 * -errno. */
static long handle_msgs(struct uh_core *c, int ui, struct uh_uffd_msg *msgs, long n,
                        uint64_t t_read)
{
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
    return handle_msgs(c, ui, msgs, n, t_read);
}

static void ignore_signal(int sig)
{
    (void)sig;
}

static void install_read_signal(void)
{
    struct sigaction sa = {.sa_handler = ignore_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(UH_READ_SIGNAL, &sa, NULL);
}

/* uffd-stress's read mode: sleep in a blocking read() of the one served uffd instead of in
 * poll(). Blocking is a file status flag, shared with every duplicate of the uffd: it is
 * cleared for the loop and set again after it (the core's own reads must not block).
 * The close watch does not run meanwhile. Returns 0 when stopped, or -errno. */
static int read_loop(struct uh_native *nt, struct uh_uffd_msg *msgs)
{
    struct uh_core *c = nt->core;
    sigset_t unblock;
    sigemptyset(&unblock);
    sigaddset(&unblock, UH_READ_SIGNAL);
    pthread_sigmask(SIG_UNBLOCK, &unblock, NULL);
    pthread_mutex_lock(&c->lock);
    int fd = c->nuffds == 1 ? c->uffds[0]->fd : -1;
    pthread_mutex_unlock(&c->lock);
    int flags = fd >= 0 ? fcntl(fd, F_GETFL) : -1;
    if (flags < 0)
        return fd < 0 ? -EINVAL : -errno;
    __atomic_add_fetch(&uh_blocking_readers, 1, __ATOMIC_SEQ_CST); /* before the file blocks */
    if (fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0) {
        int err = errno;
        __atomic_sub_fetch(&uh_blocking_readers, 1, __ATOMIC_SEQ_CST);
        return -err;
    }
    int rc = 0;
    while (!__atomic_load_n(&nt->stop, __ATOMIC_SEQ_CST)) {
        ssize_t got = read(fd, msgs, (size_t)nt->batch * sizeof(*msgs));
        if (got < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) { /* another reader of the uffd made it non-blocking */
                struct pollfd pfd = {.fd = fd, .events = POLLIN};
                (void)poll(&pfd, 1, 10);
                continue;
            }
            rc = -errno;
            fail(c, errno, UH_OP_READ, 0, 0, 0);
            break;
        }
        uint64_t t_read = now_ns();
        long n = got / (long)sizeof(*msgs);
        /* Nothing else reads the wake eventfd in this mode: a wake left there (serve()
         * writes one to rebuild poll sets) would cut every Delay short. */
        uint64_t wakes;
        (void)!read(nt->efd, &wakes, sizeof(wakes));
        pthread_mutex_lock(&c->lock);
        bump(&c->stats->batches, 1);
        bump(&c->stats->messages, (uint64_t)n);
        long handled = handle_msgs(c, 0, msgs, n, t_read);
        /* Faults set aside while an ioctl was retried (drain()) are this thread's to
         * resolve: their threads sleep until then, and read() will not return them. */
        while (handled >= 0 && c->uffds[0]->backlog_count)
            handled = native_batch(c, 0, msgs, (size_t)nt->batch);
        pthread_mutex_unlock(&c->lock);
        if (handled < 0) {
            rc = (int)handled;
            break;
        }
    }
    fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    __atomic_sub_fetch(&uh_blocking_readers, 1, __ATOMIC_SEQ_CST); /* after it no longer does */
    return rc;
}

static void *native_main(void *arg)
{
    struct uh_native *nt = arg;
    struct uh_core *c = nt->core;
    struct uh_uffd_msg *msgs = calloc((size_t)nt->batch, sizeof(*msgs));
    int rc = msgs ? pin_self(nt->cpu) : -ENOMEM;
    int closed = 0; /* rc is watch()'s -EBADF: a watched uffd was closed under us */
    pthread_setname_np(pthread_self(), "uffd-native");
    __atomic_store_n(&nt->tid, (int)gettid(), __ATOMIC_RELEASE);

    if (rc == 0 && nt->wait == UH_WAIT_READ) {
        __atomic_store_n(&nt->reading, 1, __ATOMIC_SEQ_CST);
        rc = read_loop(nt, msgs);
        __atomic_store_n(&nt->reading, 0, __ATOMIC_SEQ_CST);
    }
    while (rc == 0 && !__atomic_load_n(&nt->stop, __ATOMIC_ACQUIRE)) {
        if (nt->wait == UH_WAIT_BUSY) {
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
            if (!handled && rc == 0) {
                uint64_t value; /* keep the (non-blocking) eventfd from filling up */
                (void)!read(nt->efd, &value, sizeof(value));
                closed = (rc = watch(c, 0)) < 0;
                sched_yield();
            }
            continue;
        }
        uint64_t ready;
        int woken;
        int n = uh_core_wait(c, -1, &ready, &woken);
        if (n < 0) {
            rc = n;
            closed = n == -EBADF; /* recorded by the check */
            if (!closed)
                fail(c, -n, UH_OP_POLL, 0, 0, 0);
            break;
        }
        if (woken)
            continue; /* stop, or a range/uffd was added: rebuild the poll set */
        pthread_mutex_lock(&c->lock);
        for (int i = 0; ready && rc == 0; i++, ready >>= 1) {
            if (!(ready & 1))
                continue;
            /* Read again before polling: on one CPU the toucher woken by the resolving
             * ioctl runs at once and faults on its next page before this thread runs
             * again, so that message is nearly always queued (read + ioctl per fault
             * instead of poll + read + ioctl). At most UH_DRAIN_BATCHES in a row, and not
             * past stop, so the wait's wake fd and closed-uffd watch are never held off.
             * After a read that found one message the next asks for one: a bigger buffer
             * makes the kernel look for a second message every time (~0.15 us). */
            long got = 0;
            for (int round = 0; round < UH_DRAIN_BATCHES && rc == 0; round++) {
                size_t want = round && got == 1 ? 1 : (size_t)nt->batch;
                got = native_batch(c, i, msgs, want);
                if (got < 0)
                    rc = (int)got;
                if (got <= 0 || __atomic_load_n(&nt->stop, __ATOMIC_ACQUIRE))
                    break;
            }
        }
        pthread_mutex_unlock(&c->lock);
    }
    if (rc == 0) /* a close just before stop() is still this handler's to report */
        closed = (rc = watch(c, 1)) < 0;
    if (closed)
        uh_core_release(c, UH_RELEASE_CLOSED);
    else if (rc < 0 && rc != -ENOMEM)
        uh_core_release(c, UH_RELEASE_FAILURE);
    else
        uh_core_flush_events(c);
    free(msgs);
    nt->result = rc;
    __atomic_store_n(&nt->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

struct uh_native *uh_native_start(struct uh_core *c, int cpu, int wait, int batch)
{
    static pthread_once_t signal_once = PTHREAD_ONCE_INIT;
    if (wait == UH_WAIT_READ)
        pthread_once(&signal_once, install_read_signal);
    struct uh_native *nt = calloc(1, sizeof(*nt));
    if (!nt)
        return NULL;
    nt->core = c;
    nt->cpu = cpu;
    nt->wait = wait;
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
    __atomic_store_n(&nt->stop, 1, __ATOMIC_SEQ_CST);
    uh_core_set_stopping(nt->core, 1);
    (void)!write(nt->efd, &one, sizeof(one));
    if (nt->wait == UH_WAIT_READ) {
        /* The signal may land just before read() is entered: repeat until it returned.
         * (stop and reading are seq_cst: either the loop sees stop, or this sees reading.) */
        while (__atomic_load_n(&nt->reading, __ATOMIC_SEQ_CST)) {
            pthread_kill(nt->thread, UH_READ_SIGNAL);
            sleep_ns(20000);
        }
    }
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
