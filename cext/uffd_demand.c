/* Demand paging with V toucher pthreads and the multi-toucher C reference loop (see
 * uffd_demand.h). Touchers are C threads on purpose: a Python thread touching registered
 * memory with the GIL held would starve a Python handler (the GIL trap). */
#define _GNU_SOURCE
#include "uffd_demand.h"
#include "uffd_abi.h"
#include "internal/uh_sched.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define EAGAIN_RETRIES 1000

/* ---- touchers ------------------------------------------------------------------------ */

struct start_gate {
    pthread_mutex_t lock;
    pthread_cond_t opened;
    int state; /* 0 closed, 1 go, -1 abandon */
};

struct toucher {
    char *base;
    size_t page_size, npages;
    int write, cpu, err;
    uint64_t *latency;
    struct start_gate *gate;
    uint64_t started, ended;
};

/* A write access that leaves the byte as it was: the first access to the page is the
 * write, so the fault is raised with UFFD_PAGEFAULT_FLAG_WRITE (a read first would map the
 * page read-only or the zero page and make the write a second fault). Inline asm on x86:
 * a compiler may turn an atomic OR of 0 whose result is unused into a plain load. */
static inline void write_in_place(char *p)
{
#if defined(__x86_64__) || defined(__i386__)
    __asm__ volatile("lock orb $0, %0" : "+m"(*p) : : "memory");
#else
    __atomic_fetch_or((volatile char *)p, 0, __ATOMIC_SEQ_CST);
#endif
}

static void *toucher_main(void *arg)
{
    struct toucher *t = arg;
    t->err = pin_self(t->cpu);
    pthread_mutex_lock(&t->gate->lock);
    while (t->gate->state == 0)
        pthread_cond_wait(&t->gate->opened, &t->gate->lock);
    int go = t->gate->state > 0;
    pthread_mutex_unlock(&t->gate->lock);
    if (!go || t->err)
        return NULL;
    uint64_t previous = now_ns();
    t->started = previous;
    for (size_t j = 0; j < t->npages; j++) {
        char *page = t->base + j * t->page_size;
        if (t->write)
            write_in_place(page);
        else
            (void)*(volatile char *)page;
        uint64_t now = now_ns();
        t->latency[j] = now - previous;
        previous = now;
    }
    t->ended = previous;
    return NULL;
}

static void open_gate(struct start_gate *gate, int state)
{
    pthread_mutex_lock(&gate->lock);
    gate->state = state;
    pthread_cond_broadcast(&gate->opened);
    pthread_mutex_unlock(&gate->lock);
}

int64_t uh_demand_touch(char *base, size_t page_size, size_t pages_each, int touchers,
                        int writes, const int *cpus, uint64_t *latency_ns)
{
    if (touchers < 1)
        return -EINVAL;
    struct toucher *t = calloc((size_t)touchers, sizeof(*t));
    pthread_t *threads = calloc((size_t)touchers, sizeof(*threads));
    if (!t || !threads) {
        free(t);
        free(threads);
        return -ENOMEM;
    }
    struct start_gate gate = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    int created = 0, rc = 0;
    for (; created < touchers; created++) {
        struct toucher *mine = &t[created];
        mine->base = base + (size_t)created * pages_each * page_size;
        mine->page_size = page_size;
        mine->npages = pages_each;
        mine->write = writes;
        mine->cpu = cpus ? cpus[created] : -1;
        mine->latency = latency_ns + (size_t)created * pages_each;
        mine->gate = &gate;
        rc = pthread_create(&threads[created], NULL, toucher_main, mine);
        if (rc)
            break;
    }
    open_gate(&gate, rc ? -1 : 1);
    for (int i = 0; i < created; i++)
        pthread_join(threads[i], NULL);
    int64_t result = -rc;
    if (!rc) {
        uint64_t first = UINT64_MAX, last = 0;
        for (int i = 0; i < touchers; i++) {
            if (t[i].err && !result)
                result = t[i].err;
            if (t[i].started < first)
                first = t[i].started;
            if (t[i].ended > last)
                last = t[i].ended;
        }
        if (!result)
            result = (int64_t)(last - first);
    }
    free(t);
    free(threads);
    return result;
}

/* ---- the reference handlers ---------------------------------------------------------- */

struct handler {
    int uffd, efd, resolve, cpu, err;
    char *base;
    const char *src;
    size_t page_size;
    uint64_t range_start, range_len;
    uint64_t faults;
};

