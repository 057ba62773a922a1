/* The uffd-stress design in C threads: locker threads incrementing per-page counters in a
 * registered area (each page begins with a pthread mutex and a counter), background threads
 * UFFDIO_COPYing the whole area from the previous bounce's area while the lockers fault it
 * in, and a thread churning the VMAs next door (per-vma-lock-race). The fault handlers are
 * the harness's engines; they are started and stopped by the caller. */
#ifndef UFFDHARNESS_STRESS_H
#define UFFDHARNESS_STRESS_H

#include <stddef.h>
#include <stdint.h>

#define UH_STRESS_MAX_THREADS 64
#define UH_STRESS_MAX_CHURN 4

struct uh_stress_bounce {
    /* in */
    int uffd;
    char *src, *dst;          /* the area copied from, the registered area */
    size_t npages, page_size; /* page_size: the kind's (a hugepage on hugetlb) */
    uint64_t *count_verify;   /* npages: what each page's counter must hold */
    int lockers, copiers;
    int random;               /* lockers pick random pages, else walk in sequence */
    int racing;               /* lockers start on the same page, else each on its own slice */
    int copy_mode_wp;         /* background COPYs with UFFDIO_COPY_MODE_WP, and each copier
                                 write-protects its slice half way (registered MISSING|WP) */
    int release_advice;       /* madvise that drops src once the copiers are done */
    int release_fd;           /* and, if >= 0, src's file, punched (private file mappings:
                                 a read fault there fills the page cache, which would keep
                                 the next bounce's faults from being missing faults) */
    uint64_t seed;
    char *churn[UH_STRESS_MAX_CHURN];   /* neighbouring anonymous VMAs, churn_len each */
    char *parking[UH_STRESS_MAX_CHURN]; /* PROT_NONE room to mremap each one into */
    int nchurn;
    size_t churn_len;
    /* out (valid once uh_stress_wait returned 0) */
    uint64_t increments, copies, copy_eexist, copy_eagain, wakes, wp_ranges;
    uint64_t churn_ops, churn_errors, churn_lost;
    uint32_t churn_lost_mask; /* bit i: churn slot i (or its parking) was given up: a hole
                                 there may hold another mapping of this process now */
    uint64_t corruptions;      /* a locker found a counter other than count_verify */
    int64_t corrupt_page;      /* the first such page, or -1 */
    uint64_t corrupt_found, corrupt_expected;
    int err, err_op;           /* first unexpected errno (positive) and where (UH_STRESS_OP_*) */
    uint64_t err_addr;
    /* private */
    void *threads;
};

#define UH_STRESS_OP_COPY 1
#define UH_STRESS_OP_WAKE 2
#define UH_STRESS_OP_WRITEPROTECT 3
#define UH_STRESS_OP_RELEASE 4
#define UH_STRESS_OP_THREAD 5

/* Lay out npages pages at area for the lockers: a fresh unlocked mutex and a counter of 1
 * in each (count_verify[i] = 1 too). area must not be registered. */
void uh_stress_init(char *area, size_t npages, size_t page_size, uint64_t *count_verify);

/* Start the lockers, copiers and the churn thread. 0 or -errno (nothing left running). */
int uh_stress_start(struct uh_stress_bounce *b);

/* Wait until deadline_ns (CLOCK_MONOTONIC) at most: join the copiers, drop src, tell the
 * lockers and the churn thread to finish and join them. Returns 0 when every thread has
 * ended (then the out fields are final and everything is freed), else the number of
 * threads still running: call again (after unregistering dst, which wakes a locker stuck
 * in a fault nobody serves). */
int uh_stress_wait(struct uh_stress_bounce *b, uint64_t deadline_ns);

/* Ask every thread to finish at its next step (copiers stop copying). */
void uh_stress_abort(struct uh_stress_bounce *b);

/* The first page whose counter differs from count_verify, or -1; *found gets its counter.
 * area must not be registered (nothing here may fault into a handler). */
int64_t uh_stress_verify(const char *area, size_t npages, size_t page_size,
                         const uint64_t *count_verify, uint64_t *found);

uint64_t uh_monotonic_ns(void);

#endif
