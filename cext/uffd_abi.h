/*
 * The userfaultfd ABI, written out from the kernel UAPI (include/uapi/linux/userfaultfd.h
 * as of 7.3, and the PAGEMAP_SCAN part of include/uapi/linux/fs.h as of 7.3) so the
 * harness does not depend on the build machine's headers: a 6.1 header lacks MOVE,
 * POISON, WP_UNPOPULATED, WP_ASYNC, CONTINUE_MODE_WP and PAGEMAP_SCAN; only 7.3 has the
 * read-write protection mode (RWP, RWPROTECT, SET_MODE, PAGE_IS_ACCESSED).
 * Every struct's size is asserted: a wrong layout fails the build, not a test.
 * Names carry a UH_ prefix so they never clash with a system header.
 */
#ifndef UFFDHARNESS_ABI_H
#define UFFDHARNESS_ABI_H

#include <stdint.h>
#include <linux/ioctl.h>

#define UH_UFFD_API 0xAAULL
#define UH_UFFDIO 0xAA
#define UH_USERFAULTFD_IOC 0xAA
#define UH_UFFD_USER_MODE_ONLY 1 /* userfaultfd(2) flag, 5.11 */

/* ioctl numbers: also the bit positions reported in uffdio_api.ioctls / register.ioctls */
#define UH__UFFDIO_REGISTER 0x00
#define UH__UFFDIO_UNREGISTER 0x01
#define UH__UFFDIO_WAKE 0x02
#define UH__UFFDIO_COPY 0x03
#define UH__UFFDIO_ZEROPAGE 0x04
#define UH__UFFDIO_MOVE 0x05
#define UH__UFFDIO_WRITEPROTECT 0x06
#define UH__UFFDIO_CONTINUE 0x07
#define UH__UFFDIO_POISON 0x08
#define UH__UFFDIO_RWPROTECT 0x09 /* 7.3 */
#define UH__UFFDIO_SET_MODE 0x0A /* 7.3: an fd-level (API) ioctl, not a range one */
#define UH__UFFDIO_API 0x3F

#define UH_UFFD_EVENT_PAGEFAULT 0x12
#define UH_UFFD_EVENT_FORK 0x13
#define UH_UFFD_EVENT_REMAP 0x14
#define UH_UFFD_EVENT_REMOVE 0x15
#define UH_UFFD_EVENT_UNMAP 0x16

#define UH_UFFD_PAGEFAULT_FLAG_WRITE (1ULL << 0)
#define UH_UFFD_PAGEFAULT_FLAG_WP (1ULL << 1)
#define UH_UFFD_PAGEFAULT_FLAG_MINOR (1ULL << 2)
#define UH_UFFD_PAGEFAULT_FLAG_RWP (1ULL << 3) /* 7.3 */

#define UH_UFFD_FEATURE_PAGEFAULT_FLAG_WP (1ULL << 0)
#define UH_UFFD_FEATURE_EVENT_FORK (1ULL << 1)
#define UH_UFFD_FEATURE_EVENT_REMAP (1ULL << 2)
#define UH_UFFD_FEATURE_EVENT_REMOVE (1ULL << 3)
#define UH_UFFD_FEATURE_MISSING_HUGETLBFS (1ULL << 4)
#define UH_UFFD_FEATURE_MISSING_SHMEM (1ULL << 5)
#define UH_UFFD_FEATURE_EVENT_UNMAP (1ULL << 6)
#define UH_UFFD_FEATURE_SIGBUS (1ULL << 7)
#define UH_UFFD_FEATURE_THREAD_ID (1ULL << 8)
#define UH_UFFD_FEATURE_MINOR_HUGETLBFS (1ULL << 9)
#define UH_UFFD_FEATURE_MINOR_SHMEM (1ULL << 10)
#define UH_UFFD_FEATURE_EXACT_ADDRESS (1ULL << 11)
#define UH_UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1ULL << 12)
#define UH_UFFD_FEATURE_WP_UNPOPULATED (1ULL << 13)
#define UH_UFFD_FEATURE_POISON (1ULL << 14)
#define UH_UFFD_FEATURE_WP_ASYNC (1ULL << 15)
#define UH_UFFD_FEATURE_MOVE (1ULL << 16)
/* 7.3, with CONFIG_USERFAULTFD_RWP (64-bit, PTE_PROTNONE and the uffd PTE bit) */
#define UH_UFFD_FEATURE_RWP (1ULL << 17)
#define UH_UFFD_FEATURE_RWP_ASYNC (1ULL << 18) /* needs RWP in the same UFFDIO_API */

