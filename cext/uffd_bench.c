#define _GNU_SOURCE
#include "uffd_bench.h"
#include "uffd_abi.h"
#include "uffd_core.h"
#include "internal/uh_sched.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

struct toucher {
    char *base;
    size_t npages, page_size;
    int write, cpu;
    int64_t elapsed;
};

static void *toucher_main(void *arg)
{
    struct toucher *t = arg;
    int rc = pin_self(t->cpu);
    if (rc < 0) {
        t->elapsed = rc;
        return NULL;
    }
    uint64_t start = now_ns();
    uh_touch(t->base, t->npages, t->page_size, t->write);
    t->elapsed = (int64_t)(now_ns() - start);
    return NULL;
}

int64_t uh_bench_touch(char *base, size_t npages, size_t page_size, int write, int cpu)
{
    struct toucher t = {base, npages, page_size, write, cpu, 0};
    pthread_t thread;
    int rc = pthread_create(&thread, NULL, toucher_main, &t);
    if (rc)
        return -rc;
    pthread_join(thread, NULL);
    return t.elapsed;
}

struct c_loop {
    int uffd, resolve, cpu;
    char *base;
    size_t page_size;
    const char *src;
    uint64_t faults;
    int err;
    int ready;
};

/* One fault resolved as l->resolve says; 0 or -errno. */
static int c_loop_resolve(struct c_loop *l, uint64_t address)
{
    uint64_t page = address & ~(uint64_t)(l->page_size - 1);
    int rc;
    if (l->resolve == UH_BENCH_WP) {
        struct uh_uffdio_writeprotect a = {.range = {page, l->page_size}, .mode = 0};
        rc = ioctl(l->uffd, UH_UFFDIO_WRITEPROTECT, &a);
    } else if (l->resolve == UH_BENCH_RWP) {
        struct uh_uffdio_rwprotect a = {.range = {page, l->page_size}, .mode = 0};
        rc = ioctl(l->uffd, UH_UFFDIO_RWPROTECT, &a);
    } else {
        struct uh_uffdio_copy a = {
            .dst = page,
            .src = (uint64_t)(uintptr_t)(l->src + (page - (uint64_t)(uintptr_t)l->base)),
            .len = l->page_size};
        rc = ioctl(l->uffd, UH_UFFDIO_COPY, &a);
        if (rc < 0 && errno == EEXIST) {
            struct uh_uffdio_range r = {page, l->page_size};
            rc = ioctl(l->uffd, UH_UFFDIO_WAKE, &r);
        }
    }
    return rc < 0 ? -errno : 0;
}

/* Read first, poll only when nothing is queued: on one CPU the toucher woken by the
 * resolving ioctl runs at once and faults on its next page before this thread runs again,
 * so the next message is nearly always there (read + ioctl per fault, no poll). One
 * message per read: there is one toucher, and a bigger buffer makes the kernel look for a
 * second message every time. The uffd is the only fd polled: uh_bench_c_loop ends this
 * thread with pthread_cancel (poll and read are cancellation points; nothing here holds a
 * resource), so no eventfd joins every poll. */
static void *c_loop_main(void *arg)
{
    struct c_loop *l = arg;
    l->err = pin_self(l->cpu);
    __atomic_store_n(&l->ready, 1, __ATOMIC_RELEASE);
    int wait = 0;
    while (!l->err) {
        struct pollfd pfd = {.fd = l->uffd, .events = POLLIN};
        if (wait && poll(&pfd, 1, -1) < 0) {
            if (errno != EINTR)
                l->err = -errno;
            continue;
        }
        struct uh_uffd_msg msg;
        ssize_t got = read(l->uffd, &msg, sizeof(msg));
        wait = got < 0;
        if (got < 0) {
            if (errno != EAGAIN)
                l->err = -errno;
            continue;
        }
        if (msg.event != UH_UFFD_EVENT_PAGEFAULT)
            continue;
        l->err = c_loop_resolve(l, msg.arg.pagefault.address);
        if (!l->err)
            l->faults++;
    }
    return NULL;
}

int64_t uh_bench_c_loop(int uffd, char *base, size_t npages, size_t page_size,
                        const char *src, int resolve, int toucher_cpu, int handler_cpu,
                        uint64_t *faults)
{
    struct c_loop l = {.uffd = uffd, .resolve = resolve, .cpu = handler_cpu, .base = base,
                       .page_size = page_size, .src = src};
    pthread_t handler;
    int rc = pthread_create(&handler, NULL, c_loop_main, &l);
    if (rc)
        return -rc;
    /* The handler is pinned and about to read before the toucher's clock starts: its
     * creation and first migration are not the loop's time. */
    while (!__atomic_load_n(&l.ready, __ATOMIC_ACQUIRE))
        sched_yield();
    int64_t elapsed =
        uh_bench_touch(base, npages, page_size, resolve != UH_BENCH_COPY, toucher_cpu);
    /* Every fault the toucher raised is resolved (it returned): the handler is in poll()
     * or read(), or has failed and returned. */
    pthread_cancel(handler);
    pthread_join(handler, NULL);
    *faults = l.faults;
    if (l.err)
        return l.err;
    return elapsed;
}

int uh_fork_toucher(char *base, size_t npages, size_t page_size, uint64_t seed, int report_fd)
{
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        uh_touch(base, npages, page_size, 0);
        int64_t bad = uh_find_indexed_mismatch(base, npages * page_size, page_size, seed, 0);
        _exit(write(report_fd, &bad, sizeof(bad)) == (ssize_t)sizeof(bad) ? 0 : 1);
    }
    return (int)pid;
}
