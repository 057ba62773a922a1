/* One access to memory that may raise SIGBUS, with the signal caught and reported. */
#ifndef UFFDHARNESS_SIGNAL_H
#define UFFDHARNESS_SIGNAL_H

#include <stdint.h>

struct uh_sigbus_info {
    int32_t caught; /* 1: the access raised SIGBUS (it did not complete) */
    int32_t code;   /* siginfo si_code (BUS_ADRERR for a uffd SIGBUS) */
    uint64_t addr;  /* siginfo si_addr */
    int32_t value;  /* the byte read, when a read completed */
};

/* Read one byte at addr (write: an atomic add of 0, so the first fault is a write fault)
 * with a SIGBUS handler installed for this call and this thread only. 0 with *info filled
 * (caught or not), or -errno if the handler could not be installed. */
int uh_access_catching_sigbus(char *addr, int write, struct uh_sigbus_info *info);

#endif