#define UH_UFFDIO_REGISTER_MODE_MISSING (1ULL << 0)
#define UH_UFFDIO_REGISTER_MODE_WP (1ULL << 1)
#define UH_UFFDIO_REGISTER_MODE_MINOR (1ULL << 2)
#define UH_UFFDIO_REGISTER_MODE_RWP (1ULL << 3) /* 7.3 */

#define UH_UFFDIO_COPY_MODE_DONTWAKE (1ULL << 0)
#define UH_UFFDIO_COPY_MODE_WP (1ULL << 1)
#define UH_UFFDIO_ZEROPAGE_MODE_DONTWAKE (1ULL << 0)
#define UH_UFFDIO_WRITEPROTECT_MODE_WP (1ULL << 0)
#define UH_UFFDIO_WRITEPROTECT_MODE_DONTWAKE (1ULL << 1)
#define UH_UFFDIO_CONTINUE_MODE_DONTWAKE (1ULL << 0)
#define UH_UFFDIO_CONTINUE_MODE_WP (1ULL << 1)
#define UH_UFFDIO_POISON_MODE_DONTWAKE (1ULL << 0)
#define UH_UFFDIO_MOVE_MODE_DONTWAKE (1ULL << 0)
#define UH_UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES (1ULL << 1)
#define UH_UFFDIO_RWPROTECT_MODE_RWP (1ULL << 0) /* clear: unprotect and wake */
#define UH_UFFDIO_RWPROTECT_MODE_DONTWAKE (1ULL << 1)

struct uh_uffd_msg {
    uint8_t event;
    uint8_t reserved1;
    uint16_t reserved2;
    uint32_t reserved3;
    union {
        struct {
            uint64_t flags;
            uint64_t address;
            union {
                uint32_t ptid;
            } feat;
        } pagefault;
        struct {
            uint32_t ufd;
        } fork;
        struct {
            uint64_t from;
            uint64_t to;
            uint64_t len;
        } remap;
        struct {
            uint64_t start;
            uint64_t end;
        } remove;
        struct {
            uint64_t reserved1;
            uint64_t reserved2;
            uint64_t reserved3;
        } reserved;
    } arg;
} __attribute__((packed));

struct uh_uffdio_api {
    uint64_t api;
    uint64_t features;
    uint64_t ioctls;
};

struct uh_uffdio_range {
    uint64_t start;
    uint64_t len;
};

struct uh_uffdio_register {
    struct uh_uffdio_range range;
    uint64_t mode;
    uint64_t ioctls;
};

/* The trailing s64 of COPY/ZEROPAGE/CONTINUE/POISON/MOVE: bytes done, or -errno. */
struct uh_uffdio_copy {
    uint64_t dst;
    uint64_t src;
    uint64_t len;
    uint64_t mode;
    int64_t copy;
};

struct uh_uffdio_zeropage {
    struct uh_uffdio_range range;
    uint64_t mode;
    int64_t zeropage;
};

struct uh_uffdio_writeprotect {
    struct uh_uffdio_range range;
    uint64_t mode;
};

struct uh_uffdio_continue {
    struct uh_uffdio_range range;
    uint64_t mode;
    int64_t mapped;
};

struct uh_uffdio_poison {
    struct uh_uffdio_range range;
    uint64_t mode;
    int64_t updated;
};

struct uh_uffdio_move {
    uint64_t dst;
    uint64_t src;
    uint64_t len;
    uint64_t mode;
    int64_t move;
};

struct uh_uffdio_rwprotect {
    struct uh_uffdio_range range;
    uint64_t mode;
};

/* Toggles UFFD_FEATURE_RWP_ASYNC at run time; a bit in both is EINVAL. */
struct uh_uffdio_set_mode {
    uint64_t enable;
    uint64_t disable;
};

/* PAGEMAP_SCAN on /proc/PID/pagemap (6.7). */
#define UH_PAGE_IS_WPALLOWED (1ULL << 0)
#define UH_PAGE_IS_WRITTEN (1ULL << 1)
#define UH_PAGE_IS_FILE (1ULL << 2)
#define UH_PAGE_IS_PRESENT (1ULL << 3)
#define UH_PAGE_IS_SWAPPED (1ULL << 4)
#define UH_PAGE_IS_PFNZERO (1ULL << 5)
#define UH_PAGE_IS_HUGE (1ULL << 6)
#define UH_PAGE_IS_SOFT_DIRTY (1ULL << 7)
#define UH_PAGE_IS_GUARD (1ULL << 8) /* a MADV_GUARD_INSTALL guard region (6.18 has it) */
#define UH_PAGE_IS_ACCESSED (1ULL << 9) /* 7.3: uffd bit clear on a VM_UFFD_RWP VMA */
#define UH_PM_SCAN_WP_MATCHING (1ULL << 0)
#define UH_PM_SCAN_CHECK_WPASYNC (1ULL << 1)

