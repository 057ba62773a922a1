#define _GNU_SOURCE
#include "uffd_bench.h"
#include "uffd_abi.h"
#include "uffd_core.h"
#include "internal/uh_sched.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/eventfd.h>
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
    int uffd, efd, resolve, cpu;
    char *base;
    size_t page_size;
    const char *src;
    uint64_t faults;
    int err;
};

static void *c_loop_main(void *arg)
{
    struct c_loop *l = arg;
    struct uh_uffd_msg msgs[64];
    l->err = pin_self(l->cpu);
    while (!l->err) {
        struct pollfd pfd[2] = {{.fd = l->uffd, .events = POLLIN},
                                {.fd = l->efd, .events = POLLIN}};
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            l->err = -errno;
            break;
        }
        if (pfd[1].revents)
            break;
        ssize_t got = read(l->uffd, msgs, sizeof(msgs));
        if (got < 0) {
            if (errno == EAGAIN)
                continue;
            l->err = -errno;
            break;
        }
        for (size_t i = 0; i < (size_t)got / sizeof(msgs[0]); i++) {
            if (msgs[i].event != UH_UFFD_EVENT_PAGEFAULT)
                continue;
            uint64_t page = msgs[i].arg.pagefault.address & ~(uint64_t)(l->page_size - 1);
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
            if (rc < 0) {
                l->err = -errno;
                break;
            }
            l->faults++;
        }
    }
    return NULL;
}

int64_t uh_bench_c_loop(int uffd, char *base, size_t npages, size_t page_size,
                        const char *src, int resolve, int toucher_cpu, int handler_cpu,
                        uint64_t *faults)
{
    struct c_loop l = {.uffd = uffd, .resolve = resolve, .cpu = handler_cpu, .base = base,
                       .page_size = page_size, .src = src};
    l.efd = eventfd(0, EFD_CLOEXEC);
    if (l.efd < 0)
        return -errno;
    pthread_t handler;
    int rc = pthread_create(&handler, NULL, c_loop_main, &l);
    if (rc) {
        close(l.efd);
        return -rc;
    }
    int64_t elapsed =
        uh_bench_touch(base, npages, page_size, resolve != UH_BENCH_COPY, toucher_cpu);
    uint64_t one = 1;
    (void)!write(l.efd, &one, sizeof(one));
    pthread_join(handler, NULL);
    close(l.efd);
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
