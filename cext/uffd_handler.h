/*
 * The fault-handling core shared by the three engines, and the native engine itself.
 *
 * A core serves one or more uffds (the one it was given plus every child uffd adopted from
 * a UFFD_EVENT_FORK), each with a table of served ranges; every range points at one
 * built-in policy. The native engine runs the whole loop in a pthread without the GIL; the
 * Python engines call the same functions message by message, so accounting, EEXIST/EAGAIN
 * handling and event bookkeeping exist once. Counters live in a MAP_SHARED block so a
 * forked helper process reports into the same memory the caller reads.
 */
#ifndef UFFDHARNESS_HANDLER_H
#define UFFDHARNESS_HANDLER_H

#include <stddef.h>
#include <stdint.h>

#include "uffd_abi.h"

/* Actions of struct uh_policy.missing / .wp / .minor / .rwp */
#define UH_ACT_NONE 0
#define UH_ACT_COPY 1      /* UFFDIO_COPY from src at the fault's offset */
#define UH_ACT_FILL 2      /* UFFDIO_COPY of pattern repeated from the range start */
#define UH_ACT_INDEXED 3   /* UFFDIO_COPY of uh_fill_indexed(seed) content */
#define UH_ACT_ZEROPAGE 4  /* UFFDIO_ZEROPAGE */
#define UH_ACT_MOVE 5      /* UFFDIO_MOVE from src (an address in the uffd's mm) */
#define UH_ACT_UNPROTECT 6 /* UFFDIO_WRITEPROTECT mode 0 */
#define UH_ACT_CONTINUE 7  /* UFFDIO_CONTINUE */
#define UH_ACT_NEVER 8     /* leave the fault unresolved */
#define UH_ACT_RWP_UNPROTECT 9 /* UFFDIO_RWPROTECT mode 0 (7.3): restore access and wake */

/* Operations of uh_core_resolve */
#define UH_OP_COPY 1
#define UH_OP_ZEROPAGE 2
#define UH_OP_MOVE 3
#define UH_OP_UNPROTECT 4
#define UH_OP_CONTINUE 5
#define UH_OP_WAKE 6
#define UH_OP_WRITEPROTECT 7
#define UH_OP_READ 8       /* read(uffd) */
#define UH_OP_POLL 9
#define UH_OP_NO_ACTION 10 /* the policy has no action for this fault kind */
#define UH_OP_CLOSED 11    /* EBADF: the owner closed its number of uffd len (fd in addr) */
#define UH_OP_LOST 12      /* EBADF: the core's own duplicate (fd in addr) was closed */
#define UH_OP_RWP_UNPROTECT 13 /* UFFDIO_RWPROTECT without MODE_RWP */

/* Fault kinds (struct uh_fault_info.kind, first index of uh_stats.faults) */
#define UH_KIND_MISSING 0
#define UH_KIND_WP 1
#define UH_KIND_MINOR 2
#define UH_KIND_RWP 3 /* UFFD_PAGEFAULT_FLAG_RWP (7.3): an access to a read-write-protected page */
#define UH_FAULT_KINDS 4

/* Why served ranges were released (uh_stats.released) */
#define UH_RELEASE_NONE 0
#define UH_RELEASE_STOP 1        /* stop() with release_on_stop */
#define UH_RELEASE_LEFT_BEHIND 2 /* stop() found faults nobody resolved */
#define UH_RELEASE_FAILURE 3     /* the policy or an ioctl failed */
#define UH_RELEASE_CLOSED 4      /* a served uffd was closed under the handler */

#define UH_MAX_UFFDS 64
#define UH_MAX_RANGES 128
#define UH_MAX_POLICIES 64
#define UH_BACKLOG 1024
#define UH_LAT_CAP 65536
#define UH_ERRNO_MAX 160
#define UH_MAX_TIDS 64
#define UH_WPLOG_CAP 4096
#define UH_EVLOG_CAP 256
#define UH_EVENT_KINDS 5 /* fork, remap, remove, unmap, unknown */

struct uh_policy {
    uint32_t missing;
    uint32_t wp;
    uint32_t minor;
    uint32_t rwp;
    uint32_t readahead; /* pages per fault, >= 1 */
    uint32_t delay_us;
    uint32_t record_wp; /* log WP and RWP fault addresses before unprotecting */
    uint64_t src;       /* COPY: address in this process; MOVE: address in the uffd's mm */
    uint64_t src_len;   /* COPY: bytes past src_len read as zeros */
    const char *pattern;
    uint64_t pattern_len;
    uint64_t seed;
    uint64_t copy_mode; /* COPY, FILL, INDEXED: UFFDIO_COPY mode (UFFDIO_COPY_MODE_WP) */
    uint32_t gone_ok;   /* ENOENT (the range was unregistered while its fault was in
                           flight) ends the resolve quietly, counted, instead of failing */
};