struct uh_page_region {
    uint64_t start;
    uint64_t end;
    uint64_t categories;
};

struct uh_pm_scan_arg {
    uint64_t size;
    uint64_t flags;
    uint64_t start;
    uint64_t end;
    uint64_t walk_end;
    uint64_t vec;
    uint64_t vec_len;
    uint64_t max_pages;
    uint64_t category_inverted;
    uint64_t category_mask;
    uint64_t category_anyof_mask;
    uint64_t return_mask;
};

_Static_assert(sizeof(struct uh_uffd_msg) == 32, "uffd_msg is 32 bytes packed");
_Static_assert(sizeof(struct uh_uffdio_api) == 24, "uffdio_api");
_Static_assert(sizeof(struct uh_uffdio_range) == 16, "uffdio_range");
_Static_assert(sizeof(struct uh_uffdio_register) == 32, "uffdio_register");
_Static_assert(sizeof(struct uh_uffdio_copy) == 40, "uffdio_copy");
_Static_assert(sizeof(struct uh_uffdio_zeropage) == 32, "uffdio_zeropage");
_Static_assert(sizeof(struct uh_uffdio_writeprotect) == 24, "uffdio_writeprotect");
_Static_assert(sizeof(struct uh_uffdio_continue) == 32, "uffdio_continue");
_Static_assert(sizeof(struct uh_uffdio_poison) == 32, "uffdio_poison");
_Static_assert(sizeof(struct uh_uffdio_move) == 40, "uffdio_move");
_Static_assert(sizeof(struct uh_uffdio_rwprotect) == 24, "uffdio_rwprotect");
_Static_assert(sizeof(struct uh_uffdio_set_mode) == 16, "uffdio_set_mode");
_Static_assert(sizeof(struct uh_page_region) == 24, "page_region");
_Static_assert(sizeof(struct uh_pm_scan_arg) == 96, "pm_scan_arg");
_Static_assert(__builtin_offsetof(struct uh_uffd_msg, arg) == 8, "uffd_msg.arg offset");

#define UH_UFFDIO_API _IOWR(UH_UFFDIO, UH__UFFDIO_API, struct uh_uffdio_api)
#define UH_UFFDIO_REGISTER _IOWR(UH_UFFDIO, UH__UFFDIO_REGISTER, struct uh_uffdio_register)
/* UNREGISTER and WAKE are _IOR although the kernel reads the struct (a UAPI historical quirk). */
#define UH_UFFDIO_UNREGISTER _IOR(UH_UFFDIO, UH__UFFDIO_UNREGISTER, struct uh_uffdio_range)
#define UH_UFFDIO_WAKE _IOR(UH_UFFDIO, UH__UFFDIO_WAKE, struct uh_uffdio_range)
#define UH_UFFDIO_COPY _IOWR(UH_UFFDIO, UH__UFFDIO_COPY, struct uh_uffdio_copy)
#define UH_UFFDIO_ZEROPAGE _IOWR(UH_UFFDIO, UH__UFFDIO_ZEROPAGE, struct uh_uffdio_zeropage)
#define UH_UFFDIO_MOVE _IOWR(UH_UFFDIO, UH__UFFDIO_MOVE, struct uh_uffdio_move)
#define UH_UFFDIO_WRITEPROTECT \
    _IOWR(UH_UFFDIO, UH__UFFDIO_WRITEPROTECT, struct uh_uffdio_writeprotect)
#define UH_UFFDIO_CONTINUE _IOWR(UH_UFFDIO, UH__UFFDIO_CONTINUE, struct uh_uffdio_continue)
#define UH_UFFDIO_POISON _IOWR(UH_UFFDIO, UH__UFFDIO_POISON, struct uh_uffdio_poison)
#define UH_UFFDIO_RWPROTECT _IOWR(UH_UFFDIO, UH__UFFDIO_RWPROTECT, struct uh_uffdio_rwprotect)
#define UH_UFFDIO_SET_MODE _IOW(UH_UFFDIO, UH__UFFDIO_SET_MODE, struct uh_uffdio_set_mode)
#define UH_USERFAULTFD_IOC_NEW _IO(UH_USERFAULTFD_IOC, 0x00)
#define UH_PAGEMAP_SCAN _IOWR('f', 16, struct uh_pm_scan_arg)

#endif