static int resolve_one(struct handler *h, uint64_t page)
{
    uint64_t offset = page - (uint64_t)(uintptr_t)h->base;
    uint64_t src = (uint64_t)(uintptr_t)h->src + offset;
    for (int attempt = 0;; attempt++) {
        int rc;
        switch (h->resolve) {
        case UH_DEMAND_COPY: {
            struct uh_uffdio_copy a = {.dst = page, .src = src, .len = h->page_size};
            rc = ioctl(h->uffd, UH_UFFDIO_COPY, &a);
            break;
        }
        case UH_DEMAND_ZEROPAGE: {
            struct uh_uffdio_zeropage a = {.range = {page, h->page_size}};
            rc = ioctl(h->uffd, UH_UFFDIO_ZEROPAGE, &a);
            break;
        }
        case UH_DEMAND_CONTINUE: {
            struct uh_uffdio_continue a = {.range = {page, h->page_size}};
            rc = ioctl(h->uffd, UH_UFFDIO_CONTINUE, &a);
            break;
        }
        case UH_DEMAND_MOVE: {
            struct uh_uffdio_move a = {.dst = page, .src = src, .len = h->page_size};
            rc = ioctl(h->uffd, UH_UFFDIO_MOVE, &a);
            break;
        }
        default:
            return -EINVAL;
        }
        if (rc == 0)
            return 0;
        if (errno == EEXIST) {
            /* Already resolved (a fault reported twice): wake whoever still sleeps. */
            struct uh_uffdio_range r = {page, h->page_size};
            return ioctl(h->uffd, UH_UFFDIO_WAKE, &r) < 0 ? -errno : 0;
        }
        /* EAGAIN: the mm is changing (mmap_changing); retry as the kernel asks. */
        if (errno != EAGAIN || attempt >= EAGAIN_RETRIES)
            return -errno;
    }
}

static void *handler_main(void *arg)
{
    struct handler *h = arg;
    struct uh_uffd_msg msgs[64];
    h->err = pin_self(h->cpu);
    while (!h->err) {
        struct pollfd pfd[2] = {{.fd = h->uffd, .events = POLLIN},
                                {.fd = h->efd, .events = POLLIN}};
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            h->err = -errno;
            break;
        }
        if (pfd[1].revents)
            break;
        ssize_t got = read(h->uffd, msgs, sizeof(msgs));
        if (got < 0) {
            if (errno == EAGAIN)
                continue;
            h->err = -errno;
            break;
        }
        for (size_t i = 0; i < (size_t)got / sizeof(msgs[0]) && !h->err; i++) {
            if (msgs[i].event != UH_UFFD_EVENT_PAGEFAULT)
                continue;
            uint64_t page = msgs[i].arg.pagefault.address & ~(uint64_t)(h->page_size - 1);
            h->err = resolve_one(h, page);
            if (!h->err)
                h->faults++;
        }
    }
    if (h->err) {
        /* Unregistering wakes every thread asleep in a fault on the range: the touchers
         * retry as ordinary faults and finish instead of hanging. */
        struct uh_uffdio_range r = {h->range_start, h->range_len};
        (void)ioctl(h->uffd, UH_UFFDIO_UNREGISTER, &r);
    }
    return NULL;
}

int64_t uh_demand_c_loop(const int *uffds, int nuffds, char *base, size_t page_size,
                         size_t pages_each, int touchers, int writes, int resolve,
                         const char *src, const int *toucher_cpus, const int *handler_cpus,
                         uint64_t *latency_ns, uint64_t *faults)
{
    if (nuffds != 1 && nuffds != touchers)
        return -EINVAL;
    struct handler *h = calloc((size_t)nuffds, sizeof(*h));
    pthread_t *threads = calloc((size_t)nuffds, sizeof(*threads));
    int efd = eventfd(0, EFD_CLOEXEC);
    if (!h || !threads || efd < 0) {
        int err = efd < 0 ? errno : ENOMEM;
        if (efd >= 0)
            close(efd);
        free(h);
        free(threads);
        return -err;
    }
    size_t slice = nuffds == 1 ? pages_each * (size_t)touchers : pages_each;
    int started = 0, rc = 0;
    for (; started < nuffds; started++) {
        struct handler *mine = &h[started];
        mine->uffd = uffds[started];
        mine->efd = efd;
        mine->resolve = resolve;
        mine->cpu = handler_cpus ? handler_cpus[started] : -1;
        mine->base = base;
        mine->src = src;
        mine->page_size = page_size;
        mine->range_start = (uint64_t)(uintptr_t)base + (uint64_t)started * slice * page_size;
        mine->range_len = (uint64_t)slice * page_size;
        rc = pthread_create(&threads[started], NULL, handler_main, mine);
        if (rc)
            break;
    }
    int64_t elapsed = rc ? -rc
                         : uh_demand_touch(base, page_size, pages_each, touchers, writes,
                                           toucher_cpus, latency_ns);
    uint64_t one = 1;
    (void)!write(efd, &one, sizeof(one));
    *faults = 0;
    for (int k = 0; k < started; k++) {
        pthread_join(threads[k], NULL);
        *faults += h[k].faults;
        if (h[k].err && elapsed >= 0)
            elapsed = h[k].err;
    }
    close(efd);
    free(h);
    free(threads);
    return elapsed;
}