struct uh_fault_info {
    uint64_t address;
    uint64_t flags;
    uint64_t page;       /* address rounded down to the range's page size */
    uint64_t page_size;
    uint64_t range_start;
    uint64_t range_len;
    uint64_t offset;     /* of page in the policy's source coordinates */
    uint64_t t_read_ns;
    uint32_t tid;
    int32_t kind;
    int32_t write;
    int32_t range;       /* index in the uffd's range table, -1 if unserved */
    int32_t policy;
    int32_t uffd;        /* index of the uffd in the core */
};

struct uh_failure {
    int64_t err;
    uint64_t op;   /* UH_OP_* */
    uint64_t addr;
    uint64_t len;
    uint64_t done; /* bytes resolved before the failure */
};

struct uh_event_rec {
    uint32_t event;  /* UFFD_EVENT_* */
    uint32_t uffd;   /* index of the uffd that delivered it */
    uint64_t a, b, c; /* fork: child fd, child index; remap: from, to, len; remove/unmap: start, end */
};

struct uh_tid_rec {
    uint32_t tid;
    uint32_t pad;
    uint64_t faults;
};

struct uh_stats {
    uint64_t faults[UH_FAULT_KINDS][2]; /* [missing, wp, minor, rwp][read, write] */
    uint64_t events[UH_EVENT_KINDS];
    uint64_t pages_resolved;
    uint64_t bytes_resolved;
    uint64_t errors[UH_ERRNO_MAX]; /* failed ioctls by errno, EEXIST/EAGAIN handling apart */
    uint64_t eexist_races;         /* the faulting page was already there: woken instead */
    uint64_t readahead_skipped;    /* window pages found present (EEXIST or known) */
    uint64_t eagain_retries;       /* mmap_changing: events read, ioctl retried */
    uint64_t partial_ops;          /* EAGAIN with a partial count, continued */
    uint64_t overtaken;            /* fault whose range an event moved or unmapped */
    uint64_t unresolved;           /* faults left for a never policy */
    uint64_t unserved;             /* faults outside every served range (unregistered) */
    uint64_t wakes;
    uint64_t batches;
    uint64_t messages;
    uint64_t released;             /* UH_RELEASE_* */
    uint64_t released_ranges;
    uint64_t closed_uffds;
    uint64_t policy_failures;
    uint64_t uffds_adopted;
    int64_t failed_errno;
    uint64_t failed_op;
    uint64_t failed_addr;
    uint64_t failed_len;
    uint64_t failed_done;
    uint64_t lat_count;
    uint64_t lat_min_ns;
    uint64_t lat_max_ns;
    uint64_t lat_sum_ns;
    uint64_t lat_ring[UH_LAT_CAP];
    uint64_t ntids;
    uint64_t tids_overflow;
    struct uh_tid_rec tids[UH_MAX_TIDS];
    uint64_t wplog_count;
    uint64_t wplog[UH_WPLOG_CAP];
    uint64_t evlog_count;
    struct uh_event_rec evlog[UH_EVLOG_CAP];
};

struct uh_core;
struct uh_native;
struct uh_bridge;

/* Counters in MAP_SHARED memory (survive fork into a helper); uh_stats_free unmaps. */
struct uh_stats *uh_stats_new(void);
void uh_stats_free(struct uh_stats *stats);

/* A core writing into stats; wake_fd (eventfd or pipe read end) interrupts waits/delays. */
struct uh_core *uh_core_new(struct uh_stats *stats, int wake_fd);
/* Frees the core and closes what it owns: its duplicates and the uffds it adopted (never
 * the fd it was given). */
void uh_core_free(struct uh_core *core);
int uh_core_set_policy(struct uh_core *core, int index, const struct uh_policy *policy);
int uh_core_add_uffd(struct uh_core *core, int fd, int owned);
/* Read uffd number `uffd` through a private duplicate from now on, and watch the fd it
 * was added with, in process owner_pid, for a close (see uh_core_wait). 0 or -errno. */
int uh_core_own_uffd(struct uh_core *core, int uffd, int owner_pid);
/* Check now that every watched uffd is still open: 0, or -EBADF (recorded as the failure). */
int uh_core_verify(struct uh_core *core);
int uh_core_add_range(struct uh_core *core, int uffd, uint64_t start, uint64_t len,
                      uint64_t page_size, uint64_t src_offset, int policy);
int uh_core_fd(struct uh_core *core, int uffd);
int uh_core_nranges(struct uh_core *core, int uffd);
int uh_core_range(struct uh_core *core, int uffd, int index, uint64_t *start, uint64_t *len,
                  uint64_t *src_offset);
