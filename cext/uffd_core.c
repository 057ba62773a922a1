#define _GNU_SOURCE
#include "uffd_core.h"
#include "uffd_abi.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef __NR_userfaultfd
#define __NR_userfaultfd 323 /* x86_64 */
#endif

int uh_userfaultfd_syscall(int flags)
{
    long fd = syscall(__NR_userfaultfd, flags);
    return fd < 0 ? -errno : (int)fd;
}

int uh_userfaultfd_dev(int flags)
{
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev < 0)
        return -errno;
    int fd = ioctl(dev, UH_USERFAULTFD_IOC_NEW, flags);
    int err = fd < 0 ? -errno : fd;
    close(dev);
    return err;
}

int uh_ioctl(int fd, unsigned long request, void *arg)
{
    return ioctl(fd, request, arg) < 0 ? -errno : 0;
}

long uh_read_msgs(int fd, void *buf, size_t max_msgs)
{
    ssize_t n = read(fd, buf, max_msgs * sizeof(struct uh_uffd_msg));
    if (n < 0)
        return -errno;
    return n / (long)sizeof(struct uh_uffd_msg);
}

int uh_wait_readable(int fd, int timeout_ms)
{
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int n;
    do {
        n = poll(&pfd, 1, timeout_ms);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    if (n > 0 && (pfd.revents & (POLLERR | POLLNVAL)))
        return -EBADF;
    return n;
}

int uh_copy_out(void *dst, const void *src, size_t len)
{
    memcpy(dst, src, len);
    return 0;
}

int uh_copy_in(void *dst, const void *src, size_t len)
{
    memcpy(dst, src, len);
    return 0;
}

/*
 * volatile: the compiler must not drop an access whose only purpose is to fault.
 * A write touch is an atomic add of 0: one locked read-modify-write instruction, so the
 * first fault the kernel sees is a write fault (UFFD_PAGEFAULT_FLAG_WRITE) and the data
 * is unchanged. A plain "*p = *p" would raise a read fault first.
 */
static inline void touch_one(char *p, int write)
{
    if (write)
        __atomic_fetch_add((volatile char *)p, 0, __ATOMIC_RELAXED);
    else
        (void)*(volatile char *)p;
}

long uh_touch(char *base, size_t npages, size_t page_size, int write)
{
    for (size_t i = 0; i < npages; i++)
        touch_one(base + i * page_size, write);
    return (long)npages;
}

long uh_touch_list(char *base, const uint64_t *offsets, size_t count, int write)
{
    for (size_t i = 0; i < count; i++)
        touch_one(base + offsets[i], write);
    return (long)count;
}

void uh_fill_pattern(char *dst, size_t len, const char *pattern, size_t pattern_len)
{
    if (pattern_len == 0)
        return;
    size_t done = 0;
    while (done < len) {
        size_t n = len - done < pattern_len ? len - done : pattern_len;
        memcpy(dst + done, pattern, n);
        done += n;
    }
}

long uh_find_pattern_mismatch(const char *src, size_t len, const char *pattern,
                              size_t pattern_len)
{
    if (pattern_len == 0)
        return -1;
    size_t done = 0;
    while (done < len) {
        size_t n = len - done < pattern_len ? len - done : pattern_len;
        if (memcmp(src + done, pattern, n) != 0) {
            for (size_t i = 0; i < n; i++)
                if (src[done + i] != pattern[i])
                    return (long)(done + i);
        }
        done += n;
    }
    return -1;
}

/* Word w of page p holds seed ^ (p << 32) ^ w: every page and word differ. */
static inline uint64_t indexed_word(uint64_t seed, uint64_t page, uint64_t word)
{
    return seed ^ (page << 32) ^ word;
}

void uh_fill_indexed(char *dst, size_t len, size_t page_size, uint64_t seed,
                     uint64_t first_page)
{
    size_t words_per_page = page_size / sizeof(uint64_t);
    size_t nwords = len / sizeof(uint64_t);
    uint64_t *w = (uint64_t *)dst;
    for (size_t i = 0; i < nwords; i++)
        w[i] = indexed_word(seed, first_page + i / words_per_page, i % words_per_page);
}

long uh_find_indexed_mismatch(const char *src, size_t len, size_t page_size, uint64_t seed,
                              uint64_t first_page)
{
    size_t words_per_page = page_size / sizeof(uint64_t);
    size_t nwords = len / sizeof(uint64_t);
    const uint64_t *w = (const uint64_t *)src;
    for (size_t i = 0; i < nwords; i++)
        if (w[i] != indexed_word(seed, first_page + i / words_per_page, i % words_per_page))
            return (long)(i * sizeof(uint64_t));
    return -1;
}

/*
 * fork() whose child _exit()s at once, without running any Python: lets a test trigger
 * UFFD_EVENT_FORK (the parent's fork() blocks until the event is read) from a thread that
 * does not hold the GIL.
 */
int uh_fork_wait_touch(char *base, size_t npages, size_t page_size, int go_fd)
{
    /* Called through cffi, so the GIL is released while the kernel waits for the fork
       event to be read (os.fork() holds it there). A raw clone, not glibc's fork(): that
       holds the malloc arena locks across the syscall, so a handler thread that allocates
       (a Python one) would block on them and never read the event. The child only reads,
       touches and exits: it needs no consistent malloc state. */
    pid_t pid = (pid_t)syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) {
        char go;
        if (read(go_fd, &go, 1) != 1)
            _exit(1);
        uh_touch(base, npages, page_size, 0);
        _exit(0);
    }
    return pid < 0 ? -errno : (int)pid;
}

int uh_fork_and_exit(int exit_code)
{
    pid_t pid = fork();
    if (pid == 0)
        _exit(exit_code);
    return pid < 0 ? -errno : (int)pid;
}
