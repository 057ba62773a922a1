#define _GNU_SOURCE
#include "uffd_uring.h"

#include <errno.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

/* Syscall numbers (5.1) are the same on every architecture but alpha. */
#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif
#ifndef __NR_io_uring_register
#define __NR_io_uring_register 427
#endif

#define UH_IORING_REGISTER_BUFFERS 0   /* UAPI enum io_uring_register_op */
#define UH_IORING_UNREGISTER_BUFFERS 1
#define UH_IO_URING_PARAMS_SIZE 120    /* sizeof(struct io_uring_params), 5.1 to 7.3 */

int uh_io_uring_setup(unsigned int entries)
{
    /* struct io_uring_params all zero: no flags, default CQ size; the kernel writes the
     * ring offsets back, which nothing here maps. */
    unsigned char params[UH_IO_URING_PARAMS_SIZE];
    memset(params, 0, sizeof(params));
    long fd = syscall(__NR_io_uring_setup, entries, params);
    return fd < 0 ? -errno : (int)fd;
}

int uh_io_uring_register_buffer(int ring_fd, void *addr, size_t len)
{
    struct iovec iov = {.iov_base = addr, .iov_len = len};
    long rc = syscall(__NR_io_uring_register, ring_fd, UH_IORING_REGISTER_BUFFERS, &iov, 1);
    return rc < 0 ? -errno : 0;
}

int uh_io_uring_unregister_buffers(int ring_fd)
{
    long rc = syscall(__NR_io_uring_register, ring_fd, UH_IORING_UNREGISTER_BUFFERS, NULL, 0);
    return rc < 0 ? -errno : 0;
}
