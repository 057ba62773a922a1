#define _GNU_SOURCE
#include "uffd_signal.h"

#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>

/* Armed only in the thread inside uh_access_catching_sigbus, for the access itself. */
static __thread sigjmp_buf *armed_jump;
static __thread struct uh_sigbus_info *armed_info;

static void on_sigbus(int sig, siginfo_t *si, void *context)
{
    (void)context;
    if (!armed_jump) {
        /* Not the access being watched: fall back to the default action, so the
         * re-executed instruction kills the process as it would have without us. */
        signal(sig, SIG_DFL);
        return;
    }
    armed_info->caught = 1;
    armed_info->code = si->si_code;
    armed_info->addr = (uint64_t)(uintptr_t)si->si_addr;
    siglongjmp(*armed_jump, 1);
}

int uh_access_catching_sigbus(char *addr, int write, struct uh_sigbus_info *info)
{
    struct sigaction act, previous;
    sigjmp_buf jump;
    memset(info, 0, sizeof(*info));
    memset(&act, 0, sizeof(act));
    act.sa_sigaction = on_sigbus;
    act.sa_flags = SA_SIGINFO;
    sigemptyset(&act.sa_mask);
    if (sigaction(SIGBUS, &act, &previous) < 0)
        return -errno;
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
    sigaction(SIGBUS, &previous, NULL);
    return 0;
}
