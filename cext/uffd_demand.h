/* Demand paging with V toucher threads (after the KVM selftest demand_paging_test): each
 * toucher pthread touches its own slice of a region and records how long each page took;
 * the multi-toucher C reference loop serves them from 1 or V handler pthreads. */
#ifndef UFFDHARNESS_DEMAND_H
#define UFFDHARNESS_DEMAND_H

#include <stddef.h>
#include <stdint.h>

/* How the reference handlers resolve a fault. */
#define UH_DEMAND_COPY 0     /* UFFDIO_COPY from src at the fault's offset */
#define UH_DEMAND_ZEROPAGE 1 /* UFFDIO_ZEROPAGE */
#define UH_DEMAND_CONTINUE 2 /* UFFDIO_CONTINUE (a MINOR fault: the page cache has it) */
#define UH_DEMAND_MOVE 3     /* UFFDIO_MOVE from src at the fault's offset (6.8) */

/* `touchers` pthreads; toucher i touches pages [i * pages_each, (i + 1) * pages_each) of
 * base, one access per page in order: a read, or with `writes` a locked OR of 0 (a write
 * access that keeps the content). Toucher i is pinned to cpus[i] (cpus NULL or cpus[i] < 0:
 * unpinned). All start together past a barrier. latency_ns[i * pages_each + j] gets the ns
 * page j of toucher i took (from the end of the previous access). Returns the wall time in
 * ns from the first toucher's start to the last one's end, or -errno. */
int64_t uh_demand_touch(char *base, size_t page_size, size_t pages_each, int touchers,
                        int writes, const int *cpus, uint64_t *latency_ns);

/* The reference: nuffds handler pthreads (1, or one per toucher), handler k doing
 * poll(uffds[k], eventfd) + read(uffd_msg batch) + one `resolve` ioctl per fault, pinned to
 * handler_cpus[k] (NULL or < 0: unpinned), while uh_demand_touch runs the touchers. With
 * nuffds == touchers, uffds[k] serves slice k only; with 1 it serves the whole range. src
 * (COPY, MOVE) holds the page for offset x of base at src + x. A handler that fails
 * unregisters its range, which wakes its touchers, so a failure never hangs. Returns what
 * uh_demand_touch returns, or the first handler's -errno; *faults gets the faults resolved. */
int64_t uh_demand_c_loop(const int *uffds, int nuffds, char *base, size_t page_size,
                         size_t pages_each, int touchers, int writes, int resolve,
                         const char *src, const int *toucher_cpus, const int *handler_cpus,
                         uint64_t *latency_ns, uint64_t *faults);

#endif
