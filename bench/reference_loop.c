/* The independent reference for `uffdharness bench`'s anon-4K COPY figures: the tightest
 * plain C loop for the workload, sharing no code with the harness.
 *
 * One toucher (the main thread) reads one byte of each page of a fresh anonymous mapping
 * registered MISSING; one handler pthread serves the faults with poll() on the uffd alone,
 * read() of one message and UFFDIO_COPY of one page from a populated source. Both threads
 * are pinned to one CPU; only the touch loop is timed; the handler leaves by counting the
 * faults it served, so no eventfd or second poll entry is involved.
 *
 *   reference_loop [-p PAGES] [-c CPU] [-t HANDLER_CPU] [-w WARM] [-r]
 *
 * -r reads first and polls only when read() finds nothing (EAGAIN). On one CPU the toucher
 * woken by UFFDIO_COPY runs at once and faults on its next page before the handler runs
 * again, so the next message is nearly always queued already: two syscalls per fault
 * instead of three. That is the tightest loop for this workload; without -r it is the
 * textbook poll() + read() + UFFDIO_COPY.
 *
 * WARM (default 1) untimed passes come first, each touching every page and then zapping
 * them all with MADV_DONTNEED, as the bench resets its region between repetitions: on this
 * VM the first touch of memory the guest has not used lately also pays the host's own
 * fault (free page reporting hands freed memory back to the host), a cost of the VM, not
 * of userfaultfd. -w 0 times that first pass over a fresh mapping.
 *
 * prints "faults/s <rate> ns/fault <ns> cpu-ns/fault <ns> pages <n> cpu <toucher> <handler>":
 * cpu-ns is the CPU time both threads used per fault (getrusage), which other processes
 * sharing the CPU do not inflate as they do the elapsed time.
 * bench/bench_reference.py compiles and runs it beside the harness's loops. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL

static char *dst, *src;
static size_t npages, passes;
static int uffd, handler_cpu, read_first;
static int ready;

static void die(const char *what)
{
    fprintf(stderr, "reference_loop: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    int rc = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    if (rc) {
        errno = rc;
        die("pthread_setaffinity_np");
    }
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* CPU time of every thread of this process: the toucher and the handler, nothing else. */
static uint64_t cpu_ns(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000ULL +
           (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000ULL;
}

static void *handler(void *arg)
{
    (void)arg;
    pin(handler_cpu);
    __atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
    size_t served = 0;
    int wait = 1;
    while (served < npages * passes) {
        struct pollfd pfd = {.fd = uffd, .events = POLLIN};
        if (wait && poll(&pfd, 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            die("poll");
        }
        struct uffd_msg msg;
        if (read(uffd, &msg, sizeof(msg)) != (ssize_t)sizeof(msg)) {
            if (errno != EAGAIN)
                die("read");
            wait = 1;
            continue;
        }
        wait = !read_first;
        if (msg.event != UFFD_EVENT_PAGEFAULT)
            continue;
        uint64_t page = msg.arg.pagefault.address & ~(PAGE - 1);
        struct uffdio_copy copy = {
            .dst = page, .src = (uint64_t)(uintptr_t)src + (page - (uint64_t)(uintptr_t)dst),
            .len = PAGE};
        if (ioctl(uffd, UFFDIO_COPY, &copy) < 0)
            die("UFFDIO_COPY");
        served++;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int cpu_toucher = -1, opt;
    size_t warm = 1;
    npages = 100000;
    handler_cpu = -1;
    while ((opt = getopt(argc, argv, "p:c:t:w:r")) != -1) {
        if (opt == 'r')
            read_first = 1;
        else if (opt == 'p')
            npages = strtoul(optarg, NULL, 0);
        else if (opt == 'w')
            warm = strtoul(optarg, NULL, 0);
        else if (opt == 'c')
            cpu_toucher = atoi(optarg);
        else if (opt == 't')
            handler_cpu = atoi(optarg);
        else {
            fprintf(stderr, "usage: %s [-p PAGES] [-c CPU] [-t HANDLER_CPU] [-w WARM] [-r]\n", argv[0]);
            return 2;
        }
    }
    if (cpu_toucher < 0) { /* the last CPU we may run on, as `uffdharness bench` picks */
        cpu_set_t set;
        if (sched_getaffinity(0, sizeof(set), &set) < 0)
            die("sched_getaffinity");
        for (int i = 0; i < CPU_SETSIZE; i++)
            if (CPU_ISSET(i, &set))
                cpu_toucher = i;
    }
    if (handler_cpu < 0)
        handler_cpu = cpu_toucher;
    passes = warm + 1;

    size_t len = npages * PAGE;
    src = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    dst = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (src == MAP_FAILED || dst == MAP_FAILED)
        die("mmap");
    for (size_t i = 0; i < len; i += sizeof(uint64_t))
        *(uint64_t *)(src + i) = i / PAGE + 1;

    uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (uffd < 0)
        die("userfaultfd");
    struct uffdio_api api = {.api = UFFD_API};
    if (ioctl(uffd, UFFDIO_API, &api) < 0)
        die("UFFDIO_API");
    struct uffdio_register reg = {.range = {(uint64_t)(uintptr_t)dst, len},
                                  .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0)
        die("UFFDIO_REGISTER");

    pin(cpu_toucher);
    pthread_t thread;
    if ((errno = pthread_create(&thread, NULL, handler, NULL)))
        die("pthread_create");
    while (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE))
        sched_yield();

    uint64_t start = 0, cpu_start = 0;
    for (size_t pass = 0; pass < passes; pass++) {
        if (pass) /* zap the pages: they fault again, into warm page tables and memory */
            madvise(dst, len, MADV_DONTNEED);
        cpu_start = cpu_ns();
        start = now_ns();
        for (size_t i = 0; i < npages; i++)
            (void)*(volatile char *)(dst + i * PAGE);
    }
    uint64_t elapsed = now_ns() - start;
    pthread_join(thread, NULL); /* the handler served the last fault: its time is counted */
    uint64_t cpu = cpu_ns() - cpu_start;
    for (size_t i = 0; i < npages; i++)
        if (*(uint64_t *)(dst + i * PAGE) != i + 1) {
            fprintf(stderr, "reference_loop: page %zu has the wrong content\n", i);
            return 1;
        }
    printf("faults/s %.0f ns/fault %.0f cpu-ns/fault %.0f pages %zu cpu %d %d%s\n",
           npages * 1e9 / elapsed, (double)elapsed / npages, (double)cpu / npages, npages,
           cpu_toucher, handler_cpu, read_first ? " read-first" : "");
    return 0;
}
