/* Long-term page pins through io_uring fixed buffers: IORING_REGISTER_BUFFERS pins the
 * buffer's pages with FOLL_WRITE | FOLL_LONGTERM until they are unregistered or the ring
 * is closed. Only the two syscalls, no liburing: the rings are never mapped or used. */
#ifndef UFFDHARNESS_URING_H
#define UFFDHARNESS_URING_H

#include <stddef.h>

/* io_uring_setup(entries, zeroed params): the ring's fd (O_CLOEXEC), or -errno. */
int uh_io_uring_setup(unsigned int entries);

/* IORING_REGISTER_BUFFERS with one iovec [addr, addr + len): 0 or -errno. */
int uh_io_uring_register_buffer(int ring_fd, void *addr, size_t len);

/* IORING_UNREGISTER_BUFFERS: 0 or -errno. */
int uh_io_uring_unregister_buffers(int ring_fd);

#endif
