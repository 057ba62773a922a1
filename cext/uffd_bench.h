/* Workload drivers for benchmarks and tests: pinned toucher threads, the plain C fault
 * loop every engine is measured against, and a forked C-only toucher child. */
#ifndef UFFDHARNESS_BENCH_H
#define UFFDHARNESS_BENCH_H

#include <stddef.h>
#include <stdint.h>

/* Touch one byte of each page (read, or rewrite in place) from a new pthread pinned to
 * cpu (-1: unpinned); returns the toucher's elapsed ns, or -errno. */
int64_t uh_bench_touch(char *base, size_t npages, size_t page_size, int write, int cpu);

/* How the reference loop resolves a fault (the toucher writes for WP and RWP). */
#define UH_BENCH_COPY 0 /* UFFDIO_COPY of the page from src at the same offset */
#define UH_BENCH_WP 1   /* UFFDIO_WRITEPROTECT mode 0 */
#define UH_BENCH_RWP 2  /* UFFDIO_RWPROTECT mode 0 (7.3) */

/* The reference loop: one handler pthread pinned to handler_cpu doing read(one uffd_msg),
 * poll(uffd) only when nothing is queued, and one resolve per fault as `resolve` says; and
 * one toucher pthread pinned to toucher_cpu, started once the handler is pinned. Returns
 * the toucher's elapsed ns, or -errno; *faults gets the faults the handler resolved. */
int64_t uh_bench_c_loop(int uffd, char *base, size_t npages, size_t page_size,
                        const char *src, int resolve, int toucher_cpu, int handler_cpu,
                        uint64_t *faults);

/* fork() a child that reads one byte of every page of its copy of the range, then writes
 * to report_fd an int64: the offset of the first word not holding uh_fill_indexed(seed)
 * content, or -1, and _exit()s. No Python runs in the child, and the caller does not hold
 * the GIL while fork() waits for a UFFD_EVENT_FORK to be read. Returns the pid or -errno. */
int uh_fork_toucher(char *base, size_t npages, size_t page_size, uint64_t seed, int report_fd);

#endif
