/* The uffds a core reads are its own: a private duplicate of each, while the number its
 * owner sees (the caller's uffd, an adopted child's fd) is only watched. Closing that
 * number can then never make the core read whatever file takes it next; the periodic check
 * here notices the close, and the engine releases and closes its duplicate.
 *
 * Why the duplicate must be closed promptly: while the core holds it, the caller's close
 * does not release the uffd (userfaultfd_release runs on the last close of the file), so
 * a thread asleep in a fault stays asleep; closing the duplicate is what wakes it. */
#define _GNU_SOURCE
#include "uffd_handler.h"
#include "internal/handler.h"
#include "internal/uh_sched.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define KCMP_FILE 0 /* include/uapi/linux/kcmp.h */

/* Is seen_fd in process pid the same open file as our fd? 1 yes, 0 no (closed, or another
 * file took the number). kcmp(2) compares the struct file itself. Without it (ENOSYS when
 * CONFIG_KCMP is off) the inodes are compared: a pipe or a /proc file is always told
 * apart, but before 5.12 every uffd shared the one anon inode, so another anon-inode file
 * (eventfd, epoll, another uffd) in the slot passes there. */
static int same_file(int pid, int seen_fd, int fd)
{
    long rc = syscall(SYS_kcmp, pid, getpid(), KCMP_FILE, seen_fd, fd);
    if (rc >= 0)
        return rc == 0;
    if (errno == EBADF)
        return 0; /* nothing at seen_fd: ours is checked before this is asked */
    struct stat ours, seen;
    int got;
    if (fstat(fd, &ours) < 0)
        return 0;
    if (pid == getpid()) {
        got = fstat(seen_fd, &seen);
    } else {
        char path[64];
        snprintf(path, sizeof(path), "/proc/%d/fd/%d", pid, seen_fd);
        got = stat(path, &seen);
    }
    if (got < 0)
        return errno == EBADF || errno == ENOENT ? 0 : 1; /* EACCES: cannot tell */
    return seen.st_dev == ours.st_dev && seen.st_ino == ours.st_ino;
}

/* Is s->fd still the file the core took? Someone closing a number they were never given
 * must not make the core read, or later close, a stranger's file. */
static int still_ours(const struct uh_served *s)
{
    struct stat st;
    return fstat(s->fd, &st) == 0 && (uint64_t)st.st_dev == s->dev &&
           (uint64_t)st.st_ino == s->ino;
}

int own_served(struct uh_served *s, int pid, int seen_owned)
{
    int dup = fcntl(s->fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0)
        return -errno;
    struct stat st;
    if (fstat(dup, &st) < 0) {
        int err = errno;
        close(dup);
        return -err;
    }
    s->seen_fd = s->fd;
    s->seen_pid = pid;
    s->seen_owned = seen_owned;
    s->fd = dup;
    s->owned = 1;
    s->dev = (uint64_t)st.st_dev;
    s->ino = (uint64_t)st.st_ino;
    return 0;
}

int uh_core_own_uffd(struct uh_core *c, int ui, int owner_pid)
{
    pthread_mutex_lock(&c->lock);
    int rc = -EINVAL;
    if (ui >= 0 && ui < c->nuffds && c->uffds[ui]->fd >= 0 && c->uffds[ui]->seen_fd < 0)
        rc = own_served(c->uffds[ui], owner_pid, 0);
    pthread_mutex_unlock(&c->lock);
    return rc;
}

void close_served(struct uh_served *s)
{
    if (s->seen_owned && s->seen_fd >= 0 && s->fd >= 0 && same_file(getpid(), s->seen_fd, s->fd))
        close(s->seen_fd);
    if (s->owned && s->fd >= 0)
        close(s->fd);
    s->fd = s->seen_fd = -1;
}

/* Check every watched uffd; caller holds the lock. A close is recorded as the engine's
 * failure (UH_OP_CLOSED: the owner's number; UH_OP_LOST: the core's own duplicate). */
static int verify(struct uh_core *c)
{
    int rc = 0;
    for (int i = 0; i < c->nuffds; i++) {
        struct uh_served *s = c->uffds[i];
        if (s->fd < 0 || !s->owned || !s->ino)
            continue;
        /* Ours is checked again after a mismatch: our duplicate closed (and its number
         * reused) between the two checks would otherwise read as the owner's close. */
        int lost = !still_ours(s);
        int closed = !lost && s->seen_fd >= 0 && !same_file(s->seen_pid, s->seen_fd, s->fd);
        if (closed && !still_ours(s))
            lost = 1;
        if (lost) {
            fail(c, EBADF, UH_OP_LOST, (uint64_t)s->fd, (uint64_t)i, 0);
            s->fd = s->seen_fd = -1; /* whatever is there now is not ours to close */
            rc = -EBADF;
        } else if (closed) {
            fail(c, EBADF, UH_OP_CLOSED, (uint64_t)s->seen_fd, (uint64_t)i, 0);
            s->seen_fd = -1;
            s->orphaned = 1;
            rc = -EBADF;
        }
    }
    return rc;
}

int watch(struct uh_core *c, int force)
{
    uint64_t now = now_ns();
    if (!force && now < c->verify_at)
        return 0;
    c->verify_at = now + UH_WATCH_MS * 1000000ULL;
    pthread_mutex_lock(&c->lock);
    int rc = verify(c);
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int uh_core_verify(struct uh_core *c)
{
    return watch(c, 1);
}
