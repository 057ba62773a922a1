#define _GNU_SOURCE
#include "uffd_signal.h"

#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>

/* Armed only in the thread inside uh_access_catching_sigbus, for the access itself. */
static __thread sigjmp_buf *armed_jump;
static __thread struct uh_sigbus_info *armed_info;

/* The disposition is process-wide: the first thread inside installs the handler, the last
 * one out puts back what was there (Python's faulthandler, say). Installing and restoring
 * per call would let one thread's restore land while another is mid-access, whose SIGBUS
 * then reaches the old handler. */
static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;
static int inside;
static struct sigaction saved;

static void on_sigbus(int sig, siginfo_t *si, void *context)
{
    (void)context;
    if (!armed_jump) {
        /* Not an access being watched: put back the old disposition, so the re-executed
         * instruction meets it as it would have without us. */
        sigaction(sig, &saved, NULL);
        return;
    }
    armed_info->caught = 1;
    armed_info->code = si->si_code;
    armed_info->addr = (uint64_t)(uintptr_t)si->si_addr;
    siglongjmp(*armed_jump, 1);
}

static int enter(void)
{
    int rc = 0;
    pthread_mutex_lock(&install_lock);
    if (inside == 0) {
        struct sigaction act;
        memset(&act, 0, sizeof(act));
        act.sa_sigaction = on_sigbus;
        act.sa_flags = SA_SIGINFO;
        sigemptyset(&act.sa_mask);
        if (sigaction(SIGBUS, &act, &saved) < 0)
            rc = -errno;
    }
    if (rc == 0)
        inside++;
    pthread_mutex_unlock(&install_lock);
    return rc;
}

static void leave(void)
{
    pthread_mutex_lock(&install_lock);
    if (--inside == 0)
        sigaction(SIGBUS, &saved, NULL);
    pthread_mutex_unlock(&install_lock);
}

int uh_access_catching_sigbus(char *addr, int write, struct uh_sigbus_info *info)
{
    sigjmp_buf jump;
    memset(info, 0, sizeof(*info));
    int rc = enter();
    if (rc < 0)
        return rc;
    /* savemask=1: the longjmp out of the handler unblocks SIGBUS again. */
    if (sigsetjmp(jump, 1) == 0) {
        armed_info = info;
        armed_jump = &jump;
        if (write)
            __atomic_fetch_add((volatile char *)addr, 0, __ATOMIC_RELAXED);
        else
            info->value = (unsigned char)*(volatile char *)addr;
    }
    armed_jump = NULL;
    armed_info = NULL;
    leave();
    return 0;
}
