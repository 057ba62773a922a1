/* Thin, GIL-free entry points the Python side calls through cffi. */
#ifndef UFFDHARNESS_CORE_H
#define UFFDHARNESS_CORE_H

#include <stddef.h>
#include <stdint.h>

/* All return >= 0 on success or -errno: errno never has to survive a GIL switch. */
int uh_userfaultfd_syscall(int flags);
int uh_userfaultfd_dev(int flags);
int uh_ioctl(int fd, unsigned long request, void *arg);
long uh_read_msgs(int fd, void *buf, size_t max_msgs);
int uh_wait_readable(int fd, int timeout_ms);
int uh_fork_and_exit(int exit_code);
int uh_fork_wait_touch(char *base, size_t npages, size_t page_size, int go_fd);

/* Access to memory that may be registered: each call can block in a fault. */
int uh_copy_out(void *dst, const void *src, size_t len);
int uh_copy_in(void *dst, const void *src, size_t len);
long uh_touch(char *base, size_t npages, size_t page_size, int write);
long uh_touch_list(char *base, const uint64_t *offsets, size_t count, int write);
void uh_fill_pattern(char *dst, size_t len, const char *pattern, size_t pattern_len);
long uh_find_pattern_mismatch(const char *src, size_t len, const char *pattern,
                              size_t pattern_len);
void uh_fill_indexed(char *dst, size_t len, size_t page_size, uint64_t seed,
                     uint64_t first_page);
long uh_find_indexed_mismatch(const char *src, size_t len, size_t page_size, uint64_t seed,
                              uint64_t first_page);

#endif