void uh_core_set_wake_fd(struct uh_core *core, int wake_fd);
void uh_core_set_stopping(struct uh_core *core, int stopping);
/* On UFFD_EVENT_REMOVE: 0 forgets the removed pages and serves them again when they fault;
 * 1 unregisters the removed range and stops serving it, so it reads as the memory's own
 * (zeros) from then on. */
void uh_core_set_remove_unregisters(struct uh_core *core, int unregister);

/* poll() the wake fd and every uffd; *ready gets bit i for uffd i. Returns the number of
 * ready uffds, 0 when only the wake fd fired (or timeout), or -errno. While uffds are
 * watched it wakes every UH_WATCH_MS to check them: -EBADF means one was closed (recorded
 * as the failure; release with UH_RELEASE_CLOSED). */
int uh_core_wait(struct uh_core *core, int timeout_ms, uint64_t *ready, int *woken);
/* Messages: first those set aside while retrying an ioctl, then read(2). -EAGAIN: none. */
long uh_core_read(struct uh_core *core, int uffd, struct uh_uffd_msg *out, size_t max,
                  uint64_t *t_read_ns);
int uh_core_push_backlog(struct uh_core *core, int uffd, const struct uh_uffd_msg *msgs,
                         size_t count);
/* Account one pagefault message and find its range; returns the range index or -1 when
 * unserved (then the page is unregistered and woken so the thread retries normally). */
int uh_core_fault(struct uh_core *core, int uffd, const struct uh_uffd_msg *msg,
                  uint64_t t_read_ns, struct uh_fault_info *info);
/* Resolve a fault with its range's built-in policy: 0, or -errno (failure recorded). */
int uh_core_apply(struct uh_core *core, const struct uh_fault_info *fault, int policy);
/* One resolving operation over [dst, dst+len) with EEXIST/EAGAIN handling and accounting.
 * Returns bytes resolved, or -errno when the faulting page could not be resolved. */
int64_t uh_core_resolve(struct uh_core *core, const struct uh_fault_info *fault, int op,
                        uint64_t dst, uint64_t src, uint64_t len, uint64_t mode);
void uh_core_leave(struct uh_core *core, const struct uh_fault_info *fault);
/* Bookkeeping for a non-pagefault message; returns the new uffd index for a fork, else 0. */
int uh_core_event(struct uh_core *core, int uffd, const struct uh_uffd_msg *msg);
/* Apply events still set aside (stopping engines call it; release does too). */
void uh_core_flush_events(struct uh_core *core);
/* Faults read and not resolved, or messages waiting: someone would sleep forever. */
int uh_core_left_behind(struct uh_core *core);
/* Unregister and wake every served range (close adopted uffds); records the reason. */
int uh_core_release(struct uh_core *core, int reason);
/* Why the last resolve/apply returned -errno (per core, not shared). */
void uh_core_last_failure(struct uh_core *core, struct uh_failure *out);
/* Record an engine failure in the shared stats (the first one wins). */
void uh_core_fail(struct uh_core *core, int err, int op, uint64_t addr, uint64_t len,
                  uint64_t done);

/* The native engine: a pthread running the loop; cpu < 0 leaves it unpinned. */
/* wait: how the thread waits for messages */
#define UH_WAIT_POLL 0 /* poll() the uffds and the wake eventfd */
#define UH_WAIT_BUSY 1 /* spin on non-blocking reads */
#define UH_WAIT_READ 2 /* block in read() of the one uffd (uffd-stress's read mode) */
struct uh_native *uh_native_start(struct uh_core *core, int cpu, int wait, int batch);
/* Stop (eventfd wake), join and free; returns 0 or the -errno of a failure. */
int uh_native_stop(struct uh_native *native);
int uh_native_done(struct uh_native *native);
/* The engine thread's tid (0 until it has started). */
int uh_native_tid(struct uh_native *native);

/* Reads a uffd from a C thread while this process forks (fork() blocks until its
 * UFFD_EVENT_FORK is read, and the forking thread holds the GIL and glibc's malloc lock).
 * Every message is kept for the engine to take over; with close_first_fork the first
 * fork event's child uffd is closed instead (a helper's own copy of the ranges). */
struct uh_bridge *uh_bridge_start(int uffd, int close_first_fork);
long uh_bridge_stop(struct uh_bridge *bridge, struct uh_uffd_msg *out, size_t max,
                    int *forks_seen);

int uh_set_thread_cpu(int cpu);

/* Read without RWF_NOWAIT (poll, then a timer-bounded read) as on kernels whose uffd
 * refuses it, when on is 1; returns the previous setting (tests run both paths). */
int uh_core_poll_reads(int on);

#endif
